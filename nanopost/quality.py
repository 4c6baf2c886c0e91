"""
The SFT data-quality pipeline (§3: collect -> filter -> evaluate -> iterate). One command filters
a JSONL file of §3 conversations ({"messages": [...]}) or §7 preference records (their chosen
response, or the first of a ranking, is checked against the prompt):

    python -m nanopost.quality data/sft.jsonl --out runs/quality
    # -> runs/quality/kept.jsonl, rejected.jsonl (each record with its "reason"), summary.json;
    #    a table on stdout and a final JSON line {"input", "kept", "rejected", "by_reason", ...}
    python -m nanopost.quality --measure --defects 0.2     # precision / recall per injected defect
    python -m nanopost.quality --compare runs/dq/s0 runs/dq/s1 ...   # does filtering help SFT? (README)

Checks, in this order; a record is rejected by the first that fires, with one reason
"check: detail" (the record checks are in nanopost/checks.py, duplicates in nanopost/dedup.py):

  contamination    a user turn contains a held-out evaluation prompt (n-gram containment >= 0.95
                   against every built-in eval set, plus --eval_data files)
  code             code that fails its tests in the sandbox, or does not parse
  reasoning        a wrong step, a gap in the chain, a final answer that does not follow
  math_label       a maths answer that the recomputed ground truth contradicts
  contradiction    an answer about a place the question does not ask about
  answer_format    an answer that ignores the format the prompt asks for
  judge            optional: --judge module:function, a callable (prompt, answer) -> None | reason
  duplicate        the same text as an earlier kept record (spacing aside; a system prompt is ignored)
  near_duplicate   the same normal form (case, punctuation) or word 3-gram Jaccard >= 0.7 with an
                   earlier kept record (thresholds measured: see nanopost/dedup.py)

Duplicates are looked for among the records that passed every other check (dedup what you keep).
Records that no check can judge are kept. Input errors stop with 'file:line: reason'. After
filtering, a distribution report (families, lengths) flags a too-narrow mix.
"""
import argparse
import hashlib
import importlib
import json
import math
import os
import statistics
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from nanopost import checks, dedup
from nanopost.data import DataError, load_records, read_jsonl, write_jsonl
from nanopost.evals import sign_test
from nanopost.graders import code_grader, make_suite

CHECK_ORDER = ["contamination", "code", "reasoning", "math_label", "contradiction", "answer_format", "judge",
               "duplicate", "near_duplicate"]


def turns_of(record):
    """A record -> [(prompt, answer)]: each assistant message with the user message before it.
    §3 records ({"messages"}), §7 pairs ({"prompt", "chosen"}) and rankings ({"prompt", "ranking"})."""
    if "messages" in record:
        messages = record["messages"]
    elif "prompt" in record and ("chosen" in record or "ranking" in record):
        best = record["chosen"] if "chosen" in record else (record["ranking"] or [None])[0]
        messages = record["prompt"] + (best if isinstance(best, list) else [best])
    else:
        raise ValueError(f"not a §3 or §7 record (keys: {sorted(record)})")
    if not isinstance(messages, list):
        raise ValueError("messages must be a list")
    turns, prompt = [], None
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "user", "assistant"):
            raise ValueError(f"bad message {m!r:.80}")
        if m["role"] == "user":
            prompt = m["content"]
        elif m["role"] == "assistant":
            if prompt is None:
                raise ValueError("an assistant turn before any user turn")
            turns.append((prompt, m["content"]))
    if not turns:
        raise ValueError("no assistant turn to check")
    return turns


def sandbox_grader(suites_dir, workers=2):
    """grade(code, entry_point, tests) -> fraction passed, through graders.code_grader (a separate
    sandboxed process per run); results cached by (code, tests). prefetch(jobs) runs many at
    `workers` at a time."""
    cache = {}

    def key(code, entry_point, tests):
        return hashlib.sha256(json.dumps([code, entry_point, tests]).encode()).hexdigest()[:24]

    def run(code, entry_point, tests):
        suite = make_suite(f"q_{entry_point}_{key('', entry_point, tests)}", entry_point, tests, [], suites_dir,
                           timeout_s=2, mem_mb=256)
        return code_grader(code, suite, suites_dir)

    def grade(code, entry_point, tests):
        k = key(code, entry_point, tests)
        if k not in cache:
            cache[k] = run(code, entry_point, tests)
        return cache[k]

    def prefetch(jobs):
        todo = {key(*j): j for j in jobs if key(*j) not in cache}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, v in zip(todo, pool.map(lambda j: run(*j), todo.values())):
                cache[k] = v

    grade.prefetch = prefetch
    return grade


