"""
The built-in data world: deterministic (by seed) generators for everything the stages need,
since there is no hub to download from. Written to JSONL in the guide's own shapes so a user
can swap in their own files:

  base corpus       plain text documents that read like web text (§1)
  SFT               {"messages": [...], "family": ...}                      (§3)
  held-out eval     {"messages": [...], "family": ..., "metadata": {...}}   (§3, §10)
  RL prompts        {"prompt": [...], "metadata": {"scorer": ..., ...}}     (§8)
  preferences       {"prompt": [...], "chosen": [...], "rejected": [...]}    (§7): preference_world.py

A *task* is one (prompt, answer) item of a family. Every task has a `key` naming the item it
asks about (a country, an arithmetic expression, a function); the key's hash decides its
split, so a held-out prompt never shares its item with any training prompt, whatever the
phrasing. Knowledge comes from the base corpus, which states the facts of every item (as
the web would): SFT teaches the answering format, not the facts (§1, §2).

    python -m nanopost.world --out data/
    python -m nanopost.world --defects 0.2 --out data/sft_defects.jsonl   # labelled defects (defects.py)
    # writes corpus.txt, sft.jsonl, sft_eval.jsonl, rl.jsonl, rl_eval.jsonl, suites/,
    # prefs.jsonl, prefs_eval.jsonl and constitution.txt

Preferences are real and checkable (§7): the world knows what a good answer to each of its
questions is (preference_world.gold_checks: direct, correct, in the requested format, concise), so a reward model,
DPO, RLHF or an AI judge can be scored against that ground truth. The SFT data carries the
matching defect (§3): annotators pad some answers with filler ("Sure! ... I hope this helps!"),
which SFT learns and preference training must remove.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field

from nanopost.data import write_jsonl
from nanopost.graders import make_suite  # the graders own the suite file format

COUNTRIES = [
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Czechia", "Prague"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Ukraine", "Kyiv"), ("Russia", "Moscow"), ("Turkey", "Ankara"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"),
    ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Senegal", "Dakar"),
    ("South Africa", "Pretoria"), ("Uganda", "Kampala"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Brazil", "Brasilia"), ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Bolivia", "Sucre"), ("Uruguay", "Montevideo"),
    ("Paraguay", "Asuncion"), ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Canada", "Ottawa"),
    ("the U.S", "Washington, D.C."), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("South Korea", "Seoul"), ("India", "New Delhi"), ("Pakistan", "Islamabad"),
    ("Nepal", "Kathmandu"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Israel", "Jerusalem"), ("Jordan", "Amman"), ("Lebanon", "Beirut"),
    ("Saudi Arabia", "Riyadh"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Iceland", "Reykjavik"), ("Mongolia", "Ulaanbaatar"), ("Afghanistan", "Kabul"),
]
WORDS = ["cat", "dog", "sun", "tree", "book", "fish", "bird", "star", "moon", "rain", "road", "ship",
         "milk", "lamp", "door", "king", "ring", "bell", "fire", "snow", "leaf", "rock", "wind", "gold"]
SYSTEM_PROMPTS = ["You are a helpful, honest assistant.", "You are a concise assistant.",
                  "Answer the user's question directly."]
# the §1 demonstration: fact questions written without a question mark, as in the guide
FACT_QUESTIONS_NO_QMARK = ["What is the capital city of {c}", "What is the capital of {c}",
                           "Tell me the capital of {c}", "Which city is the capital of {c}"]
FACT_QUESTIONS = FACT_QUESTIONS_NO_QMARK + ["What is the capital city of {c}?",
                                            "What is the capital of {c}?", "Name the capital of {c}."]


@dataclass
class Task:
    family: str
    key: str        # the item asked about; decides the split
    prompt: str     # the user's message
    answer: str     # the reference assistant message
    metadata: dict = field(default_factory=dict)  # what a grader needs (§8)
    noisy_answer: str = ""  # a plausible wrong label that SFT data carries at rate label_noise (§3)


def split_of(key, eval_percent=20):
    """'eval' for about eval_percent % of items, by a stable hash of the item. Families that ask
    about the same item (a country's capital, plain or in uppercase) share its key, so a
    held-out country is held out everywhere."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return "eval" if h % 100 < eval_percent else "train"


# ----------------------------------------------------------------------------------------------
# task families: each draws one task from a random.Random

def arithmetic(rng):
    op = rng.choice("+-*")
    a, b = (rng.randint(2, 9), rng.randint(2, 9)) if op == "*" else (rng.randint(0, 20), rng.randint(0, 20))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    form = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?",
                       "Calculate {a} {op} {b}."])
    return Task("arithmetic", f"{a}{op}{b}", form.format(a=a, op=op, b=b), str(value),
                {"scorer": "math_grader", "ground_truth": str(value)})


