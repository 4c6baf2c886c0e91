"""
Rollouts for RL (§6, §8, §9): sample num_generations completions per prompt with the KV-cache
sampler, grade them with the verifiable graders, and lay prompt + completion out as right-padded
rows for the training forward.

    batch = sample_rollouts(policy, tok, records, cfg, generator)
    logprobs = completion_logprobs(policy, batch, temperature)   # (B, N), same positions as the sampler's

A completion is the tokens up to and including the end-of-turn token; one that hits
max_completion_length without it is *truncated* (counted as clipped_ratio, and masked out of
the loss when mask_truncated_completions is set).
"""
import time
from dataclasses import dataclass

import torch

from nanopost.evaluate import decode_completions
from nanopost.graders import combine, grade_many
from nanopost.losses import token_logprobs
from nanopost.sampling import generate
from nanopost.tokenizer import render_prompt


@dataclass
class Rollouts:
    idx: torch.Tensor              # (B, L) prompt + completion, right-padded
    start: torch.Tensor            # (B,) index of the first completion token in each row
    completion: torch.Tensor       # (B, N) completion tokens (pad after the end)
    mask: torch.Tensor             # (B, N) 1 on real completion tokens
    sampler_logprobs: torch.Tensor  # (B, N) log-probs reported by the sampler
    truncated: torch.Tensor        # (B,) bool: hit max_completion_length without end-of-turn
    texts: list                    # decoded completions
    rewards: torch.Tensor          # (B,) combined reward
    graded: list                   # per completion: {grader name: reward} for the graders that apply
    new_tokens: int
    sample_s: float
    grade_s: float


