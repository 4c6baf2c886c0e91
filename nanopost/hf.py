"""
Real GPT-2 weights: HuggingFace GPT-2 folders (config.json + model.safetensors) <-> nanopost GPT,
with neither `transformers` nor `safetensors` installed: both formats are simple enough to read
and write directly.

    from nanopost.hf import load_hf_gpt2, export_hf_gpt2
    model = load_hf_gpt2("gpt2")                 # a folder, e.g. a clone of huggingface.co/gpt2
    export_hf_gpt2(model, "out/gpt2-copy", tok)  # loads back with GPT2LMHeadModel.from_pretrained

    python -m nanopost.hf export runs/sft/ckpt out/sft-hf   # a nanopost checkpoint -> HF folder
    python -m nanopost.hf check out/sft-hf                  # load it, print size and config

nanopost's model IS GPT-2 (pre-LN, learned positions, tanh GELU, biases, tied lm_head), so the
only differences are names and one layout: HF keeps c_attn, c_proj and c_fc as `Conv1D`, whose
weight is (in, out), where nn.Linear's is (out, in); we transpose them both ways.

The safetensors format: 8 bytes little-endian uint64 N, N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__": {str: str}},
then the data buffer (offsets are relative to its start, tensors are row-major, little-endian).
"""
import argparse
import json
import math
import os
import re
import struct
import sys
from dataclasses import replace

import torch
import torch.nn as nn

from nanopost.model import GPT, GPTConfig

# safetensors dtype names -> torch dtypes (the unsigned and float8 kinds exist only in newer torch)
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
                     ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit too

# ----------------------------------------------------------------------------------------------
# safetensors, read and written by hand


def read_safetensors(path):
    """Read every tensor of a .safetensors file -> {name: tensor} (on the CPU, dtype as stored).
    Each tensor is read into its own buffer, so peak memory is about the file's size once.
    Raises ValueError naming the file (and the tensor) on anything malformed."""
    assert sys.byteorder == "little", "safetensors data is little-endian; big-endian hosts are not supported"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise ValueError(f"{path}: corrupt safetensors header: header length {n} does not fit "
                             f"a file of {size} bytes")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header: not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: corrupt safetensors header: expected a JSON object")
        header.pop("__metadata__", None)
        buffer_size = size - 8 - n
        tensors = {}
        for name, info in header.items():
            where = f"{path}: tensor {name!r}"
            if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
                raise ValueError(f"{where}: header entry needs dtype, shape and data_offsets, got {info!r}")
            if info["dtype"] not in DTYPES:
                raise ValueError(f"{where}: unsupported dtype {info['dtype']!r} (known: {', '.join(DTYPES)})")
            dtype, shape, offsets = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ValueError(f"{where}: bad shape {shape!r}")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
                raise ValueError(f"{where}: bad data_offsets {offsets!r}")
            begin, end = offsets
            if not 0 <= begin <= end <= buffer_size:
                raise ValueError(f"{where}: data_offsets [{begin}, {end}] out of range: the data buffer "
                                 f"holds {buffer_size} bytes (file truncated?)")
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes:
                raise ValueError(f"{where}: {end - begin} bytes in the file, but shape {shape} of "
                                 f"{info['dtype']} needs {nbytes}")
            if nbytes == 0:
                tensors[name] = torch.empty(shape, dtype=dtype)
                continue
            buf = bytearray(nbytes)
            f.seek(8 + n + begin)
            if f.readinto(buf) != nbytes:
                raise ValueError(f"{where}: file ended early")
            tensors[name] = torch.frombuffer(buf, dtype=dtype).reshape(shape)  # owns buf, no copy
    return tensors


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} to a .safetensors file, atomically (temp file, then os.replace).
    Names are sorted; the header is padded with spaces so the data starts 8-byte aligned;
    metadata is an optional {str: str} dict stored as "__metadata__"."""
    assert sys.byteorder == "little", "safetensors data is little-endian; big-endian hosts are not supported"
    header, offset, names = {}, 0, sorted(tensors)
    tensors = {k: tensors[k].detach().cpu().contiguous() for k in names}
    for name in names:
        t = tensors[name]
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()), "metadata is {str: str}"
        header = {"__metadata__": dict(metadata), **header}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"  # same folder, so os.replace is a rename
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for name in names:  # raw bytes, whatever the dtype (numpy has no bfloat16, uint8 it has)
                f.write(tensors[name].reshape(-1).view(torch.uint8).numpy().tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# GPT-2: HF names and layout <-> nanopost

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # (in, out) in HF
IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # the causal-mask buffers older HF versions save
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU with the tanh approximation


def config_from_hf(hf, where="config.json"):
    """HF GPT2Config dict -> GPTConfig; ValueError for anything nanopost's GPT-2 does not compute."""
    n_embd = hf.get("n_embd", 768)
    checks = [  # (setting, nanopost's value, why it matters)
        ("model_type", "gpt2", "only the GPT-2 architecture is supported"),
        ("activation_function", TANH_GELU, "nanopost's MLP uses GELU with the tanh approximation"),
        ("layer_norm_epsilon", 1e-5, "nanopost's LayerNorm uses eps=1e-5"),
        ("n_inner", (None, 4 * n_embd), "nanopost's MLP is 4 * n_embd wide"),
        ("scale_attn_weights", True, "nanopost scales attention scores by 1/sqrt(head_dim)"),
        ("scale_attn_by_inverse_layer_idx", False, "nanopost does not scale attention per layer"),
        ("add_cross_attention", False, "nanopost's GPT has no cross-attention"),
        ("tie_word_embeddings", True, "nanopost ties lm_head to the token embedding (untied heads not supported)"),
    ]
    for key, ours, why in checks:
        if key in hf:
            ok = hf[key] in ours if isinstance(ours, tuple) else (
                math.isclose(hf[key], ours) if isinstance(ours, float) else hf[key] == ours)
            if not ok:
                raise ValueError(f"{where}: {key}={hf[key]!r} is not supported ({why}; expected {ours!r})")
    block_size = hf.get("n_positions", hf.get("n_ctx", 1024))
    return GPTConfig(n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
                     block_size=block_size, vocab_size=hf.get("vocab_size", 50257), dropout=0.0, bias=True)


