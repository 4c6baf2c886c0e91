"""
Reinforcement learning with verifiable rewards (§6, §8, §9): GRPO, PPO, REINFORCE and RLOO.

    python train_rl.py --algo grpo                  # the main job: SFT model (bootstrapped) -> RL, ~7 min on 2 CPU cores
    python train_rl.py --algo ppo --steps 80
    python train_rl.py --algo grpo --init runs/cache/base/ckpt   # straight from the base model (R1-zero, §2)
    python train_rl.py --data my_prompts.jsonl --suites_dir my_suites/

Objective (§6): max_θ E_{x~D, y~π_θ(·|x)} [r(x, y)] - β KL(π_θ(·|x) || π_ref(·|x)), with r from the
graders named by each record's metadata.scorer (§8). Each step: sample num_generations
completions for prompts_per_step prompts (KV cache), grade them, compute advantages, update.

  grpo       A = group-relative reward (scale_rewards); clipped ratio (epsilon, epsilon_high);
             β·KL(k3 by default) inside the loss, against the frozen reference (the start model).
  ppo        a critic (value head on its own copy of the network) and GAE (gamma, lam); the
             score sits on the last completion token, -β·k1 on every token; whitened
             advantages; clipped value loss (cliprange_value, vf_coef).
  reinforce  A = r - running-mean baseline (one per task, i.e. grader); -β·Σk1 added to r.
  rloo       A = r_i - mean of the other G-1 rewards of the prompt; -β·Σk1 added to r.

How this departs from the textbook: the reference model is the starting checkpoint (as in TRL);
each batch of rollouts gets num_iterations optimiser steps (default 2, TRL's default is 1): on a
CPU, sampling and grading cost as much as an update, and a second pass nearly doubles learning
per rollout. Every algorithm, REINFORCE and RLOO included, uses the clipped ratio against the
stored old log-probs: the first pass is the plain policy gradient (ratio 1), the second is
importance-corrected and clipped (an unclipped second pass made REINFORCE diverge); REINFORCE and RLOO use the same token aggregation (loss_type) as
GRPO. With no --data, the built-in verifiable prompts are used: roots of (x - a)(x + b) = 0
after an 'Answer:' line (math_grader) and small Python functions checked by hidden tests
(code_grader). The built-in SFT data carries inconsistent labels for exactly those tasks
(roots answers that end in prose instead of an 'Answer:' line, off-by-one code, §3): RL with
the graders is what cleans them up.
"""
import contextlib
import copy
import dataclasses
import math
import os
import sys
import time

import torch

import train_sft
from nanopost import dist, preference_world
from nanopost.checkpoint import cached_checkpoint, load_checkpoint, save_checkpoint
from nanopost.common import RunLog, autocast, flag, parse_config, pick_device, rng_state, set_rng_state, set_seed
from nanopost.data import load_records
from nanopost.evaluate import verifiable_accuracy
from nanopost.instruct_world import rl_family_records
from nanopost.losses import (DPO_LOSS_TYPES, aggregate, clipped_surrogate, clipped_value_loss, dpo_loss, dpo_rewards, gae,
                             grpo_advantages, kl_estimate, rloo_advantages, whiten)
from nanopost.model import ScalarModel, adamw
from nanopost.nexttoken import stop_on_nonfinite
from nanopost.preferences import PreferenceConfig, pair_batch, preference_data, preference_rate, sequence_logprobs, train_pairs
from nanopost.rewards import check_weights, parse_reward, parse_weights, reward_fn_for, rl_record
from nanopost.rollout import completion_logprobs, completion_values, sample_rollouts


