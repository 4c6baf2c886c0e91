"""HuggingFace GPT-2 folders <-> nanopost GPT (nanopost/hf.py), checked against a safetensors
writer and a hub-style state dict built here independently of the code under test."""
import base64
import json
import os
import struct
import subprocess
import sys

import pytest
import torch

from nanopost.checkpoint import load_checkpoint, save_checkpoint
from nanopost.hf import export_hf_gpt2, load_hf_gpt2, read_safetensors, write_safetensors
from nanopost.model import GPT, GPTConfig
from nanopost.model import load_hf_gpt2 as public_load_hf_gpt2
from nanopost.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=300)
BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.int64: 8}
NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def make_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**SMALL, **overrides}))
    with torch.no_grad():  # non-zero biases and LayerNorm parameters, so a mix-up would show
        for name, p in model.named_parameters():
            if p.dim() == 1:  # LayerNorm gains around 1, biases around 0
                p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.1)
    return model.eval()


def logits(model, seed=1, vocab_size=None):
    idx = torch.randint(0, vocab_size or model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(idx)


def st_bytes(tensor):
    """Raw little-endian bytes of a tensor, via numpy (bfloat16 through int16)."""
    t = tensor.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def my_safetensors(path, tensors, header_patch=None, pad=True):
    """The test's own safetensors writer: struct + json, in the order given."""
    header, data, off = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, t in tensors.items():
        raw = st_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        data, off = data + raw, off + len(raw)
    if header_patch:
        header_patch(header)
    head = json.dumps(header).encode()
    if pad:
        head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)


def hub_tensors(model, prefix="", with_buffers=True, lm_head=False):
    """What the hub's model.safetensors holds for this model, built by hand."""
    c, sd = model.config, model.state_dict()
    out = {f"{prefix}wte.weight": sd["transformer.wte.weight"], f"{prefix}wpe.weight": sd["transformer.wpe.weight"],
           f"{prefix}ln_f.weight": sd["transformer.ln_f.weight"], f"{prefix}ln_f.bias": sd["transformer.ln_f.bias"]}
    for i in range(c.n_layer):
        h = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            for kind in ("weight", "bias"):
                out[f"{prefix}h.{i}.{ln}.{kind}"] = sd[f"{h}{ln}.{kind}"]
        for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):  # HF Conv1D: (in, out)
            out[f"{prefix}h.{i}.{lin}.weight"] = sd[f"{h}{lin}.weight"].t().contiguous()
            out[f"{prefix}h.{i}.{lin}.bias"] = sd[f"{h}{lin}.bias"]
        if with_buffers:
            T = c.block_size
            out[f"{prefix}h.{i}.attn.bias"] = torch.ones(T, T).tril().view(1, 1, T, T)
            out[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if lm_head:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def write_hf_folder(path, model, tensors=None, **config):
    os.makedirs(path, exist_ok=True)
    c = model.config
    hf = {"model_type": "gpt2", "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
          "n_positions": c.block_size, "n_ctx": c.block_size, "vocab_size": c.vocab_size,
          "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", **config}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)
    my_safetensors(os.path.join(path, "model.safetensors"), hub_tensors(model) if tensors is None else tensors)
    return path


def write_tiny_tiktoken(path):
    """256 bytes + 5 merges (as tests/test_tokenizer.py): with <|endoftext|>, 262 tokens before the chat ones."""
    merges = [b"he", b"ll", b"hell", b"o ", b"wo"]
    ranks = {bytes([b]): b for b in range(256)} | {m: 256 + i for i, m in enumerate(merges)}
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))


# ----------------------------------------------------------------------------------------------
# round trips

def test_export_then_load_round_trip(tmp_path):
    model = make_gpt()
    export_hf_gpt2(model, tmp_path / "hf")
    loaded = public_load_hf_gpt2(tmp_path / "hf")
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(logits(model), logits(loaded))
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "gpt2" and hf["activation_function"] == "gelu_new" and hf["n_ctx"] == 64
    assert hf["tie_word_embeddings"] is True and "bos_token_id" not in hf  # vocab 300: ids unknown
    # hub-style file: no prefix, no lm_head, Conv1D layout, float32
    raw = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert raw.keys() == hub_tensors(model, with_buffers=False).keys()
    assert raw["h.0.mlp.c_fc.weight"].shape == (32, 128) and raw["wte.weight"].dtype == torch.float32


@pytest.mark.parametrize("prefix,buffers,lm_head", [("", True, False), ("transformer.", True, True),
                                                    ("transformer.", False, False)])
