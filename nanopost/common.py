"""
What every script shares: dataclass configs turned into command-line flags, device choice,
seeding, and the run log (a live progress line, metrics.jsonl, a final JSON summary line).
"""
import argparse
import ctypes
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
import typing

import numpy as np
import torch

from nanopost import dist


def flag(default, help, group="run"):
    """A config field with its --help text and the group it is listed under."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group})


@dataclasses.dataclass
class RunConfig:
    """Run conventions shared by every script (the scripts' configs extend this)."""
    out: str = flag("", "output folder (checkpoint, metrics.jsonl, summary.json)")
    init: str = flag("", "checkpoint folder to start from (default: bootstrap one)")
    data: str = flag("", "JSONL data file (default: the built-in world)")
    steps: int = flag(100, "optimiser steps")
    seed: int = flag(0, "random seed")
    device: str = flag("auto", "cpu | cuda | mps | auto (cuda, then mps, then cpu)")
    resume: bool = flag(False, "continue from the checkpoint in --out")
    skip_bad: bool = flag(False, "skip bad data records (counted and reported) instead of stopping")
    log_every: int = flag(10, "steps between progress lines")
    save_every: int = flag(0, "steps between checkpoints (0: only at the end)")
    compile: bool = flag(False, "torch.compile the model (GPU)")
    dtype: str = flag("float32", "float32 | bfloat16 (autocast, GPU)")


def parse_config(cls, argv=None, description=None):
    """Build an argparse parser from a dataclass: one --flag per field, grouped, typed from the
    annotation, with the field's help text; returns an instance of cls."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    groups = {}
    for f in dataclasses.fields(cls):
        group_name = f.metadata.get("group", "run")
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        kind = hints[f.name]
        name = "--" + f.name
        if kind is list:  # a repeatable flag: --ckpt A --ckpt B -> ["A", "B"] (default None: not given)
            group.add_argument(name, default=f.default, action="append", help=f.metadata.get("help"))
        elif kind is bool:
            group.add_argument(name, default=f.default, action=argparse.BooleanOptionalAction, help=f.metadata.get("help"))
        else:
            group.add_argument(name, default=f.default, type=kind, help=f.metadata.get("help"))
    return cls(**vars(parser.parse_args(argv)))


def pick_device(name="auto"):
    """The device to train on; under torchrun this also joins the process group (nanopost/dist.py),
    and on CPU it applies keep_freed_memory (malloc settings for the whole process)."""
    if name != "auto":
        device = torch.device(name)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cpu":
        keep_freed_memory()
    return dist.setup(device)


def keep_freed_memory(mmap_threshold=32 << 20, trim_threshold=1 << 30):
    """CPU fast path: tell glibc's malloc to keep freed memory for the next tensor instead of
    handing it back to the OS. A training step frees and re-allocates the same activation sizes
    every time; with glibc's defaults, large blocks are mmapped and unmapped on free, free heap at
    the top beyond 128 KB is trimmed, and the next step page-faults the memory back in, which cost
    about a tenth of a CPU SFT step on the bench model (10-13% more tokens/s with this). Blocks up
    to mmap_threshold come from the heap, and up to trim_threshold bytes of free heap are kept.
    The same as MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 in the
    environment; a no-op where the C library is not glibc. Returns whether it was applied."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def autocast(device, dtype):
    """bf16 autocast on GPU when asked; a no-op context otherwise."""
    enabled = dtype == "bfloat16" and device.type in ("cuda", "cpu")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunLog:
    """Progress on stderr (step/total, metrics, tokens/s, ETA), one JSON object per logged step in
    out/metrics.jsonl, and the final summary as the last stdout line (and out/summary.json)."""

    def __init__(self, out, total_steps, start_step=0, stage=""):
        self.out, self.total, self.stage = out, total_steps, stage
        self.t0, self.start = time.time(), start_step
        self.main = dist.is_main()  # under torchrun only rank 0 writes and prints
        if not self.main:
            return
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "metrics.jsonl")
        if start_step == 0 and os.path.exists(self.path):
            os.remove(self.path)  # a fresh run starts a fresh log
        elif os.path.exists(self.path):  # a resumed one appends, after dropping the steps it will redo
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= start_step]
            with open(self.path, "w") as f:
                f.writelines(kept)

    def log(self, step, **metrics):
        """step counts completed steps (1..total)."""
        if not self.main:
            return
        elapsed = time.time() - self.t0
        done = max(step - self.start, 1)
        eta = elapsed / done * (self.total - step)
        metrics = {k: _plain(v) for k, v in metrics.items()}
        record = {"step": step, **metrics, "elapsed_s": round(elapsed, 2)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if not isinstance(v, (dict, list)))
        print(f"[{self.stage}] step {step}/{self.total} | {shown} | eta {eta:.0f}s", file=sys.stderr, flush=True)

    def info(self, message):
        if self.main:
            print(f"[{self.stage}] {message}", file=sys.stderr, flush=True)

    def finish(self, summary):
        summary = {k: _plain(v) for k, v in summary.items()}
        if not self.main:
            return summary
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(json.dumps(summary), flush=True)
        return summary


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
