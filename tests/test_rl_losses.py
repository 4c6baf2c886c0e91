"""RL losses and estimators (nanopost/losses.py, RL section): hand-worked examples and float64
loop references for grpo/rloo advantages, GAE, whitening, the clipped surrogate (values, flags,
where its gradient vanishes), the KL estimators (Monte-Carlo against the closed form), the three
token aggregations (and their exactness under micro-batching, gradients included, on a tiny
GPT) and the clipped value loss."""
import math

import pytest
import torch

from nanopost.losses import (aggregate, clipped_surrogate, clipped_value_loss, gae, grpo_advantages, kl_estimate,
                             rloo_advantages, token_logprobs, whiten)
from nanopost.model import GPT, GPTConfig

TINY = dict(block_size=32, vocab_size=41, n_layer=1, n_head=2, n_embd=16)



def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY))


def gpt_completion_logprobs(model, B, T, seed=0):
    """(B, T) log-probs of random 'completion' tokens after a 3-token prompt, through the model
    (so gradients reach its parameters): what completion_logprobs gives the RL losses."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, TINY["vocab_size"], (B, 3 + T), generator=g)
    logits = model(idx[:, :-1])
    return token_logprobs(logits, idx[:, 1:])[:, 2:]  # the positions that predict the T completion tokens


def grads_of(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


# ----------------------------------------------------------------------------------------------
# grpo_advantages

HAND_REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_grpo_advantages_group_hand_worked():
    # group 1: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735 -> ±0.5 / (0.57735 + 1e-4) = ±0.86588
    # group 2: all equal -> centred rewards are exactly 0
    a = grpo_advantages(HAND_REWARDS, 4, "group")
    s = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(a, torch.tensor([s, -s, -s, s, 0.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-6)
    assert abs(s - 0.866) < 1e-3
    assert torch.equal(a[4:], torch.zeros(4))  # exactly zero, not just small


def test_grpo_advantages_batch_hand_worked():
    # centred by the GROUP mean, scaled by the std of the whole batch: mean 0.75,
    # unbiased var (6 * 0.25² + 2 * 0.75²) / 7 = 1.5 / 7
    a = grpo_advantages(HAND_REWARDS, 4, "batch")
    s = 0.5 / (math.sqrt(1.5 / 7) + 1e-4)
    torch.testing.assert_close(a, torch.tensor([s, -s, -s, s, 0.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-6)
    assert abs(s - 1.0799) < 1e-3


def test_grpo_advantages_none_hand_worked():
    a = grpo_advantages(HAND_REWARDS, 4, "none")
    assert torch.equal(a, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))


def reference_grpo(rewards, G, mode, eps=1e-4):
    r = [float(x) for x in rewards]
    n = len(r)

    def std(xs):
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    out = []
    for start in range(0, n, G):
        group = r[start:start + G]
        mean = sum(group) / G
        for x in group:
            if mode == "group":
                out.append((x - mean) / (std(group) + eps))
            elif mode == "batch":
                out.append((x - mean) / (std(r) + eps))
            else:
                out.append(x - mean)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["group", "batch", "none"])
@pytest.mark.parametrize("G", [2, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_advantages_match_float64_loop(mode, G, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.rand(6 * G, generator=g)
    rewards[:G] = 0.25  # one zero-variance group in every case
    got = grpo_advantages(rewards, G, mode)
    want = reference_grpo(rewards, G, mode)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:G], torch.zeros(G))


def test_grpo_advantages_unknown_mode_raises():
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(HAND_REWARDS, 4, "std")


def test_zero_variance_group_contributes_zero_gradient():
    """Group 2 has equal rewards: its advantages are 0, so its part of the clipped-surrogate loss
    (at ratio 1, and at ratio != 1) gives exactly zero gradient to every GPT parameter, while
    group 1's part does not."""
    B, T, G = 8, 5, 4
    adv = grpo_advantages(HAND_REWARDS, G, "group")[:, None]
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    mask[6, 2:] = 0
    model = tiny_gpt()
    logprobs = gpt_completion_logprobs(model, B, T)
    # old log-probs shifted so ratios are both inside and outside the clip region
    old = logprobs.detach() + torch.linspace(-0.5, 0.5, B * T).view(B, T)
    per_token, _ = clipped_surrogate(logprobs, old, adv, 0.2)
    for rows, expect_zero in ((slice(4, 8), True), (slice(0, 4), False)):
        model.zero_grad()
        loss = aggregate(per_token[rows], mask[rows], "grpo", num_sequences=B)
        loss.backward(retain_graph=True)
        grads = grads_of(model)
        total = sum(float(g.abs().sum()) for g in grads)
        if expect_zero:
            assert total == 0.0, total
        else:
            assert total > 1e-6, total


