"""
Reward model from preferences (§7): the SFT model's body plus a scalar head read at the last token
of prompt + response, trained with the Bradley-Terry loss on chosen/rejected pairs.

    python train_rm.py                            # built-in pairs; bootstraps the SFT model if needed; ~2 min on 2 CPU cores
    python train_rm.py --data my_prefs.jsonl --eval_data my_prefs_eval.jsonl
    python train_rm.py --labels ai                # pairs sampled from the SFT model, labelled by the AI judge (§6)
    python train_rl.py --algo grpo --reward rm:runs/rm/ckpt   # then use it as the RL reward (RLHF)
    python train_rm.py --reward_logp 0.5 --head_lr 3e-3   # + 0.5 · log π(response | prompt) of the body (see below)
    python train_rm.py --init SFT --reward_logp 0.1 --logp_frozen   # + 0.1 · log π of a frozen copy of SFT
    python train_rm.py --kind prm                 # a process reward model instead (§6, nanopost/prm.py)

Loss per pair (InstructGPT / Bradley-Terry):  -log σ(r_c - r_r - margin)  (+ c·(r_c + r_r)² with
--center_rewards_coefficient c, which keeps rewards near 0). A ranking of K responses counts as its
K(K-1)/2 pairs. Reports held-out pairwise accuracy (chance: 50%), the mean margin r_c - r_r, and
the mean / std of the rewards on the training responses, which the checkpoint keeps so that RL
can use the standardised reward (r - mean) / std.

--reward_logp w departs from the plain last-token head: r(x, y) = head(h_last) + w · log π(y | x),
π the body's own language-model head (trained along with the head, as DPO trains its policy).
Whether an answer is *correct* is knowledge the body has as a language model (it ranks the right
capital of a held-out country first); a head trained on a few dozen training countries learns
lookups of those instead, and is at chance on held-out ones. The log-likelihood hands that
knowledge to the reward, but it also carries style (filler the SFT model never wrote costs ~200
nats), so it costs format and concision; off by default (README: measured). With --logp_frozen, log π
comes from a frozen copy of the --init model instead: r(x, y) = head(h_last) + w · log π_SFT(y | x).
Training can then not rewrite the knowledge (nor teach the body to like filler); the head and body
learn the style criteria around a fixed knowledge term. Best from an SFT model that has seen filler
(train_sft.py --padding 0.9), whose log π does not punish a padded answer by ~200 nats.
"""
import copy
import dataclasses
import os
import time

import torch

import train_sft
from nanopost import prm
from nanopost.checkpoint import cached_checkpoint, load_checkpoint, save_checkpoint
from nanopost.common import RunLog, flag, parse_config, pick_device, rng_state, set_rng_state, set_seed
from nanopost.losses import bradley_terry_loss
from nanopost.model import ScalarModel, adamw
from nanopost.nexttoken import stop_on_nonfinite
from nanopost.preferences import (PreferenceConfig, last_token_rewards, pair_batch, preference_data, sequence_logprobs,
                                 train_pairs, weight_kinds)


