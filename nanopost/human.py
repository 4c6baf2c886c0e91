"""
Human evaluation in the terminal (§10): pointwise ratings (1-5) or blinded pairwise preferences.

    python eval.py human --mode pairwise --ckpt runs/sft/ckpt --ckpt runs/dpo/ckpt --annotator alice
    python eval.py human --mode pointwise --ckpt runs/sft/ckpt --ckpt runs/dpo/ckpt --annotator bob
    python eval.py human --aggregate --out runs/human          # win rates, rankings, agreement
    python eval.py human ... --answers answers.txt             # answers from a file, one per line

Flow. The checkpoints' greedy answers to held-out prompts are generated once and kept in
OUT/responses.jsonl ({"item", "model", "prompt", "response"} per line; write that file yourself to
rate any system's outputs), so every annotator, and a resumed session, sees the same answers.
  pairwise   every prompt for every pair of checkpoints: the two answers as "Response 1" and
             "Response 2", sides drawn at random per annotator and task, model names hidden;
             answer 1, 2, t (tie) or q (stop)
  pointwise  every (prompt, checkpoint) in an order shuffled per annotator, the model hidden;
             answer 1-5 or q
Each answer is appended at once to OUT/ratings.jsonl with the annotator's name; running again
with the same name resumes after the last task answered. An answers file stands in for the
keyboard (its lines are read in order; when it runs out the session stops, as with q).

Aggregation (every annotator's records): per pair of models, the win rate (wins + ½ ties)/n with
a bootstrap interval; Bradley-Terry strengths and Elo ratings over all comparisons (ranking);
pointwise, each model's mean rating with a bootstrap interval; Cohen's kappa between every two
annotators on the tasks both answered (pairwise labels: the winner's name or "tie"; pointwise:
the rating).
"""
import argparse
import itertools
import json
import os
import random
import sys
import time

from nanopost.data import read_jsonl
from nanopost.evals import bradley_terry, cohen_kappa, elo_ratings, mean_with_interval
from nanopost.llm_judge import win_rate

PAIRWISE_KEYS = {"1": "1", "2": "2", "t": "tie", "tie": "tie", "q": "quit"}
POINTWISE_KEYS = {**{str(g): str(g) for g in range(1, 6)}, "q": "quit"}


def default_prompts(n, seed=0):
    """Held-out prompts: world task prompts and preference questions, alternating, n in all."""
    from nanopost import preference_world, world
    tasks = [{"prompt": r["messages"][:-1]} for r in world.eval_records(4, seed)]
    prefs = [{"prompt": p["prompt"]} for p in preference_world.preference_prompts("eval")]
    random.Random(seed).shuffle(tasks)
    mixed = [p for pair in itertools.zip_longest(prefs, tasks) for p in pair if p is not None]
    return mixed[:n]


def generate_responses(ckpts, prompts, path, device="cpu"):
    """Greedy answers of every checkpoint to every prompt -> path (JSONL), returned as records."""
    from nanopost.checkpoint import load_checkpoint
    from nanopost.evaluate import chat_complete
    records = []
    for ckpt in ckpts:
        state = load_checkpoint(ckpt, device)
        answers = chat_complete(state["model"].eval(), state["tok"], [p["prompt"] for p in prompts], 48)
        records += [{"item": i, "model": ckpt, "prompt": p["prompt"], "response": a}
                    for i, (p, a) in enumerate(zip(prompts, answers))]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return records


def load_responses(path):
    """OUT/responses.jsonl -> {item: {model: record}}; a record without item/model/prompt/response
    is an error naming the file and line."""
    table = {}
    for lineno, r in read_jsonl(path):
        if not isinstance(r, dict) or not {"item", "model", "prompt", "response"} <= set(r):
            raise ValueError(f"{path}:{lineno}: a response record needs item, model, prompt and response")
        table.setdefault(r["item"], {})[r["model"]] = r
    return table