def test_loads_hub_layout_written_independently(tmp_path, prefix, buffers, lm_head):
    model = make_gpt(seed=2)
    write_hf_folder(tmp_path, model, hub_tensors(model, prefix, buffers, lm_head))
    loaded = load_hf_gpt2(tmp_path)
    assert torch.allclose(logits(model), logits(loaded), atol=1e-6, rtol=0)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_half_precision_weights_load_as_float32(tmp_path):
    model = make_gpt(seed=3)
    write_hf_folder(tmp_path, model, {k: v.half() for k, v in hub_tensors(model).items()})
    loaded = load_hf_gpt2(tmp_path)
    assert loaded.transformer.wte.weight.dtype == torch.float32
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight.half().float())


# ----------------------------------------------------------------------------------------------
# safetensors

def test_read_safetensors_dtypes(tmp_path):
    torch.manual_seed(0)
    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 3, 2).bfloat16(),
               "i64": torch.arange(-3, 3).view(2, 3), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    my_safetensors(tmp_path / "a.safetensors", tensors)
    got = read_safetensors(tmp_path / "a.safetensors")
    assert got.keys() == tensors.keys()
    for k, t in tensors.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape and torch.equal(got[k], t), k
    # and our writer reads back the same, header aligned to 8 bytes, names sorted
    write_safetensors(tmp_path / "b.safetensors", tensors, {"format": "pt"})
    got = read_safetensors(tmp_path / "b.safetensors")
    assert all(torch.equal(got[k], t) and got[k].dtype == t.dtype for k, t in tensors.items())
    data = (tmp_path / "b.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    assert [k for k in header if k != "__metadata__"] == sorted(tensors)
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]  # the temp file is gone


def test_write_safetensors_non_contiguous(tmp_path):
    t = torch.arange(12.0).view(3, 4).t()
    write_safetensors(tmp_path / "t.safetensors", {"t": t})
    assert torch.equal(read_safetensors(tmp_path / "t.safetensors")["t"], t)


def test_read_safetensors_rejects_corrupt_files(tmp_path):
    good = {"a": torch.randn(4), "b": torch.randn(2, 2).half()}

    def expect(name, match, **kw):
        path = tmp_path / name
        my_safetensors(path, good, **kw)
        with pytest.raises(ValueError, match=match) as e:
            read_safetensors(path)
        assert name in str(e.value)
        return path

    def out_of_range(h):
        h["b"]["data_offsets"] = [16, 10_000]

    def wrong_bytes(h):
        h["b"]["shape"] = [2, 3]

    def bad_dtype(h):
        h["a"]["dtype"] = "F128"

    expect("range.safetensors", r"out of range", header_patch=out_of_range)
    expect("count.safetensors", r"needs 12", header_patch=wrong_bytes)
    expect("dtype.safetensors", r"F128", header_patch=bad_dtype)
    # header length pointing past the end of the file, and a header that is not JSON
    path = tmp_path / "len.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="header length") as e:
        read_safetensors(path)
    assert "len.safetensors" in str(e.value)
    path = tmp_path / "json.safetensors"
    path.write_bytes(struct.pack("<Q", 8) + b"{not js}")
    with pytest.raises(ValueError, match="JSON"):
        read_safetensors(path)
    # a truncated file: the last tensor's bytes are missing
    path = tmp_path / "cut.safetensors"
    my_safetensors(path, good)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="'b'.*out of range"):
        read_safetensors(path)


# ----------------------------------------------------------------------------------------------
# helpful errors

def test_missing_unexpected_and_misshapen_tensors(tmp_path):
    model = make_gpt()
    tensors = hub_tensors(model)
    del tensors["h.1.mlp.c_fc.bias"]
    tensors["h.0.attn.rotary.weight"] = torch.zeros(2)
    write_hf_folder(tmp_path / "a", model, tensors)
    with pytest.raises(ValueError, match=r"missing \['h.1.mlp.c_fc.bias'\]; unexpected \['h.0.attn.rotary.weight'\]"):
        load_hf_gpt2(tmp_path / "a")
    tensors = hub_tensors(model)
    tensors["h.0.mlp.c_fc.weight"] = tensors["h.0.mlp.c_fc.weight"].t().contiguous()  # nn.Linear layout: wrong here
    write_hf_folder(tmp_path / "b", model, tensors)
    with pytest.raises(ValueError, match=r"shape mismatch.*h.0.mlp.c_fc.weight: file \(32, 128\), expected \(128, 32\)"):
        load_hf_gpt2(tmp_path / "b")
    write_hf_folder(tmp_path / "c", model, vocab_size=301)  # config and file disagree
    with pytest.raises(ValueError, match="wte.weight"):
        load_hf_gpt2(tmp_path / "c")


