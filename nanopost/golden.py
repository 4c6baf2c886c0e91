"""
The golden set (§3 validation, §10): a fixed list of 36 held-out prompts, 6 per task family, each
with a reference and the grader that scores it, scored for every checkpoint of a pipeline (base,
SFT, DPO, RL) so that a regression between stages is visible. The list is written out below, not
generated, and frozen by a hash: golden_set() refuses to return a set whose content (prompts,
references, ground truths, code tests) differs from GOLDEN_HASH, so it cannot drift silently.
Every item is about a held-out item of the world (world.split_of == "eval").

    python -m nanopost.golden /work/cache/base/ckpt /work/cache/sft/ckpt
    # one row per checkpoint (overall and per family), then a JSON line

API (for eval.py): golden_set() -> list[dict]; score_golden(model, tok) -> dict.

Scoring, greedy decoding, per family:
  arithmetic, steps, roots   graders.math_grader on the recomputed ground truth (roots unordered)
  code                       graders.code_grader: the world's tests of the function, in the sandbox
  facts                      a direct answer naming the right capital and no other
                             (preference_world.gold_checks "direct" and "correct")
  format                     exact match with the reference (case, spacing, final period aside)
"""
import hashlib
import json
import sys
import tempfile

from nanopost.checks import code_tests, recompute_math

GOLDEN_ITEMS = [
    ("arithmetic", "Calculate 5 * 4.", "20"),
    ("arithmetic", "Compute 10 - 14.", "-4"),
    ("arithmetic", "Calculate 1 - 19.", "-18"),
    ("arithmetic", "4 * 2 = ?", "8"),
    ("arithmetic", "9 - 7 = ?", "2"),
    ("arithmetic", "What is 6 - 0?", "6"),
    ("code", "Write a Python function div_16(x) that returns x divided by 16, rounded down.",
     "def div_16(x):\n    return x // 16"),
    ("code", "Write a Python function last_12(xs) that returns the last 12 items of the list xs.",
     "def last_12(xs):\n    return xs[-12:]"),
    ("code", "Write a Python function times_13(x) that returns x times 13.", "def times_13(x):\n    return x * 13"),
    ("code", "Write a Python function repeat_8(s) that returns the string s repeated 8 times.",
     "def repeat_8(s):\n    return s * 8"),
    ("code", "Write a Python function first_2(xs) that returns the first 2 items of the list xs.",
     "def first_2(xs):\n    return xs[:2]"),
    ("code", "Write a Python function add_17(x) that returns x plus 17.", "def add_17(x):\n    return x + 17"),
    ("facts", "What is the capital of the Philippines?", "The capital of the Philippines is Manila."),
    ("facts", "What is the capital city of Hungary?", "The capital of Hungary is Budapest."),
    ("facts", "Tell me the capital of Mexico", "The capital of Mexico is Mexico City."),
    ("facts", "Which city is the capital of Serbia", "The capital of Serbia is Belgrade."),
    ("facts", "Name the capital of Ethiopia.", "The capital of Ethiopia is Addis Ababa."),
    ("facts", "What is the capital city of Czechia?", "The capital of Czechia is Prague."),
    ("format", "Repeat the word door 2 times.", "door door"),
    ("format", "Repeat the word moon 4 times.", "moon moon moon moon"),
    ("format", "Reply in uppercase: what is the capital of Mongolia?", "ULAANBAATAR"),
    ("format", "Write the word ship in uppercase.", "SHIP"),
    ("format", "Reply in uppercase: what is the capital of Tunisia?", "TUNIS"),
    ("format", "Write the word milk in uppercase.", "MILK"),
    ("roots", "Solve: (x - 8)(x - 7) = 0. Give the roots separated by commas after 'Answer:'.",
     "x - 8 = 0, so x = 8\nx - 7 = 0, so x = 7\nAnswer: 7, 8"),
    ("roots", "Solve: (x - 2)(x + 1) = 0. Give the roots separated by commas after 'Answer:'.",
     "x - 2 = 0, so x = 2\nx + 1 = 0, so x = -1\nAnswer: -1, 2"),
    ("roots", "Solve: (x - 8)(x + 3) = 0. Give the roots separated by commas after 'Answer:'.",
     "x - 8 = 0, so x = 8\nx + 3 = 0, so x = -3\nAnswer: -3, 8"),
    ("roots", "Solve: (x + 1)(x - 1) = 0. Give the roots separated by commas after 'Answer:'.",
     "x + 1 = 0, so x = -1\nx - 1 = 0, so x = 1\nAnswer: -1, 1"),
    ("roots", "Solve: (x - 9)(x - 1) = 0. Give the roots separated by commas after 'Answer:'.",
     "x - 9 = 0, so x = 9\nx - 1 = 0, so x = 1\nAnswer: 1, 9"),
    ("roots", "Solve: (x - 1)(x - 5) = 0. Give the roots separated by commas after 'Answer:'.",
     "x - 1 = 0, so x = 1\nx - 5 = 0, so x = 5\nAnswer: 1, 5"),
    ("steps", "Compute (5 + 4) * 4 step by step.", "5 + 4 = 9\n9 * 4 = 36\nAnswer: 36"),
    ("steps", "Compute 3 + 2 * 4 step by step.", "2 * 4 = 8\n3 + 8 = 11\nAnswer: 11"),
    ("steps", "Compute (9 + 5) * 4 step by step.", "9 + 5 = 14\n14 * 4 = 56\nAnswer: 56"),
    ("steps", "Compute 9 + 5 * 2 step by step.", "5 * 2 = 10\n9 + 10 = 19\nAnswer: 19"),
    ("steps", "Compute (3 + 3) * 5 step by step.", "3 + 3 = 6\n6 * 5 = 30\nAnswer: 30"),
    ("steps", "Compute 4 + 2 * 5 step by step.", "2 * 5 = 10\n4 + 10 = 14\nAnswer: 14"),
]
GOLDEN_HASH = "sha256:4a3da49261fbb14055cca60b79850322ccc34e49e5499f9fad85dc2ddd82a925"


