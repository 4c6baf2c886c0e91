"""
Batched sampling with the KV cache (nanopost.model.KVCache), for every stage that generates.

    from nanopost.sampling import generate
    tokens, logprobs, lengths, stopped = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=16)

Prompts are right-padded, so a prompt sits at positions 0..n-1 and each row's new key goes to its
own slot of the cache; the prefill runs once per distinct prompt (a GRPO group shares one), in
chunks of similar length, and only the last prompt position reaches lm_head. Tokens are drawn by
inverse CDF (one uniform per row); each comes with its log-prob under the temperature-scaled
distribution, the quantity a training forward recomputes.
"""
import torch
import torch.nn.functional as F

from nanopost.model import KVCache



def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> (tokens (B,), logprobs (B,)).
    The log-prob is that of the temperature-scaled distribution *before* top-k/top-p truncation:
    the quantity a training forward recomputes as log_softmax(logits / temperature).
    temperature 0 = greedy, with log-probs at temperature 1."""
    u = uniforms(logits.size(0), temperature, logits.device, generator)
    tokens, logprobs, finite = draw(logits, temperature, top_k, top_p, u)
    check_finite(finite)
    return tokens, logprobs


def uniforms(n, temperature, device, generator=None):
    """The one uniform per row that draw() needs, (n, 1) float32 in [0, 1); None when greedy."""
    if temperature == 0:
        return None
    return torch.rand(n, 1, device=device, dtype=torch.float32, generator=generator)


def check_finite(finite):
    if finite is not None and not bool(finite):
        raise ValueError("the model's logits are not finite (NaN or inf): cannot sample")


def draw(logits, temperature, top_k, top_p, u):
    """sample_next's arithmetic, given the uniforms u (B, 1): no host sync, so it compiles with the
    decoding step. Returns tokens (B,), logprobs (B,) and whether every row's distribution was finite
    (a 0-d bool tensor; None when greedy), which the caller checks."""
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, F.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1), None
    logits = logits / temperature
    logprobs = F.log_softmax(logits, dim=-1)  # (B, V)
    filtered = logits
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(filtered, top_k, dim=-1).values[:, -1:]  # (B, 1)
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop[:, 0] = False  # always keep the most likely token
        filtered = filtered.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    # inverse-CDF sampling: the first token whose cumulative probability exceeds u ~ U[0, total).
    # Same distribution as torch.multinomial, one uniform per row instead of an exponential per
    # vocabulary entry (10x faster on a CPU). u is a float32 uniform (at most 1 - 2^-24) times the
    # float64 total, so u < total: searchsorted(right=True) lands on a token whose probability
    # raises the cumulative sum, never on a token of probability 0 and never past the end
    probs = logprobs.exp() if filtered is logits else F.softmax(filtered, dim=-1)  # (B, V)
    cdf = probs.double().cumsum(dim=-1)  # float64: in float32 a token below ~6e-8 would get zero width
    tokens = torch.searchsorted(cdf, u.double() * cdf[:, -1:], right=True).squeeze(1)
    tokens = tokens.clamp_(max=cdf.size(1) - 1)  # only reached when the total is NaN, which finite reports
    return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1), torch.isfinite(cdf[:, -1]).all()


def decode_step(model, cache, tokens, last, temperature, top_k, top_p, u):
    """One new token for every row, with the KV cache: tokens (B,) is each row's newest token, at
    position last (B,); cache.decode_at() has been called. Returns draw()'s (tokens, logprobs, finite).
    generate(compile=True) runs this through torch.compile: the LayerNorms, GELUs, residual adds,
    each layer's whole attention (a single query) and the draw's softmax become fused loops around
    the matrix products (still BLAS calls), and the step's Python runs once, at compile time."""
    keys = torch.arange(cache.end, device=tokens.device)
    visible = (keys[None, :] <= last[:, None])[:, None, None, :]  # (B, 1, 1, T): a row's own tokens
    logits = model(tokens[:, None], pos=last[:, None], attn_mask=visible, kv_cache=cache)[:, 0]  # (B, V)
    return draw(logits, temperature, top_k, top_p, u)


def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_ids=(),
             pad_id=0, generator=None, use_cache=True, compile=False):
    """Sample continuations for a batch of prompts of different lengths.

    prompts: list of B lists of token ids. Rows are right-padded: row b holds its prompt at
    positions 0..n_b-1 and its new tokens right after it, so positions need no shifting and pads
    only ever sit to the right of a row's real tokens (causal attention never sees them in the
    prefill; a per-row mask hides them while decoding): a prompt's continuation does not depend on
    what else is in the batch (up to float rounding). The prefill runs once per distinct prompt (a GRPO group shares its
    prompt), in chunks of similar length, and only the last prompt position goes through lm_head.
    A row stops after emitting any token in `stop_ids` (the stop token is kept); later slots hold
    `pad_id` with log-prob 0. Returns tokens (B, N) long, logprobs (B, N) float32, lengths (B,)
    (tokens generated, stop token included) and stopped (B,) bool (False = hit max_new_tokens).
    use_cache=False recomputes the whole sequence every step (the reference the cache must match).
    compile=True runs each decoding step through torch.compile (compiled_decode_step): the same
    arithmetic in fused kernels, so the same tokens up to float rounding; worth it from a few
    hundred steps on, as the first call compiles (~30 s on a CPU). It applies to the cached path
    only (use_cache=False stays eager).
    """
    with torch.inference_mode():  # less per-op bookkeeping than no_grad
        out = _generate(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, pad_id, generator,
                        use_cache, compile)
    return tuple(t.clone() for t in out)  # ordinary tensors: inference tensors may not enter autograd later


