"""
Preference data (§7) for the reward model (train_rm.py) and DPO (train_rl.py --algo dpo): reading
and checking §7 records, turning them into padded tensors, the loop both trainers share, and the
ground-truth preference rate that shows whether preference training did what it should.

    pairs, report = load_preferences("prefs.jsonl", tok, max_len=256)   # a ranking -> all its pairs
    batch = pair_batch(pairs[:8], tok.pad_id)   # rows 0..P-1 chosen, P..2P-1 rejected
    logps = sequence_logprobs(policy, batch)     # (2P,) Σ log π(response token | prefix)

A §7 record: {"prompt": [messages ending with a user turn], "chosen": [assistant messages],
"rejected": [assistant messages]} with an optional "margin" (how much better chosen is), or
{"prompt": ..., "ranking": [response, response, ...]} best first (InstructGPT), which becomes
its K(K-1)/2 ordered pairs. "metadata": {"gold": ...} (the built-in data has it) lets the
ground truth score a policy's answers to that prompt.
"""
import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch

from nanopost import dist, preference_world
from nanopost.checkpoint import load_checkpoint
from nanopost.common import RunConfig, flag
from nanopost.data import load_records, read_jsonl, write_jsonl
from nanopost.evaluate import chat_complete
from nanopost.judge import check_judge_flags, label_pairs
from nanopost.model import ScalarModel, response_logprobs
from nanopost.nexttoken import NonFiniteLoss, lr_at
from nanopost.tokenizer import ConversationError, render_conversation, render_prompt


@dataclass
class Pair:
    prompt: list          # rendered prompt ids, ending with <|assistant|>
    chosen: list          # response ids, <|end|> included
    rejected: list
    margin: float = 0.0
    gold: dict = None     # the world's ground truth for this prompt, when known
    kind: str = ""        # metadata.kind: which defect the rejected side has (built-in data)


def _response(record, key):
    messages = record[key]
    if not isinstance(messages, list) or not messages:
        raise ConversationError(f"'{key}' must be a non-empty list of assistant messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") != "assistant":
            raise ConversationError(f"'{key}' must hold assistant messages only, got {m!r:.80}")
    return messages


def _render_response(tok, prompt, prompt_ids, response, max_len):
    ids, _ = render_conversation(tok, prompt + response, max_len)
    assert ids[:len(prompt_ids)] == prompt_ids, "a rendered prompt must prefix its conversation"
    return ids[len(prompt_ids):]


def preference_pairs(record, tok, max_len=None):
    """One §7 record -> [Pair] (one, or K(K-1)/2 for a ranking of K). Raises ValueError
    (ConversationError, ...) naming what is wrong; load_records adds the file and line."""
    prompt = record.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise ConversationError("record needs a non-empty 'prompt' list of messages ending with a user turn")
    prompt_ids = render_prompt(tok, prompt, max_len)
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    gold, kind = metadata.get("gold"), str(metadata.get("kind", ""))
    if "ranking" in record:
        ranking = record["ranking"]
        if not isinstance(ranking, list) or len(ranking) < 2:
            raise ValueError("'ranking' must list at least 2 responses, best first")
        responses = [_render_response(tok, prompt, prompt_ids, _response({"r": r}, "r"), max_len) for r in ranking]
        if len({tuple(r) for r in responses}) < len(responses):
            raise ValueError("'ranking' holds the same response twice")
        return [Pair(prompt_ids, responses[i], responses[j], 0.0, gold, kind)
                for i in range(len(responses)) for j in range(i + 1, len(responses))]
    if "chosen" not in record or "rejected" not in record:
        raise ValueError(f"record needs 'chosen' and 'rejected' (or a 'ranking'); keys: {sorted(record)}")
    chosen = _render_response(tok, prompt, prompt_ids, _response(record, "chosen"), max_len)
    rejected = _render_response(tok, prompt, prompt_ids, _response(record, "rejected"), max_len)
    if chosen == rejected:
        raise ValueError("'chosen' and 'rejected' are the same response")
    margin = record.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"'margin' must be a finite number, got {margin!r}")
    return [Pair(prompt_ids, chosen, rejected, float(margin), gold, kind)]