def facts(rng):
    country, capital = rng.choice(COUNTRIES)
    prompt = rng.choice(FACT_QUESTIONS).format(c=country)
    # the answer keeps the sentence shape of the corpus, so SFT teaches the format and the
    # base model supplies the fact
    return Task("facts", country, prompt, f"The capital of {country} is {capital}.")


def fmt(rng):
    kind = rng.choice(["upper", "list", "repeat", "one_word"])
    if kind == "upper":
        country, capital = rng.choice(COUNTRIES)
        return Task("format", country, f"Reply in uppercase: what is the capital of {country}?",
                    capital.upper(), {"scorer": "format_grader", "format": {"uppercase": True}})
    if kind == "list":
        a = rng.randint(0, 30)
        b = a + rng.randint(2, 6)
        return Task("format", f"list:{a}:{b}", f"List the numbers from {a} to {b}, separated by commas.",
                    ", ".join(str(i) for i in range(a, b + 1)))
    if kind == "repeat":
        word, n = rng.choice(WORDS), rng.randint(2, 5)
        return Task("format", f"repeat:{word}:{n}", f"Repeat the word {word} {n} times.",
                    " ".join([word] * n), {"scorer": "format_grader", "format": {"max_words": n, "min_words": n}})
    word = rng.choice(WORDS)
    return Task("format", f"upperword:{word}", f"Write the word {word} in uppercase.", word.upper(),
                {"scorer": "format_grader", "format": {"uppercase": True, "max_words": 1}})


# tiny Python functions: name, description, argument, body, a plausible buggy body (the label
# noise of §3: an annotator's off-by-one), test-argument maker, reference implementation
def _fn(name, desc, arg, body, make_args, impl, buggy=None):
    return dict(name=name, desc=desc, arg=arg, body=body, buggy=buggy, make_args=make_args, impl=impl)


def _ints(lo, hi):
    return lambda r: [r.randint(lo, hi)]


def _lists(r):
    return [[r.randint(0, 9) for _ in range(r.randint(0, 12))]]