def sample_rollouts(model, tok, records, num_generations, max_completion_length, temperature=1.0, top_k=None,
                    top_p=None, reward_weights=None, suites_dir=None, generator=None, reward_fn=None,
                    compile=False):
    """records: §8 dicts with 'prompt' (messages) and 'metadata'. Each prompt is repeated
    num_generations times, consecutively (the GRPO/RLOO groups). reward_fn(texts, records) may
    replace the graders (a reward model); it returns one {name: reward} dict per completion.
    compile: generate()'s (a torch.compile'd decoding step)."""
    device = next(model.parameters()).device
    rows = [r for r in records for _ in range(num_generations)]
    prompts = [render_prompt(tok, r["prompt"]) for r in rows]
    t0 = time.time()
    tokens, logprobs, lengths, stopped = generate(model, prompts, max_completion_length, temperature, top_k, top_p,
                                                  stop_ids=(tok.end_id,), pad_id=tok.pad_id, generator=generator,
                                                  compile=compile)
    sample_s = time.time() - t0
    N = tokens.size(1)
    mask = torch.arange(N, device=device)[None, :] < lengths[:, None]  # (B, N)
    texts = decode_completions(tok, tokens, lengths, (tok.end_id,))

    t0 = time.time()
    if reward_fn is not None:
        graded = reward_fn(texts, rows)
    else:
        graded = grade_many(texts, [r["metadata"] for r in rows], suites_dir=suites_dir)
    grade_s = time.time() - t0
    rewards = torch.tensor([combine(g, reward_weights) for g in graded], dtype=torch.float32, device=device)

    # right-padded rows: prompt then completion, for the training forward
    starts = torch.tensor([len(p) for p in prompts], device=device)
    L = int((starts + lengths).max())
    idx = torch.full((len(rows), L), tok.pad_id, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        n = int(lengths[b])
        idx[b, :len(p)] = torch.tensor(p, device=device)
        idx[b, len(p):len(p) + n] = tokens[b, :n]
    return Rollouts(idx=idx, start=starts, completion=tokens, mask=mask.float(), sampler_logprobs=logprobs,
                    truncated=~stopped, texts=texts, rewards=rewards, graded=graded,
                    new_tokens=int(lengths.sum()), sample_s=sample_s, grade_s=grade_s)


def completion_positions(batch, rows=slice(None)):
    """(b, N) indices into the (b, L-1) shifted logits: completion token j of row b sits at
    start_b + j and is predicted by the logits at start_b + j - 1."""
    start = batch.start[rows]
    N = batch.completion.size(1)
    L = batch.idx.size(1)
    return (start[:, None] - 1 + torch.arange(N, device=start.device)[None, :]).clamp(max=L - 2)


def shared_prefixes(idx, start):
    """The rows' prompts minus their last token, each distinct one once: (prefix_idx (U, P)
    right-padded, prefix_of (b,)), or None when no two rows share a prompt (nothing to save)."""
    rows = [tuple(r[:s - 1]) for r, s in zip(idx.tolist(), start.tolist())]
    distinct = list(dict.fromkeys(rows))  # first-seen order
    P = max(map(len, distinct))
    if len(distinct) == len(rows) or P == 0:
        return None
    where = {p: i for i, p in enumerate(distinct)}
    prefix_idx = torch.tensor([list(p) + [0] * (P - len(p)) for p in distinct], device=idx.device)
    return prefix_idx, torch.tensor([where[p] for p in rows], device=idx.device)


def completion_logprobs(model, batch, temperature=1.0, rows=slice(None), with_entropy=False):
    """log π(completion token | prefix) at temperature, (b, N), 0 past a row's end (batch.mask).
    Right padding: plain causal attention suffices. Only the positions that predict a completion
    token reach lm_head (the prompt's do not). Rows that share a prompt (a GRPO group) share its
    forward (model.PrefixKV): all but its last token run once, and each row runs that last token
    and its completion attending to the shared keys; a group of 8 with 62 prompt and 32 completion
    tokens then costs 62 + 8·33 positions instead of 8·94. with_entropy also returns the policy's
    entropy per completion position (no gradient)."""
    idx, mask = batch.idx[rows], batch.mask[rows].bool()          # (b, L), (b, N)
    start = batch.start[rows]
    n = mask.sum(1, keepdim=True)                                  # (b, 1) completion lengths
    prefix = shared_prefixes(idx, start)
    if prefix is None:  # one causal forward of each whole row
        p = torch.arange(idx.size(1) - 1, device=idx.device)[None, :]  # (1, L-1)
        keep = (p >= start[:, None] - 1) & (p < start[:, None] - 1 + n)  # (b, L-1)
        logits = model(idx[:, :-1], keep=keep)                     # (n, V), row-major like mask's True
        targets = idx[:, 1:][keep]
    else:  # row b: its last prompt token, then its completion, at positions start_b - 1 onwards
        T, P = max(int(n.max()), 1), prefix[0].size(1)
        j = torch.arange(T, device=idx.device)[None, :]           # (1, T)
        inputs = torch.cat([idx.gather(1, start[:, None] - 1), batch.completion[rows][:, :T - 1]], dim=1)  # (b, T)
        before = torch.arange(P, device=idx.device)[None, :] < start[:, None] - 1  # (b, P) the prefix's real keys
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        visible = torch.cat([before[:, None, :].expand(-1, T, -1), causal.expand(idx.size(0), -1, -1)], dim=2)
        keep = j < n                                               # (b, T): input j predicts completion token j
        # padding past a row's end repeats its last position: nobody reads it, and a long prompt's row
        # padded to another row's long completion must not step past the context
        pos = start[:, None] - 1 + torch.minimum(j, (n - 1).clamp(min=0))  # (b, T)
        logits = model(inputs, pos=pos, attn_mask=visible[:, None], keep=keep, prefix=prefix)
        targets = batch.completion[rows][:, :T][keep]
    zeros = torch.zeros(mask.shape, device=idx.device)
    logprobs = zeros.masked_scatter(mask, token_logprobs(logits, targets, temperature))  # (b, N)
    if not with_entropy:
        return logprobs
    with torch.no_grad():
        logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (n, V)
        entropy = zeros.masked_scatter(mask, -(logp_all.exp() * logp_all).sum(-1))
    return logprobs, entropy


def completion_values(critic, batch, rows=slice(None)):
    """The critic's V(prefix) before each completion token, (b, N)."""
    values = critic(batch.idx[rows][:, :-1])                      # (b, L-1)
    return values.gather(1, completion_positions(batch, rows))