def tasks_for(mode, responses, annotator, seed=0):
    """The annotator's task list: (task id, item, models shown in order), sides/order drawn per
    annotator so that no position or block gives a model away."""
    tasks = []
    for item in sorted(responses):
        models = sorted(responses[item])
        if mode == "pairwise":
            for a, b in itertools.combinations(models, 2):
                task = f"{item}:{a}|{b}"
                swap = random.Random(f"{seed}|{annotator}|{task}").random() < 0.5
                tasks.append((task, item, (b, a) if swap else (a, b)))
        else:
            tasks += [(f"{item}:{m}", item, (m,)) for m in models]
    if mode == "pointwise":
        random.Random(f"{seed}|{annotator}|order").shuffle(tasks)
    return tasks


def _show(prompt, answers):
    lines = ["", "=" * 72] + [f"[{m['role']}] {m['content']}" for m in prompt]
    for k, text in enumerate(answers, start=1):
        lines += ["-" * 72, f"Response {k}:" if len(answers) > 1 else "Response:", text]
    return "\n".join(lines)


def annotate(mode, responses, out, annotator, answers=None, seed=0, ask=input, show=print):
    """Run (or resume) a session; answers: an iterator of (where, text) or None for ask().
    -> number of records written in this session."""
    if mode not in ("pairwise", "pointwise"):
        raise ValueError(f"unknown --mode {mode!r}; use pairwise or pointwise")
    if not annotator:
        raise ValueError("give an --annotator name: ratings are recorded per annotator")
    path = os.path.join(out, "ratings.jsonl")
    done = {r["task"] for _, r in read_jsonl(path) if r.get("annotator") == annotator
            and r.get("mode") == mode} if os.path.exists(path) else set()
    keys = PAIRWISE_KEYS if mode == "pairwise" else POINTWISE_KEYS
    hint = "1, 2, t (tie) or q (stop)" if mode == "pairwise" else "1 (bad) .. 5 (excellent), or q (stop)"
    todo = [t for t in tasks_for(mode, responses, annotator, seed) if t[0] not in done]
    show(f"{annotator}: {len(done)} done, {len(todo)} to go ({mode}). Answer {hint}.")
    written = 0
    for task, item, models in todo:
        shown = [responses[item][m] for m in models]
        show(_show(shown[0]["prompt"], [r["response"] for r in shown]))
        while True:
            if answers is None:
                where, text = "keyboard", ask(f"[{hint}] > ")
            else:
                where, text = next(answers, (None, "q"))
            choice = keys.get(text.strip().lower())
            if choice is not None:
                break
            if answers is not None:
                raise ValueError(f"{where}: {text.strip()!r} is not an answer ({hint})")
            show(f"please answer {hint}")
        if choice == "quit":
            show(f"stopped; {written} answers recorded this session, run again to resume")
            break
        record = {"annotator": annotator, "mode": mode, "task": task, "item": item, "time": time.time()}
        if mode == "pairwise":
            winner = None if choice == "tie" else models[int(choice) - 1]
            record.update(left=models[0], right=models[1], choice=choice, winner=winner)
        else:
            record.update(model=models[0], rating=int(choice))
        with open(path, "a") as f:  # one line per answer: nothing is lost when the session stops
            f.write(json.dumps(record) + "\n")
        written += 1
    return written


