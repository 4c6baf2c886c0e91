"""
The model: a GPT-2 (pre-LayerNorm, learned positions, GELU MLP, tied embeddings), so real
GPT-2 weights load into it; the KV cache that sampling (nanopost/sampling.py) fills.

    from nanopost.model import GPT, GPTConfig
    model = GPT(GPTConfig.preset("tiny", vocab_size=1024))
    gpt2 = load_hf_gpt2("path/to/gpt2")  # real GPT-2 weights from a HuggingFace folder (nanopost/hf.py)

Attention is `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU) for:
- plain causal rows (training on right-padded rows: a real token never sees a pad on its right;
  the sampler's prefill, whose prompts are right-padded too);
- a boolean mask (B, 1, Tq, Tk) for packed rows (block-diagonal causal, one block per document),
  or a flex-attention block mask on GPU (document_block_mask).
Two cases are written out as two matmuls and a softmax instead, because on a CPU that is faster:
decoding with the KV cache (one query per row, keys masked per row) and training with attention
dropout (SDPA's generic path does the same maths, with a slower dropout mask; see Dropout).
"""
import math
import re
from dataclasses import dataclass, asdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from nanopost.losses import token_logprobs


@dataclass
class GPTConfig:
    block_size: int = 256   # longest sequence (learned positions)
    vocab_size: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    dropout: float = 0.0
    bias: bool = True       # GPT-2 has biases in Linear and LayerNorm

    @staticmethod
    def preset(name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
        return GPTConfig(**{**PRESETS[name], **overrides})

    def to_dict(self):
        return asdict(self)


PRESETS = {
    # CPU default: a few million parameters, trains in minutes on 2 cores
    "tiny": dict(n_layer=4, n_head=4, n_embd=192, block_size=256),
    # the benchmark shape shared with the HuggingFace comparison (0.89M parameters)
    "bench": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=512, dropout=0.1),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=512),
    # the GPT-2 family shapes
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=50257),
}


class KVCache:
    """Pre-allocated keys and values for every layer: (n_layer, B, H, T_max, D). Row b holds its
    prompt at positions 0..n_b-1 and its new tokens right after it (rows are right-padded, so a
    short prompt never pays for the longest one). Two ways to write:
      prefill   (prefill(rows, source)): the forward of t positions of some distinct prompts puts
                prompt source[i]'s keys at positions 0..t-1 of cache row rows[i] (a GRPO group's
                rows all copy one prompt's forward);
      decoding  (decode_at(slots, end)): row b's one new key goes to position slots[b], and
                update() returns the keys/values of positions 0..end-1; the attention mask hides,
                per row, the positions beyond that row's own end."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        if max_len > config.block_size:  # so a decoding position (< max_len) is always a learned one
            raise ValueError(f"a KV cache of {max_len} positions exceeds the context of {config.block_size} tokens")
        D = config.n_embd // config.n_head
        self.k = torch.zeros(config.n_layer, batch_size, config.n_head, max_len, D, device=device, dtype=dtype)
        self.v = torch.zeros(config.n_layer, batch_size, config.n_head, max_len, D, device=device, dtype=dtype)
        self.batch_rows = torch.arange(batch_size, device=device)
        self.heads = torch.arange(config.n_head, device=device)
        self.layer_ids = torch.arange(config.n_layer, device=device)
        self.prefill(slice(None), slice(None))  # by default a prefill fills every row from itself

    def prefill(self, rows, source):
        """The next forward is a prefill: cache row rows[i] gets the keys of its row source[i] (long
        index tensors, or slices)."""
        self.fill_rows, self.fill_source, self.slots = rows, source, None

    def decode_at(self, slots, end):
        """Switch to decoding: the next update writes row b's key at slots[b] (B,) long; keys
        0..end-1 are returned (end > max(slots), given by the caller: no host sync per step)."""
        self.slots, self.end = slots, end

    def update(self, layer, k, v):
        """Store k, v (n, H, t, D); return the keys/values to attend to: while prefilling, k and v
        themselves (the prefill starts at position 0); while decoding, positions 0..end-1 (B, H, end, D)."""
        if self.slots is None:
            t = k.size(2)
            self.k[layer, self.fill_rows, :, :t] = k[self.fill_source]
            self.v[layer, self.fill_rows, :, :t] = v[self.fill_source]
            return k, v
        # one index_put_ into the whole cache, the layer an index tensor too: under torch.compile,
        # k[layer, rows, :, slots] = ... or k[layer].index_put_(...) copy the layer's cache twice per
        # write (measured: 4x slower sampling than eager); this form updates it in place
        where = (self.layer_ids[layer], self.batch_rows[:, None], self.heads, self.slots[:, None])  # (B, H) each
        self.k.index_put_(where, k[:, :, 0])  # (B, H, D) at (layer, b, h, slots[b])
        self.v.index_put_(where, v[:, :, 0])
        return self.k[layer, :, :, :self.end], self.v[layer, :, :, :self.end]


class PrefixKV:
    """Keys/values of shared prompt prefixes, kept with their gradients: the G completions of one
    prompt (a GRPO group) attend to one forward of it instead of G copies (prefix sharing). Exact:
    the same attention over the same keys; autograd sums each prefix's gradient over its rows.
    While recording (the forward of the U distinct prefixes, right-padded) update() stores each
    layer's k, v (U, H, P, D) and returns them; then row b's keys are its prefix's (prefix_of[b])
    followed by its own: (B, H, P + T, D). The caller's mask hides a prefix's padding."""

    def __init__(self, prefix_of):
        self.prefix_of, self.k, self.v, self.recording = prefix_of, [], [], True

    def update(self, layer, k, v):
        if self.recording:
            self.k.append(k)
            self.v.append(v)
            return k, v
        return (torch.cat([self.k[layer][self.prefix_of], k], dim=2),
                torch.cat([self.v[layer][self.prefix_of], v], dim=2))


class Dropout(nn.Module):
    """Inverted dropout, x * 1[keep] / (1 - p): nn.Dropout's maths. On a CPU the mask comes from
    keep_mask (numpy, seeded by one draw from torch's generator, so torch.manual_seed still fixes
    every mask) and becomes floats through uint8 (torch's bool-to-float paths are several times
    slower on CPU): 1.3 ms for 1.3M units against 4.3 ms from torch.rand, whose Mersenne Twister
    runs on one thread (its uniforms were a tenth of a CPU training step at dropout 0.1), and
    6.6 ms from bernoulli_. Elsewhere F.dropout's fused kernel."""

    def __init__(self, p):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.p == 1:
            return F.dropout(x, self.p, training=True)
        keep = torch.from_numpy(keep_mask(x.numel(), self.p, int(torch.randint(0, 2 ** 62, ()))))
        mask = keep.view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - self.p)).view(x.shape)  # 0 or 1/(1-p)
        return x * mask


