"""The model and its sampler: KV cache == full recomputation, batch == alone, sampler log-probs ==
training-forward log-probs, stop tokens, top-k / top-p, context limits, document_mask, presets,
tied embeddings."""
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanopost.losses import token_logprobs
from nanopost.model import GPT, GPTConfig, KVCache, document_mask
from nanopost.sampling import generate, sample_next

V = 97
SMALL = dict(block_size=64, vocab_size=V, n_layer=2, n_head=2, n_embd=32)
PROMPT_LENGTHS = (1, 5, 9, 13)



def random_model(seed=0, std=0.2):
    """A random GPT with weights sharper than the 0.02 init, so greedy choices have clear margins."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**SMALL))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model.eval()


def random_prompts(lengths=PROMPT_LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, V, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def model():
    return random_model(0)


# ----------------------------------------------------------------------------- KV cache, batching


def test_kv_cache_greedy_equals_full_recomputation(model):
    prompts = random_prompts()
    tok_c, lp_c, len_c, stop_c = generate(model, prompts, max_new_tokens=20, temperature=0, use_cache=True)
    tok_f, lp_f, len_f, stop_f = generate(model, prompts, max_new_tokens=20, temperature=0, use_cache=False)
    assert tok_c.shape == (4, 20) and tok_c.dtype == torch.long
    assert lp_c.shape == (4, 20) and lp_c.dtype == torch.float32
    assert torch.equal(tok_c, tok_f)
    torch.testing.assert_close(lp_c, lp_f, atol=1e-5, rtol=0)
    assert len_c.tolist() == len_f.tolist() == [20] * 4
    assert not stop_c.any() and not stop_f.any()
    assert (lp_c < 0).all()
    assert len({tuple(r) for r in tok_c.tolist()}) > 1  # rows are not trivially identical


def test_kv_cache_ignores_what_unwritten_key_memory_holds(model, monkeypatch):
    """Cache positions not yet written must never reach the output, whatever they hold (the
    decoding attention masks them with masked_fill, not by adding a mask). With every key slot
    first set to 0, then NaN, then a huge value, sampling gives the same tokens and log-probs; rows
    of different prompt lengths, so each row's mask hides positions nobody wrote inside the
    attended range."""
    import nanopost.model as model_module
    prompts = random_prompts()
    assert len({len(p) for p in prompts}) > 1
    init = model_module.KVCache.__init__
    runs = []
    for junk in (0.0, float("nan"), 3e38):
        def filled_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.k.fill_(junk)
        monkeypatch.setattr(model_module.KVCache, "__init__", filled_init)
        runs.append(generate(model, prompts, max_new_tokens=20, temperature=0.9,
                             generator=torch.Generator().manual_seed(3)))
    for tok, lp, lengths, _ in runs[1:]:
        assert torch.equal(tok, runs[0][0]) and torch.equal(lengths, runs[0][2])
        torch.testing.assert_close(lp, runs[0][1], atol=0, rtol=0)


def test_each_prompt_alone_equals_batch(model):
    prompts = random_prompts()
    tok_b, lp_b, _, _ = generate(model, prompts, max_new_tokens=20, temperature=0)
    for b, p in enumerate(prompts):
        for use_cache in (True, False):
            tok_a, lp_a, _, _ = generate(model, [p], max_new_tokens=20, temperature=0, use_cache=use_cache)
            assert tok_a[0].tolist() == tok_b[b].tolist(), (b, use_cache)
            torch.testing.assert_close(lp_a[0], lp_b[b], atol=1e-5, rtol=0)


def test_greedy_matches_plain_forward_argmax(model):
    """The sampler's greedy tokens are the argmax of an ordinary (unpadded, uncached) forward."""
    prompts = random_prompts()
    tok, lp, _, _ = generate(model, prompts, max_new_tokens=10, temperature=0)
    with torch.no_grad():
        for b, p in enumerate(prompts):
            seq = torch.tensor([p + tok[b].tolist()])
            logits = model(seq[:, :-1])[0, len(p) - 1:]
            assert logits.argmax(-1).tolist() == tok[b].tolist()
            torch.testing.assert_close(F.log_softmax(logits, -1).gather(1, tok[b][:, None])[:, 0], lp[b],
                                       atol=1e-5, rtol=0)