@dataclasses.dataclass
class RLConfig(PreferenceConfig):
    out: str = flag("runs/rl", "output folder")
    steps: int = flag(100, "optimiser steps (one batch of rollouts, or of preference pairs, each)")
    algo: str = flag("grpo", "grpo | ppo | reinforce | rloo | dpo", "algorithm")
    # data
    reward: str = flag("graders", "reward sources, comma-separated: graders, rm:CKPT, prm:CKPT (see nanopost/rewards.py)",
                       "data")
    families: str = flag("roots,code", "built-in task families to train on (comma-separated; instruct: "
                                       "IFEval-style instructions with the rubric reward)", "data")
    n_prompts: int = flag(4000, "built-in training prompts", "data")
    eval_prompts: int = flag(200, "built-in held-out prompts (at most; distinct prompts only)", "data")
    eval_data: str = flag("", "held-out JSONL: §8 prompts, or §7 pairs for dpo (default: the built-in split)", "data")
    suites_dir: str = flag("", "folder of code_grader test suites (default: next to the data)", "data")
    eval_every: int = flag(25, "steps between held-out evaluations (0: only before and after)", "data")
    # rollouts
    prompts_per_step: int = flag(8, "prompts per step", "rollouts")
    num_generations: int = flag(8, "completions per prompt (the GRPO/RLOO group)", "rollouts")
    max_completion_length: int = flag(48, "new tokens per completion at most", "rollouts")
    temperature: float = flag(0.7, "sampling temperature (the training forward uses it too)", "rollouts")
    top_k: int = flag(0, "sample among the k most likely tokens (0: all)", "rollouts")
    top_p: float = flag(1.0, "nucleus sampling mass (1: off)", "rollouts")
    compile_sampler: bool = flag(False, "torch.compile the sampler's decoding step (CPU or GPU; the first "
                                        "step pays ~30 s of compiling on a CPU)", "rollouts")
    mask_truncated_completions: bool = flag(False, "leave completions that hit the length limit out of the loss", "rollouts")
    reward_weights: str = flag("", "grader weights, e.g. math_grader=1,code_grader=0.5 (default 1 each)", "rollouts")
    # the policy update
    lr: float = flag(1e-4, "learning rate", "algorithm")
    beta: float = flag(-1.0, "KL coefficient against the reference model (§6); <0: 0.04, or 0.1 for dpo", "algorithm")
    kl_estimator: str = flag("k3", "k1 | k2 | k3: the KL estimator inside the GRPO loss", "algorithm")
    epsilon: float = flag(0.2, "ratio clip, lower side (and upper when epsilon_high < 0)", "algorithm")
    epsilon_high: float = flag(-1.0, "ratio clip, upper side (DAPO's clip-higher); <0: = epsilon", "algorithm")
    loss_type: str = flag("", "grpo | dapo | dr_grpo: how token losses are averaged (default grpo); "
                              "dpo: sigmoid | ipo | hinge | robust (default sigmoid)", "algorithm")
    scale_rewards: str = flag("group", "group | batch | none: GRPO advantage scaling", "algorithm")
    num_iterations: int = flag(2, "optimiser passes over each batch of rollouts (old log-probs stored)", "algorithm")
    micro_batch_size: int = flag(32, "completions per forward pass (gradient accumulation)", "algorithm")
    grad_clip: float = flag(1.0, "gradient-norm clip", "algorithm")
    baseline_decay: float = flag(0.9, "REINFORCE running-mean baseline decay", "algorithm")
    # PPO
    gamma: float = flag(1.0, "PPO discount", "ppo")
    lam: float = flag(0.95, "PPO GAE lambda", "ppo")
    vf_coef: float = flag(0.1, "PPO value-loss coefficient", "ppo")
    cliprange_value: float = flag(0.2, "PPO value clip", "ppo")
    missing_eos_penalty: float = flag(0.0, "PPO: subtracted from the score of a completion without end-of-turn", "ppo")
    value_init: str = flag("", "PPO critic init: a reward-model checkpoint (default: the policy)", "ppo")
    # DPO (offline, on §7 pairs; the data flags are under 'preferences')
    batch_size: int = flag(32, "DPO: pairs per optimiser step", "dpo")
    warmup: int = flag(10, "DPO: warm-up steps", "dpo")
    label_smoothing: float = flag(0.0, "DPO: assumed label-noise rate (sigmoid: cDPO, robust)", "dpo")
    rpo_alpha: float = flag(0.0, "DPO: weight of the chosen responses' per-token NLL added to the loss (RPO; "
                                 "keeps log π(chosen) from falling)", "dpo")