def keep_mask(n, p, seed):
    """n independent draws of 1[kept] with P(dropped) = p to within 2^-40: bool numpy array (n,).
    Eight random bits per unit (the raw 64-bit outputs of numpy's SFC64 generator, cut in eight):
    with p * 2^8 = whole + frac, a unit is dropped when its 8 bits u < whole, kept when u > whole,
    and on the tie u == whole (one unit in 256) dropped with probability frac by a second, 32-bit
    draw. So P(drop) = whole / 2^8 + frac / 2^8 exactly, up to rounding frac to 32 bits."""
    bits = np.random.SFC64(seed)
    u = bits.random_raw((n + 7) // 8).view(np.uint8)[:n]  # (n,) uniform on 0..255
    whole = int(p * 256)  # floor (p < 1)
    keep = u > whole
    ties = np.flatnonzero(u == whole)
    if len(ties):
        keep[ties] = (bits.random_raw(len(ties)) >> 32) >= round((p * 256 - whole) * 2 ** 32)
    return keep


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.attn_dropout = Dropout(config.dropout)

    def forward(self, x, attn_mask=None, kv_cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, H, T_past + T, D)
        dropout_p = self.dropout if self.training else 0.0
        if isinstance(attn_mask, BlockMask):  # packed rows on a GPU: no (T × T) mask in memory
            if dropout_p:
                raise ValueError("flex attention has no attention dropout: train with --attention sdpa or dropout 0")
            y = _flex(q, k, v, attn_mask)
        elif dropout_p and q.device.type == "cpu":  # SDPA would take its generic path anyway; this one
            # draws the dropout mask from uniforms (Dropout) and skips SDPA's masked-row checks
            if attn_mask is None:
                attn_mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            # the 1/sqrt(D) scale goes on q (B, H, T, D), and the mask is filled in place: two fewer
            # passes over the (B, H, T, T) scores forward and one fewer backward
            scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (B, H, T, T)
            y = self.attn_dropout(scores.masked_fill_(~attn_mask, float("-inf")).softmax(dim=-1)) @ v
        elif attn_mask is None:  # plain causal (with a cache: the prefill, which starts at position 0)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1 and kv_cache is not None:  # decoding: one query per row; two small matmuls beat
            # SDPA's CPU kernel (which tiles for long queries) several times over, and are what SDPA's
            # generic path computes on a GPU given this per-row mask
            scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (B, H, 1, T_keys)
            y = scores.masked_fill_(~attn_mask, float("-inf")).softmax(dim=-1) @ v  # (B, H, 1, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's tanh GELU


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache, layer)  # pre-LayerNorm residual
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings, as GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, pos=None, attn_mask=None, kv_cache=None, return_hidden=False, keep=None, prefix=None):
        """idx (B, T) token ids; pos (B, T) positions (default 0..T-1; decoding passes each row's);
        attn_mask (B, 1, T, T_keys) bool, True = may attend (default: causal), or a flex-attention
        BlockMask (document_block_mask).
        Returns logits (B, T, V), or the final hidden states (B, T, C) for the reward/value heads.
        keep (B, T) bool: only those positions reach the head, returned as (n, V) / (n, C) in
        row-major order; a loss that reads a third of the positions (SFT's targets, RL's
        completion tokens) then pays lm_head and the softmax for that third only.
        prefix (prefix_idx (U, P), prefix_of (B,)): row b continues prefix row prefix_of[b] (at
        positions 0..P-1, right-padded), which runs once for all the rows that share it (PrefixKV);
        attn_mask is then (B, 1, T, P + T): the prefix's real positions, then the row's own keys."""
        if prefix is not None:
            prefix_idx, prefix_of = prefix
            kv_cache = PrefixKV(prefix_of)
            x = self.transformer.drop(self.transformer.wte(prefix_idx) + self.transformer.wpe(
                torch.arange(prefix_idx.size(1), device=idx.device)))  # (U, P, C)
            for i, block in enumerate(self.transformer.h):  # records each layer's keys/values
                x = block(x, None, kv_cache, i)
            kv_cache.recording = False
        B, T = idx.shape
        if pos is None:
            pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T)
        # decoding with a KVCache, positions are < its max_len <= block_size (checked when it was made);
        # a host sync here would split the sampler's compiled decoding step in two
        decoding = isinstance(kv_cache, KVCache) and kv_cache.slots is not None
        if not decoding and int(pos.max()) >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} is beyond the context of {self.config.block_size} tokens")
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, kv_cache, i)
        x = self.transformer.ln_f(x)
        if keep is not None:
            x = x[keep]  # (n, C)
        return x if return_hidden else self.lm_head(x)  # (B, T, V) or (n, V)

    def configure_optimizer(self, lr, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu"):
        """AdamW; weight decay on matrices only (not biases, LayerNorm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return adamw(groups, lr, device_type, betas)

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6 N + 12 L H D T."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * seq_len


def adamw(params, lr, device_type, betas=(0.9, 0.95), weight_decay=0.0):
    """torch's AdamW (params: tensors or parameter groups), with its fused kernel on CUDA and CPU:
    on a CPU 3.6x faster than the per-tensor loop for the bench model."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                             fused=device_type in ("cuda", "cpu"))


def load_hf_gpt2(path):
    """A HuggingFace GPT-2 folder (config.json + model.safetensors) -> GPT. See nanopost/hf.py."""
    from nanopost.hf import load_hf_gpt2 as load  # hf imports this module
    return load(path)


def response_logprobs(model, idx, response_mask, pos=None, attn_mask=None):
    """log π(x_t | x_<t) at every response token of right-padded rows, 0 elsewhere: (B, T-1), entry
    t-1 for token t. Only the positions that predict a response token go through lm_head (no (B, T, V)
    logits); causal attention, so dropping the last position changes no earlier one. model: a GPT
    (or its DDP wrapper); response_mask (B, T), 1 on response tokens."""
    keep = response_mask[:, 1:].bool()                                                       # (B, T-1)
    logits = model(idx[:, :-1], pos=None if pos is None else pos[:, :-1],
                   attn_mask=None if attn_mask is None else attn_mask[..., :-1, :-1], keep=keep)  # (n, V)
    logp = token_logprobs(logits, idx[:, 1:][keep])                                          # (n,)
    return torch.zeros(keep.shape, dtype=logp.dtype, device=idx.device).masked_scatter(keep, logp)


class ScalarModel(nn.Module):
    """A GPT body with a scalar head: one number per position (B, T). The PPO critic (§9, a
    value V(prefix) per token) and the reward model (§7, read at the last real token).

    logp_weight w > 0 (reward models, train_rm.py --reward_logp w): the score also carries w · a
    language model's log-likelihood of the response so far,
        score_t = head(h_t) + w · Σ_{s <= t, s in the response} log π(x_s | x_<s),
    so the reward can use what the language model knows (whether the answer is the one it would
    give) instead of having to learn that check into the head. π is the body's own language-model
    head, or, with logp_model (train_rm.py --logp_frozen), a frozen language model (a copy of the
    body's starting point): training then cannot rewrite the knowledge the reward reads."""

    def __init__(self, gpt, logp_weight=0.0, logp_model=None):
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # starts at 0 everywhere: no prior on the scale of returns
        nn.init.zeros_(self.head.bias)
        self.logp_weight = logp_weight
        self.logp_model = logp_model.requires_grad_(False).eval() if logp_model is not None else None

    def train(self, mode=True):
        super().train(mode)
        if self.logp_model is not None:
            self.logp_model.eval()  # frozen: no dropout, whatever mode the reward model trains in
        return self

    def forward(self, idx, pos=None, attn_mask=None, response_mask=None, return_logits=False):
        """Scalars (B, T). response_mask (B, T), 1 on response tokens: needed when logp_weight is set.
        return_logits=True also returns the body's next-token logits (B, T, V) from the same pass
        (an auxiliary language-model loss, as train_rm.py --lm_coef)."""
        hidden = self.gpt(idx, pos=pos, attn_mask=attn_mask, return_hidden=True)  # (B, T, C)
        scores = self.head(hidden).squeeze(-1)                                     # (B, T)
        logits = self.gpt.lm_head(hidden) if return_logits else None               # (B, T, V)
        if self.logp_weight:
            assert response_mask is not None, "a reward model with logp_weight needs the response_mask"
            if self.logp_model is not None:
                with torch.no_grad():
                    token_logp = response_logprobs(self.logp_model, idx, response_mask, pos, attn_mask)  # (B, T-1)
            else:  # the body's own head on the hidden states this pass already has, response positions only
                keep = response_mask[:, 1:].bool()
                kept = logits[:, :-1][keep] if logits is not None else self.gpt.lm_head(hidden[:, :-1][keep])
                token_logp = torch.zeros(keep.shape, device=idx.device, dtype=kept.dtype).masked_scatter(
                    keep, token_logprobs(kept, idx[:, 1:][keep]))
            scores = scores + self.logp_weight * F.pad(token_logp.cumsum(1), (1, 0))  # position 0 is never a response
        return (scores, logits) if return_logits else scores


def document_mask(doc_ids):
    """Block-diagonal causal mask for packed rows: (B, T) document ids -> (B, 1, T, T) bool.
    A token attends to earlier tokens of its own document only (§4 packing)."""
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)  # (B, T, T)
    return (same_doc & causal).unsqueeze(1)


