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


# ----------------------------------------------------------------------------------------------
# RL (§6, §9). Shapes: B completions, T completion tokens; `mask` (B, T) marks real tokens.

def kl_estimate(logprobs, ref_logprobs, kind="k3"):
    """Per-token estimate of KL(π || π_ref) from tokens sampled from π (§6's β·KL term).
    With log r = log π_ref(y) - log π(y):
        k1 = -log r                  unbiased, can be negative
        k2 = (log r)² / 2            biased, low variance
        k3 = (r - 1) - log r         unbiased and always >= 0 (Schulman's estimator)"""
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.exp(log_ratio) - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def grpo_advantages(rewards, num_generations, scale_rewards="group", eps=1e-4):
    """Group-relative advantages (§9 GRPO). rewards (B,) hold num_generations consecutive
    completions per prompt.  A_i = r_i - mean(group), divided by
        group: the std of the group   batch: the std of the whole batch   none: nothing
    (std with Bessel's correction, as TRL). A group whose rewards are all equal gets A = 0:
    it carries no learning signal."""
    groups = rewards.view(-1, num_generations)
    centred = (groups - groups.mean(dim=1, keepdim=True)).view(-1)
    if scale_rewards == "group":
        return centred / (groups.std(dim=1).repeat_interleave(num_generations) + eps)
    if scale_rewards == "batch":
        return centred / (rewards.std() + eps)
    if scale_rewards == "none":
        return centred
    raise ValueError(f"unknown scale_rewards {scale_rewards!r}; use group, batch or none")


def rloo_advantages(rewards, num_generations):
    """REINFORCE leave-one-out (§9): the baseline of completion i is the mean reward of the other
    G-1 completions of its prompt.  A_i = r_i - (Σ_j r_j - r_i) / (G - 1)."""
    assert num_generations > 1, "RLOO needs at least 2 generations per prompt"
    groups = rewards.view(-1, num_generations)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (num_generations - 1)
    return (groups - baseline).view(-1)


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (PPO, §9). rewards, values, mask: (B, T), right-padded.
        δ_t = r_t + γ V_{t+1} - V_t        (V after the last real token is 0)
        A_t = δ_t + γ λ A_{t+1}            returns R_t = A_t + V_t
    Padding gets A = R = 0."""
    B, T = rewards.shape
    mask = mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        next_adv = advantages[:, t]
    return advantages, (advantages + values) * mask


def whiten(values, mask, shift_mean=True, eps=1e-8):
    """(x - mean) / std over the real tokens (PPO's whitened advantages)."""
    n = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / n
    var = (((values - mean) * mask) ** 2).sum() / n
    out = (values - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask


def clipped_surrogate(logprobs, old_logprobs, advantages, epsilon=0.2, epsilon_high=None):
    """PPO's clipped objective as a per-token loss (§9), ratio ρ = π/π_old:
        loss_t = -min(ρ A, clip(ρ, 1 - ε, 1 + ε_high) A)
    advantages broadcast (B, 1) or (B, T). Outside the clip region (in the direction A
    pushes) the loss is constant, so its gradient is zero. Returns (loss, clipped) where
    clipped (B, T) bool marks tokens whose clipped term was the smaller one."""
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * advantages
    return -torch.min(unclipped, clipped), clipped < unclipped


def aggregate(per_token, mask, loss_type="grpo", max_completion_length=None, num_sequences=None, num_tokens=None):
    """Reduce a per-token loss (B, T) to a scalar (§9 GRPO variants):
        grpo     mean over each sequence's tokens, then sum / number of sequences
        dapo     sum over all tokens / number of completion tokens
        dr_grpo  sum over all tokens / (number of sequences × max_completion_length)
    num_sequences / num_tokens are the totals of the whole optimiser step when it is split into
    micro-batches (gradient accumulation then equals one big batch); default: this batch's."""
    mask = mask.to(per_token.dtype)
    n_seq = mask.size(0) if num_sequences is None else num_sequences
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_seq.sum() / max(n_seq, 1)
    if loss_type == "dapo":
        return mean_over_tokens(per_token, mask, num_tokens)
    if loss_type == "dr_grpo":
        assert max_completion_length, "dr_grpo needs max_completion_length"
        return (per_token * mask).sum() / (max(n_seq, 1) * max_completion_length)
    raise ValueError(f"unknown loss_type {loss_type!r}; use grpo, dapo or dr_grpo")


def clipped_value_loss(values, old_values, returns, mask, cliprange_value=0.2):
    """PPO's clipped critic loss, per token:
        V_clip = V_old + clip(V - V_old, -c, c);  loss_t = ½ max((V - R)², (V_clip - R)²)"""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    return 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2) * mask


# ----------------------------------------------------------------------------------------------
# preferences (§7, §9). Shapes: P pairs; every input is (P,).

def bradley_terry_loss(r_chosen, r_rejected, margin=None):
    """Reward-model loss (§7): P(chosen ≻ rejected) = σ(r_c - r_r), so per pair
        loss = -log σ(r_c - r_r - m)
    with an optional per-pair margin m (Llama 2's "how much better"). At r_c = r_r (and m = 0)
    the loss is ln 2. logsigmoid is stable for any difference."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -torch.nn.functional.logsigmoid(diff)


DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
             loss_type="sigmoid", label_smoothing=0.0):
    """Direct preference optimisation (§9), per pair. Inputs are log π(response | prompt), summed
    over the response tokens (for ipo: averaged over them, as IPO prescribes). With the implicit
    rewards r = β (log π - log π_ref) and h = (log π_c - log π_ref,c) - (log π_r - log π_ref,r):
        sigmoid  -(1 - ε) log σ(β h) - ε log σ(-β h)       (ε = label_smoothing: conservative DPO)
        robust   (-(1 - ε) log σ(β h) + ε log σ(-β h)) / (1 - 2ε)   (unbiased under label noise ε)
        hinge    max(0, 1 - β h)                             (SLiC)
        ipo      (h - 1 / (2β))²                             (IPO)
    At policy = reference (h = 0) sigmoid gives ln 2."""
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    logsig = torch.nn.functional.logsigmoid
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h)
    if loss_type == "robust":
        assert eps < 0.5, "robust DPO needs label_smoothing < 0.5"
        return (-(1 - eps) * logsig(beta * h) + eps * logsig(-beta * h)) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss_type {loss_type!r}; use {', '.join(DPO_LOSS_TYPES)}")


def dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO's implicit rewards r = β (log π - log π_ref) and the per-pair metrics TRL logs (§9):
    rewards/chosen, rewards/rejected, rewards/margins = r_c - r_r, rewards/accuracies = [r_c > r_r],
    and the policy's log-probs logps/chosen, logps/rejected (a falling logps/chosen is visible)."""
    r_c = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    r_r = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return {"rewards/chosen": r_c, "rewards/rejected": r_r, "rewards/margins": r_c - r_r,
            "rewards/accuracies": (r_c > r_r).float(), "logps/chosen": policy_chosen_logps.detach(),
            "logps/rejected": policy_rejected_logps.detach()}
