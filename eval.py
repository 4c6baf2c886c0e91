"""
Evaluation (§10): the held-out suite for one or more checkpoints, human evaluation, the report card.

    python eval.py --ckpt runs/sft/ckpt [--ckpt runs/dpo/ckpt ...] [--baseline runs/sft/ckpt]
                   [--judge JUDGE_CKPT] [--rm runs/rm/ckpt] [--out runs/eval] [--quick]
    python eval.py human --mode pairwise --ckpt A --ckpt B --annotator alice --out runs/human
    python eval.py human --aggregate runs/human/ratings.jsonl
    python eval.py report runs/base runs/sft runs/dpo runs/grpo runs/eval --out runs/report

The suite, per checkpoint (every number with its 95% interval: Wilson for rates, bootstrap for means):
  tasks      greedy accuracy per task family, graded by the verifiable graders (arithmetic, steps,
             roots: math_grader; code: the sandboxed code_grader)
  pass@k     n samples per prompt (--n_samples, --temperature), unbiased pass@k = 1 - C(n-c,k)/C(n,k)
  ifeval     instruction following, IFEval-style: prompt- and instruction-level, strict and loose
  mc         multiple choice on the built-in fact set by log-likelihood: the letter's logit, and the
             length-normalised log-prob of each full option (chance 0.25)
  ppl        perplexity on held-out web-like text: reported, NOT a usefulness measure (SFT raises it)
  prefs      on the held-out preference questions: the ground-truth preference rate of greedy answers;
             the reward model's mean score (--rm); the judge's pairwise win rate against --baseline
             (both orders, ties counted) and its pointwise 1-5 score (nanopost/llm_judge.py)
  golden     the golden set (nanopost/golden.py: 36 frozen prompts, 6 per family), to see drift across stages
Each checkpoint's table goes to stdout; the last stdout line is the JSON summary (also in
OUT/summary.json; per-item details in OUT/details.json). A pipeline calls evaluate_checkpoints().
"""
import dataclasses
import json
import os
import sys
import time

from nanopost import preference_world, world
from nanopost.checkpoint import load_checkpoint
from nanopost.common import RunLog, flag, parse_config, pick_device, set_seed
from nanopost.evals import rate_with_interval, mean_with_interval
from nanopost.evaluate import chat_complete, sampled_pass_at_k, verifiable_accuracy
from nanopost.ifeval import ifeval_scores, instruction_records
from nanopost.judge import built_in_judge, check_judge_flags, load_constitution
from nanopost.knowledge import fact_questions, multiple_choice, perplexity
from nanopost.llm_judge import (POINTWISE_RUBRIC, judge_questions, model_pointwise, pairwise_outcomes,
                                pointwise_scores, win_rate)
from nanopost.rewards import reward_model_scorer
from nanopost.report import format_table, interval_rows, markdown_table

TASK_FAMILIES = ("arithmetic", "code", "roots", "steps")  # the world's families with a verifiable grader
SECTIONS = ("tasks", "passk", "ifeval", "mc", "ppl", "prefs", "golden")
HEADLINE = {"tasks/all", "passk/pass@1", "passk/pass@4", "passk/pass@8", "ifeval/prompt_strict", "ifeval/prompt_loose",
            "ifeval/instruction_strict", "ifeval/instruction_loose", "mc/letter", "mc/option", "ppl", "prefs/gold_rate",
            "prefs/rm_score", "prefs/judge_pairwise", "prefs/judge_pointwise", "golden/all", "eval_s"}


@dataclasses.dataclass
class EvalConfig:
    # what to evaluate
    ckpt: list = flag(None, "checkpoint folder to evaluate; repeat for several", "models")
    baseline: str = flag("", "checkpoint the judge compares every --ckpt against (pairwise win rate)", "models")
    judge: str = flag("", "judge model checkpoint (default: --baseline, else the first --ckpt; a model "
                          "judging itself is biased)", "models")
    rm: str = flag("", "reward-model checkpoint (train_rm.py) to score the answers with", "models")
    constitution: str = flag("", "the judge's constitution file (default: the built-in one)", "models")
    judge_kind: str = flag("verdict", "the pairwise judge: verdict (yes/no per response) | likelihood (the "
                                      "response the judge finds more likely under the principle) | revision (the "
                                      "response it would leave unchanged when revising it); nanopost/judge.py",
                           "models")
    # sizes
    sections: str = flag(",".join(SECTIONS), "comma-separated sections to run", "suite")
    quick: bool = flag(False, "tiny sizes for a smoke run (CI): seconds on a tiny model", "suite")
    n_tasks: int = flag(40, "held-out prompts per task family (greedy accuracy)", "suite")
    n_passk: int = flag(10, "prompts per task family for pass@k", "suite")
    n_samples: int = flag(8, "samples per prompt for pass@k (n)", "suite")
    ks: str = flag("1,4,8", "the k of pass@k, comma-separated, each <= n_samples", "suite")
    temperature: float = flag(0.7, "sampling temperature for pass@k", "suite")
    n_instruct: int = flag(60, "instruction-following prompts", "suite")
    n_prefs: int = flag(0, "held-out preference questions (0: all)", "suite")
    ppl_docs: int = flag(200, "held-out documents for perplexity", "suite")
    tie_margin: float = flag(0.1, "pairwise: |P(win) - 1/2| <= tie_margin counts as a tie", "suite")
    # run
    out: str = flag("runs/eval", "output folder (summary.json, details.json, metrics.jsonl, suites/)", "run")
    seed: int = flag(0, "seed of the held-out sets and of sampling", "run")
    device: str = flag("auto", "cpu | cuda | mps | auto", "run")


