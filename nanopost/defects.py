"""
Defect injection (§3), so the data-quality pipeline's precision and recall are measured, not
assumed. Writes SFT records of the built-in world in which a share RATE is defective, each
defective record labelled with its kind in a "defect" field (the pipeline ignores it):

  wrong_math      an arithmetic answer off by 1-5                                  (label noise)
  contradiction   a capital question answered with another country's capital      (label noise)
  broken_code     code that fails its tests: the world's off-by-one labels, a wrong
                  operator or constant, or a syntax error
  fake_step       a step-by-step chain with one wrong step (carried on to the answer)
  wrong_final     correct steps, then a final answer they do not give (steps or roots)
  prose_answer    a roots answer ending in prose ("So x = 3 or x = -5.") instead of the
                  'Answer:' line the prompt asks for: the world's default label noise
  duplicate       an exact copy of an earlier record (another system prompt, case, spacing)
  near_duplicate  a copy with a small edit (a word added, punctuation or case changed)
  contamination   a held-out evaluation prompt with its reference answer

The clean records are single-turn, one per (family, item) of the training split and with
label_noise 0, so the clean part has no duplicates and no label noise of its own: every defect
in the file is labelled. (The default SFT data, `python -m nanopost.world --out DIR`, carries the
world's deliberate label noise, off-by-one code and prose roots, at label_noise 0.5; here those
two are the kinds broken_code (in part) and prose_answer.)

    python -m nanopost.world --defects 0.2 --out data/sft_defects.jsonl
    # also writes data/sft_defects.heldout.jsonl: train_sft.py's held-out set (--heldout_per_family,
    # default 40) minus the planted items, and data/sft_defects.planted.jsonl: the planted ones
    python -m nanopost.quality --measure --defects 0.2        # precision / recall per kind
"""
import dataclasses
import json
import os
import random
import re
from collections import Counter

from nanopost import dedup, world
from nanopost.data import write_jsonl

KINDS = ["wrong_math", "contradiction", "broken_code", "fake_step", "wrong_final", "prose_answer",
         "duplicate", "near_duplicate", "contamination"]
ADDED = {"duplicate", "near_duplicate", "contamination"}  # new records; the others corrupt a clean one
# the check that should catch each kind (the reason's prefix in rejected.jsonl)
EXPECTED_CHECK = {"wrong_math": "math_label", "contradiction": "contradiction", "broken_code": "code",
                  "fake_step": "reasoning", "wrong_final": "reasoning", "prose_answer": "answer_format",
                  "duplicate": "duplicate", "near_duplicate": "near_duplicate", "contamination": "contamination"}


def clean_tasks(seed=0, max_per_family=None):
    """One task per (family, item) of the training split, in a seeded order."""
    by_item = {}
    for t in world.sample_tasks(40000, "train", seed):
        by_item.setdefault((t.family, t.key), t)
    tasks = list(by_item.values())
    random.Random(f"{seed}|clean").shuffle(tasks)
    if max_per_family:
        counts = Counter()
        tasks = [t for t in tasks if (counts.update([t.family]) or counts[t.family]) <= max_per_family]
    return tasks


def _record(task, answer, rng, defect=None):
    rec = world.conversation([dataclasses.replace(task, answer=answer)], rng)
    return {**rec, "defect": defect} if defect else rec


def wrong_math(task, rng):
    return str(int(task.answer) + rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]))


def contradiction(task, rng):
    capital = next(cap for c, cap in world.COUNTRIES if c == task.key)
    other = rng.choice([cap for _, cap in world.COUNTRIES if cap != capital])
    return task.answer.replace(capital.upper() if task.answer.isupper() else capital,
                               other.upper() if task.answer.isupper() else other)


