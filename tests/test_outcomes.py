"""Learning outcomes on the full defaults (slow: minutes on 2 CPU cores; run with
`python -m pytest -m slow`). These are the numbers the README reports."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, cache):
    env = {**os.environ, "PYTHONPATH": ROOT, "NANOPOST_CACHE": str(cache)}
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sft_turns_continuation_into_answering(tmp_path):
    summary = run(["train_sft.py", "--out", str(tmp_path / "sft")], tmp_path / "cache")
    assert summary["base_direct_answer_rate"] <= 0.10
    assert summary["direct_answer_rate"] >= 0.95
    assert summary["padding_efficiency"] >= 0.95


@pytest.mark.slow
def test_grpo_raises_heldout_verifiable_accuracy(tmp_path):
    summary = run(["train_rl.py", "--algo", "grpo", "--out", str(tmp_path / "rl")], tmp_path / "cache")
    assert summary["accuracy_after"] - summary["accuracy_before"] >= 0.15


@pytest.fixture(scope="module")
def padded_sft(tmp_path_factory):
    """The SFT model of verbose annotators (--padding 0.9) that the preference outcomes start from."""
    tmp = tmp_path_factory.mktemp("prefs")
    summary = run(["train_sft.py", "--padding", "0.9", "--out", str(tmp / "sft_padded")], tmp / "cache")
    return summary["ckpt"], tmp


@pytest.mark.slow
def test_dpo_raises_ground_truth_preference_rate(padded_sft):
    sft, tmp = padded_sft
    summary = run(["train_rl.py", "--algo", "dpo", "--init", sft, "--steps", "60", "--out", str(tmp / "dpo")],
                  tmp / "cache")
    assert summary["stage"] == "dpo"
    assert summary["preference_rate_after"] - summary["preference_rate_before"] >= 0.20
    assert summary["heldout_reward_accuracy"] >= 0.75


@pytest.mark.slow
def test_rlhf_with_the_reward_model_raises_ground_truth_preference_rate(padded_sft):
    sft, tmp = padded_sft
    rm = run(["train_rm.py", "--out", str(tmp / "rm")], tmp / "cache")
    assert rm["stage"] == "rm" and rm["heldout_accuracy"] >= 0.75
    summary = run(["train_rl.py", "--algo", "grpo", "--reward", f"rm:{rm['ckpt']}", "--init", sft, "--steps", "40",
                   "--beta", "0.3", "--out", str(tmp / "rlhf")], tmp / "cache")
    assert summary["preference_rate_after"] - summary["preference_rate_before"] >= 0.20