def document_block_mask(doc_ids):
    """The same mask as document_mask, as a flex-attention BlockMask: attention is computed only in
    the (128 x 128) tiles that hold a visible pair, and the attention kernel never reads a (B, T, T)
    mask (building the BlockMask evaluates the rule once per row; torch.compile of this function
    would avoid even that). GPU fast path."""
    B, T = doc_ids.shape

    def same_doc_causal(b, h, q, kv):
        return (doc_ids[b, q] == doc_ids[b, kv]) & (kv <= q)

    return create_block_mask(same_doc_causal, B, None, T, T, device=doc_ids.device)


_compiled_flex = None


def _flex(q, k, v, block_mask):
    """flex_attention, compiled into a fused kernel on GPU (eager elsewhere: correct, not fast)."""
    global _compiled_flex
    if q.device.type != "cuda":
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


PEAK_FLOPS = {  # dense peak per GPU, FLOP/s: {dtype: peak}; the first name that is a word of the device name wins
    "H100 PCIe": {"bfloat16": 756e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float32": 30.3e12},
    "4090": {"bfloat16": 165e12, "float32": 82.6e12},
}


def peak_flops(device, dtype="float32"):
    """The device's dense peak FLOP/s for dtype, from PEAK_FLOPS; 0 when unknown (every CPU)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)  # e.g. "NVIDIA A100-SXM4-80GB"; "L4" must not match "L40S"
    return next((peaks.get(dtype, 0.0) for key, peaks in PEAK_FLOPS.items()
                 if re.search(rf"\b{re.escape(key)}\b", name)), 0.0)


def estimate_mfu(model, tokens_per_s, seq_len, device, dtype="float32"):
    """Model FLOPs utilisation: flops_per_token(seq_len) x tokens/s / the device's peak; 0 when
    the peak is unknown. tokens_per_s is per device."""
    peak = peak_flops(device, dtype)
    return model.flops_per_token(seq_len) * tokens_per_s / peak if peak else 0.0