def world_eval_prompts(seed=0, extra_files=()):
    """Every held-out prompt the built-in world evaluates on: SFT held-out records, RL eval
    prompts, preference eval prompts and pairs, the §1 questions, the golden set; plus the user
    turns of extra JSONL files."""
    from nanopost import golden, preference_world, world
    prompts = [r["messages"][-2]["content"] for r in world.eval_records(200, seed)]
    with tempfile.TemporaryDirectory() as suites:
        prompts += [r["prompt"][-1]["content"] for r in world.rl_records(200, "eval", seed, suites)]
    prompts += [r["prompt"][-1]["content"] for r in preference_world.preference_prompts("eval")]
    prompts += [r["prompt"][-1]["content"] for r in preference_world.preference_records(400, "eval", seed, 0)]
    prompts += [q for q, _ in world.direct_answer_prompts("eval")]
    prompts += [item["prompt"] for item in golden.golden_set()]
    for path in extra_files:
        items, _ = load_records(path, turns_of)
        prompts += [p for turns in items for p, _ in turns]
    return sorted(set(prompts))


def check_record(turns, metadata, grade, judge=None, contamination_index=None):
    """(check, detail) of the first check that fires on any turn, or None. metadata (a §8
    'ground_truth' or code 'suite'-less tests) applies to the last turn."""
    last = len(turns) - 1
    gt = metadata.get("ground_truth") if metadata.get("scorer") == "math_grader" else None
    rules = [("contamination", lambda i, p, a: contamination_index and (m := contamination_index.match(p))
              and f"contains held-out prompt {m[0]!r} (containment {m[1]:.2f})"),
             ("code", lambda i, p, a: checks.code(p, a, None, grade)),
             ("reasoning", lambda i, p, a: checks.reasoning(p, a)),
             ("math_label", lambda i, p, a: checks.math_label(p, a, gt if i == last else None,
                                                              metadata.get("ordered", True))),
             ("contradiction", lambda i, p, a: checks.contradiction(p, a)),
             ("answer_format", lambda i, p, a: checks.answer_format(p, a)),
             ("judge", lambda i, p, a: judge and judge(p, a))]
    for name, rule in rules:
        for i, (prompt, answer) in enumerate(turns):
            if detail := rule(i, prompt, answer):
                return name, detail
    return None


def dedup_text(turns):
    """What duplicates are judged on: user and assistant turns (a system prompt is ignored)."""
    return "\n".join(p + "\n" + a for p, a in turns)


def filter_records(records, eval_prompts=(), near_threshold=0.7, contamination_threshold=0.95, judge=None,
                   suites_dir=None, where=None):
    """records: list of dicts -> list of reasons, one per record (None = kept). where[i] names a
    record in messages (file:line)."""
    where = where or [f"record {i + 1}" for i in range(len(records))]
    parsed = [turns_of(r) for r in records]
    index = dedup.ContaminationIndex(eval_prompts, contamination_threshold) if eval_prompts else None
    with tempfile.TemporaryDirectory() as tmp:
        grade = sandbox_grader(suites_dir or tmp)
        grade.prefetch([(a, *tests) for turns in parsed for p, a in turns if (tests := checks.code_tests(p))])
        reasons = []
        for record, turns in zip(records, parsed):
            metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
            found = check_record(turns, metadata, grade, judge, index)
            reasons.append(f"{found[0]}: {found[1]}" if found else None)
    survivors = [i for i, r in enumerate(reasons) if r is None]
    for i, match in zip(survivors, dedup.near_duplicates([dedup_text(parsed[i]) for i in survivors], near_threshold)):
        if match:
            j, similarity = survivors[match[0]], match[1]
            exact = dedup.same_text(dedup_text(parsed[i]), dedup_text(parsed[j]))
            reasons[i] = (f"duplicate: same text as {where[j]}" if exact
                          else f"near_duplicate: Jaccard {similarity:.2f} with {where[j]}")
    return reasons


def family_of(record):
    """The record's 'family' field, else 'unknown'."""
    return str(record.get("family", "unknown"))


def distribution_report(records, max_family_share=0.5, min_families=3):
    """Task families and lengths (words) of records, and flags for a too-narrow mix (§3): one
    family above max_family_share, fewer than min_families families, or only short answers."""
    families = Counter(family_of(r) for r in records)
    answer_words = sorted(sum(len(a.split()) for _, a in turns_of(r)) for r in records) or [0]
    prompt_words = sorted(sum(len(p.split()) for p, _ in turns_of(r)) for r in records) or [0]
    q = lambda xs, f: xs[min(int(f * len(xs)), len(xs) - 1)]
    n = max(len(records), 1)
    flags = []
    if families and max(families.values()) / n > max_family_share:
        top = families.most_common(1)[0]
        flags.append(f"narrow mix: {top[0]} is {top[1] / n:.0%} of the records (> {max_family_share:.0%})")
    if len(families) < min_families:
        flags.append(f"narrow mix: {len(families)} task families (< {min_families})")
    if q(answer_words, 0.9) <= 3:
        flags.append("narrow mix: 90% of the answers have at most 3 words")
    return {"families": {k: round(v / n, 4) for k, v in families.most_common()},
            "answer_words": {"median": statistics.median(answer_words), "p10": q(answer_words, 0.1),
                             "p90": q(answer_words, 0.9), "max": answer_words[-1]},
            "prompt_words": {"median": statistics.median(prompt_words), "p90": q(prompt_words, 0.9)},
            "flags": flags}


