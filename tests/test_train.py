"""The training scripts end to end, small: CLI runs with JSON summaries, the bootstrap cache,
exact resume, and a non-finite loss that stops the run and keeps the last good checkpoint."""
import json
import os
import subprocess
import sys

import pytest

import nanopost.nexttoken
import train_base
import train_sft
from nanopost.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_BASE = ["--steps", "6", "--n_docs", "400", "--batch_size", "4", "--log_every", "2"]
SMALL_SFT = ["--steps", "4", "--n_train", "80", "--eval_per_family", "2", "--batch_size", "4", "--log_every", "2"]


def run_script(args, env_extra=None, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_base_then_sft_from_the_command_line(tmp_path):
    base, err = run_script(["train_base.py", "--out", str(tmp_path / "base")] + SMALL_BASE)
    assert base["stage"] == "base" and base["steps"] == 6
    assert "step 6/6" in err and "eta" in err and "tokens_per_s" in err
    assert [m["step"] for m in read_metrics(tmp_path / "base")] == [2, 4, 6]
    sft, _ = run_script(["train_sft.py", "--init", str(tmp_path / "base" / "ckpt"), "--out", str(tmp_path / "sft"),
                         "--batching", "bucket"] + SMALL_SFT)
    for key in ("stage", "direct_answer_rate", "base_direct_answer_rate", "heldout_accuracy",
                "padding_efficiency", "tokens_per_s", "wall_s"):
        assert key in sft, key
    assert sft["stage"] == "sft" and set(sft["heldout_accuracy"]) >= {"arithmetic", "facts", "code", "all"}
    assert 0 <= sft["direct_answer_rate"] <= 1 and 0 < sft["padding_efficiency"] <= 1
    ckpt = load_checkpoint(str(tmp_path / "sft" / "ckpt"))
    assert ckpt["meta"]["stage"] == "sft" and ckpt["meta"]["step"] == 4
    assert ckpt["meta"]["run"]["batching"] == "bucket"  # the checkpoint stores its config


def test_sft_bootstraps_and_then_reuses_the_base_model(tmp_path):
    env = {"NANOPOST_CACHE": str(tmp_path / "cache"), "NANOPOST_BASE_ARGS": " ".join(SMALL_BASE)}
    _, err = run_script(["train_sft.py", "--out", str(tmp_path / "sft")] + SMALL_SFT, env)
    assert "[bootstrap]" in err and os.path.exists(tmp_path / "cache" / "base" / "ckpt" / "model.pt")
    _, err = run_script(["train_sft.py", "--out", str(tmp_path / "sft2")] + SMALL_SFT, env)
    assert "[bootstrap]" not in err  # cached


def test_help_documents_every_flag():
    for script, cfg in (("train_base.py", train_base.BaseConfig), ("train_sft.py", train_sft.SFTConfig)):
        out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True).stdout
        for name in cfg.__dataclass_fields__:
            assert f"--{name}" in out, (script, name)


class Crash(Exception):
    pass


def test_resume_replays_the_uninterrupted_run(tmp_path, monkeypatch):
    args = ["--steps", "8", "--n_docs", "300", "--batch_size", "4", "--log_every", "1", "--save_every", "4"]
    train_base.main(["--out", str(tmp_path / "full")] + args)
    full = [m["loss"] for m in read_metrics(tmp_path / "full")]

    real_log = nanopost.common.RunLog.log

    def crash_at_step_6(self, step, **metrics):
        if step == 6:
            raise Crash()  # the process dies after step 6; the last checkpoint is from step 4
        real_log(self, step, **metrics)

    monkeypatch.setattr(nanopost.common.RunLog, "log", crash_at_step_6)
    with pytest.raises(Crash):
        train_base.main(["--out", str(tmp_path / "cut")] + args)
    monkeypatch.setattr(nanopost.common.RunLog, "log", real_log)
    assert load_checkpoint(str(tmp_path / "cut" / "ckpt"))["meta"]["step"] == 4
    train_base.main(["--out", str(tmp_path / "cut"), "--resume"] + args)
    resumed = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "cut")}
    assert [resumed[s] for s in range(5, 9)] == pytest.approx(full[4:8], abs=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = nanopost.nexttoken.masked_nll
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        nll = real(*a, **k)
        return nll * float("nan") if calls["n"] > 3 else nll

    monkeypatch.setattr(nanopost.nexttoken, "masked_nll", poisoned)
    with pytest.raises(SystemExit) as e:
        train_base.main(["--out", str(tmp_path), "--steps", "6", "--n_docs", "300", "--batch_size", "4",
                         "--save_every", "2"])
    assert e.value.code == 1
    ckpt = load_checkpoint(str(tmp_path / "ckpt"))
    assert ckpt["meta"]["step"] == 2
    assert all(bool(p.isfinite().all()) for p in ckpt["model"].parameters())


def test_a_resumed_log_drops_the_steps_it_redoes(tmp_path):
    """A run logged up to step 7 but checkpointed at 5 and resumed redoes steps 6-7: one line each."""
    from nanopost.common import RunLog
    log = RunLog(str(tmp_path), 10, stage="t")
    for step in range(1, 8):
        log.log(step, loss=1.0 / step)
    resumed = RunLog(str(tmp_path), 10, start_step=5, stage="t")
    for step in range(6, 11):
        resumed.log(step, loss=0.5)
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 11))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_keeps_a_freed_activation_in_the_heap():
    """After keep_freed_memory (which pick_device calls on CPU), a 20 MB block comes from the heap
    and stays there when freed (glibc's mallinfo2: arena keeps it, nothing is mmapped); with glibc's
    defaults the same block is mmapped and handed back to the OS on free. A fresh process each."""
    script = """
import ctypes, platform, sys
from nanopost.common import keep_freed_memory
if platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"):
    print("skip"); sys.exit()
class MallInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype = MallInfo, ctypes.c_void_p
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2()
block = libc.malloc(20 << 20)
during = libc.mallinfo2()
libc.free(ctypes.c_void_p(block))
after = libc.mallinfo2()
mmapped, kept = during.hblkhd - before.hblkhd, after.arena - before.arena  # bytes
print(applied, mmapped >= 20 << 20, kept >= 16 << 20)  # the heap may have had a few MB free on top
"""
    out = {}
    for mode in ("default", "tuned"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
        res = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, cwd=ROOT, env=env)
        assert res.returncode == 0, res.stderr
        out[mode] = res.stdout.split()
    if out["default"] == ["skip"]:
        pytest.skip("not glibc >= 2.33")
    assert out["default"] == ["None", "True", "False"]  # mmapped while held, returned to the OS on free
    assert out["tuned"] == ["True", "False", "True"]  # from the heap, and kept there after free
