"""
Preference data with a ground truth (§7): questions whose good answer the world knows (capital
cities, uppercase requests), so every preference, and every answer a model writes, is checkable.

  gold_checks         the ground truth, criterion by criterion: direct (§1), correct, format, concise
  preference_records  §7 pairs of four kinds (one defect each) and best-first rankings (InstructGPT)
  preference_prompts  held-out questions for the ground-truth preference rate; training prompts for RLHF
  judge_records       SFT conversations that teach the built-in AI judge its format (§6 RLAIF)
  revision_records    SFT conversations that teach the revision judge to revise under a principle (§6)

Items are split as in world.py (split_of on the country or word), so held-out preference questions
are about items no training record mentions.
"""
import json
import random
import re
from dataclasses import dataclass

from nanopost.evaluate import is_direct_answer, normalize
from nanopost.graders import format_grader
from nanopost.world import COUNTRIES, FACT_QUESTIONS, FILLER, SYSTEM_PROMPTS, WORDS, pad_answer, split_of

CAPITALS = sorted({normalize(capital) for _, capital in COUNTRIES})
GOLD_WEIGHTS = {"direct": 8, "correct": 4, "format": 2, "concise": 1}  # lexicographic: earlier matters more


def _mentions(text, phrase):
    return re.search(r"(?<![a-z])" + re.escape(phrase) + r"(?![a-z])", text) is not None


def gold_checks(gold, response):
    """The ground truth of a preference question, criterion by criterion (1 = met):
      direct   it answers instead of continuing the question (§1)
      correct  it names the answer, and no other capital
      format   it follows the requested format (met when none was requested)
      concise  at most gold["max_words"] words (the reference's length plus two): no filler
    gold = {"answer": str, "max_words": int, "format": {format_grader spec}, optional}."""
    text = normalize(response)
    answer = normalize(gold["answer"])
    correct = _mentions(text, answer) and not any(_mentions(text, c) for c in CAPITALS if c != answer)
    return {"direct": int(is_direct_answer(response)), "correct": int(correct),
            "format": int(format_grader(response, gold["format"]) >= 1.0) if gold.get("format") else 1,
            "concise": int(len(response.split()) <= gold["max_words"])}


def gold_score(gold, response):
    """Σ GOLD_WEIGHTS · checks: a lexicographic order (a direct answer beats any continuation, then
    correctness, format, concision)."""
    return sum(GOLD_WEIGHTS[k] * v for k, v in gold_checks(gold, response).items())


def gold_accepts(gold, response):
    """The ground-truth preference: the response meets every criterion (it is the kind of answer
    the preference data marks as chosen)."""
    return all(gold_checks(gold, response).values())


def gold_prefers(gold, a, b):
    """+1 if the ground truth prefers a to b, -1 if b, 0 if it has no preference."""
    sa, sb = gold_score(gold, a), gold_score(gold, b)
    return (sa > sb) - (sa < sb)


@dataclass
class Question:
    kind: str       # fact | upper_capital | upper_word
    key: str        # decides the split, as for the SFT tasks about the same item
    prompt: str
    reference: str  # the ideal answer
    gold: dict


def preference_question(rng):
    country, capital = rng.choice(COUNTRIES)
    kind = rng.choice(["fact", "fact", "upper_capital", "upper_word"])
    if kind == "fact":
        q = Question(kind, country, rng.choice(FACT_QUESTIONS).format(c=country),
                     f"The capital of {country} is {capital}.", {"answer": capital})
    elif kind == "upper_capital":
        q = Question(kind, country, f"Reply in uppercase: what is the capital of {country}?", capital.upper(),
                     {"answer": capital, "format": {"uppercase": True}})
    else:
        word = rng.choice(WORDS)
        q = Question(kind, f"upperword:{word}", f"Write the word {word} in uppercase.", word.upper(),
                     {"answer": word, "format": {"uppercase": True, "max_words": 1}})
    q.gold["max_words"] = len(q.reference.split()) + 2
    return q


