"""Losses: masked_nll against a float64 reference (also at logit magnitude 1e4), masked rows, a
hand-worked example, the ln(V) loss of a fresh GPT, token_logprobs at a temperature, and
mean_over_tokens under gradient accumulation."""
import math

import pytest
import torch
import torch.nn.functional as F

from nanopost.losses import masked_nll, mean_over_tokens, token_logprobs
from nanopost.model import GPT, GPTConfig

B, T, V = 3, 7, 11
SMALL = dict(block_size=64, vocab_size=97, n_layer=2, n_head=2, n_embd=32)



def reference_nll(logits, targets, mask):
    """float64 cross-entropy, zeroed where mask is 0 (masked targets replaced by 0 for indexing)."""
    safe = torch.where(mask.bool(), targets, torch.zeros_like(targets))
    ce = F.cross_entropy(logits.double().reshape(-1, logits.size(-1)), safe.reshape(-1), reduction="none")
    return ce.view(targets.shape) * mask.double()


def random_case(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * scale
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) < 0.6).float()
    mask[0, 0] = 1.0  # at least one kept, one dropped
    mask[0, 1] = 0.0
    return logits, targets, mask


# ----------------------------------------------------------------------------- masked_nll


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_nll_matches_float64_reference(seed):
    logits, targets, mask = random_case(seed)
    nll = masked_nll(logits, targets, mask)
    assert nll.shape == (B, T)
    assert nll.dtype == torch.float32
    ref = reference_nll(logits, targets, mask)
    torch.testing.assert_close(nll.double(), ref, atol=1e-5, rtol=0)
    assert (nll[mask == 0] == 0).all()
    assert (nll[mask == 1] > 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_nll_stable_at_logit_magnitude_1e4(seed):
    logits, targets, mask = random_case(seed, scale=1e4)
    assert logits.abs().max() > 1e4  # exp would overflow float32 (and float64) without the max shift
    nll = masked_nll(logits, targets, mask)
    assert torch.isfinite(nll).all()
    ref = reference_nll(logits, targets, mask)
    assert torch.isfinite(ref).all()
    # relative 1e-6; plus an absolute floor of a few float32 ulps of the logit scale, which
    # float32 arithmetic on numbers of size 1e4 cannot beat (ulp(3e4) ~ 2e-3)
    atol = 4 * torch.finfo(torch.float32).eps * float(logits.abs().max())
    err = (nll.double() - ref).abs()
    assert (err <= 1e-6 * ref.abs() + atol).all(), (err.max(), ref)
    # the large losses (most of them, ~1e4) are checked to relative 1e-6 essentially alone
    big = ref > 100
    assert big.sum() >= 5
    assert ((err[big] / ref[big]) <= 1e-6).all()


def test_masked_positions_any_target_give_zero():
    logits, targets, mask = random_case(3)
    bad = targets.clone()
    bad[mask == 0] = -100
    nll_neg = masked_nll(logits, bad, mask)
    bad[mask == 0] = 10 ** 6  # an out-of-vocabulary pad id
    nll_big = masked_nll(logits, bad, mask)
    for nll in (nll_neg, nll_big):
        assert torch.isfinite(nll).all()
        assert (nll[mask == 0] == 0).all()
        torch.testing.assert_close(nll, masked_nll(logits, targets, mask))


def test_masked_rows_with_extreme_logits_give_zero_not_nan():
    logits, targets, mask = random_case(4)
    logits = logits.clone()
    masked = mask == 0
    # huge finite logits on masked rows, of both signs (float32 max ~3.4e38): whatever target a
    # masked slot holds, lse - z_target can overflow to inf there, and inf * 0 would be NaN
    logits[masked] = torch.tensor([-3e38, 3e38] * (V // 2) + [3e38])
    kept = ~masked
    ref = reference_nll(logits, targets, mask)[kept]
    for fill in (-100, 0, 1):
        t = torch.where(masked, torch.full_like(targets, fill), targets)
        nll = masked_nll(logits, t, mask)
        assert not torch.isnan(nll).any()
        assert (nll[masked] == 0).all()
        torch.testing.assert_close(nll[kept].double(), ref, atol=1e-5, rtol=0)
    # even infinite logits on a masked row do not leak a NaN into the loss (or its sum)
    inf_logits = logits.clone()
    inf_logits[masked] = torch.tensor([float("inf"), float("-inf")] * (V // 2) + [0.0])
    nll = masked_nll(inf_logits, targets, mask)
    assert (nll[masked] == 0).all()
    assert torch.isfinite(nll.sum())


def test_masked_nll_hand_worked():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probabilities 1/4, 3/4
    one = torch.ones(1, 1)
    nll1 = masked_nll(logits, torch.tensor([[1]]), one)
    nll0 = masked_nll(logits, torch.tensor([[0]]), one)
    assert nll1.item() == pytest.approx(math.log(1 + 3) - math.log(3), abs=1e-6)
    assert nll0.item() == pytest.approx(math.log(4), abs=1e-6)
    assert masked_nll(logits, torch.tensor([[1]]), torch.zeros(1, 1)).item() == 0.0


def test_fresh_gpt_loss_is_ln_vocab():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).eval()
    idx = torch.randint(0, 97, (4, 33))
    with torch.no_grad():
        logits = model(idx[:, :-1])
    nll = masked_nll(logits, idx[:, 1:], torch.ones(4, 32))
    assert abs(nll.mean().item() - math.log(97)) < 0.1


# ----------------------------------------------------------------------------- token_logprobs


def test_token_logprobs_is_minus_nll():
    logits, targets, _ = random_case(5)
    lp = token_logprobs(logits, targets)
    assert lp.shape == (B, T)
    torch.testing.assert_close(lp, -masked_nll(logits, targets, torch.ones(B, T)), atol=0, rtol=0)
    assert (lp < 0).all()


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.0, 2.5])
def test_token_logprobs_temperature(temperature):
    logits, targets, _ = random_case(6, scale=3.0)
    lp = token_logprobs(logits, targets, temperature=temperature)
    ref = F.log_softmax(logits.double() / temperature, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp.double(), ref, atol=1e-5, rtol=0)
    if temperature != 1.0:  # the temperature matters
        assert (token_logprobs(logits, targets) - lp).abs().max() > 1e-2


# ----------------------------------------------------------------------------- mean_over_tokens


@pytest.mark.parametrize("num_tokens", [None, 0])
def test_mean_over_tokens_all_masked(num_tokens):
    per_token = torch.randn(2, 5, requires_grad=True)
    loss = mean_over_tokens(per_token, torch.zeros(2, 5), num_tokens=num_tokens)
    assert loss.item() == 0.0
    assert not torch.isnan(loss)
    loss.backward()
    assert per_token.grad is not None
    assert torch.isfinite(per_token.grad).all()
    assert (per_token.grad == 0).all()


def test_mean_over_tokens_values():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert mean_over_tokens(per_token, mask).item() == pytest.approx((1 + 3 + 6) / 3)
    assert mean_over_tokens(per_token, mask, num_tokens=5).item() == pytest.approx((1 + 3 + 6) / 5)


def test_mean_over_tokens_gradient_accumulation_with_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL))  # dropout 0: train mode is deterministic
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (5, 21), generator=g)
    idx, targets = ids[:, :-1], ids[:, 1:]
    mask = (torch.rand(5, 20, generator=g) < 0.5).float()
    mask[3:, 10:] = 0.0  # the second micro-batch is shorter
    split = 3
    n_a, n_b = int(mask[:split].sum()), int(mask[split:].sum())
    assert n_a != n_b and n_a > 0 and n_b > 0
    n_total = n_a + n_b

    # one big batch
    model.zero_grad()
    full = mean_over_tokens(masked_nll(model(idx), targets, mask), mask)
    full.backward()
    grads_full = {n: p.grad.clone() for n, p in model.named_parameters()}

    # two micro-batches, each normalised by the token count of the whole step
    model.zero_grad()
    total = 0.0
    for sl in (slice(0, split), slice(split, None)):
        loss = mean_over_tokens(masked_nll(model(idx[sl]), targets[sl], mask[sl]), mask[sl], num_tokens=n_total)
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(full.item(), abs=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads_full[name], atol=1e-6, rtol=0, msg=name)
    assert model.lm_head.weight.grad.abs().max() > 1e-4  # a real gradient (lm_head, tied to wte)

    # normalising each micro-batch by its own count would be wrong (the bug this guards against)
    model.zero_grad()
    wrong = sum(mean_over_tokens(masked_nll(model(idx[sl]), targets[sl], mask[sl]), mask[sl]).item()
                for sl in (slice(0, split), slice(split, None)))
    assert abs(wrong - full.item()) > 1e-2