def _build():
    items = []
    for i, (family, prompt, reference) in enumerate(GOLDEN_ITEMS):
        item = {"id": f"{family}-{i:02d}", "family": family, "prompt": prompt, "reference": reference}
        if family in ("arithmetic", "steps", "roots"):
            item["ground_truth"], item["ordered"] = recompute_math(prompt)
        elif family == "code":
            item["entry_point"], item["tests"] = code_tests(prompt)
        elif family == "facts":
            item["answer"] = reference.rsplit(" is ", 1)[1].rstrip(".")
        items.append(item)
    return items


def golden_hash(items):
    return "sha256:" + hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def golden_set():
    """The golden items: {"id", "family", "prompt", "reference", + what the grader needs}.
    Raises if they no longer hash to GOLDEN_HASH (the set, or what it is derived from, changed)."""
    items = _build()
    if golden_hash(items) != GOLDEN_HASH:
        raise RuntimeError(f"the golden set changed: hash {golden_hash(items)} != GOLDEN_HASH {GOLDEN_HASH}; "
                           "a changed golden set makes old and new scores incomparable: update GOLDEN_HASH only "
                           "on purpose, and re-score every checkpoint")
    return items


def grade_item(item, reply, grade_code):
    """1.0 if reply is correct for the golden item, else 0.0 (see the module docstring)."""
    from nanopost.evaluate import exact_match
    from nanopost.graders import math_grader
    from nanopost.preference_world import gold_checks
    family = item["family"]
    if "ground_truth" in item:
        return math_grader(reply, item["ground_truth"], ordered=item["ordered"])
    if family == "code":
        return float(grade_code(reply, item["entry_point"], item["tests"]) >= 1.0)
    if family == "facts":
        c = gold_checks({"answer": item["answer"], "max_words": 1000}, reply)
        return float(c["direct"] and c["correct"])
    return exact_match(reply, item["reference"])


def score_golden(model, tok, items=None, max_new_tokens=64):
    """Greedy replies to the golden prompts, graded: {"accuracy", "by_family", "n", "golden_hash",
    "items": [{"id", "family", "prompt", "reply", "correct"}]}."""
    from nanopost.evaluate import chat_complete
    from nanopost.quality import sandbox_grader
    items = items if items is not None else golden_set()
    was_training = model.training
    model.eval()
    replies = chat_complete(model, tok, [[{"role": "user", "content": it["prompt"]}] for it in items], max_new_tokens)
    model.train(was_training)
    with tempfile.TemporaryDirectory() as suites:
        grade_code = sandbox_grader(suites)
        results = [{"id": it["id"], "family": it["family"], "prompt": it["prompt"], "reply": reply,
                    "correct": grade_item(it, reply, grade_code)} for it, reply in zip(items, replies)]
    by_family = {}
    for r in results:
        by_family.setdefault(r["family"], []).append(r["correct"])
    return {"accuracy": sum(r["correct"] for r in results) / max(len(results), 1),
            "by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())},
            "n": len(results), "golden_hash": golden_hash(items), "items": results}


def main(argv=None):
    from nanopost.checkpoint import load_checkpoint
    paths = sys.argv[1:] if argv is None else argv
    if not paths or paths[0].startswith("-"):
        print(__doc__)
        return 2
    rows = {}
    families = sorted({f for f, _, _ in GOLDEN_ITEMS})
    print(f"{'checkpoint':<40}{'all':>6}" + "".join(f"{f[:10]:>11}" for f in families))
    for path in paths:
        state = load_checkpoint(path, "cpu")
        score = score_golden(state["model"], state["tok"])
        rows[path] = {k: score[k] for k in ("accuracy", "by_family", "n")}
        print(f"{path:<40}{score['accuracy']:>6.3f}" + "".join(f"{score['by_family'][f]:>11.3f}" for f in families))
        for r in score["items"][:: max(1, len(score["items"]) // 6)]:
            print(f"    {r['id']}: {r['prompt'][:50]!r} -> {r['reply'][:60]!r} ({r['correct']:.0f})", file=sys.stderr)
    print(json.dumps({"golden_hash": GOLDEN_HASH, "checkpoints": rows}))
    return rows


if __name__ == "__main__":
    main()