def test_sampled_rows_differ_from_first_token():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).eval()  # plain GPT-2 init: near-uniform next-token distribution
    g = torch.Generator().manual_seed(0)
    tok, lp, lengths, _ = generate(model, [[3, 1, 4, 1, 5]] * 16, max_new_tokens=4, temperature=1.0, generator=g)
    assert len(set(tok[:, 0].tolist())) > 1
    assert len({tuple(r) for r in tok.tolist()}) == 16
    assert lengths.tolist() == [4] * 16


def test_generate_restores_training_mode(model):
    model.train()
    generate(model, [[1, 2]], max_new_tokens=2, temperature=0)
    assert model.training
    model.eval()
    generate(model, [[1, 2]], max_new_tokens=2, temperature=0)
    assert not model.training


def test_sampler_logprobs_equal_training_forward(model):
    prompts = random_prompts()
    g = torch.Generator().manual_seed(1)
    tok, lp, lengths, _ = generate(model, prompts, max_new_tokens=16, temperature=0.7, top_k=None, generator=g)
    assert lengths.tolist() == [16] * 4
    with torch.no_grad():
        for b, p in enumerate(prompts):
            seq = torch.tensor([p + tok[b].tolist()])  # no padding, one row at a time
            logits = model(seq[:, :-1])
            ref = token_logprobs(logits, seq[:, 1:], temperature=0.7)[0, len(p) - 1:]
            torch.testing.assert_close(lp[b], ref, atol=1e-5, rtol=0)
            # and not the temperature-1 log-probs
            assert (token_logprobs(logits, seq[:, 1:])[0, len(p) - 1:] - lp[b]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- stop tokens


def test_stop_tokens():
    N, PAD = 12, 0
    # find a random model and stop ids that make rows stop at different known positions, with one
    # row that never stops: the greedy run without stop ids tells which tokens come where
    for seed in range(50):
        model = random_model(seed)
        prompts = random_prompts((2, 7, 4, 11), seed=seed)
        base_tok, base_lp, _, _ = generate(model, prompts, max_new_tokens=N, temperature=0)
        rows = base_tok.tolist()
        never = rows[3]  # row 3 must never emit a stop token
        candidates = {}
        for b in range(3):
            for j, t in enumerate(rows[b]):
                if t not in never and t != PAD and t not in rows[b][:j]:
                    candidates.setdefault(b, []).append((j, t))
        if len(candidates) < 3:
            continue
        # the first stop id (and the position it stops at) for rows 0, 1, 2; take the earliest
        # candidate of row 0, the latest of row 1, and one of row 2
        stop_ids = [candidates[0][0][1], candidates[1][-1][1], candidates[2][len(candidates[2]) // 2][1]]
        expected = []
        for b in range(4):
            hits = [j for j, t in enumerate(rows[b]) if t in stop_ids]
            expected.append(hits[0] + 1 if hits else N)
        if len(set(expected[:3])) == 3 and expected[3] == N and max(expected[:3]) < N:
            break
    else:
        pytest.fail("no seed gives rows that stop at three different positions")

    for use_cache in (True, False):
        tok, lp, lengths, stopped = generate(model, prompts, max_new_tokens=N, temperature=0,
                                             stop_ids=stop_ids, pad_id=PAD, use_cache=use_cache)
        assert lengths.tolist() == expected  # the stop token is counted
        assert stopped.tolist() == [True, True, True, False]
        for b in range(4):
            n = expected[b]
            assert tok[b, :n].tolist() == rows[b][:n]  # identical up to and including the stop
            if b < 3:
                assert tok[b, n - 1].item() in stop_ids
            torch.testing.assert_close(lp[b, :n], base_lp[b, :n], atol=1e-5, rtol=0)
            assert (tok[b, n:] == PAD).all()
            assert (lp[b, n:] == 0).all()
            assert (lp[b, :n] < 0).all()
        assert lengths[3].item() == N and tok[3].tolist() == rows[3]


def test_all_rows_stop_early_breaks_loop(model):
    prompts = random_prompts()
    base, _, _, _ = generate(model, prompts, max_new_tokens=6, temperature=0)
    stop_ids = set(base[:, 0].tolist())  # every row stops on its first token
    tok, lp, lengths, stopped = generate(model, prompts, max_new_tokens=6, temperature=0, stop_ids=stop_ids, pad_id=5)
    assert lengths.tolist() == [1] * 4
    assert stopped.all()
    assert tok[:, 0].tolist() == base[:, 0].tolist()
    assert (tok[:, 1:] == 5).all() and (lp[:, 1:] == 0).all()


# ----------------------------------------------------------------------------- top-k / top-p


def test_top_k_1_and_tiny_top_p_equal_greedy(model):
    prompts = random_prompts()
    greedy_tok, greedy_lp, _, _ = generate(model, prompts, max_new_tokens=12, temperature=0)
    for kwargs in (dict(top_k=1), dict(top_p=1e-6)):
        g = torch.Generator().manual_seed(3)
        tok, lp, _, _ = generate(model, prompts, max_new_tokens=12, temperature=1.0, generator=g, **kwargs)
        assert torch.equal(tok, greedy_tok), kwargs
        torch.testing.assert_close(lp, greedy_lp, atol=1e-5, rtol=0)  # both temperature-1 log-probs


def test_sample_next_greedy():
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 0.0, 0.0]])
    tok, lp = sample_next(logits, temperature=0)
    assert tok.tolist() == [1, 0]
    torch.testing.assert_close(lp, F.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_top_k_only_samples_among_k_most_likely():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 20, generator=g)
    k = 4
    allowed = set(torch.topk(logits[0], k).indices.tolist())
    n = 4000
    tok, lp = sample_next(logits.expand(n, -1), temperature=1.0, top_k=k, generator=g)
    seen = set(tok.tolist())
    assert seen <= allowed
    assert seen == allowed  # all k are reachable (4000 draws)
    # log-probs are those of the full, untruncated distribution
    torch.testing.assert_close(lp, F.log_softmax(logits[0], -1)[tok])
    # and the empirical frequencies follow the renormalised top-k distribution
    p = F.softmax(logits[0], -1)
    top = torch.tensor(sorted(allowed))
    expected = p[top] / p[top].sum()
    freq = torch.bincount(tok, minlength=20)[top].float() / n
    assert (freq - expected).abs().max() < 0.04