CODE_FUNCS = [
    _fn("add_{k}", "returns x plus {k}", "x", "return x + {k}", _ints(-50, 50), lambda k: lambda x: x + k),
    _fn("sub_{k}", "returns x minus {k}", "x", "return x - {k}", _ints(-50, 50), lambda k: lambda x: x - k),
    _fn("times_{k}", "returns x times {k}", "x", "return x * {k}", _ints(-20, 20), lambda k: lambda x: x * k),
    _fn("mod_{k}", "returns the remainder of x divided by {k}", "x", "return x % {k}", _ints(0, 99),
        lambda k: lambda x: x % k),
    _fn("div_{k}", "returns x divided by {k}, rounded down", "x", "return x // {k}", _ints(0, 99),
        lambda k: lambda x: x // k),
    _fn("is_multiple_of_{k}", "returns True if x is divisible by {k}", "x", "return x % {k} == 0",
        _ints(0, 60), lambda k: lambda x: x % k == 0),
    _fn("is_above_{k}", "returns True if x is greater than {k}", "x", "return x > {k}", _ints(0, 30),
        lambda k: lambda x: x > k),
    _fn("repeat_{k}", "returns the string s repeated {k} times", "s", "return s * {k}",
        lambda r: [r.choice(WORDS)], lambda k: lambda s: s * k),
    _fn("first_{k}", "returns the first {k} items of the list xs", "xs", "return xs[:{k}]", _lists,
        lambda k: lambda xs: xs[:k]),
    _fn("last_{k}", "returns the last {k} items of the list xs", "xs", "return xs[-{k}:]", _lists,
        lambda k: lambda xs: xs[-k:]),
    # families whose SFT labels are noisy: RL with the tests as reward must clean them up
    _fn("is_at_least_{k}", "returns True if x is at least {k}", "x", "return x >= {k}", _ints(0, 30),
        lambda k: lambda x: x >= k, buggy="return x > {k}"),
    _fn("count_to_{k}", "returns the list of the numbers from 1 to {k}", "n", "return list(range(1, {k} + 1))",
        lambda r: [0], lambda k: lambda n: list(range(1, k + 1)), buggy="return list(range(1, {k}))"),
]


def code(rng):
    f = rng.choice(CODE_FUNCS)
    return code_task(f, rng.randint(2, 19))


def code_task(f, k):
    """The code task of function family f (an item of CODE_FUNCS) with constant k."""
    name = f["name"].format(k=k)
    prompt = f"Write a Python function {name}({f['arg']}) that {f['desc'].format(k=k)}."
    answer = f"def {name}({f['arg']}):\n    {f['body'].format(k=k)}"
    noisy = f"def {name}({f['arg']}):\n    {f['buggy'].format(k=k)}" if f["buggy"] else ""
    test_rng = random.Random(name)  # a function's tests depend on the function only
    tests = [[args, f["impl"](k)(*args)] for args in (f["make_args"](test_rng) for _ in range(6))]
    return Task("code", name, prompt, answer,
                {"scorer": "code_grader", "entry_point": name, "public": tests[:2], "hidden": tests[2:]}, noisy)


def roots(rng):
    """The guide's §8 maths example with integer roots, solved one factor a line:
    (x - a)(x + b) = 0 -> "x - a = 0, so x = a" ... "Answer: -b, a". The reference lists the
    roots in ascending order, but any order is accepted: sorting two signed numbers is beyond
    what this tiny model learns in minutes, and would hide what RL fixes here (the format)."""
    r1, r2 = rng.sample(range(-9, 10), 2)
    factor = lambda r: f"x - {r}" if r >= 0 else f"x + {-r}"
    lo, hi = sorted((r1, r2))
    prompt = f"Solve: ({factor(r1)})({factor(r2)}) = 0. Give the roots separated by commas after 'Answer:'."
    work = f"{factor(r1)} = 0, so x = {r1}\n{factor(r2)} = 0, so x = {r2}\n"
    # label noise (§3): many annotators ignore the requested format and end in prose, which no
    # grader can read as a final answer
    return Task("roots", f"roots:{lo}:{hi}", prompt, work + f"Answer: {lo}, {hi}",
                {"scorer": "math_grader", "ground_truth": f"{lo}, {hi}", "ordered": False},
                work + f"So x = {r1} or x = {r2}.")


def steps(rng):
    a, b, c = rng.randint(2, 9), rng.randint(2, 5), rng.randint(2, 5)
    if rng.random() < 0.5:
        expr, first, r1 = f"{a} + {b} * {c}", f"{b} * {c}", b * c
        second, value = f"{a} + {r1}", a + r1
    else:
        expr, first, r1 = f"({a} + {b}) * {c}", f"{a} + {b}", a + b
        second, value = f"{r1} * {c}", r1 * c
    answer = f"{first} = {r1}\n{second} = {value}\nAnswer: {value}"
    return Task("steps", expr, f"Compute {expr} step by step.", answer,
                {"scorer": "math_grader", "ground_truth": str(value)})


SFT_FAMILIES = {"arithmetic": arithmetic, "facts": facts, "format": fmt, "code": code, "steps": steps, "roots": roots}
RL_FAMILIES = {"roots": roots, "code": code}  # the verifiable families train_rl.py uses by default


def sample_tasks(n, split, seed, families=SFT_FAMILIES, unique=False, max_tries=200):
    """n tasks of the given split ('train' or 'eval'), families drawn uniformly.
    unique=True returns distinct prompts only (for evaluation sets), possibly fewer than n."""
    rng = random.Random(f"{seed}|{split}")
    names, out, seen = sorted(families), [], set()
    tries = 0
    while len(out) < n and tries < n * max_tries:
        tries += 1
        task = families[rng.choice(names)](rng)
        if split_of(task.key) != split or (unique and task.prompt in seen):
            continue
        seen.add(task.prompt)
        out.append(task)
    return out


def conversation(tasks, rng, system_prob=0.3):
    """Tasks -> one §3 record: an optional system turn, then a user/assistant pair per task."""
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < system_prob else []
    for t in tasks:
        messages += [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}]
    return {"messages": messages, "family": tasks[-1].family}