QUICK = dict(n_tasks=2, n_passk=1, n_samples=2, ks="1,2", n_instruct=4, n_prefs=6, ppl_docs=8)


def evaluate_checkpoints(ckpts, **overrides):
    """The suite on each checkpoint, for pipelines (the recipe): keyword overrides are EvalConfig
    fields, e.g. evaluate_checkpoints(["runs/sft/ckpt"], baseline="runs/sft/ckpt", out="runs/eval").
    Returns the summary dict (also printed as the last stdout line and written to out/summary.json)."""
    return run(EvalConfig(**{**{f.name: f.default for f in dataclasses.fields(EvalConfig)},
                             **overrides, "ckpt": list(ckpts)}))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "human":
        from nanopost.human import main as human_main
        return human_main(argv[1:])
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    return run(parse_config(EvalConfig, argv, description=__doc__.split("\n\n")[0]))


def report_main(argv):
    import argparse
    from nanopost.report import report_card
    p = argparse.ArgumentParser(description="the report card: stages side by side (nanopost/report.py)")
    p.add_argument("runs", nargs="+", help="run folders (summary.json, metrics.jsonl), eval.py folders included")
    p.add_argument("--out", default="runs/report", help="output folder for report.md and the PNG curves")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG curves")
    args = p.parse_args(argv)
    result = report_card(args.runs, args.out, plots=args.plots)
    print(open(result["report"]).read(), file=sys.stderr)
    print(json.dumps(result))
    return result