def advantages_for(cfg, batch, mask, logprobs, ref_logprobs, baseline, values=None, tasks=None):
    """Per-algorithm advantages, (B, 1) for sequence-level methods or (B, T) for PPO; also the
    returns for PPO's critic and the new REINFORCE baselines ({task: running mean}; tasks names
    each completion's task, default one task for all)."""
    tasks = tasks or ["all"] * len(batch.rewards)
    G = cfg.num_generations
    if cfg.algo == "grpo":
        return grpo_advantages(batch.rewards, G, cfg.scale_rewards)[:, None], None, baseline
    kl = kl_estimate(logprobs, ref_logprobs, "k1") * mask if ref_logprobs is not None else torch.zeros_like(mask)
    if cfg.algo == "rloo":
        return rloo_advantages(batch.rewards - cfg.beta * kl.sum(1), G)[:, None], None, baseline
    if cfg.algo == "reinforce":
        # a running-mean baseline per task (grader): one mean across an easy and a hard task would
        # push down every sample of the hard one, good or bad
        shaped = batch.rewards - cfg.beta * kl.sum(1)
        baseline, advantages = dict(baseline or {}), torch.zeros_like(shaped)
        every = [p for part in dist.all_gather(list(zip(tasks, shaped.tolist()))) for p in part]  # all ranks' rows
        for key in sorted({t for t, _ in every}):
            rows = torch.tensor([t == key for t in tasks], device=shaped.device)
            values = [r for t, r in every if t == key]
            mean = sum(values) / len(values)
            b = baseline.get(key, mean)  # the running mean starts at the task's first batch mean
            if rows.any():
                advantages[rows] = shaped[rows] - b
            baseline[key] = cfg.baseline_decay * b + (1 - cfg.baseline_decay) * mean
        return advantages[:, None], None, baseline
    # ppo: -β·k1 per token, the score on the last real token
    token_rewards = -cfg.beta * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    score = batch.rewards - cfg.missing_eos_penalty * batch.truncated.float()
    token_rewards[torch.arange(len(last)), last] += score
    advantages, returns = gae(token_rewards, values, mask, cfg.gamma, cfg.lam)
    return whiten(advantages, mask), returns, baseline