def load_preferences(path, tok, max_len, skip_bad=False):
    """§7 JSONL -> ([Pair], report); errors name the file and line (see data.load_records)."""
    groups, report = load_records(path, lambda r: preference_pairs(r, tok, max_len), skip_bad)
    pairs = [p for g in groups for p in g]
    report["pairs"] = len(pairs)
    return pairs, report


def weight_kinds(pairs, spec):
    """The training mix by kind of pair: spec = "kind=w,..." with whole numbers w, each pair of that
    kind repeated w times (0 drops the kind); "*=w" sets the weight of kinds not named (default 1).
    E.g. "correct=3" triples the correct-vs-wrong pairs, "correct=1,*=0" keeps only them."""
    weights = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, sep, w = item.partition("=")
        if not sep or not w.strip().isdigit():
            raise ValueError(f"--kind_weights: {item!r} is not kind=whole number (e.g. correct=3,*=1)")
        weights[name.strip()] = int(w)
    default = weights.pop("*", 1)
    return [p for p in pairs for _ in range(weights.get(p.kind, default))]


def pair_batch(pairs, pad_id, device="cpu"):
    """P pairs -> rows 0..P-1 = prompt + chosen, rows P..2P-1 = prompt + rejected, right-padded:
    idx (2P, L), response_mask (2P, L) 1 on response tokens, lengths (2P,), margin (P,)."""
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    starts = [len(p.prompt) for p in pairs] * 2
    L = max(len(r) for r in rows)
    idx = torch.full((len(rows), L), pad_id, dtype=torch.long)
    response_mask = torch.zeros(len(rows), L)
    for b, (row, start) in enumerate(zip(rows, starts)):
        idx[b, :len(row)] = torch.tensor(row)
        response_mask[b, start:len(row)] = 1
    return {"idx": idx.to(device), "response_mask": response_mask.to(device),
            "lengths": torch.tensor([len(r) for r in rows], device=device),
            "margin": torch.tensor([p.margin for p in pairs], device=device)}


def sequence_logprobs(model, batch, average=False):
    """log π(response | prompt) per row = Σ_t log π(y_t | y_<t) over the response tokens, (2P,);
    average=True divides by the number of response tokens (IPO)."""
    total = response_logprobs(model, batch["idx"], batch["response_mask"]).sum(1)  # (2P,)
    return total / batch["response_mask"][:, 1:].sum(1).clamp(min=1) if average else total


def last_token_rewards(reward_model, idx, lengths, response_mask=None):
    """The reward model's scalar at the last real token of each right-padded row (§7), (B,):
    padding after it is never seen (causal attention), so the amount of padding does not matter.
    response_mask (B, T), 1 on response tokens, is passed on to a reward model that adds its body's
    log-likelihood of the response (ScalarModel's logp_weight)."""
    scores = reward_model(idx) if response_mask is None else reward_model(idx, response_mask=response_mask)  # (B, T)
    return scores[torch.arange(idx.size(0), device=idx.device), lengths - 1]


def batch_indices(n, batch_size, step, seed):
    """The pair indices of optimiser step `step`: epochs of a (seed, epoch)-seeded permutation, so a
    resumed run sees the batches the uninterrupted run would have."""
    out, perms = [], {}
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch = i // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        out.append(perms[epoch][i % n])
    return out