def aggregate(records):
    """Win rates, rankings and agreement from rating records (module docstring)."""
    out = {}
    pair = [r for r in records if r.get("mode") == "pairwise"]
    if pair:
        comparisons, by_pair = [], {}
        for r in pair:
            a, b = sorted((r["left"], r["right"]))
            outcome = 0.5 if r["winner"] is None else float(r["winner"] == a)
            comparisons.append((a, b, outcome))
            by_pair.setdefault(f"{a} vs {b}", []).append(outcome)
        out["pairwise"] = {"win_rate_of_first": {k: win_rate(v) for k, v in sorted(by_pair.items())},
                           "bradley_terry": _ranked(bradley_terry(comparisons)),
                           "elo": _ranked(elo_ratings(comparisons)), "n": len(pair),
                           "kappa": _kappas(pair, lambda r: r["winner"] or "tie")}
    point = [r for r in records if r.get("mode") == "pointwise"]
    if point:
        ratings = {}
        for r in point:
            ratings.setdefault(r["model"], []).append(r["rating"])
        means = {m: mean_with_interval(v) for m, v in ratings.items()}
        out["pointwise"] = {"mean_rating": dict(sorted(means.items(), key=lambda kv: -kv[1]["mean"])),
                            "n": len(point), "kappa": _kappas(point, lambda r: r["rating"])}
    return out


def _ranked(strengths):
    return dict(sorted(strengths.items(), key=lambda kv: -kv[1]))


def _kappas(records, label):
    """Cohen's kappa for every two annotators over the tasks both answered (their last answer)."""
    by_annotator = {}
    for r in records:
        by_annotator.setdefault(r["annotator"], {})[r["task"]] = label(r)
    out = {}
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[a]) & set(by_annotator[b]))
        if shared:
            out[f"{a} vs {b}"] = {"kappa": cohen_kappa([by_annotator[a][t] for t in shared],
                                                       [by_annotator[b][t] for t in shared]), "n": len(shared)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="human evaluation in the terminal (nanopost/human.py)")
    p.add_argument("--mode", default="pairwise", help="pairwise | pointwise")
    p.add_argument("--ckpt", action="append", default=[], help="checkpoint to rate; repeat (pairwise: 2 or more)")
    p.add_argument("--annotator", default="", help="your name: ratings are recorded and resumed per annotator")
    p.add_argument("--out", default="runs/human", help="folder of responses.jsonl and ratings.jsonl")
    p.add_argument("--n", type=int, default=20, help="held-out prompts to rate")
    p.add_argument("--prompts", default="", help="JSONL of {'prompt': messages} (default: built-in held-out)")
    p.add_argument("--answers", default="", help="read the answers from this file, one per line, not the keyboard")
    p.add_argument("--aggregate", action="store_true", help="aggregate OUT/ratings.jsonl instead of rating")
    p.add_argument("--seed", type=int, default=0, help="seed of the sides and of the order")
    p.add_argument("--device", default="cpu", help="device for generating the responses")
    args = p.parse_args(argv)
    ratings = os.path.join(args.out, "ratings.jsonl")
    if args.aggregate:
        if not os.path.exists(ratings):
            raise SystemExit(f"{ratings}: no ratings yet")
        result = aggregate([r for _, r in read_jsonl(ratings)])
        print(json.dumps(result))
        return result
    path = os.path.join(args.out, "responses.jsonl")
    if not os.path.exists(path):
        if not args.ckpt:
            raise SystemExit(f"{path} does not exist: give --ckpt (twice or more for pairwise) to generate it")
        prompts = [r for _, r in read_jsonl(args.prompts)] if args.prompts else default_prompts(args.n, args.seed)
        generate_responses(args.ckpt, prompts, path, args.device)
    responses = load_responses(path)
    models = sorted({m for item in responses.values() for m in item})
    if args.ckpt and sorted(args.ckpt) != models:
        print(f"note: {path} exists, so its answers (models {models}) are rated, not --ckpt's; "
              f"use another --out for other checkpoints", file=sys.stderr)
    answers = None
    if args.answers:
        with open(args.answers, encoding="utf-8") as f:
            answers = iter([(f"{args.answers}:{i}", line) for i, line in enumerate(f.read().splitlines(), 1)])
    written = annotate(args.mode, responses, args.out, args.annotator, answers, args.seed,
                       show=lambda s: print(s, file=sys.stderr))
    result = {"annotator": args.annotator, "mode": args.mode, "written": written, "ratings": ratings}
    print(json.dumps(result))
    return result