def test_top_p_samples_smallest_prefix_reaching_p():
    probs = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])
    logits = probs.log()[None]
    # sorted: 0.30 (1), 0.25 (3) -> 0.55 >= 0.5: the nucleus is {1, 3}
    g = torch.Generator().manual_seed(0)
    tok, lp = sample_next(logits.expand(3000, -1), temperature=1.0, top_p=0.5, generator=g)
    assert set(tok.tolist()) == {1, 3}
    freq1 = (tok == 1).float().mean().item()
    assert abs(freq1 - 0.30 / 0.55) < 0.04
    torch.testing.assert_close(lp, probs.log()[tok])
    # p = 0.6: 0.30 + 0.25 = 0.55 < 0.6, so the third (0.20, index 4) joins
    tok, _ = sample_next(logits.expand(3000, -1), temperature=1.0, top_p=0.6, generator=g)
    assert set(tok.tolist()) == {1, 3, 4}
    # p = 0.25: the top token alone reaches it
    tok, _ = sample_next(logits.expand(500, -1), temperature=1.0, top_p=0.25, generator=g)
    assert set(tok.tolist()) == {1}


def test_sample_next_temperature_logprobs():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    tok, lp = sample_next(logits.expand(50, -1), temperature=0.5, generator=g)
    torch.testing.assert_close(lp, F.log_softmax(logits[0] / 0.5, -1)[tok])