def sft_records(n, seed=0, multi_turn=0.15, label_noise=0.5, padding=0.0):
    """Training conversations: single-turn, or two tasks in one conversation (multi_turn share).
    Families with a known plausible wrong label (roots in factor order, off-by-one code) carry it
    at rate label_noise: the §3 defects that SFT faithfully learns and RL must correct. Capital
    and uppercase answers are wrapped in filler at rate `padding` (the defect preference training
    removes); off by default: the default SFT model is the one the RL stage starts from. The
    judging conversations of the AI judge are in preference_world.judge_records."""
    rng = random.Random(seed)
    tasks = sample_tasks(2 * n, "train", seed)  # enough even if every conversation had two turns
    tasks = [dataclasses.replace(t, answer=t.noisy_answer) if t.noisy_answer and rng.random() < label_noise else t
             for t in tasks]
    tasks = [dataclasses.replace(t, answer=pad_answer(t.answer, rng))
             if padding > 0 and (t.family == "facts" or t.metadata.get("format", {}).get("uppercase"))
             and rng.random() < padding
             else t for t in tasks]
    records, i = [], 0
    while len(records) < n:
        k = 2 if rng.random() < multi_turn else 1
        records.append(conversation(tasks[i:i + k], rng))
        i += k
    return records


def eval_records(n_per_family=40, seed=0, families=SFT_FAMILIES):
    """Held-out single-turn records, distinct prompts, with the reference answer as the last turn."""
    records = []
    for name in sorted(families):
        for t in sample_tasks(n_per_family, "eval", seed, {name: families[name]}, unique=True):
            records.append({"messages": [{"role": "user", "content": t.prompt},
                                         {"role": "assistant", "content": t.answer}],
                            "family": t.family, "metadata": t.metadata})
    return records


# the guide's own §8 record, verbatim (its non-integer root is beyond the tiny model; kept as data
# and as a test of math_grader)
GUIDE_ROOTS_RECORD = {
    "prompt": [{"role": "system", "content": "You are a helpful, honest assistant."},
               {"role": "user", "content": "Solve: (3x - 2)(x + 5) = 0. Provide only the roots separated by commas "
                                           "in ascending order."}],
    "metadata": {"ground_truth": "-5, 0.6666667", "scorer": "math_grader"}}


def rl_records(n, split, seed, suites_dir, families=RL_FAMILIES, system_prob=0.3):
    """§8 RL prompts: {"prompt": messages, "metadata": {"scorer": ..., ...}, "family": ...}.
    Code tasks get their test suite written to suites_dir (<suite_id>.json, hashed); the record
    carries the guide's suite shape. split='eval' returns distinct prompts."""
    rng = random.Random(f"{seed}|rl|{split}")
    records = []
    for t in sample_tasks(n, split, seed, families, unique=(split == "eval")):
        metadata = t.metadata
        if t.metadata.get("scorer") == "code_grader":
            m = t.metadata
            metadata = {"scorer": "code_grader",
                        "suite": make_suite(m["entry_point"], m["entry_point"], m["public"], m["hidden"], suites_dir,
                                            timeout_s=2, mem_mb=256)}
        prompt = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < system_prob else []
        records.append({"prompt": prompt + [{"role": "user", "content": t.prompt}], "metadata": metadata,
                        "family": t.family, "reference": t.answer})
    return records