# ----------------------------------------------------------------------------------------------
# rloo_advantages

def test_rloo_hand_worked():
    # A_i = r_i - (sum_j r_j - r_i) / (G - 1): group [1, 0, 0, 1] -> 1 - 1/3, 0 - 2/3
    a = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0]), 4)
    want = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 3 - 5 / 3, 1 - 7 / 3, 2 - 2, 2 - 2])
    torch.testing.assert_close(a, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(rloo_advantages(torch.tensor([3.0, 1.0]), 2), torch.tensor([2.0, -2.0]))


@pytest.mark.parametrize("G", [2, 3, 5])
def test_rloo_matches_float64_loop(G):
    g = torch.Generator().manual_seed(G)
    rewards = torch.randn(4 * G, generator=g)
    r = rewards.double().tolist()
    want = []
    for start in range(0, len(r), G):
        group = r[start:start + G]
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i]
            want.append(x - sum(others) / len(others))
    torch.testing.assert_close(rloo_advantages(rewards, G).double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)


def test_rloo_needs_two_generations():
    with pytest.raises(AssertionError, match="RLOO"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)


# ----------------------------------------------------------------------------------------------
# gae and whiten

def test_gae_hand_worked():
    """One row, 3 real tokens then 1 pad; gamma 0.9, lam 0.8 (gamma * lam = 0.72), V after the
    last real token is 0:
        t=2: delta = 2 + 0.9*0 - 0.5 = 1.5                 A = 1.5
        t=1: delta = -1 + 0.9*0.5 - 2 = -2.55               A = -2.55 + 0.72*1.5 = -1.47
        t=0: delta = 0.5 + 0.9*2 - 1 = 1.3                  A = 1.3 + 0.72*(-1.47) = 0.2416
    returns = A + V = [1.2416, 0.53, 2.0]; the pad gets 0 (its reward 7 and value 3 are ignored)."""
    rewards = torch.tensor([[0.5, -1.0, 2.0, 7.0]])
    values = torch.tensor([[1.0, 2.0, 0.5, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.2416, -1.47, 1.5, 0.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(ret, torch.tensor([[1.2416, 0.53, 2.0, 0.0]]), rtol=0, atol=1e-6)


def reference_gae(rewards, values, lengths, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    ret = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = lengths[b]
        r = rewards[b].double().tolist()
        v = values[b].double().tolist()
        a_next = 0.0
        for t in reversed(range(n)):
            v_next = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * v_next - v[t]
            a_next = delta + gamma * lam * a_next
            adv[b, t] = a_next
            ret[b, t] = a_next + v[t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_matches_float64_loop_on_ragged_rows(gamma, lam):
    g = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    B, T = 5, 9
    lengths = [9, 1, 4, 6, 2]
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()
    rewards = torch.randn(B, T, generator=g) * 10   # junk on padding too: it must be ignored
    values = torch.randn(B, T, generator=g) * 10
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = reference_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv.double(), want_adv, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ret.double(), want_ret, rtol=1e-5, atol=1e-4)
    pad = mask == 0
    assert torch.equal(adv[pad], torch.zeros(int(pad.sum())))
    assert torch.equal(ret[pad], torch.zeros(int(pad.sum())))


def test_gae_gamma_1_lam_1_returns_are_reward_to_go():
    g = torch.Generator().manual_seed(3)
    B, T = 3, 6
    lengths = torch.tensor([6, 2, 4])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    masked_r = rewards * mask
    to_go = masked_r.flip(1).cumsum(1).flip(1) * mask  # sum of the row's real rewards from t on
    torch.testing.assert_close(ret, to_go, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adv, (to_go - values) * mask, rtol=1e-5, atol=1e-5)


def test_whiten_mean_0_std_1_over_real_tokens():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g) * 3 + 5
    lengths = torch.tensor([7, 2, 5, 1])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()
    x[mask == 0] = 1e3  # padding junk must not count
    w = whiten(x, mask)
    real = w[mask.bool()]
    assert abs(float(real.mean())) < 1e-5
    assert abs(float(real.std(unbiased=False)) - 1.0) < 1e-4
    assert torch.equal(w[mask == 0], torch.zeros(int((mask == 0).sum())))
    # the order of the real values is kept (a positive affine map)
    torch.testing.assert_close(real, (x[mask.bool()] - x[mask.bool()].mean()) / x[mask.bool()].std(unbiased=False),
                               rtol=1e-4, atol=1e-4)
    # shift_mean=False keeps the original mean
    w2 = whiten(x, mask, shift_mean=False)
    assert abs(float(w2[mask.bool()].mean() - x[mask.bool()].mean())) < 1e-4
    assert torch.equal(w2[mask == 0], torch.zeros(int((mask == 0).sum())))


# ----------------------------------------------------------------------------------------------
# clipped_surrogate

def surrogate_case(ratios, advantages, epsilon=0.2, epsilon_high=None):
    old = torch.tensor([[-1.3] * len(ratios)])
    logprobs = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    adv = torch.tensor([advantages])
    loss, clipped = clipped_surrogate(logprobs, old, adv, epsilon, epsilon_high)
    loss.sum().backward()
    return loss.detach()[0], clipped[0], logprobs.grad[0]


def test_clipped_surrogate_values_and_flags_hand_worked():
    # loss = -min(rA, clip(r, 0.8, 1.2) A)
    ratios = [1.5, 0.5, 1.5, 0.5, 1.1, 0.9]
    advs = [1.0, 1.0, -1.0, -1.0, 2.0, -2.0]
    loss, clipped, _ = surrogate_case(ratios, advs)
    want = [-1.2,   # r > 1.2, A > 0: clipped at 1.2
            -0.5,   # r < 0.8, A > 0: the unclipped 0.5 is smaller
            1.5,    # r > 1.2, A < 0: -min(-1.5, -1.2) = 1.5 (unclipped)
            0.8,    # r < 0.8, A < 0: -min(-0.5, -0.8) = 0.8 (clipped)
            -2.2,   # inside
            1.8]    # inside
    torch.testing.assert_close(loss, torch.tensor(want), rtol=0, atol=1e-5)
    assert clipped.tolist() == [True, False, False, True, False, False]


def test_clipped_surrogate_gradient_zero_outside_clip_region_in_the_pushed_direction():
    ratios = [1.5, 0.5, 1.5, 0.5, 1.1, 0.9]
    advs = [1.0, 1.0, -1.0, -1.0, 2.0, -2.0]
    _, _, grad = surrogate_case(ratios, advs)
    # d(-rA)/dlogp = -rA where the unclipped term is active, 0 where the clip holds
    want = [0.0, -0.5, 1.5, 0.0, -2.2, 1.8]
    torch.testing.assert_close(grad, torch.tensor(want), rtol=0, atol=1e-5)
    assert grad[0] == 0 and grad[3] == 0   # exactly zero
    assert (grad[[1, 2, 4, 5]] != 0).all()


def test_clipped_surrogate_epsilon_high_is_asymmetric():
    # upper bound 1 + 0.28, lower bound 1 - 0.2
    ratios = [1.25, 1.3, 0.75, 0.85]
    advs = [1.0, 1.0, -1.0, -1.0]
    loss, clipped, grad = surrogate_case(ratios, advs, 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([-1.25, -1.28, 0.8, 0.85]), rtol=0, atol=1e-5)
    assert clipped.tolist() == [False, True, True, False]
    assert grad[0] != 0 and grad[1] == 0 and grad[2] == 0 and grad[3] != 0
    # symmetric epsilon clips the 1.25 as well
    loss_sym, clipped_sym, grad_sym = surrogate_case(ratios, advs, 0.2)
    assert abs(float(loss_sym[0]) + 1.2) < 1e-5 and bool(clipped_sym[0]) and grad_sym[0] == 0


def test_clipped_surrogate_ratio_one_is_plain_policy_gradient():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 4, generator=g).requires_grad_(True)
    adv = torch.randn(3, 1, generator=g)
    loss, clipped = clipped_surrogate(lp, lp.detach(), adv)
    torch.testing.assert_close(loss, (-adv).expand(3, 4))
    assert not clipped.any()
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, (-adv).expand(3, 4))


# ----------------------------------------------------------------------------------------------
# kl_estimate

P = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64)
Q = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.2], dtype=torch.float64)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_estimators_are_unbiased_for_kl_p_q(kind):
    exact = float((P * (P / Q).log()).sum())
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(P, 200_000, replacement=True, generator=g)
    logprobs, ref_logprobs = P.log()[y], Q.log()[y]   # tokens sampled from pi = P; pi_ref = Q
    k = kl_estimate(logprobs, ref_logprobs, kind)
    se = float(k.std()) / math.sqrt(len(k))
    assert abs(float(k.mean()) - exact) < 3 * se, (float(k.mean()), exact, se)
    assert se < 0.01  # the tolerance is tight enough to mean something