@dataclasses.dataclass
class RMConfig(PreferenceConfig):
    out: str = flag("runs/rm", "output folder")
    steps: int = flag(150, "optimiser steps")
    batch_size: int = flag(32, "pairs per optimiser step", "optimisation")
    micro_batch_size: int = flag(32, "pairs per forward pass (gradient accumulation)", "optimisation")
    lr: float = flag(1e-4, "peak learning rate", "optimisation")
    warmup: int = flag(10, "warm-up steps", "optimisation")
    weight_decay: float = flag(0.0, "AdamW weight decay", "optimisation")
    grad_clip: float = flag(1.0, "gradient-norm clip", "optimisation")
    center_rewards_coefficient: float = flag(0.0, "weight of (r_c + r_r)² (keeps rewards centred)", "optimisation")
    use_margin: bool = flag(True, "subtract each record's 'margin' inside the loss", "optimisation")
    lm_coef: float = flag(0.0, "weight of the next-token loss on the chosen responses (--kind prm: on the lines the "
                               "verifier labels correct), trained alongside (keeps the body a language model, whose "
                               "knowledge the reward can then use)", "optimisation")
    reward_logp: float = flag(0.0, "w: add w · log π(response | prompt), the body's own log-likelihood of the "
                                   "response, to the head's score (the reward can then use what the language model "
                                   "knows; model.ScalarModel); 0: off", "reward head")
    logp_frozen: bool = flag(False, "with --reward_logp: log π comes from a frozen copy of the --init model, not the "
                                    "training body (the knowledge the reward reads cannot be rewritten; the head "
                                    "learns style around it)", "reward head")
    head_lr: float = flag(0.0, "peak learning rate of the scalar head; 0: --lr", "reward head")
    kind_weights: str = flag("", "training mix by kind of pair: kind=w repeats each pair of that kind w times, 0 "
                                 "drops it, *=w for the kinds not named (e.g. correct=3; correct=1,*=0)", "preferences")
    # --kind prm: a process reward model on step-labelled chains (nanopost/prm.py, §6)
    kind: str = flag("bt", "bt: Bradley-Terry on preference pairs | prm: process reward model on step-labelled "
                           "chains (--data: process.py's JSONL; --n_pairs built-in chains; default --out runs/prm)", "prm")
    wrong_step_rate: float = flag(0.5, "--kind prm, built-in chains: share with one injected wrong line (keep it below "
                                       "1: with no clean chain, 'the earlier lines are right, so this one is wrong' "
                                       "is a rule the PRM can learn instead of checking the line)", "prm")
    operand_error_rate: float = flag(0.0, "--kind prm, built-in chains: share of the injected wrong lines that change an "
                                          "operand (right arithmetic on numbers the problem lacks) instead of the result",
                                     "prm")
    truncate_rate: float = flag(0.0, "--kind prm, built-in chains: share that stop before their answer (the verifier "
                                     "labels their last line wrong: stopping early is no solution)", "prm")
    policy_samples: int = flag(0, "--kind prm: also train on this many chains sampled from the --init model (8 per "
                                  "training prompt, T = 0.7) and labelled by the verifier: the errors the policy "
                                  "really makes; 400 held-out samples are scored too", "prm")
    prm_labels: str = flag("step", "--kind prm: step: the verifier's label of every step (a PRM) | outcome: every step "
                                   "labelled with whether the final answer is right (an outcome reward model, the "
                                   "PRM's baseline; use --prm_aggregate last)", "prm")
    prm_aggregate: str = flag("min", "--kind prm: step scores -> response reward: min | product | last", "prm")


@torch.no_grad()
def score_pairs(rm, pairs, pad_id, device, batch_size=64):
    """-> (r_chosen (P,), r_rejected (P,))."""
    chosen, rejected = [], []
    for lo in range(0, len(pairs), batch_size):
        chunk = pairs[lo:lo + batch_size]
        batch = pair_batch(chunk, pad_id, device)
        r = last_token_rewards(rm, batch["idx"], batch["lengths"], batch["response_mask"]).float()
        chosen.append(r[:len(chunk)])
        rejected.append(r[len(chunk):])
    return torch.cat(chosen), torch.cat(rejected)