# ----------------------------------------------------------------------------- limits


def test_prompt_plus_new_tokens_beyond_block_size_raises(model):
    with pytest.raises(ValueError):
        generate(model, [[1] * 60, [2]], max_new_tokens=5)
    with pytest.raises(ValueError):
        generate(model, [[1]], max_new_tokens=64)
    tok, _, _, _ = generate(model, [[1] * 60], max_new_tokens=4, temperature=0)  # exactly 64 fits
    assert tok.shape == (1, 4)


def test_forward_position_beyond_block_size_raises(model):
    with torch.no_grad():
        assert model(torch.ones(1, 64, dtype=torch.long)).shape == (1, 64, V)
        with pytest.raises(ValueError):
            model(torch.ones(1, 65, dtype=torch.long))
        with pytest.raises(ValueError):
            model(torch.ones(1, 2, dtype=torch.long), pos=torch.tensor([[0, 64]]))


def test_kv_cache_prefill_then_per_row_slots():
    cfg = GPTConfig(**SMALL)
    cache = KVCache(cfg, batch_size=2, max_len=10, device="cpu", dtype=torch.float32)
    assert (cache.k == 0).all() and (cache.v == 0).all()
    cache.k.fill_(float("nan"))  # to see exactly which key slots get written
    k = torch.randn(2, 2, 3, 16)
    k0, v0 = cache.update(0, k, -k)  # prefill: positions 0..2 of both rows
    assert k0.shape == (2, 2, 3, 16) and torch.equal(k0, k) and torch.equal(v0, -k)
    cache.decode_at(torch.tensor([3, 5]), 6)  # row 0 appends at 3, row 1 at 5
    new = torch.randn(2, 2, 1, 16)
    k1, v1 = cache.update(0, new, -new)
    assert k1.shape == (2, 2, 6, 16)
    assert torch.equal(k1[0, :, 3], new[0, :, 0]) and torch.equal(k1[1, :, 5], new[1, :, 0])
    assert torch.equal(v1[1, :, 5], -new[1, :, 0]) and torch.equal(k1[:, :, :3], k)
    assert k1[0, :, 4:].isnan().all() and k1[1, :, 3:5].isnan().all()  # nothing else written
    assert (v1[0, :, 4:] == 0).all() and (v1[1, :, 3:5] == 0).all()
    # a prefill of one distinct prompt that both rows hold: its forward has one row, the cache two
    cache = KVCache(cfg, batch_size=3, max_len=10, device="cpu", dtype=torch.float32)
    cache.k.fill_(float("nan"))
    one = torch.randn(2, 2, 4, 16)  # distinct prompts 0 and 1
    cache.prefill(torch.tensor([0, 2]), torch.tensor([1, 1]))
    k2, v2 = cache.update(1, one, 2 * one)
    assert torch.equal(k2, one) and torch.equal(v2, 2 * one)  # a prefill attends to its own keys
    assert torch.equal(cache.k[1, 0, :, :4], one[1]) and torch.equal(cache.k[1, 2, :, :4], one[1])
    assert torch.equal(cache.v[1, 2, :, :4], 2 * one[1]) and cache.k[1, 1].isnan().all() and cache.k[0].isnan().all()


