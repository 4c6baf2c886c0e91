"""
Checkpoints: one folder holding everything a later stage or a resumed run needs:

  model.pt       weights (state_dict)
  config.json    model config, the run's config, stage and step (the next stage inherits it)
  tokenizer.json the tokenizer
  optimizer.pt   optimiser state (only while training; absent in exported models)
  rng.pt         python / numpy / torch RNG states, so a resumed run replays the same randomness
  extra.pt       anything stage-specific (a value head, reward statistics, ...)

Written atomically: everything goes to a temporary folder first, which then replaces the old
one by renames; a crash at any moment leaves either the old or the new checkpoint whole.

load_checkpoint also takes a HuggingFace GPT-2 folder (config.json + model.safetensors, see
nanopost/hf.py), so any stage can start from real GPT-2 weights: `--init path/to/gpt2`.
"""
import json
import os
import shutil
import sys
import tempfile

import torch

from nanopost import dist
from nanopost.hf import load_hf_gpt2, resize_token_embeddings
from nanopost.model import GPT, GPTConfig
from nanopost.tokenizer import Tokenizer


def save_checkpoint(path, model, tok, step, config, stage, optimizer=None, rng=None, extra=None):
    """Atomic: written to a temporary folder, then renamed over `path`. Under torchrun every rank
    calls it, rank 0 writes, and all wait until the checkpoint is there."""
    if dist.is_main():
        _write_checkpoint(path, model, tok, step, config, stage, optimizer, rng, extra)
    dist.barrier()


def _write_checkpoint(path, model, tok, step, config, stage, optimizer, rng, extra):
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".ckpt-tmp-")
    raw = getattr(model, "module", model)  # unwrap DDP
    raw = getattr(raw, "_orig_mod", raw)  # unwrap torch.compile
    torch.save(raw.state_dict(), os.path.join(tmp, "model.pt"))
    meta = {"stage": stage, "step": step, "model": raw.config.to_dict(), "run": config}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    tok.save(tmp)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
    if rng is not None:
        torch.save(rng, os.path.join(tmp, "rng.pt"))
    if extra is not None:
        torch.save(extra, os.path.join(tmp, "extra.pt"))
    old = path + ".old"
    if os.path.exists(path):
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_exists(path):
    return os.path.exists(os.path.join(path, "model.pt")) or os.path.exists(os.path.join(path + ".old", "model.pt"))


def load_checkpoint(path, device="cpu"):
    """-> dict(model, tok, meta, optimizer_state, rng, extra). Falls back to path.old if a crash
    happened between the two renames of save_checkpoint. A HuggingFace GPT-2 folder loads as a
    step-0 checkpoint of stage "hf" (see _load_hf_folder)."""
    if not os.path.exists(os.path.join(path, "model.pt")) and os.path.exists(os.path.join(path + ".old", "model.pt")):
        path = path + ".old"
    if not os.path.exists(os.path.join(path, "model.pt")) and os.path.exists(os.path.join(path, "model.safetensors")):
        return _load_hf_folder(path, device)
    if not os.path.exists(os.path.join(path, "model.pt")):
        raise FileNotFoundError(f"no checkpoint at {path} (expected {os.path.join(path, 'model.pt')})")
    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    model = GPT(GPTConfig(**meta["model"]))
    model.load_state_dict(torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True))
    model.to(device)

    def optional(name):
        p = os.path.join(path, name)
        return torch.load(p, map_location="cpu", weights_only=False) if os.path.exists(p) else None

    return {"model": model, "tok": Tokenizer.load(path), "meta": meta, "optimizer_state": optional("optimizer.pt"),
            "rng": optional("rng.pt"), "extra": optional("extra.pt"), "path": path}


def _load_hf_folder(path, device):
    """A HuggingFace GPT-2 folder as a step-0 checkpoint. Tokenizer: the one export_hf_gpt2 saved
    in nanopost_tokenizer/, else GPT-2's encoding from local files (Tokenizer.standard). GPT-2's
    vocabulary (50257) has no room for the chat special tokens that follow it, so the embedding
    grows to the tokenizer's size (resize_token_embeddings: new rows = mean row)."""
    model = load_hf_gpt2(path)
    if os.path.exists(os.path.join(path, "nanopost_tokenizer", "tokenizer.json")):
        tok = Tokenizer.load(os.path.join(path, "nanopost_tokenizer"))
    else:
        try:
            tok = Tokenizer.standard("gpt2")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{path} is a HuggingFace GPT-2 folder without a nanopost tokenizer, so it "
                                    f"needs GPT-2's encoding from a local file. {e}") from e
    if tok.vocab_size > model.config.vocab_size:
        resize_token_embeddings(model, tok.vocab_size)
    model.to(device)
    meta = {"stage": "hf", "step": 0, "model": model.config.to_dict(), "run": {}, "source": os.path.abspath(path)}
    return {"model": model, "tok": tok, "meta": meta, "optimizer_state": None, "rng": None, "extra": None, "path": path}


def cached_checkpoint(stage, train_main, device="auto", seed=0):
    """The checkpoint of `stage` that a later stage starts from when given no --init: reuse the
    cached one, or train it now with the script's defaults (train_main(argv) is the script's main).
    Cache folder: $NANOPOST_CACHE (default runs/cache)/<stage>; extra flags for that training
    run may be given in $NANOPOST_<STAGE>_ARGS (the tests use it to train small)."""
    out = os.path.join(os.environ.get("NANOPOST_CACHE", "runs/cache"), stage)
    path = os.path.join(out, "ckpt")
    if not checkpoint_exists(path):
        print(f"[bootstrap] no {stage} model at {path}: training one with the defaults", file=sys.stderr, flush=True)
        extra = os.environ.get(f"NANOPOST_{stage.upper()}_ARGS", "").split()
        train_main(["--out", out, "--device", device, "--seed", str(seed)] + extra)
    return path
