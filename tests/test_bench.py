"""bench.py --quick (and bench_hf.py --quick where transformers and trl are installed) run end to end
and print one JSON line per benchmark on stdout, nothing else: the contract the README's tables and
any script reading them rely on. --quick measures nothing; the numbers are only checked for sanity."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(script, tmp_path, *args):
    env = {**os.environ, "NANOPOST_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, script, "--quick", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is JSON


def test_bench_quick_prints_one_json_line_per_benchmark(tmp_path):
    lines = run_quick("bench.py", tmp_path)
    assert [d["bench"] for d in lines] == ["sft", "sample", "grpo"]
    sft, sample, grpo = lines
    assert set(sft["modes"]) == {"pad", "bucket", "pack"}
    for mode in sft["modes"].values():
        assert mode["tokens_per_s"] > 0 and 0 < mode["padding_efficiency"] <= 1
    assert sample["kv_cache"]["new_tokens_per_s"] > 0 and sample["no_cache"]["new_tokens_per_s"] > 0
    assert grpo["s_per_step"] > 0 and grpo["config"]["beta"] == 0.04
    assert all(d["threads"] >= 1 and d["torch"] and d["date"] for d in lines)


@pytest.mark.slow  # two compilations of the decoding step (~1-2 min on 2 cores)
def test_bench_quick_with_the_compiled_sampler(tmp_path):
    """--compile_sampler times generate(compile=True) beside the eager sampler, and runs the GRPO
    benchmark's train_rl.py with --compile_sampler."""
    sample, grpo = run_quick("bench.py", tmp_path, "--only", "sample,grpo", "--compile_sampler")
    assert sample["kv_cache_compiled"]["new_tokens_per_s"] > 0 and sample["compiled_speedup"] > 0
    assert sample["config"]["compile_sampler"] and "--compile_sampler" in grpo["config"]["train_rl_argv"]
    assert grpo["s_per_step"] > 0


def test_bench_hf_quick_runs_where_the_huggingface_stack_is_installed(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("trl")
    lines = run_quick("bench_hf.py", tmp_path)
    assert [d["bench"] for d in lines] == ["hf_sft", "hf_sample", "hf_grpo"]
    assert set(lines[0]["modes"]) == {"no_packing", "wrapped_packing"}
    assert lines[1]["kv_cache"]["new_tokens_per_s"] > 0 and lines[2]["s_per_step"] > 0
