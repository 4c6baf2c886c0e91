"""
Instruction following with verifiable constraints, in the style of IFEval (§6, §8): the built-in
world's simple questions (a capital, a repeated word, a list of numbers) with 1-3 instructions a
rule can check ("Answer in uppercase letters only.", "End your answer with the word cat.",
"Reply in JSON with the key "city".", "Do not use any commas." ...). Each instruction is one named
rubric item (nanopost/rubric.py), so a record is graded by the `rubric` grader like any §8 record:

    {"prompt": [{"role": "user", "content": "What is the capital of Peru? Answer in at most 2 words.
                                             Start your answer with the word moon."}],
     "metadata": {"scorer": "rubric", "family": "instruct",
                  "rubric": [{"name": "max_words", "check": "word_count", "max": 2},
                             {"name": "starts_with", "check": "starts_with", "text": "moon"}]},
     "family": "instruct", "reference": "moon Lima"}

IFEval's two scores follow from the per-item results: instruction-level accuracy (the share of
all items that pass) and prompt-level accuracy (the share of prompts all of whose items pass).
Held-out prompts ask about held-out items (world.split_of: a held-out country is held out
everywhere), whatever their instructions.

    python -c "from nanopost.instruct_world import instruct_records; print(instruct_records(3))"

SFT data (instruct_sft_records) carries §3 label noise: at rate label_noise an annotator ignores
one of the instructions (a random one), so SFT learns to follow them only some of the time and
RL with the rubric reward has something to fix.
"""
import json
import random

from nanopost.world import COUNTRIES, WORDS, split_of

# instruction kind -> (the user's words, the rubric item). {x}: a word, {n}: a number, {k}: a JSON key
INSTRUCTIONS = {
    "uppercase": (["Answer in uppercase letters only.", "Write your whole answer in capital letters."],
                  lambda p: {"check": "uppercase"}),
    "lowercase": (["Answer in lowercase letters only.", "Write your whole answer in small letters."],
                  lambda p: {"check": "lowercase"}),
    "max_words": (["Answer in at most {n} words.", "Use no more than {n} words."],
                  lambda p: {"check": "word_count", "max": p["n"]}),
    "starts_with": (["Start your answer with the word {x}.", "Begin your reply with the word {x}."],
                    lambda p: {"check": "starts_with", "text": p["x"]}),
    "ends_with": (["End your answer with the word {x}.", "Finish your reply with the word {x}."],
                  lambda p: {"check": "ends_with", "text": p["x"]}),
    "contains": (["Include the word {x} in your answer.", "Use the word {x} somewhere."],
                 lambda p: {"check": "contains", "text": p["x"]}),
    "json": (['Reply in JSON with the key "{k}".', 'Give your answer as a JSON object with the key "{k}".'],
             lambda p: {"check": "valid_json", "keys": [p["k"]]}),
    "no_commas": (["Do not use any commas.", "Write it without commas."],
                  lambda p: {"check": "regex", "pattern": r"\A[^,]*\Z"}),
}
# pairs no answer can satisfy at once (a JSON object neither starts nor ends with a word, and its
# uppercase keys would no longer be the requested ones)
CONFLICTS = {frozenset(p) for p in [("uppercase", "lowercase"), ("uppercase", "starts_with"), ("uppercase", "ends_with"),
                                    ("uppercase", "json"), ("json", "starts_with"), ("json", "ends_with")]}
JSON_KEYS = ["answer", "city", "result", "reply"]


def _capital(rng):
    country, capital = rng.choice(COUNTRIES)
    question = rng.choice(["What is the capital of {c}?", "Name the capital of {c}.", "Which city is the capital of {c}?"])
    return {"key": country, "question": question.format(c=country), "full": f"The capital of {country} is {capital}.",
            "short": capital, "kinds": ["uppercase", "lowercase", "max_words", "starts_with", "ends_with", "contains", "json"]}


def _repeat(rng):
    word, n = rng.choice(WORDS), rng.randint(2, 4)
    text = " ".join([word] * n)  # already lower case: "lowercase" would be free, so it is not asked
    return {"key": f"repeat:{word}:{n}", "question": f"Repeat the word {word} {n} times.", "full": text, "short": text,
            "kinds": ["uppercase", "starts_with", "ends_with", "contains", "json"]}


def _numbers(rng):
    a = rng.randint(0, 30)
    b = a + rng.randint(2, 5)
    text = ", ".join(str(i) for i in range(a, b + 1))  # the natural answer has commas
    return {"key": f"list:{a}:{b}", "question": f"List the numbers from {a} to {b}.", "full": text, "short": text,
            "kinds": ["no_commas", "starts_with", "ends_with", "contains", "json"]}