def test_kl_estimates_exact_values():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    log_r = ref - lp   # [-0.5, 1.0, 0]
    torch.testing.assert_close(kl_estimate(lp, ref, "k1"), -log_r)
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), 0.5 * log_r ** 2)
    torch.testing.assert_close(kl_estimate(lp, ref, "k3"), torch.tensor([math.exp(-0.5) - 1 + 0.5, math.e - 2, 0.0]))


def test_k3_is_never_negative_and_k2_is_half_squared_log_ratio():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(10_000, generator=g) * 3
    ref = torch.randn(10_000, generator=g) * 3
    k3 = kl_estimate(lp, ref, "k3")
    assert (k3 >= 0).all()
    assert (kl_estimate(lp, ref, "k1") < 0).any()  # k1 is not
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), 0.5 * (ref - lp) ** 2)
    assert float(kl_estimate(lp, lp, "k3").abs().max()) == 0.0


def test_kl_unknown_kind_raises():
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


# ----------------------------------------------------------------------------------------------
# aggregate

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 9.0],
                          [4.0, 9.0, 9.0, 9.0],
                          [5.0, 6.0, 9.0, 9.0]])   # 9 = padding junk
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0],
                     [1.0, 0.0, 0.0, 0.0],
                     [1.0, 1.0, 0.0, 0.0]])     # lengths 3, 1, 2; max_completion_length 4