def train_pairs(model, optimizer, pairs, loss_fn, cfg, log, start_step=0, save=None):
    """The loop train_rm.py and DPO share: step s takes cfg.batch_size pairs (batch_indices), in
    micro-batches of cfg.micro_batch_size; loss_fn(model, indices, n_total) returns (loss summed over
    the micro-batch's pairs / n_total, {metric: sum over its pairs}). Metrics are logged as means per
    pair. Under torchrun each process takes its share of the step's pairs (nanopost/dist.py) and
    `model` is wrapped in DDP."""
    ddp_model, world = dist.wrap(model), dist.world_size()
    params = list(model.parameters())
    history = []
    for step in range(start_step, cfg.steps):
        t0 = time.time()
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a group may train faster (train_rm.py --head_lr)
        chosen = batch_indices(len(pairs), cfg.batch_size, step, cfg.seed)
        mine = dist.shard(chosen)
        totals, loss_value = {}, 0.0
        starts = range(0, len(mine), cfg.micro_batch_size)
        for lo in starts:
            with dist.sync_grads(ddp_model, last=lo == starts[-1]):
                loss, sums = loss_fn(ddp_model, mine[lo:lo + cfg.micro_batch_size], len(chosen))
                (loss * world).backward()  # × world: DDP averages the ranks' gradients, the step wants their sum
            loss_value += loss.item()
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        loss_value = dist.all_sum(loss_value)
        if not math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"loss is {loss_value} at step {step + 1}; stopping without saving")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {"loss": loss_value, **{k: dist.all_sum(v) / len(chosen) for k, v in sorted(totals.items())},
                   "lr": lr, "grad_norm": float(grad_norm), "pairs_per_s": len(chosen) / (time.time() - t0)}
        history.append({"step": step + 1, **metrics})
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log.log(step + 1, **metrics)
        if save is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save(step + 1)
    return history


def preference_rate(model, tok, records, max_new_tokens=32):
    """The ground-truth preference rate (§7, §10): the share of prompts whose greedy answer the
    world's ground truth accepts (direct, correct, in the requested format, concise), with each
    criterion's rate and the mean answer length in words. records: {"prompt", "metadata": {"gold"}}."""
    replies = chat_complete(model, tok, [r["prompt"] for r in records], max_new_tokens)
    checks = [preference_world.gold_checks(r["metadata"]["gold"], reply) for r, reply in zip(records, replies)]
    n = max(len(records), 1)
    out = {"rate": sum(all(c.values()) for c in checks) / n}
    for name in preference_world.GOLD_WEIGHTS:
        out[name] = sum(c[name] for c in checks) / n
    out["words"] = sum(len(r.split()) for r in replies) / n
    return out, replies


# ----------------------------------------------------------------------------------------------
# where the pairs come from: the built-in world, the user's file, or labels made now (RLAIF)

@dataclasses.dataclass
class PreferenceConfig(RunConfig):
    """The data flags train_rm.py and DPO share."""
    labels: str = flag("builtin", "builtin: the world's pairs (or --data) | ai: sample pairs from the policy and "
                                  "label them with the judge (§6 RLAIF) | gold: the same sampled pairs labelled by "
                                  "the ground truth (the control for ai)", "preferences")
    eval_data: str = flag("", "held-out §7 JSONL (default: the built-in held-out pairs)", "preferences")
    n_pairs: int = flag(4000, "built-in training records", "preferences")
    label_prompts: int = flag(400, "--labels ai|gold: prompts to sample answers for (one labelled pair each)",
                              "preferences")
    label_samples: int = flag(4, "--labels ai|gold: answers sampled per prompt; the pair is the best and the worst "
                                 "(2: one sampled pair)", "preferences")
    label_temperature: float = flag(1.0, "--labels ai|gold: sampling temperature of the pairs", "preferences")
    judge: str = flag("", "--labels ai: the judge's checkpoint (default: the SFT model)", "preferences")
    constitution: str = flag("", "--labels ai: the constitution file (default: the built-in one)", "preferences")
    judge_reference: bool = flag(False, "--labels ai: reference-guided judging: the judge first answers each question "
                                        "itself and checks the responses against its own answer", "preferences")
    judge_kind: str = flag("verdict", "--labels ai: verdict (the judge answers yes/no per response, a format the SFT "
                                      "mix teaches) | likelihood (it prefers the response it finds more likely "
                                      "under the principle) | revision (it prefers the response it would leave "
                                      "unchanged when revising it under the principle; nanopost/judge.py)",
                           "preferences")
    judge_temperature: float = flag(1.0, "--judge_kind likelihood: τ in σ(Δ log π / τ)", "preferences")
    min_confidence: float = flag(0.75, "--labels ai: keep pairs the judge prefers with at least this probability",
                                 "preferences")