CONTENTS = [_capital, _repeat, _numbers]


def _pick_kinds(rng, kinds, k):
    """k instruction kinds from kinds, no two in CONFLICTS (fewer if none fit)."""
    chosen = []
    for kind in rng.sample(kinds, len(kinds)):
        if len(chosen) < k and all(frozenset((kind, c)) not in CONFLICTS for c in chosen):
            chosen.append(kind)
    return chosen


def answer_for(content, params, kinds, ignore=None):
    """The reference answer that follows every instruction in kinds except `ignore` (§3's careless
    annotator). Order: core, no commas, contains, starts/ends with, JSON, case; the word limit was
    set from this answer (params["n"])."""
    follow = [k for k in kinds if k != ignore]
    text = content["short"] if ("max_words" in follow or "json" in kinds) and ignore != "max_words" else content["full"]
    if "no_commas" in follow:
        text = text.replace(",", "")
    if "contains" in follow:
        text = f"{text} {params['x_contains']}"
    if "starts_with" in follow:
        text = f"{params['x_starts_with']} {text}"
    if "ends_with" in follow:
        text = f"{text} {params['x_ends_with']}"
    if "json" in follow:
        text = json.dumps({params["k"]: text})
    if "uppercase" in follow:
        text = text.upper()
    if "lowercase" in follow:
        text = text.lower()
    return text


def make_item(rng):
    """One instruction-following task: {"key", "prompt", "rubric", "answer", "noisy_answer"}."""
    content = rng.choice(CONTENTS)(rng)
    kinds = _pick_kinds(rng, content["kinds"], rng.randint(1, 3))
    # distinct words for the word instructions, none already in the answer (else it would pass unasked)
    words = [w for w in WORDS if w not in content["full"].lower()]
    params = {f"x_{kind}": w for kind, w in zip(("contains", "starts_with", "ends_with"), rng.sample(words, 3))}
    params["k"] = rng.choice(JSON_KEYS)
    if "max_words" in kinds:  # the limit fits the short answer (and the full sentence, 6+ words, does not)
        params["n"] = len(answer_for(content, {**params, "n": 99}, kinds).split()) + rng.randint(0, 1)
    rubric, sentences = [], []
    for kind in kinds:
        phrasings, item = INSTRUCTIONS[kind]
        x = params.get(f"x_{kind}")
        sentences.append(rng.choice(phrasings).format(x=x, n=params.get("n"), k=params["k"]))
        rubric.append({"name": kind, **item({**params, "x": x})})
    ignored = rng.choice(kinds)
    return {"key": content["key"], "prompt": " ".join([content["question"], *sentences]), "rubric": rubric,
            "answer": answer_for(content, params, kinds), "noisy_answer": answer_for(content, params, kinds, ignored),
            "ignored": ignored}


def _items(n, split, seed, unique, max_tries=200):
    rng = random.Random(f"{seed}|instruct|{split}")
    out, seen = [], set()
    for _ in range(n * max_tries):
        if len(out) == n:
            break
        item = make_item(rng)
        if split_of(item["key"]) != split or (unique and item["prompt"] in seen):
            continue
        seen.add(item["prompt"])
        out.append(item)
    return out


def instruct_records(n, split="train", seed=0):
    """n §8 records of the instruction-following family (distinct prompts for split='eval'):
    {"prompt": [user turn], "metadata": {"scorer": "rubric", "rubric": [one item per instruction],
    "family": "instruct"}, "family": "instruct", "reference": an answer that passes every item}."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return [{"prompt": [{"role": "user", "content": t["prompt"]}],
             "metadata": {"scorer": "rubric", "rubric": t["rubric"], "family": "instruct"},
             "family": "instruct", "reference": t["answer"]}
            for t in _items(n, split, seed, unique=(split == "eval"))]


def instruct_sft_records(n, seed=0, label_noise=0.5):
    """n §3 SFT conversations of the family (training items). At rate label_noise the answer
    ignores one of the prompt's instructions (the §3 defect RL with the rubric reward removes)."""
    rng = random.Random(f"{seed}|instruct|noise")
    return [{"messages": [{"role": "user", "content": t["prompt"]},
                          {"role": "assistant", "content": t["noisy_answer"] if rng.random() < label_noise else t["answer"]}],
             "family": "instruct"}
            for t in _items(n, "train", seed, unique=False)]