def test_prefill_runs_each_distinct_prompt_once(model, monkeypatch):
    """A GRPO group repeats its prompt: the prefill forward sees each distinct prompt once, and
    the rows still get what a batch of distinct prompts gets."""
    prompts = random_prompts((3, 12, 4))
    repeated = [p for p in prompts for _ in range(3)]
    calls = []
    forward = GPT.forward

    def counting(self, idx, *args, **kwargs):
        calls.append(tuple(idx.shape))
        return forward(self, idx, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", counting)
    tok_r, lp_r, _, _ = generate(model, repeated, max_new_tokens=6, temperature=0)
    prefill_rows = sum(rows for rows, width in calls if width > 1)
    assert prefill_rows == 3  # 9 rows, 3 distinct prompts
    assert calls[0] == (2, 4) and calls[1] == (1, 12)  # lengths 3 and 4 share a chunk; 12 alone
    tok_d, lp_d, _, _ = generate(model, prompts, max_new_tokens=6, temperature=0)
    assert torch.equal(tok_r[::3], tok_d) and torch.equal(tok_r[1::3], tok_d)
    torch.testing.assert_close(lp_r[2::3], lp_d, atol=1e-5, rtol=0)


def test_inverse_cdf_sampling_never_picks_zero_probability():
    logits = torch.full((4000, 6), float("-inf"))
    logits[:, 2], logits[:, 5] = 0.0, math.log(3.0)  # p = 1/4, 3/4; tokens 0, 1, 3, 4 impossible
    tok, lp = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert set(tok.tolist()) == {2, 5}
    assert abs((tok == 5).float().mean().item() - 0.75) < 0.03
    torch.testing.assert_close(lp[tok == 2], torch.full_like(lp[tok == 2], math.log(0.25)))
    with pytest.raises(ValueError, match="not finite"):
        sample_next(torch.full((2, 6), float("nan")), temperature=1.0)


@pytest.mark.parametrize("top_k", [None, 2])
def test_inverse_cdf_largest_uniform_stays_on_a_possible_token(monkeypatch, top_k):
    """The largest float32 uniform, 1 - 2^-24, must pick the last token of positive probability,
    not an impossible token after it (or an index past the vocabulary)."""
    logits = torch.tensor([[0.0, 1.0, -float("inf"), 2.0, -float("inf"), -float("inf")],
                           [5.0, -float("inf"), -float("inf"), -float("inf"), -float("inf"), -float("inf")]])
    rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full_like(rand(*a, **k), 1 - 2 ** -24))
    tokens, logprobs = sample_next(logits, temperature=1.0, top_k=top_k)
    assert tokens.tolist() == [3, 0]
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros_like(rand(*a, **k)))
    assert sample_next(logits, temperature=1.0, top_k=top_k)[0].tolist() == [0 if top_k is None else 1, 0]


# ----------------------------------------------------------------------------- document_mask