def broken_code(task, rng):
    if task.noisy_answer and rng.random() < 0.5:
        return task.noisy_answer  # the world's own off-by-one label
    head, body = task.answer.split("\n", 1)
    choice = rng.choice(["constant", "operator", "syntax"])
    if choice == "syntax":
        return head.rstrip(":") + "\n" + body  # def f(x) without its colon
    if choice == "constant" and re.search(r"\d+", body):
        return head + "\n" + re.sub(r"\d+", lambda m: str(int(m.group()) + 1), body, count=1)
    swaps = [("+", "-"), ("-", "+"), ("*", "+"), ("//", "%"), ("%", "//"), (">=", "<="), (">", "<"), ("==", "!="),
             (":]", ":-1]"), ("[:", "[1:"), ("[-", "[")]
    old, new = next((o, n) for o, n in swaps if o in body)
    return head + "\n" + body.replace(old, new, 1)


def fake_step(task, rng):
    """One wrong step in a steps chain; the error is carried on, so the final answer follows it."""
    (first, r1), (second, value) = [line.split(" = ") for line in task.answer.splitlines()[:2]]
    if rng.random() < 0.5:
        bad = int(r1) + rng.choice([-2, -1, 1, 2])
        second = second.replace(r1, str(bad))
        from nanopost.checks import eval_arithmetic
        return f"{first} = {bad}\n{second} = {eval_arithmetic(second)}\nAnswer: {eval_arithmetic(second)}"
    bad = int(value) + rng.choice([-2, -1, 1, 2])
    return f"{first} = {r1}\n{second} = {bad}\nAnswer: {bad}"


def wrong_final(task, rng):
    work, final = task.answer.rsplit("\n", 1)
    if task.family == "steps":
        return f"{work}\nAnswer: {int(final.split(': ')[1]) + rng.choice([-3, -2, -1, 1, 2, 3])}"
    roots = [int(v) for v in final.split(": ")[1].split(", ")]
    i = rng.randrange(2)
    roots[i] = -roots[i] if roots[i] != 0 else rng.choice([-1, 1])
    if sorted(roots) == sorted(int(v) for v in final.split(": ")[1].split(", ")):
        roots[i] += 1
    return f"{work}\nAnswer: {', '.join(str(r) for r in sorted(roots))}"


def prose_answer(task, rng):
    return task.noisy_answer


def near_copy(record, rng):
    """A near duplicate: maybe another system prompt, and one small edit of the user turn: a word
    added in front ("Please: ..."), a final punctuation mark changed, all upper or lower case, or
    (in a record of 20 tokens or more) "Thanks." added after the question. A word added inside a
    5-token record is not near by any shingle measure: such edits are not injected."""
    rec = json.loads(json.dumps(record))
    msgs = [m for m in rec["messages"] if m["role"] != "system"]
    if rng.random() < 0.5:
        msgs = [{"role": "system", "content": rng.choice(world.SYSTEM_PROMPTS)}] + msgs
    user = next(m for m in msgs if m["role"] == "user")
    text = user["content"]
    # one word inserted mid-record breaks 2 shingles and adds 3: J = (n - 2) / (n + 3) >= 0.76 for n >= 18
    long = len(dedup.tokens(text + " " + rec["messages"][-1]["content"])) >= 20
    edit = rng.choice(["please", "punctuation"] + (["case"] if text.upper() != text.lower() else [])
                      + (["thanks"] if long else []))
    if edit == "please":
        user["content"] = "Please: " + text[0].lower() + text[1:]
    elif edit == "thanks":
        user["content"] = text + " Thanks."
    elif edit == "punctuation":
        user["content"] = text[:-1] + ("!" if text[-1] in ".?" else text[-1] + "?")
    else:  # a case change that changes something
        user["content"] = text.lower() if text == text.upper() or (text != text.lower() and rng.random() < 0.5) \
            else text.upper()
    rec["messages"] = msgs
    return rec


def exact_copy(record, rng):
    """An exact duplicate up to the system prompt, spacing and case of the user turn."""
    rec = json.loads(json.dumps(record))
    msgs = [m for m in rec["messages"] if m["role"] != "system"]
    if rng.random() < 0.5:
        msgs = [{"role": "system", "content": rng.choice(world.SYSTEM_PROMPTS)}] + msgs
    user = next(m for m in msgs if m["role"] == "user")
    user["content"] = rng.choice([lambda s: s, lambda s: "  " + s + " ", lambda s: s.replace(" ", "  ")])(user["content"])
    rec["messages"] = msgs
    return rec