def run(cfg):
    if not cfg.ckpt:
        raise SystemExit("eval.py: give at least one --ckpt")
    if cfg.quick:
        cfg = dataclasses.replace(cfg, **QUICK)
    sections = [s.strip() for s in cfg.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"eval.py: unknown --sections {sorted(unknown)}; use {','.join(SECTIONS)}")
    try:
        check_judge_flags(cfg.judge_kind)
    except ValueError as e:
        raise SystemExit(f"eval.py: {e}") from None
    ks = [int(k) for k in cfg.ks.split(",")]
    if any(not 1 <= k <= cfg.n_samples for k in ks):
        raise SystemExit(f"eval.py: every k in --ks {cfg.ks} must be in [1, --n_samples {cfg.n_samples}]")
    t_start = time.time()
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    log = RunLog(cfg.out, len(cfg.ckpt), stage="eval")

    # the held-out sets, built once (code suites written under out/suites)
    suites_dir = os.path.join(cfg.out, "suites")
    tasks = world.rl_records(cfg.n_tasks * len(TASK_FAMILIES), "eval", cfg.seed, suites_dir,
                             families={f: world.SFT_FAMILIES[f] for f in TASK_FAMILIES}, system_prob=0)
    passk_tasks = [r for f in TASK_FAMILIES for r in [t for t in tasks if t["family"] == f][:cfg.n_passk]]
    instruct = instruction_records(cfg.n_instruct, cfg.seed)
    facts = fact_questions(cfg.seed)[:12] if cfg.quick else fact_questions(cfg.seed)
    prefs = preference_world.preference_prompts("eval")
    prefs = prefs[:cfg.n_prefs] if cfg.n_prefs else prefs
    questions = judge_questions([p["prompt"] for p in prefs])
    constitution = load_constitution(cfg.constitution)

    # the models that judge or score every checkpoint
    baseline_answers = None
    if "prefs" in sections and cfg.baseline:
        base = load_checkpoint(cfg.baseline, device)
        baseline_answers = chat_complete(base["model"].eval(), base["tok"], [p["prompt"] for p in prefs], 32)
    judge_path = cfg.judge or cfg.baseline or cfg.ckpt[0]
    judge_state = load_checkpoint(judge_path, device) if "prefs" in sections else None
    rm = reward_model_scorer(cfg.rm, device) if cfg.rm and "prefs" in sections else None

    results, details = {}, {}
    for i, path in enumerate(cfg.ckpt):
        state = load_checkpoint(path, device)
        model, tok = state["model"].eval(), state["tok"]
        res, det = {"stage": state["meta"].get("stage"), "step": state["meta"].get("step")}, {}
        t0 = time.time()
        if "tasks" in sections:
            acc, replies = verifiable_accuracy(model, tok, tasks, suites_dir)
            res["tasks"] = {"all": rate_with_interval(int(sum(acc["correct"])), len(tasks))}
            for f in TASK_FAMILIES:
                ok = [c for c, t in zip(acc["correct"], tasks) if t["family"] == f]
                res["tasks"][f] = rate_with_interval(int(sum(ok)), len(ok))
            det["tasks"] = [{"family": t["family"], "reply": r, "correct": c}
                            for t, r, c in zip(tasks, replies, acc["correct"])]
        if "passk" in sections:
            res["passk"], counts = sampled_pass_at_k(model, tok, passk_tasks, cfg.n_samples, ks, cfg.temperature,
                                                     suites_dir, seed=cfg.seed)
            res["passk"]["n_samples"] = cfg.n_samples
            det["passk_correct_counts"] = counts
        if "ifeval" in sections:
            replies = chat_complete(model, tok, [r["prompt"] for r in instruct], 48)
            scores = ifeval_scores(instruct, replies)
            det["ifeval"] = [{**p, "reply": r} for p, r in zip(scores.pop("per_prompt"), replies)]
            res["ifeval"] = scores
        if "mc" in sections:
            res["mc"] = multiple_choice(model, tok, facts)
        if "ppl" in sections:
            res["ppl"] = perplexity(model, tok, cfg.ppl_docs)
        if "prefs" in sections:
            res["prefs"], det["prefs"] = preference_section(model, tok, prefs, questions, baseline_answers,
                                                            judge_state, rm, constitution, cfg)
        if "golden" in sections:
            res["golden"] = golden_section(model, tok, det)
        res["eval_s"] = time.time() - t0
        results[path], details[path] = res, det
        print(format_table(interval_rows(res), f"\n== {path} (stage {res['stage']}, step {res['step']}) =="))
        log.log(i + 1, ckpt=path, eval_s=res["eval_s"])

    if len(results) > 1:  # the headline rows side by side
        columns = {path: {r[0]: r for r in interval_rows(res)} for path, res in results.items()}
        keys = [k for k in dict.fromkeys(k for c in columns.values() for k in c) if k in HEADLINE]
        print("\n" + markdown_table(columns, keys))
    with open(os.path.join(cfg.out, "details.json"), "w") as f:
        json.dump(details, f, indent=1)
    return log.finish({"stage": "eval", "checkpoints": results, "baseline": cfg.baseline or None,
                       "judge": judge_path if "prefs" in sections else None, "rm": cfg.rm or None,
                       "sections": sections, "wall_s": time.time() - t_start})


def preference_section(model, tok, prefs, questions, baseline_answers, judge_state, rm, constitution, cfg):
    """Greedy answers to the held-out preference questions, scored by the ground truth, the reward
    model, and the judge (pairwise against the baseline's answers, and pointwise)."""
    answers = chat_complete(model, tok, [p["prompt"] for p in prefs], 32)
    accepted = [preference_world.gold_accepts(p["metadata"]["gold"], a) for p, a in zip(prefs, answers)]
    out = {"gold_rate": rate_with_interval(sum(accepted), len(accepted)),
           "words": mean_with_interval([len(a.split()) for a in answers])}
    det = {"answers": answers}
    if rm is not None:  # (r - training mean) / training std, as RLHF uses it (nanopost/rewards.py)
        out["rm_score"] = mean_with_interval([s["reward_model"] for s in rm(answers, prefs)])
    judge_model, judge_tok = judge_state["model"].eval(), judge_state["tok"]
    if baseline_answers is not None:
        judge = built_in_judge(judge_model, judge_tok, cfg.judge_kind)
        outcomes, p = pairwise_outcomes(judge, constitution, questions, answers, baseline_answers, cfg.tie_margin)
        out["judge_pairwise"] = win_rate(outcomes)
        det["judge_p_win"] = p
    pointwise = pointwise_scores(model_pointwise(judge_model, judge_tok, constitution), questions, answers,
                                 POINTWISE_RUBRIC)
    det["judge_pointwise"] = pointwise.pop("scores")
    out["judge_pointwise"] = pointwise
    return out, det


def golden_section(model, tok, det):
    """The golden set (nanopost/golden.py): accuracy overall and per family, with Wilson intervals."""
    from nanopost.golden import score_golden
    scored = score_golden(model, tok)
    det["golden"] = scored["items"]
    out = {"all": rate_with_interval(int(sum(r["correct"] for r in scored["items"])), len(scored["items"]))}
    for family in sorted({r["family"] for r in scored["items"]}):
        ok = [r["correct"] for r in scored["items"] if r["family"] == family]
        out[family] = rate_with_interval(int(sum(ok)), len(ok))
    return out

if __name__ == "__main__":
    main()