def _questions_of(split, rng):
    """Preference questions about items of one split, drawn from rng, without end."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; use train or eval")
    while True:
        q = preference_question(rng)
        if split_of(q.key) == split:
            yield q


def _same_split(q):
    """Countries and words of q's split: a wrong answer or a continuation names only these, so a
    held-out item never appears in training data at all (not even as the rejected side, which
    would teach "a held-out capital is bad" and push held-out accuracy below chance)."""
    split = split_of(q.key)
    return ([(c, cap) for c, cap in COUNTRIES if split_of(c) == split],
            [w for w in WORDS if split_of(f"upperword:{w}") == split])


def _wrong(q, rng):
    """A wrong answer: the reference with the answer swapped for another of its kind, or (for a
    fact question, half the time) a right answer to another question: the capital of another
    country, the mismatch §7's own bad pair shows (and the small SFT model's usual mistake on
    countries it never saw in SFT). The other item is of q's split (_same_split)."""
    countries, words = _same_split(q)
    if q.kind == "upper_word":
        return rng.choice([w for w in words if w != q.gold["answer"]]).upper()
    if q.kind == "fact" and rng.random() < 0.5:
        country, capital = rng.choice([(c, cap) for c, cap in countries if cap != q.gold["answer"]])
        return f"The capital of {country} is {capital}."
    other = rng.choice([c for _, c in countries if c != q.gold["answer"]])
    return q.reference.replace(q.gold["answer"].upper() if q.kind == "upper_capital" else q.gold["answer"],
                               other.upper() if q.kind == "upper_capital" else other)


def _unformatted(q):
    return q.gold["answer"] if q.kind == "upper_word" else q.gold["answer"].title()


def _continuation(q, rng):
    """What web text does with a question (§1): carry it on instead of answering (naming another
    country of q's split)."""
    other = rng.choice(_same_split(q)[0])[0]
    return rng.choice([f"? {q.reference}", f"? What is the capital city of {other}?",
                       "? Write your answers below.", f"and the capital of {other}?"])


def _compose(q, parts, defects):
    """The reference answer with the named defects: "direct" (a continuation instead, §1),
    "correct" (a wrong answer), "format" (ignores the requested format), "concise" (filler).
    parts holds the random material the defects need ("continuation", "wrong", "filler"), so
    one response can be composed with and without a defect (revision_records)."""
    if "direct" in defects:
        return parts["continuation"]
    text = parts["wrong"] if "correct" in defects else q.reference
    if "format" in defects and q.gold.get("format") and text == q.reference:
        text = _unformatted(q)
    return parts["filler"][0] + text + parts["filler"][1] if "concise" in defects else text


def _with_defects(q, rng, defects):
    """The reference answer with the named defects (_compose), drawing only the material they need."""
    if "direct" in defects:
        return _compose(q, {"continuation": _continuation(q, rng)}, defects)
    parts = {"wrong": _wrong(q, rng) if "correct" in defects else None}
    parts["filler"] = rng.choice(FILLER) if "concise" in defects else None  # pad_answer's draw
    return _compose(q, parts, defects)


def random_response(q, rng):
    """A response with each defect at random: a continuation, or wrong, unformatted, padded."""
    if rng.random() < 0.15:
        return _continuation(q, rng)
    return _with_defects(q, rng, {d for d, rate in (("correct", 0.3), ("format", 0.3), ("concise", 0.4))
                                  if rng.random() < rate})


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def _pref_prompt(q, rng, system_prob=0.3):
    system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < system_prob else []
    return system + [{"role": "user", "content": q.prompt}]


def preference_pair(q, rng):
    """(kind, chosen, rejected): one defect at a time, as in the issue's four kinds of preference."""
    kinds = ["direct", "correct", "concise"] + (["format"] if q.gold.get("format") else [])
    kind = rng.choice(kinds)
    if kind == "direct":
        return kind, q.reference, _continuation(q, rng)
    if kind == "format":
        return kind, q.reference, _unformatted(q)
    if kind == "concise":
        return kind, q.reference, pad_answer(q.reference, rng)
    chosen, rejected = q.reference, _wrong(q, rng)
    if rng.random() < 0.3:  # correctness matters even inside filler
        filler = rng.choice(FILLER)
        chosen, rejected = filler[0] + chosen + filler[1], filler[0] + rejected + filler[1]
    return kind, chosen, rejected


