"""
Supervised fine-tuning (§3-§5): teach a base model to answer instead of continuing.

    python train_sft.py                         # bootstraps the base model if needed; ~3 min on 2 CPU cores
    python train_sft.py --batching pad          # pad | bucket | pack (default)
    python train_sft.py --init runs/base/ckpt --data my_sft.jsonl --out runs/my_sft
    python train_sft.py --instruct_share 0.25   # + IFEval-style instruction following (§6 rubric family)

Data: §3 JSONL, one {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
per line (optional "family" for per-family reports). render_conversation() decides the trained
tokens: assistant content and its end-of-turn token (§5 masked NLL, normalised by the target
tokens of the whole optimiser step). At the end: the §1 demonstration (held-out fact questions
without a question mark: share answered directly, base vs SFT) and held-out exact-match
accuracy per task family (each prompt's reply in OUT/heldout_replies.jsonl). The final stdout line
is a JSON summary.
"""
import dataclasses
import os
import time

import torch

import train_base
from nanopost import preference_world, world
from nanopost.checkpoint import cached_checkpoint, load_checkpoint, save_checkpoint
from nanopost.common import RunLog, flag, parse_config, pick_device, rng_state, set_rng_state, set_seed
from nanopost.data import load_sft, read_jsonl, write_jsonl
from nanopost.evaluate import direct_answer_rate, exact_match, heldout_accuracy
from nanopost.instruct_world import instruct_sft_records
from nanopost.nexttoken import EpochBatches, NextTokenConfig, padding_efficiency, stop_on_nonfinite, train_steps


@dataclasses.dataclass
class SFTConfig(NextTokenConfig):
    out: str = flag("runs/sft", "output folder")
    steps: int = flag(200, "optimiser steps")
    # data
    batching: str = flag("pack", "pad | bucket | pack (§4)", "data")
    n_train: int = flag(8000, "built-in training conversations", "data")
    eval_data: str = flag("", "held-out JSONL (default: the built-in held-out split)", "data")
    replay: float = flag(0.5, "mix in this many base-corpus documents per SFT conversation (keeps pretraining knowledge)", "data")
    eval_per_family: int = flag(40, "built-in held-out prompts per task family", "data")
    padding: float = flag(0.0, "built-in data: rate of filler-padded capital/uppercase answers (the defect that "
                               "preference training removes, §7)", "data")
    judge_share: float = flag(0.0, "built-in data: judging conversations per conversation (teaches the AI judge, §6)",
                              "data")
    instruct_share: float = flag(0.0, "built-in data: instruction-following conversations per conversation (the "
                                      "IFEval-style family of nanopost/instruct_world.py; off by default)", "data")
    instruct_noise: float = flag(0.5, "built-in data: share of instruction-following labels that ignore one "
                                      "instruction (§3)", "data")
    lr: float = flag(3e-4, "peak learning rate", "optimisation")


def main(argv=None):
    cfg = parse_config(SFTConfig, argv, description=__doc__.split("\n\n")[0])
    t_start = time.time()
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    ckpt_path = os.path.join(cfg.out, "ckpt")

    # model: resume, --init, or the (cached) bootstrapped base model
    init = ckpt_path if cfg.resume else (cfg.init or cached_checkpoint("base", train_base.main, cfg.device, cfg.seed))
    state = load_checkpoint(init, device)
    model, tok = state["model"], state["tok"]
    start_step = state["meta"]["step"] if cfg.resume else 0
    row_len = model.config.block_size - 1

    # data: the user's file, or the built-in world written out so it can be read and edited
    data_path = cfg.data or os.path.join(cfg.out, "sft.jsonl")
    if not cfg.data:
        records = preference_world.with_judging(world.sft_records(cfg.n_train, cfg.seed, padding=cfg.padding),
                                                cfg.judge_share, cfg.seed)
        if cfg.instruct_share > 0:  # opt-in: the default data stays byte-identical
            records += instruct_sft_records(int(cfg.instruct_share * cfg.n_train), cfg.seed, cfg.instruct_noise)
        write_jsonl(data_path, records)
    examples, report = load_sft(data_path, tok, max_len=row_len + 1, skip_bad=cfg.skip_bad)
    if cfg.replay > 0:
        examples += train_base.corpus_examples(world.base_corpus(int(cfg.replay * len(examples)), cfg.seed + 1), tok, row_len)
    eval_records = ([r for _, r in read_jsonl(cfg.eval_data)] if cfg.eval_data
                    else world.eval_records(cfg.eval_per_family, cfg.seed))
    batches = EpochBatches(examples, cfg.batching, cfg.batch_size, row_len, tok.pad_id, cfg.seed)

    log = RunLog(cfg.out, cfg.steps, start_step, stage="sft")
    log.info(f"{report['used']} conversations from {data_path} ({report['skipped']} skipped"
             f"{': ' + str(report['skipped_by_reason']) if report['skipped'] else ''}), init {init}, device {device}")
    questions = [q for q, _ in world.direct_answer_prompts("eval")]
    base_direct = None
    if not cfg.resume:  # the §1 baseline: the starting model given the raw question text
        base_direct, base_samples = direct_answer_rate(model, tok, questions, chat=False)
        log.info(f"before SFT: {base_direct:.0%} of held-out questions answered directly, e.g. "
                 f"{questions[0]!r} -> {base_samples[0]!r}")

    optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay, device_type=device.type)
    if cfg.resume:
        optimizer.load_state_dict(state["optimizer_state"])
        set_rng_state(state["rng"])
        base_direct = state["meta"]["run"].get("base_direct_answer_rate")
    if cfg.compile:
        model = torch.compile(model)

    def save(step):
        run = {**dataclasses.asdict(cfg), "base_direct_answer_rate": base_direct}
        save_checkpoint(ckpt_path, model, tok, step, run, "sft", optimizer, rng_state())

    with stop_on_nonfinite(log):
        stats = train_steps(model, optimizer, batches, cfg, device, log, start_step, save)
    save(cfg.steps)

    # held-out evaluation
    model.eval()
    direct, samples = direct_answer_rate(model, tok, questions, chat=True)
    log.info(f"after SFT: {direct:.0%} answered directly, e.g. {questions[0]!r} -> {samples[0]!r}")
    accuracy, replies = heldout_accuracy(model, tok, eval_records)
    if log.main:  # per prompt, so that two runs can be compared prompt by prompt (quality.compare_runs)
        write_jsonl(os.path.join(cfg.out, "heldout_replies.jsonl"),
                    [{"prompt": r["messages"][-2]["content"], "family": r.get("family", "all"), "reply": reply,
                      "correct": exact_match(reply, r["messages"][-1]["content"])}
                     for r, reply in zip(eval_records, replies)])
    return log.finish({"stage": "sft", "batching": cfg.batching, "steps": cfg.steps,
                       "loss": stats["losses"][-1] if stats["losses"] else None,
                       "direct_answer_rate": direct, "base_direct_answer_rate": base_direct,
                       "heldout_accuracy": accuracy, "padding_efficiency": padding_efficiency(batches),
                       "tokens_per_s": stats["tokens_per_s"], "data": report, "wall_s": time.time() - t_start,
                       "ckpt": ckpt_path})


if __name__ == "__main__":
    main()