def _generate(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, pad_id, generator, use_cache,
              compile):
    device = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    assert min(len(p) for p in prompts) > 0, "every prompt needs at least one token"
    if P + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds the context "
                         f"of {model.config.block_size} tokens")
    L = P + max_new_tokens
    if not use_cache:  # the rows the reference recomputes; the cached path feeds the prompts to _prefill
        idx = torch.full((B, L), pad_id, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            idx[b, :len(p)] = torch.as_tensor(p, dtype=torch.long, device=device)
    prompt_len = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    rows = torch.arange(B, device=device)

    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    out_tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    cache = KVCache(model.config, B, L, device, next(model.parameters()).dtype) if use_cache else None
    was_training = model.training
    model.eval()
    step = compiled_decode_step(device) if compile else decode_step
    for t in range(max_new_tokens):
        last = prompt_len + t - 1  # (B,) position of each row's newest token: it predicts the next
        if cache is None:  # the reference: every position again, plain causal over right-padded rows
            hidden = model(idx[:, :P + t], return_hidden=True)[rows, last]  # (B, C)
            tokens, logprobs = sample_next(model.lm_head(hidden), temperature, top_k, top_p, generator)
        elif t == 0:
            tokens, logprobs = sample_next(model.lm_head(_prefill(model, prompts, cache)), temperature, top_k, top_p,
                                           generator)
        else:  # tokens: each row's newest token, the last step's (a pad once the row is done)
            cache.decode_at(last, P + t)  # the longest row's newest token sits at P + t - 1
            u = uniforms(B, temperature, device, generator)
            tokens, logprobs, finite = step(model, cache, tokens, last, temperature, top_k, top_p, u)
            check_finite(finite)
        tokens = tokens.masked_fill(done, pad_id)
        out_tokens[:, t] = tokens
        out_logprobs[:, t] = logprobs.masked_fill(done, 0.0)
        lengths += (~done).long()
        if cache is None:
            idx[rows, last + 1] = tokens
        if len(stop):
            done |= torch.isin(tokens, stop)
            if bool(done.all()):
                break
    model.train(was_training)
    return out_tokens, out_logprobs, lengths, done


_compiled_decode_steps = {}  # device type -> decode_step under torch.compile


def compiled_decode_step(device):
    """decode_step through torch.compile, made once per device type. The compiled code is reused
    while the guards hold (the same model shapes, greedy or not, the same top_k / top_p values); the
    first call pays the compile (~30 s on 2 CPU cores), and the first change of a size (the cache
    length at the second step, later the batch or prompt length) one recompile with dynamic sizes.
    Each other model shape or top_k / top_p value is one more graph; past torch._dynamo's
    recompile_limit (8) a new configuration runs eagerly (same results, with a warning). On a CPU
    the generated wrapper is C++ (cpp_wrapper): it calls the step's kernels without Python, which
    made the benchmark's sampling call 8% faster than inductor's default Python wrapper."""
    if device.type not in _compiled_decode_steps:
        options = {"cpp_wrapper": True} if device.type == "cpu" else {}
        _compiled_decode_steps[device.type] = torch.compile(decode_step, options=options)
    return _compiled_decode_steps[device.type]


def _prefill(model, prompts, cache, max_waste=1.5):
    """Fill the cache with every prompt's keys/values; return the hidden state (B, C) at each
    prompt's last token. Each distinct prompt runs once; the distinct prompts, sorted by length,
    go in chunks whose longest is at most max_waste x their shortest (little padding), and each
    chunk's forward writes its keys straight into the rows that hold its prompts."""
    device = cache.k.device
    keys = [tuple(map(int, p)) for p in prompts]  # ints: a tensor prompt's elements would hash by identity
    distinct = sorted(set(keys), key=len)
    where = {p: i for i, p in enumerate(distinct)}
    inverse = torch.tensor([where[p] for p in keys], device=device)  # (B,) row -> distinct prompt
    U = len(distinct)
    last_hidden = torch.empty(len(prompts), model.config.n_embd, device=device, dtype=cache.k.dtype)
    lo = 0
    while lo < U:
        hi = lo + 1
        while hi < U and len(distinct[hi]) <= max_waste * len(distinct[lo]):
            hi += 1
        width = len(distinct[hi - 1])
        chunk = torch.tensor([list(p) + [0] * (width - len(p)) for p in distinct[lo:hi]], device=device)
        rows = ((inverse >= lo) & (inverse < hi)).nonzero().squeeze(1)  # the batch rows of these prompts
        source = inverse[rows] - lo  # each row's prompt within the chunk
        cache.prefill(rows, source)
        hidden = model(chunk, kv_cache=cache, return_hidden=True)  # (n, width, C)
        ends = torch.tensor([len(p) - 1 for p in distinct[lo:hi]], device=device)
        last_hidden[rows] = hidden[source, ends[source]].to(last_hidden.dtype)
        lo = hi
    return last_hidden