def eval_pool(seed=0):
    """Held-out (prompt, reference answer, family) to plant: SFT held-out records, RL eval prompts
    with their reference, preference eval pairs (their chosen answer)."""
    import tempfile
    from nanopost import preference_world
    pool = [(r["messages"][-2]["content"], r["messages"][-1]["content"], r["family"])
            for r in world.eval_records(200, seed)]
    with tempfile.TemporaryDirectory() as suites:
        pool += [(r["prompt"][-1]["content"], r["reference"], r["family"]) for r in world.rl_records(200, "eval", seed, suites)]
    pool += [(r["prompt"][-1]["content"], r["chosen"][-1]["content"], "facts")
             for r in preference_world.preference_records(400, "eval", seed, 0)]
    return pool


CORRUPT = {"wrong_math": (wrong_math, lambda t: t.family == "arithmetic"),
           "contradiction": (contradiction, lambda t: t.family == "facts" or t.prompt.startswith("Reply in uppercase")),
           "broken_code": (broken_code, lambda t: t.family == "code"),
           "fake_step": (fake_step, lambda t: t.family == "steps"),
           "wrong_final": (wrong_final, lambda t: t.family in ("steps", "roots")),
           "prose_answer": (prose_answer, lambda t: t.family == "roots")}


def defect_records(n, rate, seed=0, kinds=KINDS, max_per_family=None, mode="replace"):
    """About n records (fewer if the world has too few clean items), round(rate * n) of them
    defective, spread evenly over kinds; each defective record has "defect": kind.
    mode "replace": a label defect replaces the clean record of its item (filtering then removes
    the item); "add": it is an extra record, a second, wrong label for the prompt of a clean
    record (so the filtered data is the whole clean set, and only the defects differ)."""
    rng = random.Random(f"{seed}|defects")
    tasks = clean_tasks(seed, max_per_family)
    while True:  # shrink n until the world has enough clean items for it
        per_kind = Counter(kinds[i % len(kinds)] for i in range(round(rate * n)))
        n_added = sum(per_kind[k] for k in kinds if k in ADDED or mode == "add")
        if n - n_added <= len(tasks):
            break
        n -= 1
    tasks = tasks[:max(n - n_added, 0)]
    records = [_record(t, t.answer, rng) for t in tasks]
    used, extra = set(), []
    for kind in kinds:
        if kind in ADDED:
            continue
        corrupt, applies = CORRUPT[kind]
        candidates = [i for i, t in enumerate(tasks) if applies(t) and (mode == "add" or i not in used)]
        for i in rng.sample(candidates, min(per_kind[kind], len(candidates))):
            if mode == "add":  # a second, wrong label joins the clean record
                extra.append(_record(tasks[i], corrupt(tasks[i], rng), rng, kind))
            else:
                used.add(i)
                records[i] = _record(tasks[i], corrupt(tasks[i], rng), rng, kind)
    for rec in extra:
        records.insert(rng.randrange(len(records) + 1), rec)
    clean = [i for i in range(len(records)) if "defect" not in records[i]]
    pool = eval_pool(seed)
    for kind in [k for k in kinds if k in ADDED]:
        for _ in range(per_kind[kind]):
            if kind == "contamination":
                prompt, answer, family = rng.choice(pool)
                rec = {**world.conversation([world.Task(family, "", prompt, answer)], rng), "defect": kind}
                records.insert(rng.randrange(len(records) + 1), rec)
                continue
            source = rng.choice(clean)
            copy = (exact_copy if kind == "duplicate" else near_copy)(records[source], rng)
            records.insert(rng.randrange(source + 1, len(records) + 1), {**copy, "defect": kind})
            clean = [i for i in range(len(records)) if "defect" not in records[i]]
    return records


