"""
The multi-stage recipe (§2, §6): the whole default pipeline in one command, on a CPU.

    python -m nanopost.recipe                      # base -> SFT -> DPO -> GRPO -> eval -> report card
    python -m nanopost.recipe --out runs/recipe --grpo_steps 60 --dpo_steps 40

    base   next-token pretraining on the world's web-like text (the cached base model, §1)
    sft    conversations + base-text replay, with the two §3 defects later stages must remove:
           padded answers (--padding, the verbose annotators) and instruction-following labels that
           ignore an instruction (--instruct_share); judging conversations (--judge_share) make it
           the LLM judge of the eval stage too (a judge that also competes: its own bias, §10)
    dpo    preference optimisation on the built-in §7 pairs (direct, correct, formatted, concise), RPO
    grpo   RL with verifiable rewards: maths (math_grader), code (code_grader, sandboxed) and
           instruction following (the rubric grader), from the DPO model (§6: a hybrid, multi-stage recipe)
    eval   eval.py's held-out suite on every stage, the judge's win rate against the SFT model (§10)
    report the report card: the stages side by side, and training curves when matplotlib is there

Every stage writes OUT/<stage>/ (checkpoint, metrics.jsonl, summary.json) through the stage's own
script; a stage whose checkpoint is already there is reused, not retrained, so an interrupted recipe
continues where it stopped. The base model comes from the shared cache (runs/cache, $NANOPOST_CACHE).
"""
import argparse
import json
import os
import sys
import time

import eval as evaluation
import train_base
import train_rl
import train_sft
from nanopost.checkpoint import cached_checkpoint, checkpoint_exists
from nanopost.report import report_card


def stage(name, out, train, argv):
    """Run train(argv + --out OUT/name) unless OUT/name/ckpt exists; -> (checkpoint path, seconds)."""
    folder = os.path.join(out, name)
    ckpt = os.path.join(folder, "ckpt")
    if checkpoint_exists(ckpt):
        print(f"[recipe] {name}: reusing {ckpt}", file=sys.stderr, flush=True)
        return ckpt, 0.0
    print(f"[recipe] {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.time()
    train(argv + ["--out", folder])
    return ckpt, time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/recipe", help="folder of the stages' runs")
    p.add_argument("--seed", type=int, default=0, help="random seed of every stage")
    p.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    p.add_argument("--padding", type=float, default=0.9, help="SFT: share of filler-padded answers (§3 defect)")
    p.add_argument("--instruct_share", type=float, default=0.25, help="SFT: instruction-following conversations "
                   "per conversation (half their labels ignore one instruction)")
    p.add_argument("--judge_share", type=float, default=0.2, help="SFT: judging conversations per conversation, "
                   "so the SFT model can serve as eval.py's LLM judge")
    p.add_argument("--dpo_steps", type=int, default=40, help="DPO optimiser steps")
    p.add_argument("--grpo_steps", type=int, default=60, help="GRPO steps (8 prompts x 8 completions each)")
    p.add_argument("--quick", action="store_true", help="tiny stages: checks the plumbing in a minute, learns nothing")
    args = p.parse_args(argv)
    common = ["--seed", str(args.seed), "--device", args.device]
    small = dict(sft=[], dpo=[], grpo=[])
    if args.quick:
        small = dict(sft=["--steps", "2", "--n_train", "60", "--eval_per_family", "1", "--batch_size", "4"],
                     dpo=["--n_pairs", "40", "--batch_size", "4"],
                     grpo=["--prompts_per_step", "2", "--num_generations", "2", "--max_completion_length", "8",
                           "--n_prompts", "12", "--eval_prompts", "3"])
    t_start, times = time.time(), {}

    base = cached_checkpoint("base", train_base.main, args.device, args.seed)
    sft, times["sft"] = stage("sft", args.out, train_sft.main, ["--init", base, "--padding", str(args.padding),
                              "--instruct_share", str(args.instruct_share), "--judge_share", str(args.judge_share)]
                              + common + small["sft"])
    dpo, times["dpo"] = stage("dpo", args.out, train_rl.main, ["--algo", "dpo", "--init", sft, "--steps",
                              str(args.dpo_steps), "--rpo_alpha", "1"] + common + small["dpo"])
    grpo, times["grpo"] = stage("grpo", args.out, train_rl.main, ["--algo", "grpo", "--init", dpo, "--steps",
                                str(args.grpo_steps), "--families", "roots,code,instruct", "--eval_every", "0"]
                                + common + small["grpo"])
    t0 = time.time()
    evaluation.evaluate_checkpoints([base, sft, dpo, grpo], baseline=sft, out=os.path.join(args.out, "eval"),
                                    seed=args.seed, device=args.device, quick=args.quick)
    times["eval"] = time.time() - t0
    card = report_card([os.path.dirname(base)] + [os.path.join(args.out, s) for s in ("sft", "dpo", "grpo", "eval")],
                       os.path.join(args.out, "report"))
    summary = {"stage": "recipe", "checkpoints": {"base": base, "sft": sft, "dpo": dpo, "grpo": grpo},
               "report": card["report"], "stage_s": times, "wall_s": time.time() - t_start}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
