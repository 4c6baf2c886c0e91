"""The multi-stage recipe (nanopost/recipe.py), tiny: base -> SFT -> DPO -> GRPO -> eval -> report card
from one command, each stage's run folder written, and a second call reusing every stage."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_recipe(out, cache):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "NANOPOST_CACHE": str(cache),
           "NANOPOST_BASE_ARGS": "--steps 3 --n_docs 300 --batch_size 4"}
    proc = subprocess.run([sys.executable, "-m", "nanopost.recipe", "--quick", "--out", str(out), "--device", "cpu",
                           "--dpo_steps", "2", "--grpo_steps", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_the_recipe_runs_every_stage_then_reuses_them(tmp_path):
    summary, _ = run_recipe(tmp_path / "recipe", tmp_path / "cache")
    assert summary["stage"] == "recipe" and set(summary["checkpoints"]) == {"base", "sft", "dpo", "grpo"}
    for stage in ("sft", "dpo", "grpo", "eval"):
        with open(tmp_path / "recipe" / stage / "summary.json") as f:
            assert json.load(f)["stage"] in (stage, "rl")
    with open(summary["report"]) as f:
        report = f.read()
    assert "| " in report and "grpo" in report and "dpo" in report
    with open(tmp_path / "recipe" / "eval" / "summary.json") as f:
        evaluated = json.load(f)["checkpoints"]
    assert len(evaluated) == 4  # base, SFT, DPO and GRPO side by side
    again, err = run_recipe(tmp_path / "recipe", tmp_path / "cache")
    assert all(f"{stage}: reusing" in err for stage in ("sft", "dpo", "grpo"))
    assert again["stage_s"]["sft"] == again["stage_s"]["dpo"] == again["stage_s"]["grpo"] == 0.0