def test_unsupported_configs(tmp_path):
    model = make_gpt()
    for i, (setting, match) in enumerate([({"activation_function": "relu"}, "activation_function='relu'"),
                                          ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
                                          ({"n_inner": 64}, "n_inner"),
                                          ({"model_type": "gpt_neo"}, "model_type"),
                                          ({"tie_word_embeddings": False}, "untied")]):
        write_hf_folder(tmp_path / str(i), model, **setting)
        with pytest.raises(ValueError, match=match):
            load_hf_gpt2(tmp_path / str(i))
    write_hf_folder(tmp_path / "tanh", model, activation_function="gelu_pytorch_tanh")  # the same function
    load_hf_gpt2(tmp_path / "tanh")


def test_untied_lm_head_rejected(tmp_path):
    model = make_gpt()
    tensors = hub_tensors(model, "transformer.", lm_head=True)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    write_hf_folder(tmp_path, model, tensors)
    with pytest.raises(ValueError, match="untied"):
        load_hf_gpt2(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_gpt2(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model.safetensors.*safetensors package"):
        load_hf_gpt2(tmp_path)


def test_export_rejects_bias_free_model(tmp_path):
    with pytest.raises(ValueError, match="bias"):
        export_hf_gpt2(GPT(GPTConfig(**SMALL, bias=False)), tmp_path)


# ----------------------------------------------------------------------------------------------
# against transformers itself (skipped where it is not installed)

def test_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = load_hf_gpt2(tmp_path / "hf")
    idx = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)
    export_hf_gpt2(ours, tmp_path / "back")  # and transformers reads our export
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert torch.allclose(back(idx).logits, hf(idx).logits, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# checkpoints and the command line

def test_load_checkpoint_of_hf_folder_needs_an_encoding(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOPOST_TIKTOKEN_DIR", str(tmp_path / "enc"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    export_hf_gpt2(make_gpt(), tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="HuggingFace GPT-2 folder") as e:
        load_checkpoint(str(tmp_path / "hf"))
    assert "gpt2.tiktoken" in str(e.value) and "NANOPOST_TIKTOKEN_DIR" in str(e.value)


def test_load_checkpoint_of_hf_folder_grows_vocab_for_chat_tokens(tmp_path, monkeypatch):
    (tmp_path / "enc").mkdir()
    write_tiny_tiktoken(tmp_path / "enc" / "gpt2.tiktoken")
    monkeypatch.setenv("NANOPOST_TIKTOKEN_DIR", str(tmp_path / "enc"))
    model = make_gpt(vocab_size=262)  # like GPT-2: the ranks and <|endoftext|>, nothing more
    export_hf_gpt2(model, tmp_path / "hf")
    state = load_checkpoint(str(tmp_path / "hf"))
    tok, got = state["tok"], state["model"]
    assert state["meta"]["stage"] == "hf" and state["meta"]["step"] == 0 and state["meta"]["run"] == {}
    assert tok.vocab_size == 268 and got.config.vocab_size == 268 and state["meta"]["model"]["vocab_size"] == 268
    assert got.lm_head.weight is got.transformer.wte.weight
    new_rows = got.transformer.wte.weight[262:]
    assert torch.allclose(new_rows, model.transformer.wte.weight.mean(0).expand(6, -1))
    assert torch.equal(logits(got, vocab_size=262)[..., :262], logits(model))  # same ids -> same scores
    ids = [tok.bos_id] + tok.encode("hello") + [tok.end_id]  # the chat tokens now fit
    assert got(torch.tensor([ids])).shape == (1, len(ids), 268)


def test_cli_export_then_check(tmp_path):
    tok = Tokenizer.train("hello world, hello there. " * 20, vocab_size=300)
    model = make_gpt(vocab_size=tok.vocab_size)
    save_checkpoint(str(tmp_path / "ckpt"), model, tok, 5, {"lr": 1e-3}, "sft")
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = lambda *args: subprocess.run([sys.executable, "-m", "nanopost.hf", *args], env=env, cwd=tmp_path,
                                       capture_output=True, text=True, check=True).stdout
    run("export", "ckpt", "hf")
    report = json.loads(run("check", "hf").strip().splitlines()[-1])
    assert report["config"] == model.config.to_dict()
    assert report["n_params"] == model.num_params(non_embedding=False)
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf["bos_token_id"], hf["eos_token_id"]) == (tok.bos_id, tok.end_id)
    # the exported folder is a checkpoint too, with the saved nanopost tokenizer (no gpt2 file needed)
    state = load_checkpoint(str(tmp_path / "hf"))
    assert state["tok"].encode("hello world") == tok.encode("hello world")
    assert torch.equal(logits(state["model"]), logits(model))