def preference_records(n, split, seed=0, ranking_share=0.2):
    """§7 records about items of one split: pairs ({"prompt", "chosen", "rejected"}) and, at rate
    ranking_share, best-first rankings of 3-4 responses ({"prompt", "ranking"}, InstructGPT).
    metadata.gold is the ground truth; metadata.kind names the defect of the rejected response."""
    rng = random.Random(f"{seed}|prefs|{split}")
    records, seen, tries = [], set(), 0
    while len(records) < n and tries < 200 * n:
        tries += 1
        q = preference_question(rng)
        if split_of(q.key) != split:
            continue
        meta = {"gold": q.gold}
        if rng.random() < ranking_share:
            candidates = [q.reference, pad_answer(q.reference, rng), _wrong(q, rng), _continuation(q, rng)]
            ranking = sorted(rng.sample(candidates, rng.choice([3, 4])), key=lambda r: -gold_score(q.gold, r))
            if len({gold_score(q.gold, r) for r in ranking}) < len(ranking):
                continue  # a ranking must be strict
            record = {"prompt": _pref_prompt(q, rng), "ranking": [_assistant(r) for r in ranking],
                      "metadata": {**meta, "kind": "ranking"}}
        else:
            kind, chosen, rejected = preference_pair(q, rng)
            record = {"prompt": _pref_prompt(q, rng), "chosen": _assistant(chosen), "rejected": _assistant(rejected),
                      "metadata": {**meta, "kind": kind}}
        key = json.dumps(record, sort_keys=True)
        if split == "eval" and key in seen:
            continue
        seen.add(key)
        records.append(record)
    return records


def preference_prompts(split="eval", seed=0, n=None):
    """Questions for measuring (split='eval': every held-out question once) or for RLHF training
    (n questions drawn at random): {"prompt", "metadata": {"gold": ...}, "family": kind}."""
    if n is None:
        questions = []
        for country, capital in COUNTRIES:
            if split_of(country) == split:
                for phrasing in FACT_QUESTIONS + ["Reply in uppercase: what is the capital of {c}?"]:
                    upper = phrasing.startswith("Reply")
                    q = Question("upper_capital" if upper else "fact", country, phrasing.format(c=country),
                                 capital.upper() if upper else f"The capital of {country} is {capital}.",
                                 {"answer": capital, **({"format": {"uppercase": True}} if upper else {})})
                    q.gold["max_words"] = len(q.reference.split()) + 2
                    questions.append(q)
        for word in WORDS:
            if split_of(f"upperword:{word}") == split:
                questions.append(Question("upper_word", f"upperword:{word}", f"Write the word {word} in uppercase.",
                                          word.upper(), {"answer": word, "format": {"uppercase": True, "max_words": 1},
                                                         "max_words": 3}))
        return [{"prompt": [{"role": "user", "content": q.prompt}], "metadata": {"gold": q.gold}, "family": q.kind}
                for q in questions]
    rng = random.Random(f"{seed}|prefprompts|{split}")
    out = []
    while len(out) < n:
        q = preference_question(rng)
        if split_of(q.key) == split:
            out.append({"prompt": _pref_prompt(q, rng), "metadata": {"gold": q.gold}, "family": q.kind})
    return out


# the constitution (§6, Constitutional AI): one principle per criterion of the ground truth, with
# the weight the built-in judge gives it ("weight | principle" lines; see nanopost/judge.py)
PRINCIPLES = {"direct": "Prefer the response that answers the question instead of continuing it.",
              "correct": "Prefer the response whose answer is correct.",
              "format": "Prefer the response that follows the format the user asked for.",
              "concise": "Prefer the concise response, without filler."}
CONSTITUTION = "".join(f"{GOLD_WEIGHTS[k]} | {text}\n" for k, text in PRINCIPLES.items())


def judge_prompt(principle, question, response, reference=None):
    """The judging format the built-in judge is taught (SFT) and asked in (RLAIF): one response,
    one principle, and optionally a reference answer (reference-guided judging, as MT-Bench's judge
    grades maths against a reference: checking an answer against one is easier than recalling the
    fact). A pairwise judgement is made of two of these (judge.model_judge)."""
    shown = "" if reference is None else f"Reference: {reference}\n"
    return (f"Principle: {principle}\nQuestion: {question}\n{shown}Response: {response}\n"
            f"Does the response follow the principle?")