def test_document_mask():
    doc_ids = torch.tensor([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    m = document_mask(doc_ids)
    assert m.shape == (2, 1, 8, 8) and m.dtype == torch.bool
    for b in range(2):
        for i in range(8):
            for j in range(8):
                allowed = bool(doc_ids[b, i] == doc_ids[b, j]) and j <= i
                assert bool(m[b, 0, i, j]) == allowed
    assert torch.equal(m[1, 0], torch.ones(8, 8, dtype=torch.bool).tril())  # one document = causal
    assert m[:, 0].diagonal(dim1=-2, dim2=-1).all()  # every query may attend to itself


# ----------------------------------------------------------------------------- presets, params


def analytic_params(c):
    """Parameters of the GPT-2 architecture with tied embeddings (lm_head counted once)."""
    C = c.n_embd
    per_layer = 12 * C * C + 13 * C if c.bias else 12 * C * C + 2 * C
    return c.vocab_size * C + c.block_size * C + c.n_layer * per_layer + (2 * C if c.bias else C)


def test_analytic_param_count_matches_built_model():
    for cfg in (GPTConfig(**SMALL), GPTConfig(**SMALL, bias=False)):
        model = GPT(cfg)
        assert model.num_params(non_embedding=False) == analytic_params(cfg)
        assert model.num_params() == analytic_params(cfg) - cfg.block_size * cfg.n_embd


def test_gpt2_preset():
    c = GPTConfig.preset("gpt2")
    assert (c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size) == (12, 12, 768, 50257, 1024)
    assert analytic_params(c) == 124_439_808  # GPT-2 small, "124M"
    with torch.device("meta"):  # the real module, without allocating 500 MB
        model = GPT(c)
    assert model.num_params(non_embedding=False) == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight


def test_preset_overrides_and_unknown():
    c = GPTConfig.preset("tiny", vocab_size=512, dropout=0.1)
    assert c.vocab_size == 512 and c.dropout == 0.1 and c.n_layer == 4
    with pytest.raises(ValueError):
        GPTConfig.preset("gpt5")
    for name in ("gpt2-medium", "gpt2-large", "gpt2-xl", "small", "bench"):
        c = GPTConfig.preset(name)
        assert c.n_embd % c.n_head == 0


def test_tiny_preset_size():
    c = GPTConfig.preset("tiny")
    n = analytic_params(c)
    assert 1_000_000 < n < 10_000_000
    model = GPT(c)
    assert model.num_params(non_embedding=False) == n
    assert 1_000_000 < model.num_params() < 10_000_000


def test_tied_embeddings():
    model = GPT(GPTConfig(**SMALL))
    assert model.lm_head.weight is model.transformer.wte.weight
    n_unique = sum(p.numel() for p in model.parameters())
    assert n_unique == analytic_params(model.config)  # counted once
    with torch.no_grad():
        model.transformer.wte.weight[5].fill_(0.5)
    assert (model.lm_head.weight[5] == 0.5).all()
    # a gradient through both uses lands in the one tensor
    logits = model(torch.tensor([[5, 6, 7]]))
    logits[0, -1, 5].backward()
    assert model.transformer.wte.weight.grad is model.lm_head.weight.grad
    assert model.lm_head.weight.grad[5].abs().sum() > 0


def test_init_statistics():
    """GPT-2 init: std 0.02, residual projections scaled by 1/sqrt(2 n_layer), zero biases."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=1000, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg)
    assert abs(model.transformer.wte.weight.std().item() - 0.02) < 0.001
    proj = model.transformer.h[0].attn.c_proj.weight
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * cfg.n_layer)) < 0.001
    assert (model.transformer.h[0].mlp.c_fc.bias == 0).all()


def test_top_p_keeps_the_smallest_prefix_that_reaches_the_mass_exactly():
    # {0} alone has mass 0.5 = top_p: token 1 must never be sampled
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(2000, -1)
    tokens, _ = sample_next(logits, 1.0, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0}


def test_peak_flops_matches_whole_device_names(monkeypatch):
    from nanopost.model import estimate_mfu, peak_flops
    cuda = torch.device("cuda")
    for name, peak in [("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                       ("NVIDIA H200", 989e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 0.0), ("Tesla T4", 0.0)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert peak_flops(cuda, "bfloat16") == peak, name
    assert peak_flops(torch.device("cpu"), "bfloat16") == 0.0
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=1, n_embd=8))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert estimate_mfu(model, 1e6, 16, cuda, "bfloat16") == pytest.approx(model.flops_per_token(16) * 1e6 / 989e12)
    assert estimate_mfu(model, 1e6, 16, torch.device("cpu")) == 0.0


# ----------------------------------------------------------------------------- dropout


def test_dropout_drops_at_rate_p_and_keeps_the_mean():
    from nanopost.model import Dropout
    drop = Dropout(0.1)
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.9))  # inverted scaling
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through the kept entries only
    assert drop.eval()(x) is x  # identity in eval mode
    assert Dropout(0.0).train()(x) is x


def test_training_attention_with_dropout_matches_sdpa_when_nothing_is_dropped():
    """The CPU training path (manual attention + Dropout) computes what SDPA computes: with a
    dropout probability so small that no entry is dropped, outputs and gradients agree, for
    plain causal rows and for packed rows with a document mask."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    ref = GPT(cfg).train()
    manual = GPT(GPTConfig(**{**cfg.to_dict(), "dropout": 1e-12})).train()
    manual.load_state_dict(ref.state_dict())
    idx = torch.randint(0, V, (3, 20))
    doc_ids = torch.tensor([[1] * 7 + [2] * 13, [1] * 20, [1] * 5 + [2] * 5 + [3] * 10])
    for mask in (None, document_mask(doc_ids)):
        out_ref, out_manual = ref(idx, attn_mask=mask), manual(idx, attn_mask=mask)
        torch.testing.assert_close(out_manual, out_ref, atol=1e-5, rtol=1e-5)
        ref.zero_grad(), manual.zero_grad()
        out_ref.square().mean().backward(), out_manual.square().mean().backward()
        for (name, a), b in zip(ref.named_parameters(), manual.parameters()):
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_dropout_mask_follows_torch_seed():
    """The CPU mask is drawn by numpy from a seed that torch's generator gives: torch.manual_seed
    fixes it, and successive calls draw new masks."""
    from nanopost.model import Dropout
    drop, x = Dropout(0.3).train(), torch.ones(4, 1000)
    torch.manual_seed(5)
    a, b = drop(x), drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), a) and not torch.equal(a, b)
    assert a.unique().tolist() == [0.0, torch.tensor(1 / 0.7).item()] and abs((a == 0).float().mean().item() - 0.3) < 0.03