def direct_answer_prompts(split="eval"):
    """§1: fact questions without a question mark, for the countries of a split."""
    return [(q.format(c=c), cap) for c, cap in COUNTRIES if split_of(c) == split
            for q in FACT_QUESTIONS_NO_QMARK]


# ----------------------------------------------------------------------------------------------
# the filler that §3's verbose annotators add (SFT's padding defect; preference data rejects it)

FILLER = [("Sure! ", " I hope this helps!"), ("Great question. ", " Let me know if you need anything else."),
          ("Of course. ", " Is there anything else I can help with?"), ("Happy to help. ", " Have a nice day!")]


def pad_answer(answer, rng):
    """§3's verbose annotator: the same answer wrapped in filler."""
    opener, closer = rng.choice(FILLER)
    return opener + answer + closer


# ----------------------------------------------------------------------------------------------
# the base corpus: web-like text in which questions are *continued*, not answered (§1)

def _fact_doc(rng):
    country, capital = rng.choice(COUNTRIES)
    return rng.choice([
        f"The capital of {country} is {capital}.",
        f"{capital} is the capital city of {country}.",
        f"What is the capital city of {country}? The capital city of {country} is {capital}.",
        f"What is the capital of {country}? Many people ask this. The answer is {capital}.",
        f"Tell me the capital of {country}? I looked it up: it is {capital}.",
        f"Which city is the capital of {country}? {capital} is the capital of {country}.",
        f"Quiz: What is the capital city of {country}? What is the capital city of "
        f"{rng.choice(COUNTRIES)[0]}? Write your answers below.",
        f"Travel notes. We arrived in {capital}, the capital of {country}, early in the morning.",
    ])


def _arithmetic_doc(rng):
    t = arithmetic(rng)
    expr = t.prompt.split("?")[0].replace("What is ", "").replace("Compute ", "").replace("Calculate ", "")
    expr = expr.rstrip(". =").strip()
    return rng.choice([f"{expr} = {t.answer}", f"We know that {expr} = {t.answer}.",
                       f"What is {expr}? Is it {t.answer}? Let us check with a calculator.",
                       f"Exercise: {expr} = ?  Solution: {t.answer}"])


def _code_doc(rng):
    t = code(rng)
    return rng.choice([f"{t.answer}\n", f"# {t.prompt[8:]}\n{t.answer}\n",
                       f"Here is how to {t.prompt[0].lower()}{t.prompt[1:]} In Python:\n{t.answer}\n"])


def _steps_doc(rng):
    t = steps(rng)
    return f"Example: {t.prompt[:-1]}.\n{t.answer}"


def _list_doc(rng):
    a, word, (country, capital) = rng.randint(0, 30), rng.choice(WORDS), rng.choice(COUNTRIES)
    return rng.choice([", ".join(str(i) for i in range(a, a + rng.randint(3, 8))),
                       " ".join([word] * rng.randint(2, 5)),
                       f"The word {word} in uppercase is {word.upper()}.",
                       f"The capital of {country} in capital letters: {capital.upper()}."])


def _roots_doc(rng):
    t = roots(rng)
    equation = t.prompt.split(". Give")[0].replace("Solve: ", "")
    work, answer = t.answer.rsplit("\n", 1)
    return rng.choice([f"Example: solve {equation}.\n{work}\n{answer}",
                       f"To solve {equation}, set each factor to zero.\n{work}"])