def train_dpo(cfg):
    """DPO (§9): offline, on §7 preference pairs, no reward model and no sampling while training.
    The reference is the starting model; its log-probs of every pair are computed once, before the
    first update, so no second model stays in memory (a resumed run reads them from the checkpoint)."""
    if cfg.loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO --loss_type {cfg.loss_type!r}; use {', '.join(DPO_LOSS_TYPES)}")
    t_start = time.time()
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    ckpt_path = os.path.join(cfg.out, "ckpt")
    init = cfg.init or cached_checkpoint("sft", train_sft.main, cfg.device, cfg.seed)
    state = load_checkpoint(ckpt_path if cfg.resume else init, device)
    policy, tok = state["model"], state["tok"]
    log = RunLog(cfg.out, cfg.steps, state["meta"]["step"] if cfg.resume else 0, stage="dpo")
    train, held_out, eval_prompts, report = preference_data(cfg, policy, tok, policy.config.block_size, log)
    log.info(f"{len(train)} training pairs, {len(held_out)} held-out pairs, {len(eval_prompts)} held-out prompts "
             f"with a ground truth, init {init}, device {device}")
    ipo = cfg.loss_type == "ipo"  # IPO compares length-averaged log-probs

    @torch.no_grad()
    def logps_of(pairs):
        """-> (chosen (P,), rejected (P,)) under the current policy."""
        chosen, rejected = [], []
        for lo in range(0, len(pairs), 64):
            chunk = pairs[lo:lo + 64]
            logps = sequence_logprobs(policy, pair_batch(chunk, tok.pad_id, device), average=ipo)
            chosen.append(logps[:len(chunk)])
            rejected.append(logps[len(chunk):])
        return torch.cat(chosen), torch.cat(rejected)

    policy.eval()
    if cfg.resume:
        ref_chosen, ref_rejected = state["extra"]["ref_chosen"].to(device), state["extra"]["ref_rejected"].to(device)
        before = state["meta"]["run"]["preference_before"]
    else:
        ref_chosen, ref_rejected = logps_of(train)
        before = preference_rate(policy, tok, eval_prompts)[0] if eval_prompts else None
        log.info(f"held-out preference rate before: {before}")
    heldout_ref = logps_of(held_out) if held_out and not cfg.resume else None

    optimizer = adamw(policy.parameters(), cfg.lr, device.type)
    if cfg.resume:
        optimizer.load_state_dict(state["optimizer_state"])
        set_rng_state(state["rng"])

    def loss_fn(model, indices, n_total):  # model: the policy, or its DDP wrapper under torchrun
        pairs = [train[i] for i in indices]
        batch = pair_batch(pairs, tok.pad_id, device)
        logps = sequence_logprobs(model, batch, average=ipo)  # (2P,)
        chosen, rejected = logps[:len(pairs)], logps[len(pairs):]
        rows = torch.tensor(indices, device=device)
        losses = dpo_loss(chosen, rejected, ref_chosen[rows], ref_rejected[rows], cfg.beta, cfg.loss_type,
                          cfg.label_smoothing)
        metrics = dpo_rewards(chosen, rejected, ref_chosen[rows], ref_rejected[rows], cfg.beta)
        if cfg.rpo_alpha > 0:  # RPO: + α · NLL(chosen) / |chosen|, the SFT loss on the preferred responses
            n_tokens = batch["response_mask"][:len(pairs), 1:].sum(1).clamp(min=1)
            nll = -(chosen if ipo else chosen / n_tokens)
            losses = losses + cfg.rpo_alpha * nll
            metrics["nll/chosen"] = nll.detach()
        return losses.sum() / n_total, {k: v.sum() for k, v in metrics.items()}

    def save(step):
        run = {**dataclasses.asdict(cfg), "init": init, "preference_before": before}
        save_checkpoint(ckpt_path, policy, tok, step, run, "dpo", optimizer, rng_state(),
                        {"ref_chosen": ref_chosen.cpu(), "ref_rejected": ref_rejected.cpu()})

    policy.train()
    with stop_on_nonfinite(log):
        history = train_pairs(policy, optimizer, train, loss_fn, cfg, log,
                              state["meta"]["step"] if cfg.resume else 0, save)
    save(cfg.steps)

    policy.eval()
    after = preference_rate(policy, tok, eval_prompts)[0] if eval_prompts else None
    log.info(f"held-out preference rate after: {after}")
    heldout = {}
    if heldout_ref is not None:  # the implicit-reward ranking of held-out pairs
        chosen, rejected = logps_of(held_out)
        heldout = {"heldout_reward_accuracy": float(((chosen - heldout_ref[0]) > (rejected - heldout_ref[1])).float().mean())}
    curve = [{k: h[k] for k in ("step", "logps/chosen", "logps/rejected", "rewards/margins")}
             for h in history[::max(len(history) // 10, 1)] + history[-1:]]
    return log.finish({"stage": "dpo", "loss_type": cfg.loss_type, "beta": cfg.beta, "rpo_alpha": cfg.rpo_alpha, "steps": cfg.steps,
                       "preference_rate_before": before["rate"] if before else None,
                       "preference_rate_after": after["rate"] if after else None,
                       "preference_before": before, "preference_after": after, **heldout,
                       "logps_curve": curve, "data": report, "wall_s": time.time() - t_start, "ckpt": ckpt_path})


def main(argv=None):
    cfg = parse_config(RLConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.algo not in ("grpo", "ppo", "reinforce", "rloo", "dpo"):
        raise ValueError(f"unknown --algo {cfg.algo!r}; use grpo, ppo, reinforce, rloo or dpo")
    dpo = cfg.algo == "dpo"
    cfg = dataclasses.replace(cfg, beta=cfg.beta if cfg.beta >= 0 else (0.1 if dpo else 0.04),
                              loss_type=cfg.loss_type or ("sigmoid" if dpo else "grpo"))
    if dpo:
        return train_dpo(cfg)
    if cfg.algo in ("grpo", "rloo") and cfg.num_generations < 2:
        raise ValueError(f"--algo {cfg.algo} compares completions within a group: --num_generations must be >= 2")
    use_graders, models = parse_reward(cfg.reward)
    preference_rl = "rm" in models and not use_graders  # RLHF on the built-in preference questions (the RM's domain)
    t_start = time.time()
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    ckpt_path = os.path.join(cfg.out, "ckpt")
    epsilon_high = cfg.epsilon if cfg.epsilon_high < 0 else cfg.epsilon_high
    weights = parse_weights(cfg.reward_weights)

    # models: the policy, the frozen reference (the start model), PPO's critic
    init = cfg.init or cached_checkpoint("sft", train_sft.main, cfg.device, cfg.seed)
    start = load_checkpoint(ckpt_path if cfg.resume else init, device)
    policy, tok = start["model"], start["tok"]
    ref = load_checkpoint(init, device)["model"] if cfg.resume else copy.deepcopy(policy)
    ref.requires_grad_(False).eval()
    critic = None
    if cfg.algo == "ppo":
        critic = ScalarModel(load_checkpoint(cfg.value_init, device)["model"] if cfg.value_init else copy.deepcopy(ref))
        critic.to(device).requires_grad_(True)
        if cfg.resume and start["extra"] and "critic" in start["extra"]:
            critic.load_state_dict(start["extra"]["critic"])
    policy.train()

    # data: the user's §8 JSONL or the built-in verifiable prompts (suites written beside them)
    max_prompt_len = policy.config.block_size - cfg.max_completion_length
    check = lambda record: rl_record(record, tok, max_prompt_len, need_scorer=not models)
    if cfg.data:
        train_records, report = load_records(cfg.data, check, cfg.skip_bad)
        suites_dir = cfg.suites_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.data)), "suites")
    elif preference_rl:
        suites_dir = cfg.suites_dir or os.path.join(cfg.out, "suites")
        train_records = preference_world.preference_prompts("train", cfg.seed, cfg.n_prompts)
        report = {"records": len(train_records), "used": len(train_records), "skipped": 0}
    else:
        suites_dir = cfg.suites_dir or os.path.join(cfg.out, "suites")
        names = "steps,roots" if "prm" in models and cfg.families == RLConfig.families else cfg.families  # a PRM's domain
        families = names.split(",")
        train_records = rl_family_records(cfg.n_prompts, "train", cfg.seed, suites_dir, families)
        report = {"records": len(train_records), "used": len(train_records), "skipped": 0}
    if cfg.eval_data:
        eval_records, _ = load_records(cfg.eval_data, check)
    elif cfg.data:
        eval_records = []
    elif preference_rl:
        eval_records = preference_world.preference_prompts("eval")
    else:
        eval_records = rl_family_records(cfg.eval_prompts, "eval", cfg.seed, suites_dir, families)
    check_weights(weights, train_records, models)
    reward_fn = reward_fn_for(use_graders, models, device, suites_dir)  # None: the graders alone
    order = torch.randperm(len(train_records), generator=torch.Generator().manual_seed(cfg.seed)).tolist()

    # the training forwards may be compiled / autocast (GPU); sampling uses the eager model, its
    # decoding step compiled on its own with --compile_sampler
    train_policy = dist.wrap(torch.compile(policy) if cfg.compile else policy)  # DDP under torchrun
    train_critic = dist.wrap(critic) if critic else None
    world_n = dist.world_size()
    params = list(policy.parameters()) + (list(critic.parameters()) if critic else [])
    optimizer = adamw(params, cfg.lr, device.type)
    step0, baseline = 0, None
    if cfg.resume:
        optimizer.load_state_dict(start["optimizer_state"])
        set_rng_state(start["rng"])
        step0, baseline = start["meta"]["step"], start["extra"].get("baseline")
    sampler_rng = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + step0 + 1_000_003 * dist.rank())
    log = RunLog(cfg.out, cfg.steps, step0, stage=f"rl/{cfg.algo}")
    log.info(f"{len(train_records)} training prompts, {len(eval_records)} held-out, init {init}, device {device}")

    verifiable = [r for r in eval_records if "scorer" in r.get("metadata", {})]
    with_gold = [r for r in eval_records if "gold" in r.get("metadata", {})]

    def evaluate(tag):
        """Held-out: verifiable accuracy (§8 records), and for prompts with a ground truth the
        preference rate next to the reward model's score of the same answers, so that reward
        hacking (RM score up, preference rate not) shows."""
        acc = {"all": None, "by_grader": {}, "by_family": {}}
        policy.eval()
        if verifiable:
            acc, replies = verifiable_accuracy(policy, tok, verifiable, suites_dir, cfg.max_completion_length)
            log.info(f"held-out accuracy {tag}: {acc['all']:.3f} {acc['by_family']} e.g. {replies[0]!r}")
        if with_gold:
            acc["preference"], replies = preference_rate(policy, tok, with_gold, cfg.max_completion_length)
            if reward_fn is not None:
                scores = reward_fn(replies, with_gold)
                acc["preference"]["rm_score"] = sum(s["reward_model"] for s in scores) / len(scores)
            log.info(f"held-out preference rate {tag}: {acc['preference']} e.g. {replies[0]!r}")
        policy.train()
        return acc

    before = start["meta"]["run"].get("accuracy_before") if cfg.resume else evaluate("before")
    curve = []

    def save(step):
        extra = {"baseline": baseline, **({"critic": critic.state_dict()} if critic else {})}
        run = {**dataclasses.asdict(cfg), "init": init, "accuracy_before": before}
        save_checkpoint(ckpt_path, policy, tok, step, run, "rl", optimizer, rng_state(), extra)

    step_times, kls = [], []
    for step in range(step0, cfg.steps):
        t0 = time.time()
        # 1. rollouts: G completions for each of this step's prompts
        records = [train_records[order[(step * cfg.prompts_per_step + i) % len(order)]] for i in range(cfg.prompts_per_step)]
        records = dist.shard(records)  # under torchrun each process samples whole groups for its prompts
        batch = sample_rollouts(policy, tok, records, cfg.num_generations, cfg.max_completion_length, cfg.temperature,
                                cfg.top_k or None, cfg.top_p, weights, suites_dir, sampler_rng, reward_fn,
                                cfg.compile_sampler)
        mask = batch.mask * (~batch.truncated).float()[:, None] if cfg.mask_truncated_completions else batch.mask
        B = mask.size(0)
        # 2. reference log-probs, values and advantages, before the update. The KL shaping uses the
        #    sampler's log-probs: they equal a training forward to ~1e-6 (logprob_diff_max), so the
        #    policy needs no extra forward pass here
        with torch.no_grad(), autocast(device, cfg.dtype):  # same precision as the training forward
            ref_logprobs = completion_logprobs(ref, batch, cfg.temperature) if cfg.beta > 0 else None
            old_values = completion_values(critic, batch).float() if critic else None
        tasks = [str(r.get("metadata", {}).get("scorer", "reward_model")) for r in records for _ in range(cfg.num_generations)]
        advantages, returns, baseline = advantages_for(cfg, batch, mask, batch.sampler_logprobs, ref_logprobs,
                                                       baseline, old_values, tasks)
        old_logprobs = torch.zeros_like(mask)  # π_old: filled by the first pass, before any update
        # 3. the update: normalised by the whole step's sequences / tokens (over every process), so
        #    micro-batching is exact; × world_n because DDP averages the processes' gradients
        n_seq, n_tok = dist.all_sum(B), dist.all_sum(float(mask.sum()))
        starts = range(0, B, cfg.micro_batch_size)
        stats = {"kl": 0.0, "entropy": 0.0, "clip_ratio": 0.0, "value_loss": 0.0, "logprob_diff_max": 0.0}
        for iteration in range(cfg.num_iterations):
            loss_sum = torch.zeros((), device=device)  # one host sync per pass, not per micro-batch
            for lo in starts:
                rows = slice(lo, min(lo + cfg.micro_batch_size, B))
                sync = contextlib.ExitStack()  # gradients are all-reduced on the last micro-batch only
                for module in filter(None, (train_policy, train_critic)):
                    sync.enter_context(dist.sync_grads(module, last=lo == starts[-1]))
                m = mask[rows]
                first = iteration == 0  # monitoring (entropy, kl, ...) on the first pass only
                with autocast(device, cfg.dtype):
                    logprobs = completion_logprobs(train_policy, batch, cfg.temperature, rows, with_entropy=first)
                logprobs, entropy = logprobs if first else (logprobs, None)
                if first:
                    old_logprobs[rows] = logprobs.detach()
                old = old_logprobs[rows]
                # every algorithm uses the clipped ratio: on the first pass ρ = 1 and the gradient is
                # exactly the policy gradient -A ∇log π; later passes are importance-corrected and clipped
                per_token, clipped = clipped_surrogate(logprobs, old, advantages[rows], cfg.epsilon, epsilon_high)
                if cfg.algo == "grpo" and ref_logprobs is not None:
                    kl = kl_estimate(logprobs, ref_logprobs[rows], cfg.kl_estimator)
                    per_token = per_token + cfg.beta * kl
                loss = aggregate(per_token, m, cfg.loss_type, cfg.max_completion_length, n_seq, n_tok)
                if critic is not None:
                    with autocast(device, cfg.dtype):
                        values = completion_values(train_critic, batch, rows).float()
                    value_loss = aggregate(clipped_value_loss(values, old_values[rows], returns[rows], m,
                                                              cfg.cliprange_value), m, "dapo", num_tokens=n_tok)
                    loss = loss + cfg.vf_coef * value_loss
                    stats["value_loss"] += value_loss.item() / cfg.num_iterations
                with sync:
                    (loss * world_n).backward()
                loss_sum += loss.detach().float()
                if not first:  # on the first pass ρ = 1: clipping can only happen on later passes
                    stats["clip_ratio"] += float((clipped.float() * m).sum()) / max(n_tok * (cfg.num_iterations - 1), 1)
                if first:
                    with torch.no_grad():
                        if ref_logprobs is not None:
                            stats["kl"] += float((kl_estimate(logprobs, ref_logprobs[rows], "k3") * m).sum()) / max(n_tok, 1)
                        stats["entropy"] += float((entropy * m).sum()) / max(n_tok, 1)
                        diff = ((logprobs - batch.sampler_logprobs[rows]).abs() * m).max()
                        stats["logprob_diff_max"] = max(stats["logprob_diff_max"], float(diff))
            pass_loss = dist.all_sum(float(loss_sum))
            if not math.isfinite(pass_loss):  # never step (or save) on a NaN/inf loss
                optimizer.zero_grad(set_to_none=True)
                log.info(f"loss is {pass_loss} at step {step + 1}; stopping without saving "
                         f"(the last good checkpoint is kept)")
                sys.exit(1)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step_times.append(time.time() - t0)
        stats = {k: dist.all_max(v) if k == "logprob_diff_max" else dist.all_sum(v) for k, v in stats.items()}
        kls.append(stats["kl"])

        # 4. metrics with the names practitioners know
        everyone = dist.all_gather((batch.rewards.tolist(), batch.graded, batch.mask.sum(1).tolist(),
                                    batch.truncated.tolist(), batch.new_tokens))  # the whole step, all processes
        rewards = torch.tensor([r for part in everyone for r in part[0]])
        graded = [g for part in everyone for g in part[1]]
        lengths = torch.tensor([n for part in everyone for n in part[2]])
        truncated = torch.tensor([t for part in everyone for t in part[3]], dtype=torch.float)
        groups = rewards.view(-1, cfg.num_generations)
        metrics = {"reward": rewards.mean(), "reward_std": rewards.std(),
                   "frac_reward_zero_std": (groups.std(dim=1) == 0).float().mean(),
                   **{f"rewards/{name}/mean": sum(g[name] for g in graded if name in g) /
                      max(sum(name in g for g in graded), 1)
                      for name in sorted({n for g in graded for n in g})},
                   "clipped_ratio": truncated.mean(), "completion_length": lengths.mean(),
                   "completion_length_max": lengths.max(), **stats, "grad_norm": float(grad_norm),
                   "rollout_tokens_per_s": sum(p[4] for p in everyone) / max(dist.all_max(batch.sample_s), 1e-9),
                   "sample_s": batch.sample_s, "grade_s": batch.grade_s, "step_s": step_times[-1]}
        if critic is not None:
            valid = mask.bool()
            residual = (returns - old_values)[valid]
            metrics["explained_variance"] = dist.all_mean(float(1 - residual.var() / returns[valid].var().clamp(min=1e-8)))
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            acc = evaluate(f"at step {step + 1}")
            metrics["heldout_accuracy"] = acc["all"]
            if "preference" in acc:
                metrics["heldout_preference_rate"] = acc["preference"]["rate"]
            curve.append((step + 1, acc["all"] if "preference" not in acc else acc["preference"]["rate"]))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps or "heldout_accuracy" in metrics:
            log.log(step + 1, **metrics)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save(step + 1)

    save(cfg.steps)
    after = evaluate("after")
    preference = {}
    if "preference" in after:
        preference = {"preference_rate_before": before["preference"]["rate"],
                      "preference_rate_after": after["preference"]["rate"],
                      "preference_before": before["preference"], "preference_after": after["preference"],
                      "kl_last10": sum(kls[-10:]) / max(len(kls[-10:]), 1)}
    return log.finish({"stage": "rl", "algo": cfg.algo, "reward": cfg.reward, "steps": cfg.steps, **preference,
                       "accuracy_before": before["all"], "accuracy_after": after["all"],
                       "instruction_accuracy_before": before.get("instruction_level"),
                       "instruction_accuracy_after": after.get("instruction_level"),
                       "accuracy_by_grader_before": before["by_grader"], "accuracy_by_grader_after": after["by_grader"],
                       "accuracy_by_family_before": before["by_family"], "accuracy_by_family_after": after["by_family"],
                       "heldout_curve": curve, "data": report, "wall_s": time.time() - t_start,
                       "s_per_step": sum(step_times) / max(len(step_times), 1), "ckpt": ckpt_path})


if __name__ == "__main__":
    main()