def measure(n, rate, seed, eval_prompts, out="", near_threshold=0.7, contamination_threshold=0.95):
    """Precision and recall of each check on injected defects; prints a table and a JSON line.
    recall(kind) = caught by its check / injected; precision(check) = flagged records whose
    defect is one that check is meant for / flagged records."""
    from nanopost.quality import filter_records
    records = defect_records(n, rate, seed)
    reasons = filter_records(records, eval_prompts, near_threshold, contamination_threshold)
    flagged = Counter(r.split(":")[0] for r in reasons if r)
    true_pos = Counter(r.split(":")[0] for rec, r in zip(records, reasons)
                       if r and EXPECTED_CHECK.get(rec.get("defect")) == r.split(":")[0])
    rows = {}
    print(f"{'defect':<16}{'injected':>9}{'recall':>8}  {'check':<15}{'flagged':>8}{'precision':>10}")
    for kind in KINDS:
        got = [r for rec, r in zip(records, reasons) if rec.get("defect") == kind]
        check = EXPECTED_CHECK[kind]
        recall = sum(bool(r) and r.startswith(check + ":") for r in got) / max(len(got), 1)
        precision = true_pos[check] / flagged[check] if flagged[check] else 1.0
        rows[kind] = {"injected": len(got), "recall": recall, "check": check, "flagged": flagged[check],
                      "precision": precision}
        print(f"{kind:<16}{len(got):>9}{recall:>8.3f}  {check:<15}{flagged[check]:>8}{precision:>10.3f}")
    clean = [r for rec, r in zip(records, reasons) if "defect" not in rec]
    misses = [(rec.get("defect"), r) for rec, r in zip(records, reasons)
              if rec.get("defect") and not (r and r.startswith(EXPECTED_CHECK[rec["defect"]] + ":"))]
    false_alarms = [(json.dumps(rec["messages"])[:160], r) for rec, r in zip(records, reasons)
                    if r and EXPECTED_CHECK.get(rec.get("defect")) != r.split(":")[0]]
    for what in misses[:5] + false_alarms[:5]:
        print("  example miss/false alarm:", what)
    summary = {"records": len(records), "defect_rate": rate, "clean": len(clean),
               "clean_rejected": sum(r is not None for r in clean), "by_kind": rows,
               "min_recall": min(v["recall"] for v in rows.values()),
               "min_precision": min(v["precision"] for v in rows.values())}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "measure.json"), "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary))
    return summary


def eval_items(seed=0, per_family=200):
    """Held-out prompt -> its item, the world's key that decides the split (a country, a sum, a
    pair of roots, a function), for every prompt of world.eval_records(per_family, seed) (which
    holds every prompt eval_pool plants)."""
    return {t.prompt: t.key for name, family in world.SFT_FAMILIES.items()
            for t in world.sample_tasks(per_family, "eval", seed, {name: family}, unique=True)}


def main(rate, out, seed=0, n=2000, mode="replace", heldout_per_family=40):
    """python -m nanopost.world --defects RATE --out FILE [--defects_mode add] [--heldout_per_family N]"""
    records = defect_records(n, rate, seed, mode=mode)
    write_jsonl(out, records)
    # train_sft.py's held-out set without the items planted here: a fair held-out score. An item
    # is planted with any of its wordings ("Name the capital of Peru." planted teaches "Tell me the
    # capital of Peru" too). The planted ones go to their own file, "planted": "prompt" (this very
    # prompt) or "item" (another wording): what contamination does to a score, measured apart.
    items = eval_items(seed, max(200, heldout_per_family))
    item = lambda prompt: items.get(prompt, prompt)
    planted = {r["messages"][-2]["content"] for r in records if r.get("defect") == "contamination"}
    planted_items = {item(p) for p in planted}
    evals = world.eval_records(heldout_per_family, seed)
    prompt = lambda r: r["messages"][-2]["content"]
    heldout = [r for r in evals if item(prompt(r)) not in planted_items]
    stem = os.path.splitext(out)[0]
    write_jsonl(stem + ".heldout.jsonl", heldout)
    write_jsonl(stem + ".planted.jsonl", [{**r, "planted": "prompt" if prompt(r) in planted else "item"}
                                          for r in evals if item(prompt(r)) in planted_items])
    kinds = Counter(r.get("defect", "clean") for r in records)
    print(json.dumps({"out": out, "records": len(records), "defects": dict(kinds), "heldout": stem + ".heldout.jsonl",
                      "heldout_records": len(heldout), "heldout_planted": len(evals) - len(heldout)}))