def hf_state_dict(model):
    """nanopost GPT -> hub-style GPT-2 tensors: no "transformer." prefix, Conv1D weights (in, out),
    float32, no lm_head (tied to wte)."""
    out = {}
    for name, t in getattr(model, "_orig_mod", model).state_dict().items():
        if name == "lm_head.weight":
            continue
        name = name.removeprefix("transformer.")
        t = t.detach().to("cpu", torch.float32)
        out[name] = t.t().contiguous() if name.endswith(CONV1D) else t.contiguous()
    return out


def _from_hf_tensors(tensors, model, where):
    """Hub or save_pretrained names (with or without "transformer.") -> a state_dict for model.
    ValueError listing missing / unexpected names and shape mismatches."""
    expected = {k.removeprefix("transformer."): v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    lm_head = None
    sd, unexpected = {}, []
    for name, t in tensors.items():
        name = name.removeprefix("transformer.")
        if name == "lm_head.weight":
            lm_head = t
        elif IGNORED.fullmatch(name):
            continue
        elif name not in expected:
            unexpected.append(name)
        else:
            sd[name] = t.t() if name.endswith(CONV1D) else t
    missing = sorted(set(expected) - set(sd))
    if missing or unexpected:
        raise ValueError(f"{where}: tensors do not match a GPT-2 with {model.config}: "
                         f"missing {missing or 'none'}; unexpected {sorted(unexpected) or 'none'}")
    wrong = [f"{k}: file {tuple(sd[k].shape)}, expected {tuple(v)}" for k, v in expected.items() if sd[k].shape != v]
    if wrong:  # reported in the file's layout would be confusing; these are nanopost's (out, in) shapes
        raise ValueError(f"{where}: shape mismatch (in nanopost's layout, Conv1D weights transposed): " + "; ".join(wrong))
    if lm_head is not None and not torch.equal(lm_head, sd["wte.weight"]):
        raise ValueError(f"{where}: lm_head.weight differs from wte.weight: untied output heads are not supported "
                         "(nanopost ties lm_head to the token embedding)")
    return {"transformer." + k: v.float() for k, v in sd.items()}


def load_hf_gpt2(path):
    """A HuggingFace GPT-2 folder (config.json + model.safetensors) -> nanopost GPT (float32, CPU).
    Works for the hub's gpt2 / gpt2-medium / -large / -xl / distilgpt2 and for folders written by
    GPT2LMHeadModel.save_pretrained or export_hf_gpt2."""
    config_path, weights_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path} is not a HuggingFace model folder: no config.json")
    if not os.path.isfile(weights_path):
        hint = (" It has pytorch_model.bin, which nanopost does not read (a pickle): convert it once with the "
                "safetensors package, e.g. safetensors.torch.save_file(torch.load('pytorch_model.bin'), "
                "'model.safetensors').") if os.path.isfile(os.path.join(path, "pytorch_model.bin")) else ""
        raise FileNotFoundError(f"no model.safetensors in {path}.{hint}")
    with open(config_path) as f:
        config = config_from_hf(json.load(f), config_path)
    with torch.device("meta"):  # shapes only, skipping the random init of up to 1.5B parameters
        model = GPT(config)
    state_dict = _from_hf_tensors(read_safetensors(weights_path), model, weights_path)
    model.to_empty(device="cpu")
    model.transformer.wte.weight = model.lm_head.weight  # to_empty makes new tensors: tie again
    state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"]
    model.load_state_dict(state_dict)  # strict: every parameter is overwritten
    return model