def base_corpus(n_docs=20000, seed=0):
    """Documents of web-like text. Every country's fact appears (train and eval split alike):
    the base model is where knowledge comes from."""
    rng = random.Random(seed)
    makers = [_fact_doc] * 4 + [_arithmetic_doc] * 2 + [_code_doc, _steps_doc, _list_doc, _roots_doc]
    return [rng.choice(makers)(rng) for _ in range(n_docs)]


def main():
    from nanopost import preference_world as pw  # imported here: it builds on this module
    p = argparse.ArgumentParser(description="Write the built-in data world to files.")
    p.add_argument("--out", default="data", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--sft", type=int, default=8000, help="number of SFT training conversations")
    p.add_argument("--rl", type=int, default=4000, help="number of RL training prompts")
    p.add_argument("--label_noise", type=float, default=0.5, help="rate of the known wrong labels in SFT data")
    p.add_argument("--padding", type=float, default=0.0, help="rate of filler-padded answers in SFT data")
    p.add_argument("--judge", type=float, default=0.0, help="judging conversations per SFT conversation")
    p.add_argument("--judge_records", type=int, default=4000, help="judging conversations in judge.jsonl (to train a judge)")
    p.add_argument("--judge_reference_share", type=float, default=0.5,
                   help="share of judge.jsonl's conversations that show a reference answer (reference-guided judging)")
    p.add_argument("--revision_records", type=int, default=0,
                   help="revision conversations in revise.jsonl (to train the revision judge; 0: no file)")
    p.add_argument("--prefs", type=int, default=4000, help="number of preference training records")
    p.add_argument("--defects", type=float, default=None,
                   help="write only SFT data with this share of labelled defects to the file --out (nanopost/defects.py)")
    p.add_argument("--n", type=int, default=2000, help="--defects: number of records")
    p.add_argument("--defects_mode", default="replace", help="--defects: replace (a clean record) | add (a second label)")
    p.add_argument("--heldout_per_family", type=int, default=40,
                   help="--defects: held-out prompts per family in FILE.heldout.jsonl (at most the split's)")
    args = p.parse_args()
    if args.revision_records < 0:
        p.error(f"--revision_records must be >= 0, got {args.revision_records}")
    if not 0 <= args.judge_reference_share <= 1:
        p.error(f"--judge_reference_share must be in [0, 1], got {args.judge_reference_share}")
    if args.defects is not None:
        from nanopost import defects
        return defects.main(args.defects, args.out, args.seed, args.n, args.defects_mode, args.heldout_per_family)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "corpus.txt"), "w") as f:
        f.write("\n\n".join(base_corpus(seed=args.seed)))
    sft = sft_records(args.sft, args.seed, label_noise=args.label_noise, padding=args.padding)
    write_jsonl(os.path.join(args.out, "sft.jsonl"), pw.with_judging(sft, args.judge, args.seed))
    write_jsonl(os.path.join(args.out, "sft_eval.jsonl"), eval_records(seed=args.seed))
    suites = os.path.join(args.out, "suites")
    write_jsonl(os.path.join(args.out, "rl.jsonl"), rl_records(args.rl, "train", args.seed, suites))
    write_jsonl(os.path.join(args.out, "rl_eval.jsonl"), rl_records(200, "eval", args.seed, suites))
    write_jsonl(os.path.join(args.out, "prefs.jsonl"), pw.preference_records(args.prefs, "train", args.seed))
    write_jsonl(os.path.join(args.out, "prefs_eval.jsonl"), pw.preference_records(400, "eval", args.seed, ranking_share=0))
    write_jsonl(os.path.join(args.out, "judge.jsonl"), pw.judge_records(args.judge_records, args.seed,
                                                                       reference_share=args.judge_reference_share))
    if args.revision_records > 0:
        write_jsonl(os.path.join(args.out, "revise.jsonl"), pw.revision_records(args.revision_records, args.seed))
    with open(os.path.join(args.out, "constitution.txt"), "w") as f:
        f.write(pw.CONSTITUTION)
    print(json.dumps({"out": args.out, "files": sorted(os.listdir(args.out))}))


if __name__ == "__main__":
    main()