def test_keep_mask_drop_rate_is_exact_beyond_its_8_bits():
    """keep_mask draws 8 bits per unit and breaks the tie u == floor(p 2^8) with a second draw: the
    drop rate is p, where 8 or 16 bits alone (p rounded down or to the nearest multiple of 2^-8 or
    2^-16) would be several standard deviations away with 40M draws."""
    from nanopost.model import keep_mask
    n = 40_000_000
    for p, seed, widths in ((0.3 / 2 ** 16, 1, (8, 16)), (1.7 / 2 ** 16, 2, (8, 16)), (25.6 / 2 ** 8, 3, (8,)),
                            (0.45 / 2 ** 8, 4, (8,))):
        dropped = n - int(keep_mask(n, p, seed).sum())
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(dropped - n * p) < 4 * sd, (p, dropped, n * p)
        wrong = {f(p * 2 ** b) / 2 ** b for b in widths for f in (math.floor, round)}
        for q in wrong:
            assert abs(dropped - n * q) > 4 * sd, (p, dropped, q)
    assert keep_mask(7, 0.5, 0).shape == (7,) and keep_mask(7, 0.5, 0).dtype == np.bool_
    assert np.array_equal(keep_mask(1001, 0.2, 9), keep_mask(1001, 0.2, 9))
    assert not np.array_equal(keep_mask(1001, 0.2, 9), keep_mask(1001, 0.2, 10))
    assert keep_mask(1000, 0.999999, 5).sum() == 0 and keep_mask(1000, 1e-12, 5).all()


def test_adamw_fused_on_cpu_matches_the_reference_loop():
    from nanopost.model import adamw
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    ref_w = w.detach().clone().requires_grad_(True)
    fused = adamw([w], 1e-2, "cpu", weight_decay=0.1)
    ref = torch.optim.AdamW([ref_w], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"]
    for _ in range(3):
        g = torch.randn(5, 3)
        w.grad, ref_w.grad = g.clone(), g.clone()
        fused.step(), ref.step()
    torch.testing.assert_close(w, ref_w)


def test_dropout_keeps_dtype_and_handles_p_1():
    from nanopost.model import Dropout
    x = torch.ones(1000, dtype=torch.bfloat16)
    assert Dropout(0.1).train()(x).dtype == torch.bfloat16
    assert (Dropout(1.0).train()(x) == 0).all()
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_keep_returns_the_kept_positions_of_the_full_forward(model):
    idx = torch.randint(0, V, (3, 9))
    keep = torch.rand(3, 9) < 0.4
    with torch.no_grad():
        full = model(idx)
        torch.testing.assert_close(model(idx, keep=keep), full[keep], atol=1e-6, rtol=0)
        assert model(idx, keep=torch.zeros(3, 9, dtype=torch.bool)).shape == (0, V)


def test_generate_accepts_tensor_prompts(model):
    prompts = random_prompts()
    tok_l, _, _, _ = generate(model, prompts, max_new_tokens=5, temperature=0)
    tok_t, _, _, _ = generate(model, [torch.tensor(p) for p in prompts], max_new_tokens=5, temperature=0)
    assert torch.equal(tok_l, tok_t)


# ----------------------------------------------------------------------------- compiled decoding


needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                    reason="torch.compile on a CPU needs a C++ compiler")