def export_hf_gpt2(model, path, tok=None):
    """Write a nanopost GPT as a HuggingFace GPT-2 folder: config.json + model.safetensors (hub-style
    names, float32). With a nanopost Tokenizer, bos/eos are its <|bos|> and <|end|> (the token that
    ends an assistant turn) and the tokenizer is saved to path/nanopost_tokenizer/ (HF's
    tokenizer.json is another format, so it does not go at the top level)."""
    model = getattr(model, "_orig_mod", model)
    c = model.config
    if not c.bias:
        raise ValueError("GPT-2 has biases in every Linear and LayerNorm; a model with bias=False cannot be exported")
    os.makedirs(path, exist_ok=True)
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": c.n_layer, "n_head": c.n_head,
          "n_embd": c.n_embd, "n_positions": c.block_size, "n_ctx": c.block_size, "n_inner": None,
          "vocab_size": c.vocab_size, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
          "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "initializer_range": 0.02,
          "scale_attn_weights": True, "tie_word_embeddings": True, "use_cache": True, "torch_dtype": "float32"}
    if tok is not None:
        hf |= {"bos_token_id": tok.bos_id, "eos_token_id": tok.end_id, "pad_token_id": tok.pad_id}
        tok.save(os.path.join(path, "nanopost_tokenizer"))
    elif c.vocab_size == 50257:  # GPT-2's own vocabulary: <|endoftext|> is both
        hf |= {"bos_token_id": 50256, "eos_token_id": 50256}
    write_safetensors(os.path.join(path, "model.safetensors"), hf_state_dict(model), {"format": "pt"})
    tmp = os.path.join(path, ".config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(hf, f, indent=2)
    os.replace(tmp, os.path.join(path, "config.json"))


def resize_token_embeddings(model, vocab_size):
    """Grow the tied token embedding / lm_head to vocab_size rows, in place. New rows are the mean
    of the existing ones: a new token starts as an "average" token instead of a random direction
    that could dominate the softmax. Used to give GPT-2's 50257 tokens room for nanopost's chat
    special tokens."""
    old = model.transformer.wte.weight
    n_new = vocab_size - old.size(0)
    assert n_new >= 0, f"can only grow the vocabulary ({old.size(0)} -> {vocab_size})"
    if n_new == 0:
        return model
    with torch.no_grad():
        weight = nn.Parameter(torch.cat([old, old.mean(0, keepdim=True).expand(n_new, -1)]))
    model.transformer.wte.weight = model.lm_head.weight = weight
    model.transformer.wte.num_embeddings = model.lm_head.out_features = vocab_size
    model.config = replace(model.config, vocab_size=vocab_size)
    return model


# ----------------------------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = argparse.ArgumentParser(description="HuggingFace GPT-2 folders <-> nanopost checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a nanopost checkpoint as a HuggingFace GPT-2 folder")
    p.add_argument("ckpt", help="nanopost checkpoint folder (model.pt, config.json, tokenizer.json)")
    p.add_argument("out", help="output folder (config.json, model.safetensors, nanopost_tokenizer/)")
    p = sub.add_parser("check", help="load a HuggingFace GPT-2 folder and print its size and config as JSON")
    p.add_argument("path", help="folder with config.json and model.safetensors")
    args = parser.parse_args(argv)
    if args.command == "export":
        from nanopost.checkpoint import load_checkpoint  # checkpoint imports this module
        state = load_checkpoint(args.ckpt)
        export_hf_gpt2(state["model"], args.out, state["tok"])
        print(f"exported {args.ckpt} -> {args.out}")
    else:
        model = load_hf_gpt2(args.path)
        print(json.dumps({"n_params": model.num_params(non_embedding=False), "config": model.config.to_dict()}))


if __name__ == "__main__":
    main()