def test_aggregate_hand_worked():
    # grpo: mean of per-sequence means (2 + 4 + 5.5) / 3; dapo: 21 / 6 tokens; dr_grpo: 21 / (3 * 4)
    assert abs(float(aggregate(PER_TOKEN, MASK, "grpo")) - 11.5 / 3) < 1e-6
    assert abs(float(aggregate(PER_TOKEN, MASK, "dapo")) - 3.5) < 1e-6
    assert abs(float(aggregate(PER_TOKEN, MASK, "dr_grpo", max_completion_length=4)) - 1.75) < 1e-6
    with pytest.raises(ValueError, match="loss_type"):
        aggregate(PER_TOKEN, MASK, "mean")


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_aggregate_micro_batches_sum_to_the_whole_batch(loss_type):
    whole = aggregate(PER_TOKEN, MASK, loss_type, 4)
    n_seq, n_tok = 3, float(MASK.sum())
    for split in ([slice(0, 2), slice(2, 3)], [slice(0, 1), slice(1, 3)], [slice(0, 1), slice(1, 2), slice(2, 3)]):
        parts = sum(aggregate(PER_TOKEN[s], MASK[s], loss_type, 4, n_seq, n_tok) for s in split)
        assert abs(float(parts) - float(whole)) < 1e-6, (split, float(parts), float(whole))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_aggregate_micro_batch_gradients_equal_whole_batch_on_gpt(loss_type):
    B, T = 6, 5
    lengths = torch.tensor([5, 1, 3, 2, 4, 1])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    adv = torch.tensor([[1.0], [-0.5], [2.0], [-1.0], [0.3], [0.7]])

    def loss_of(model, rows, n_seq=None, n_tok=None):
        lp = gpt_completion_logprobs(model, B, T)[rows]
        per_token, _ = clipped_surrogate(lp, lp.detach() - 0.1, adv[rows])  # ratio 1.105: inside the clip
        return aggregate(per_token, mask[rows], loss_type, T, n_seq, n_tok)

    model = tiny_gpt(1)
    whole = loss_of(model, slice(None))
    whole.backward()
    g_whole = grads_of(model)
    model.zero_grad()
    total = 0.0
    for rows in (slice(0, 2), slice(2, 5), slice(5, 6)):
        part = loss_of(model, rows, B, float(mask.sum()))
        part.backward()   # gradients accumulate, as in train_rl.py
        total += float(part.detach())
    g_parts = grads_of(model)
    assert abs(total - float(whole.detach())) < 1e-5
    assert sum(float(g.abs().sum()) for g in g_whole) > 1e-4
    for a, b in zip(g_whole, g_parts):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# clipped_value_loss

def test_clipped_value_loss_hand_worked():
    """V_clip = V_old + clip(V - V_old, -0.2, 0.2); loss = 0.5 max((V - R)², (V_clip - R)²):
        V=1, V_old=0.5, R=2:  V_clip 0.7; (1)² vs (1.3)² = 1.69  -> 0.845
        V=1, V_old=0.9, R=0:  V_clip 1.0 (inside);  1            -> 0.5
        V=1, V_old=1.5, R=0:  V_clip 1.3; 1 vs 1.69              -> 0.845
        V=1, V_old=0.5, R=0:  V_clip 0.7; 1 vs 0.49              -> 0.5
        masked position                                           -> 0"""
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    old = torch.tensor([[0.5, 0.9, 1.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss = clipped_value_loss(values, old, returns, mask, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.845, 0.5, 0.845, 0.5, 0.0]]), rtol=0, atol=1e-6)