def load_judge(spec):
    """'module:function' -> the callable (prompt, answer) -> None | reason."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def run_file(path, out, eval_prompts, near_threshold=0.7, contamination_threshold=0.95, judge=None):
    """Filter one JSONL file into out/; returns the summary dict."""
    numbered = read_jsonl(path)
    for lineno, record in numbered:  # bad records stop with file:line, before anything is written
        try:
            turns_of(record)
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
    lines, records = [f"{path}:{lineno}" for lineno, _ in numbered], [r for _, r in numbered]
    reasons = filter_records(records, eval_prompts, near_threshold, contamination_threshold, judge, where=lines)
    kept = [r for r, why in zip(records, reasons) if why is None]
    rejected = [{**r, "reason": why} for r, why in zip(records, reasons) if why is not None]
    assert len(kept) + len(rejected) == len(records)
    write_jsonl(os.path.join(out, "kept.jsonl"), kept)
    write_jsonl(os.path.join(out, "rejected.jsonl"), rejected)
    by_reason = Counter(r["reason"].split(":")[0] for r in rejected)
    summary = {"input": len(records), "kept": len(kept), "rejected": len(rejected),
               "by_reason": {k: by_reason[k] for k in CHECK_ORDER if by_reason[k]},
               "distribution_input": distribution_report(records), "distribution_kept": distribution_report(kept),
               "near_threshold": near_threshold, "contamination_threshold": contamination_threshold}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def print_table(summary):
    print(f"{'check':<16}{'rejected':>9}{'share':>8}")
    for name in CHECK_ORDER:
        k = summary["by_reason"].get(name, 0)
        print(f"{name:<16}{k:>9}{k / max(summary['input'], 1):>8.1%}")
    print(f"{'kept':<16}{summary['kept']:>9}{summary['kept'] / max(summary['input'], 1):>8.1%}")
    d = summary["distribution_kept"]
    print("kept families: " + ", ".join(f"{k} {v:.0%}" for k, v in d["families"].items()))
    print(f"kept answer words: median {d['answer_words']['median']}, p90 {d['answer_words']['p90']}")
    for flag in d["flags"] or ["no distribution flags"]:
        print("flag: " + flag)


# ------------------------------------------------------------------- does filtering help training?

T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]  # t_{0.975, df} for df = 1..10


def compare_runs(pairs, prompts=None):
    """Paired comparison of train_sft.py runs: pairs [(run_a, run_b)], one pair per seed, both runs
    of a pair evaluated on the same held-out prompts (OUT/heldout_replies.jsonl; prompts[i], a set,
    keeps only those of pair i). Per seed d = acc(b) - acc(a). The 95% interval of the mean d is
    Student's t over seeds (df = seeds - 1): it holds the training randomness and the choice of
    prompts, which a per-prompt test alone ignores. Also the sign test over seeds, and over
    prompts pooled across seeds (right for b only vs for a only: McNemar's exact test, secondary)."""
    assert 0 < len(pairs) <= len(T95) + 1, f"1 to {len(T95) + 1} pairs (seeds), got {len(pairs)}"

    def replies(run, keep):
        rows = {r["prompt"]: r for _, r in read_jsonl(os.path.join(run, "heldout_replies.jsonl"))}
        return {p: r for p, r in rows.items() if keep is None or p in keep}
    by_seed, only_b, only_a, families = [], 0, 0, {}
    for (run_a, run_b), keep in zip(pairs, prompts or [None] * len(pairs)):
        a, b = replies(run_a, keep), replies(run_b, keep)
        assert a.keys() == b.keys() and (keep is None or a.keys() == keep), \
            f"{run_a} and {run_b} were evaluated on different prompts"
        acc_a, acc_b = (sum(r["correct"] for r in x.values()) / len(x) for x in (a, b))
        by_seed.append({"a": acc_a, "b": acc_b, "diff": acc_b - acc_a, "prompts": len(a)})
        only_b += sum(b[p]["correct"] > a[p]["correct"] for p in a)
        only_a += sum(a[p]["correct"] > b[p]["correct"] for p in a)
        for p in a:
            families.setdefault(a[p]["family"], []).append((a[p]["correct"], b[p]["correct"]))
    diffs = [s["diff"] for s in by_seed]
    mean = sum(diffs) / len(diffs)
    half = T95[len(diffs) - 2] * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {"seeds": len(pairs), "a": sum(s["a"] for s in by_seed) / len(by_seed),
            "b": sum(s["b"] for s in by_seed) / len(by_seed), "diff": mean, "ci95": [mean - half, mean + half],
            "seeds_b_better": sum(d > 0 for d in diffs), "seeds_a_better": sum(d < 0 for d in diffs),
            "sign_p_seeds": sign_test(sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)),
            "prompts_only_b": only_b, "prompts_only_a": only_a, "sign_p_prompts": sign_test(only_b, only_a),
            "by_family": {f: [sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v)]
                          for f, v in sorted(families.items())},
            "by_seed": by_seed}