@needs_compiler
def test_compiled_decoding_matches_eager(model):
    """generate(compile=True) runs each decoding step through torch.compile: the same tokens,
    lengths and stops as the eager sampler, log-probs to float rounding, with top-k, top-p, a stop
    token and prompts of different lengths; then a second batch of another size and length
    (recompiled with dynamic shapes) matches too, and so does greedy decoding."""
    settings = dict(temperature=0.9, top_k=40, top_p=0.95, pad_id=0)
    for prompts, n in ((random_prompts(), 20), (random_prompts((3, 8, 2), seed=1), 12)):
        seeded = lambda: torch.Generator().manual_seed(5)
        stop_id = int(generate(model, prompts, n, generator=seeded(), **settings)[0][0, 4])  # row 0 stops by step 5
        runs = [generate(model, prompts, n, generator=seeded(), stop_ids=(stop_id,), compile=c, **settings)
                for c in (False, True)]
        (tok_e, lp_e, len_e, stop_e), (tok_c, lp_c, len_c, stop_c) = runs
        assert torch.equal(tok_c, tok_e) and torch.equal(len_c, len_e) and torch.equal(stop_c, stop_e)
        torch.testing.assert_close(lp_c, lp_e, atol=1e-5, rtol=0)
        assert stop_e[0] and len_e[0] <= 5 and (len_e > 1).all()  # decoding steps ran, in the compiled function
    greedy = [generate(model, random_prompts(), 10, temperature=0, compile=c)[0] for c in (False, True)]
    assert torch.equal(*greedy)


@needs_compiler
def test_compiled_decoding_reports_non_finite_logits():
    """A NaN that first appears in a compiled decoding step (positions past the prompts have NaN
    position embeddings) raises the sampler's error instead of drawing garbage tokens."""
    model = random_model(1)
    with torch.no_grad():
        model.transformer.wpe.weight[6:] = float("nan")
    prompts = [[1, 2, 3, 4, 5]] * 3
    generate(model, prompts, 2, compile=True)  # positions 4 and 5: finite
    with pytest.raises(ValueError, match="not finite"):
        generate(model, prompts, 3, compile=True)


def test_forward_rejects_positions_beyond_the_context_also_when_compiled():
    """The bound check runs in every forward but the sampler's decoding step (generate() bounds
    its positions itself): a compiled training forward raises the same clear error as eager."""
    model = GPT(GPTConfig(**SMALL)).eval()
    too_long = torch.randint(0, V, (1, SMALL["block_size"] + 1))
    with pytest.raises(ValueError, match="beyond the context"):
        model(too_long)
    if shutil.which(os.environ.get("CXX", "g++")) is not None:
        with pytest.raises(ValueError, match="beyond the context"):
            torch.compile(model)(too_long)


def test_kv_cache_longer_than_the_context_is_refused():
    """A decoding forward skips its position check because a cache never holds more positions than
    the model has learned ones; the cache checks that when it is made."""
    cfg = GPTConfig(**SMALL)
    KVCache(cfg, batch_size=1, max_len=cfg.block_size, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="exceeds the context"):
        KVCache(cfg, batch_size=1, max_len=cfg.block_size + 1, device="cpu", dtype=torch.float32)