def preference_data(cfg, policy, tok, max_len, log):
    """-> (train pairs, held-out pairs, held-out prompts with ground truth, report), per cfg.labels.
    ai / gold write the labelled pairs to <out>/labels.jsonl (§7 JSONL), then read them back like
    any user file; ai loads the judge checkpoint cfg.judge (default: the policy judges)."""
    if cfg.labels not in ("builtin", "ai", "gold"):
        raise ValueError(f"unknown --labels {cfg.labels!r}; use builtin, ai or gold")
    if cfg.labels == "ai":
        check_judge_flags(cfg.judge_kind, cfg.judge_reference, cfg.judge_temperature)
    report = {"labels": cfg.labels}
    if cfg.labels == "builtin":
        path = cfg.data or os.path.join(cfg.out, "prefs.jsonl")
        if not cfg.data:
            write_jsonl(path, preference_world.preference_records(cfg.n_pairs, "train", cfg.seed))
    elif cfg.resume and os.path.exists(os.path.join(cfg.out, "labels.jsonl")):
        path = os.path.join(cfg.out, "labels.jsonl")  # a resumed run trains on the labels it started with
    else:
        path = os.path.join(cfg.out, "labels.jsonl")
        prompts = preference_world.preference_prompts("train", cfg.seed, cfg.label_prompts)
        if dist.is_main():  # under torchrun rank 0 labels once and every rank reads the same file
            judge = load_checkpoint(cfg.judge, next(policy.parameters()).device) if cfg.labels == "ai" and cfg.judge else None
            judge_model = (judge["model"], judge["tok"]) if judge else None  # it reads text with its own tokenizer
            records, report["labelling"] = label_pairs(policy, tok, prompts, cfg, judge_model)
            write_jsonl(path, records)
            log.info(f"{cfg.labels} labels: {report['labelling']}")
        dist.barrier()
    train, report["train"] = load_preferences(path, tok, max_len, cfg.skip_bad)
    if cfg.eval_data:
        held_out, _ = load_preferences(cfg.eval_data, tok, max_len)
        eval_prompts = {}  # one per distinct prompt that carries a ground truth
        for _, r in read_jsonl(cfg.eval_data):
            if isinstance(r.get("metadata"), dict) and isinstance(r["metadata"].get("gold"), dict):
                eval_prompts.setdefault(repr(r["prompt"]), {"prompt": r["prompt"], "metadata": r["metadata"]})
        eval_prompts = list(eval_prompts.values())
    else:
        records = preference_world.preference_records(400, "eval", cfg.seed, ranking_share=0)
        held_out = [p for r in records for p in preference_pairs(r, tok, max_len)]
        eval_prompts = preference_world.preference_prompts("eval")
    return train, held_out, eval_prompts, report


def load_scalar_model(path, stage, device="cpu"):
    """A train_rm.py checkpoint of `stage` ("rm" or "prm") -> (frozen ScalarModel, tokenizer, extra)."""
    state = load_checkpoint(path, device)
    extra = state["extra"] or {}
    if state["meta"].get("stage") != stage or "head" not in extra:
        kind = {"rm": "reward-model", "prm": "process-reward-model"}[stage]
        raise ValueError(f"{path} is not a {kind} checkpoint (stage {state['meta'].get('stage')!r}); "
                         f"train one with train_rm.py{' --kind prm' if stage == 'prm' else ''}")
    frozen = None
    if "logp_model" in extra:  # train_rm.py --logp_frozen: the frozen language model the reward reads log π from
        frozen = copy.deepcopy(state["model"])
        frozen.load_state_dict(extra["logp_model"])
    model = ScalarModel(state["model"], extra.get("logp_weight", 0.0), frozen).to(device)
    model.head.load_state_dict(extra["head"])
    return model.eval().requires_grad_(False), state["tok"], extra


def load_reward_model(path, device="cpu"):
    """A train_rm.py checkpoint -> (ScalarModel, tokenizer, {"reward_mean", "reward_std"})."""
    rm, tok, extra = load_scalar_model(path, "rm", device)
    return rm, tok, {"reward_mean": extra["reward_mean"], "reward_std": extra["reward_std"]}
