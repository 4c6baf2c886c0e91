"""Data parallelism (nanopost/dist.py): two gloo processes started by torchrun on CPU compute what
one process computes on the same global batch (SFT, and DPO through the loop it shares with the reward model: the weights after training
agree to float tolerance, and so do the logged losses), RL runs under torchrun with only rank 0
writing, and a global batch that does not split over the processes is refused."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nanopost import dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sft(tiny_models):
    return tiny_models["base"], tiny_models["sft"]


def run(args, nproc=1):
    """A script in 1 plain process, or nproc processes under torchrun (gloo, CPU); -> its summary."""
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launcher + args + ["--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "only rank 0 prints the summary"
    return json.loads(lines[0])


def weights(out):
    return torch.load(os.path.join(out, "ckpt", "model.pt"))


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def assert_same_training(one, two):
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert losses(one) == pytest.approx(losses(two), rel=1e-5)
    assert len(losses(one)) == 3  # one metrics line per step, written once (rank 0)


def test_sft_on_two_processes_equals_one_process(sft, tmp_path):
    base, _ = sft
    args = ["train_sft.py", "--init", base, "--steps", "3", "--n_train", "60", "--eval_per_family", "1",
            "--batch_size", "2", "--log_every", "1"]
    run(args + ["--grad_accum", "2", "--out", str(tmp_path / "one")])            # 2 micro-batches, 1 process
    run(args + ["--grad_accum", "1", "--out", str(tmp_path / "two")], nproc=2)   # 1 micro-batch on each of 2
    assert_same_training(tmp_path / "one", tmp_path / "two")


def test_dpo_on_two_processes_equals_one_process(sft, tmp_path):
    """train_pairs, the loop of DPO and the reward model."""
    _, init = sft
    args = ["train_rl.py", "--algo", "dpo", "--init", init, "--steps", "3", "--n_pairs", "40", "--batch_size", "4",
                     "--micro_batch_size", "1", "--log_every", "1"]
    run(args + ["--out", str(tmp_path / "one")])
    run(args + ["--out", str(tmp_path / "two")], nproc=2)
    assert_same_training(tmp_path / "one", tmp_path / "two")


def test_rl_runs_under_torchrun(sft, tmp_path):
    _, init = sft
    summary = run(["train_rl.py", "--algo", "grpo", "--init", init, "--out", str(tmp_path), "--steps", "2",
                   "--prompts_per_step", "2", "--num_generations", "2", "--max_completion_length", "8",
                   "--n_prompts", "8", "--eval_prompts", "2", "--eval_every", "0", "--log_every", "1"], nproc=2)
    assert summary["stage"] == "rl" and summary["steps"] == 2
    with open(tmp_path / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 <= m["frac_reward_zero_std"] <= 1 for m in metrics)


def test_a_batch_that_does_not_split_is_refused(monkeypatch):
    assert dist.shard([1, 2, 3]) == [1, 2, 3]  # one process: everything
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    assert dist.shard([10, 11, 12, 13]) == [11, 13]
    with pytest.raises(ValueError, match="multiple of 2"):
        dist.shard([1, 2, 3])


def test_single_process_helpers_are_no_ops():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()
    assert dist.all_sum(2.5) == 2.5 and dist.all_max(3.0) == 3.0 and dist.all_gather("x") == ["x"]
    module = torch.nn.Linear(2, 2)
    assert dist.wrap(module) is module