def judge_verdict(follows):
    """The judge's answer to judge_prompt."""
    return f"Verdict: {'yes' if follows else 'no'}"


def judge_records(n, seed=0, split="train", reference_share=0.5):
    """SFT conversations that teach judging: a response to a training question, one principle,
    and that principle's ground-truth verdict. Half the responses carry the principle's defect
    (others at random), so every verdict is yes half the time and the judge must read the response.
    A share reference_share also shows the question's reference answer (a training label, like SFT's
    answers), so the judge learns to check a response against a reference; at judging time the
    reference is the judge's own answer (judge.model_judge(reference=True)), never the ground truth."""
    rng = random.Random(f"{seed}|judge|{split}")
    questions, records = _questions_of(split, rng), []
    while len(records) < n:
        q = next(questions)
        names = [k for k in PRINCIPLES if k != "format" or q.gold.get("format")]
        name = rng.choice(names)
        others = {d for d in ("correct", "format", "concise") if d != name and rng.random() < 0.25}
        response = _with_defects(q, rng, others | ({name} if rng.random() < 0.5 else set()))
        # (no draw at share 0: those records are the ones made before references existed)
        reference = q.reference if reference_share and rng.random() < reference_share else None
        records.append({"messages": [{"role": "user", "content": judge_prompt(PRINCIPLES[name], q.prompt, response,
                                                                              reference)},
                                     {"role": "assistant",
                                      "content": judge_verdict(gold_checks(q.gold, response)[name])}],
                        "family": "judge"})
    return records


def revision_prompt(principle, question, response):
    """The revision judge's format (judge.revision_judge): Constitutional AI's revision step (§6),
    one principle, the question and the response to rewrite so that it follows the principle."""
    return (f"Principle: {principle}\nQuestion: {question}\nResponse: {response}\n"
            f"Rewrite the response to follow the principle.")


def revision_records(n, seed=0, split="train", truncate_share=0.15):
    """SFT conversations that teach revision under one principle (revision_prompt): a response
    with random defects (its principle's half the time) and, as the answer, the same response with
    only that principle's defect removed, so a response that already follows the principle is
    copied unchanged. A share truncate_share of the responses is cut short at a random character
    (a weak sampler's unfinished answer); one that no longer follows the principle is revised to
    the whole answer. Every record agrees with the ground truth: the answer equals the response
    exactly when gold_checks says the response follows the principle, and the answer follows it."""
    rng = random.Random(f"{seed}|revise|{split}")
    questions, records = _questions_of(split, rng), []
    while len(records) < n:
        q = next(questions)
        parts = {"continuation": _continuation(q, rng), "wrong": _wrong(q, rng), "filler": rng.choice(FILLER)}
        name = rng.choice([k for k in PRINCIPLES if k != "format" or q.gold.get("format")])
        defects = {d for d, rate in (("direct", 0.1), ("correct", 0.3), ("format", 0.3), ("concise", 0.3))
                   if rng.random() < rate} | ({name} if rng.random() < 0.5 else set())
        if "correct" in defects:  # a wrong answer keeps the requested format (_compose), so has no format defect
            defects.discard("format")  # to reappear when "correct" is revised away
        response, revised = _compose(q, parts, defects), _compose(q, parts, defects - {name})
        if rng.random() < truncate_share:
            response = response[:rng.randint(1, max(1, len(response) - 1))].rstrip() or response[:1]
            if gold_checks(q.gold, response)[name]:
                revised = response
        if (gold_checks(q.gold, response)[name] == 1) != (revised == response) or not gold_checks(q.gold, revised)[name]:
            continue  # e.g. a continuation that never named the answer, "revised" under another principle
        records.append({"messages": [{"role": "user", "content": revision_prompt(PRINCIPLES[name], q.prompt, response)},
                                     {"role": "assistant", "content": revised}], "family": "revise"})
    return records


def with_judging(records, share, seed=0):
    """SFT records plus share * len(records) judging conversations, shuffled in."""
    judging = judge_records(int(share * len(records)), seed)
    if not judging:
        return records
    mixed = records + judging
    random.Random(seed + 1).shuffle(mixed)
    return mixed
