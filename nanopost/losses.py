"""
Losses and estimators, as small pure functions over tensors. Each docstring holds the formula
and its section in the project guide (post-training-101, §1-§10); tests check every one
against a hand-worked example or a float64 reference.
"""
import torch


def masked_nll(logits, targets, loss_mask):
    """Per-token negative log-likelihood, zero where loss_mask is 0 (§5).

    logits (B, T, V), targets (B, T) long, loss_mask (B, T) -> nll (B, T) float32.
        ℓ_t = -z_{t,y*} + log Σ_v exp(z_{t,v})
    with the log-sum-exp computed stably (§5): m = max_v z_{t,v},
        log Σ_v exp(z_{t,v}) = m + log Σ_v exp(z_{t,v} - m)
    so every exp argument is <= 0 and nothing overflows, even for logits of magnitude 1e4.
    Masked positions may hold any target (a pad id, -100, ...): they are never indexed.
    """
    logits = logits.float()
    keep = loss_mask.bool()
    m = logits.max(dim=-1, keepdim=True).values                            # (B, T, 1)
    lse = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(dim=-1))     # (B, T)
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))   # a masked target may be -100
    target_logits = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    # torch.where, not a product: 0 * inf would be NaN on a masked row with extreme logits
    return torch.where(keep, lse - target_logits, torch.zeros_like(lse))


def token_logprobs(logits, targets, temperature=1.0):
    """log π(y_t | ·) for every position: (B, T, V), (B, T) -> (B, T). The RL scripts' view of
    masked_nll: the same stable log-sum-exp, at the sampling temperature (logits / T)."""
    if temperature != 1.0:
        logits = logits.float() / temperature
    return -masked_nll(logits, targets, torch.ones_like(targets, dtype=torch.bool))


def mean_over_tokens(per_token, loss_mask, num_tokens=None):
    """Σ per_token · mask / N, where N is the number of target tokens of the whole optimiser step
    (num_tokens), not of this micro-batch: so splitting a step into micro-batches (gradient
    accumulation) does not change the gradient. A step with no target token gives 0, not 0/0 = NaN."""
    total = (per_token * loss_mask).sum()
    n = loss_mask.sum() if num_tokens is None else num_tokens
    return total / max(float(n), 1.0)