def planted_accuracy(run, records):
    """Exact match of a train_sft.py run's checkpoint on held-out records whose item was planted
    in its training data -> {"prompt": [correct, n], "item": [correct, n]} by record["planted"]."""
    from nanopost.checkpoint import load_checkpoint
    from nanopost.evaluate import chat_complete, exact_match
    state = load_checkpoint(os.path.join(run, "ckpt"), "cpu")
    state["model"].eval()
    replies = chat_complete(state["model"], state["tok"], [r["messages"][:-1] for r in records])
    out = {"prompt": [0, 0], "item": [0, 0]}
    for r, reply in zip(records, replies):
        out[r["planted"]][0] += exact_match(reply, r["messages"][-1]["content"])
        out[r["planted"]][1] += 1
    return out


def compare_filtering(dirs):
    """python -m nanopost.quality --compare DIR [DIR ...]: one DIR per seed of the experiment
    'SFT on defective data, filtered vs unfiltered' (the README's commands), holding the runs
    DIR/unfiltered and DIR/filtered (train_sft.py --out), the held-out set DIR/defects.heldout.jsonl
    and the planted held-out prompts DIR/defects.planted.jsonl. Prints one JSON line:
    a = unfiltered, b = filtered; "planted": accuracy on the planted prompts, and on other
    wordings of the planted items."""
    prompt_sets = [{r["messages"][-2]["content"] for _, r in read_jsonl(os.path.join(d, "defects.heldout.jsonl"))}
                   for d in dirs]
    result = compare_runs([(os.path.join(d, "unfiltered"), os.path.join(d, "filtered")) for d in dirs], prompt_sets)
    result["planted"] = {}
    for arm in ("unfiltered", "filtered"):
        total = {"prompt": [0, 0], "item": [0, 0]}
        for d in dirs:
            records = [r for _, r in read_jsonl(os.path.join(d, "defects.planted.jsonl"))]
            for kind, (correct, n) in planted_accuracy(os.path.join(d, arm), records).items():
                total[kind][0] += correct
                total[kind][1] += n
        result["planted"][arm] = {kind: correct / max(n, 1) for kind, (correct, n) in total.items()}
    result["planted"]["prompts"] = {kind: n for kind, (_, n) in total.items()}
    print(json.dumps(result))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="?", help="input JSONL (§3 conversations or §7 preference records)")
    p.add_argument("--out", default="runs/quality", help="output folder")
    p.add_argument("--near_threshold", type=float, default=0.7, help="near duplicate: word 3-gram Jaccard >= this")
    p.add_argument("--contamination_threshold", type=float, default=0.95,
                   help="contamination: share of an eval prompt's 3-grams found in a user turn >= this")
    p.add_argument("--eval_data", nargs="*", default=[], help="more held-out JSONL files to decontaminate against")
    p.add_argument("--judge", default="", help="optional checklist judge, 'module:function' (prompt, answer) -> reason")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in held-out sets")
    p.add_argument("--measure", action="store_true", help="measure precision/recall on injected defects")
    p.add_argument("--defects", type=float, default=0.2, help="--measure: share of defective records")
    p.add_argument("--n", type=int, default=2000, help="--measure: records to generate")
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR",
                   help="compare SFT runs on filtered vs unfiltered data, one DIR per seed (compare_filtering)")
    args = p.parse_args(argv)
    if args.compare:
        return compare_filtering(args.compare)
    eval_prompts = world_eval_prompts(args.seed, args.eval_data)
    if args.measure:
        from nanopost.defects import measure
        return measure(args.n, args.defects, args.seed, eval_prompts, args.out, args.near_threshold,
                       args.contamination_threshold)
    if not args.data:
        p.error("give an input JSONL file, or --measure")
    summary = run_file(args.data, args.out, eval_prompts, args.near_threshold, args.contamination_threshold,
                       load_judge(args.judge) if args.judge else None)
    print_table(summary)
    print(json.dumps({k: summary[k] for k in ("input", "kept", "rejected", "by_reason")}
                     | {"flags": summary["distribution_kept"]["flags"], "out": args.out}))
    return summary


if __name__ == "__main__":
    main()