def pairwise_report(rm, pairs, pad_id, device):
    """Held-out pairwise accuracy (r_c > r_r), mean margin, and accuracy per kind of pair."""
    r_c, r_r = score_pairs(rm, pairs, pad_id, device)
    correct = (r_c > r_r).float()
    by_kind = {}
    for pair, ok in zip(pairs, correct.tolist()):
        by_kind.setdefault(pair.kind or "all", []).append(ok)
    return {"accuracy": float(correct.mean()), "mean_margin": float((r_c - r_r).mean()),
            "accuracy_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}}


def main(argv=None):
    cfg = parse_config(RMConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.logp_frozen and (cfg.kind != "bt" or not cfg.reward_logp):
        raise ValueError("--logp_frozen needs --reward_logp w > 0 (the weight of the frozen model's log π) "
                         "and --kind bt")
    if cfg.kind == "prm":
        return prm.train(cfg)
    if cfg.kind != "bt":
        raise ValueError(f"unknown --kind {cfg.kind!r}; use bt or prm")
    t_start = time.time()
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    ckpt_path = os.path.join(cfg.out, "ckpt")

    # model: the SFT body (or the checkpoint being resumed) and a zero-initialised scalar head
    init = cfg.init or cached_checkpoint("sft", train_sft.main, cfg.device, cfg.seed)
    state = load_checkpoint(ckpt_path if cfg.resume else init, device)
    tok, max_len = state["tok"], state["model"].config.block_size
    if cfg.resume:  # the reward's form is the checkpoint's: a different one would silently train another reward
        saved = state["extra"] or {}
        if saved.get("logp_weight", 0.0) != cfg.reward_logp or ("logp_model" in saved) != cfg.logp_frozen:
            raise ValueError(f"{ckpt_path} was trained with --reward_logp {saved.get('logp_weight', 0.0)}"
                             f"{' --logp_frozen' if 'logp_model' in saved else ''}: resume with the same flags")
    log = RunLog(cfg.out, cfg.steps, state["meta"]["step"] if cfg.resume else 0, stage="rm")

    # data: built-in pairs, the user's file, or pairs sampled from the SFT model and labelled now
    train, held_out, _, report = preference_data(cfg, state["model"], tok, max_len, log)
    if cfg.kind_weights:
        train = weight_kinds(train, cfg.kind_weights)
        report["kind_weights"] = {"spec": cfg.kind_weights, "pairs": len(train)}
    log.info(f"{len(train)} training pairs ({report['train']['records']} records), {len(held_out)} held-out pairs, "
             f"init {init}, device {device}")

    frozen = None
    if cfg.logp_frozen:  # the init model's own copy; a resumed run reads it back from its checkpoint
        frozen = copy.deepcopy(state["model"])
        if cfg.resume:
            frozen.load_state_dict(state["extra"]["logp_model"])
    rm = ScalarModel(state["model"], cfg.reward_logp, frozen).to(device)
    groups = [{"params": list(rm.gpt.parameters())},
              {"params": list(rm.head.parameters()), "lr_scale": (cfg.head_lr or cfg.lr) / cfg.lr}]
    optimizer = adamw(groups, cfg.lr, device.type, weight_decay=cfg.weight_decay)
    start_step = 0
    if cfg.resume:
        rm.head.load_state_dict(state["extra"]["head"])
        optimizer.load_state_dict(state["optimizer_state"])
        set_rng_state(state["rng"])
        start_step = state["meta"]["step"]

    def loss_fn(model, indices, n_total):  # model: rm, or its DDP wrapper under torchrun
        pairs = [train[i] for i in indices]
        batch = pair_batch(pairs, tok.pad_id, device)
        rewards = last_token_rewards(model, batch["idx"], batch["lengths"], batch["response_mask"]).float()  # (2P,)
        r_c, r_r = rewards[:len(pairs)], rewards[len(pairs):]
        losses = bradley_terry_loss(r_c, r_r, batch["margin"] if cfg.use_margin else None)
        losses = losses + cfg.center_rewards_coefficient * (r_c + r_r) ** 2
        sums = {"accuracy": (r_c > r_r).sum(), "margin": (r_c - r_r).sum(),
                "reward_chosen": r_c.sum(), "reward_rejected": r_r.sum()}
        if cfg.lm_coef > 0:  # + lm_coef · per-token NLL of the chosen responses, through the same body
            chosen = {k: batch[k][:len(pairs)] for k in ("idx", "response_mask")}
            nll = -sequence_logprobs(rm.gpt, chosen) / chosen["response_mask"][:, 1:].sum(1).clamp(min=1)  # (P,)
            losses = losses + cfg.lm_coef * nll
            sums["nll_chosen"] = nll.sum()
        return losses.sum() / n_total, sums

    def save(step, stats=None):
        extra = {"head": rm.head.state_dict(), "logp_weight": cfg.reward_logp,
                 **({"logp_model": rm.logp_model.state_dict()} if frozen is not None else {}),
                 **(stats or {"reward_mean": 0.0, "reward_std": 1.0})}
        save_checkpoint(ckpt_path, rm.gpt, tok, step, dataclasses.asdict(cfg), "rm", optimizer, rng_state(), extra)

    rm.train()
    with stop_on_nonfinite(log):
        train_pairs(rm, optimizer, train, loss_fn, cfg, log, start_step, save)

    # held-out ranking, and the reward statistics RL standardises with
    rm.eval()
    heldout = pairwise_report(rm, held_out, tok.pad_id, device)
    r_c, r_r = score_pairs(rm, train[:2000], tok.pad_id, device)
    rewards = torch.cat([r_c, r_r])
    stats = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std().clamp(min=1e-6))}
    save(cfg.steps, stats)
    log.info(f"held-out pairwise accuracy {heldout['accuracy']:.3f} {heldout['accuracy_by_kind']}")
    return log.finish({"stage": "rm", "steps": cfg.steps, "heldout_accuracy": heldout["accuracy"],
                       "heldout_mean_margin": heldout["mean_margin"],
                       "heldout_accuracy_by_kind": heldout["accuracy_by_kind"], "train_accuracy": float((r_c > r_r).float().mean()),
                       **stats, "heldout_pairs": len(held_out), "data": report, "wall_s": time.time() - t_start,
                       "ckpt": ckpt_path})


if __name__ == "__main__":
    main()
