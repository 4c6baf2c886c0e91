"""
Benchmarks of the three hot paths on one fixed reference shape, comparable with
a HuggingFace/TRL measurement of the same shape: GPT-2 architecture, GPTConfig.preset("bench")
(4 layers, 4 heads, 128 wide, context 256, vocab 512, dropout 0.1 while training), fp32, a
randomly initialised model (seed 0; no pretrained weights) and a BPE tokenizer of 512 tokens
trained on the built-in base corpus (cached in $NANOPOST_CACHE/bench, default runs/cache/bench).

    python bench.py                                  # all three, 3 repeats, 2 CPU threads
    python bench.py --only sft,sample --repeats 5 --device cuda
    python bench.py --quick                          # a few seconds: checks that it runs, measures nothing
    python bench.py --only sft,sample --device cuda --preset gpt2 --dtype bfloat16   # MFU of the 124M shape on a GPU

stdout holds one JSON line per benchmark and nothing else (progress goes to stderr). Every line
has "bench", its numbers (the median over repeats, with the per-repeat list beside it),
"device", "threads" (torch.get_num_threads()), "torch", "config" and "date".

  sft     per batching mode (pad, bucket, pack): training tokens/s of SFT steps (forward + backward
          + AdamW) of 32 rows on the built-in conversations, through nexttoken.train_steps.
          tokens_per_s counts real (non-padding) tokens, target_tokens_per_s the loss-counted ones;
          padding_efficiency = real tokens / slots over an epoch; mfu = model.flops_per_token(row
          length) x real tokens / s / the GPU's dense peak for --dtype (model.PEAK_FLOPS; null where
          the peak is unknown: every CPU). 3 warm-up steps, then 20 timed steps per repeat, a fresh model each repeat.
  sample  64 rendered SFT prompts x 48 new tokens, temperature 1, no stop token (all 48 forced):
          new_tokens_per_s of model.generate with the KV cache and with use_cache=False (the whole
          sequence recomputed every step, same sample_next), and the speed-up. With --compile_sampler
          also kv_cache_compiled: generate(compile=True) (each decoding step through torch.compile),
          timed after two full-size warm-up calls that compile it, and compiled_speedup over kv_cache.
  grpo    train_rl.main in-process: --algo grpo, 8 prompts x 8 generations x 32 new tokens, beta
          0.04 (so a reference model), num_iterations 1 (one update per batch of rollouts: TRL's
          default, so the comparison is like for like; train_rl.py's own default is 2), the roots
          prompts only (math_grader is pure Python; the code
          grader would add sandbox process start-ups). s_per_step is the median of the step_s that
          train_rl logs (held-out evaluation excluded) over the steps after the first 2, with the
          sample and grade parts beside it; completions_per_s = 64 / s_per_step. --compile_sampler:
          train_rl.py --compile_sampler (the skipped first steps hold the compiling).

Numbers go into the README's table with the machine and the date they were measured on.
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

import train_rl
from nanopost import world
from nanopost.checkpoint import save_checkpoint
from nanopost.common import RunLog, pick_device, set_seed
from nanopost.model import GPT, GPTConfig, peak_flops
from nanopost.sampling import generate
from nanopost.nexttoken import EpochBatches, NextTokenConfig, padding_efficiency, train_steps
from nanopost.tokenizer import Tokenizer, render_conversation, render_prompt

FULL = dict(sft_records=8000, sft_rows=32, warmup=3, steps=20, sample_prompts=64, new_tokens=48,
            grpo_prompts=8, grpo_generations=8, grpo_tokens=32, grpo_steps=12, grpo_skip=2,
            grpo_iterations=1)
QUICK = dict(sft_records=300, sft_rows=4, warmup=1, steps=2, sample_prompts=8, new_tokens=8,
             grpo_prompts=2, grpo_generations=2, grpo_tokens=8, grpo_steps=3, grpo_skip=1,
             grpo_iterations=1)


def info(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_and_runs(values, name):
    return {name: statistics.median(values), f"{name}_runs": values}


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or device.type


def bench_tokenizer(vocab_size=512):
    """Tokenizer.train on the built-in base corpus, cached after the first call."""
    folder = os.path.join(os.environ.get("NANOPOST_CACHE", "runs/cache"), "bench", f"tokenizer{vocab_size}")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return Tokenizer.load(folder)
    info(f"training the {vocab_size}-token tokenizer (cached in {folder})")
    tok = Tokenizer.train("\n\n".join(world.base_corpus(20000, seed=0)), vocab_size)
    tok.save(folder)
    return tok


def model_config(tok, preset):
    """The preset's shape; its vocabulary at least the bench tokenizer's (gpt2 keeps its 50257)."""
    return GPTConfig.preset(preset, vocab_size=max(tok.vocab_size, GPTConfig.preset(preset).vocab_size))


def bench_model(tok, device, preset="bench"):
    torch.manual_seed(0)
    return GPT(model_config(tok, preset)).to(device)


def sft_examples(tok, n, row_len):
    """The SFT workload: n built-in conversations as (ids, loss_mask), at most row_len + 1 tokens."""
    return [render_conversation(tok, r["messages"], row_len + 1) for r in world.sft_records(n, 0)]


def sample_prompts(tok, n):
    """The sampling workload: n built-in conversations up to their first user turn, rendered."""
    prompts = []
    for r in world.sft_records(n, seed=1):
        first_user = next(i for i, m in enumerate(r["messages"]) if m["role"] == "user")
        prompts.append(render_prompt(tok, r["messages"][:first_user + 1]))
    return prompts


def bench_sft(tok, device, s, repeats, preset="bench", dtype="float32"):
    row_len = GPTConfig.preset(preset).block_size - 1
    examples = sft_examples(tok, s["sft_records"], row_len)
    total = s["warmup"] + s["steps"]
    cfg = NextTokenConfig(steps=total, batch_size=s["sft_rows"], lr=3e-4, warmup=s["warmup"], log_every=10, dtype=dtype)
    peak, modes, flops_per_token = peak_flops(device, dtype), {}, bench_model(tok, "cpu", preset).flops_per_token
    for mode in ("pad", "bucket", "pack"):
        batches = EpochBatches(examples, mode, s["sft_rows"], row_len, tok.pad_id, seed=0)
        assert total <= batches.per_epoch, "the timed steps must stay in the first epoch (no re-batching)"
        timed = [batches[i] for i in range(s["warmup"], total)]  # builds epoch 0 outside the timing
        flops = sum(flops_per_token(b["idx"].size(1)) * b["n_real"] for b in timed)
        rates, targets, mfus = [], [], []
        for r in range(repeats):
            info(f"sft {mode}: repeat {r + 1}/{repeats}")
            model = bench_model(tok, device, preset)
            optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay, device_type=device.type)
            with tempfile.TemporaryDirectory() as out:
                log = RunLog(out, total, stage=f"bench/sft/{mode}")
                train_steps(model, optimizer, batches, dataclasses.replace(cfg, steps=s["warmup"]), device, log)
                stats = train_steps(model, optimizer, batches, cfg, device, log, start_step=s["warmup"])
            rates.append(stats["real_tokens"] / stats["train_s"])
            targets.append(stats["target_tokens"] / stats["train_s"])
            mfus.append(flops / stats["train_s"] / peak if peak else None)
        modes[mode] = {**median_and_runs(rates, "tokens_per_s"), "target_tokens_per_s": statistics.median(targets),
                       "padding_efficiency": padding_efficiency(batches),
                       "mfu": statistics.median(mfus) if peak else None}
    return {"modes": modes, "peak_flops": peak,
            "config": {"rows": s["sft_rows"], "row_len": row_len, "conversations": len(examples),
                       "warmup_steps": s["warmup"], "timed_steps": s["steps"], "optimizer": "AdamW lr 3e-4"}}


def bench_sample(tok, device, s, repeats, preset="bench", dtype="float32", compile_sampler=False):
    prompts = sample_prompts(tok, s["sample_prompts"])
    model = bench_model(tok, device, preset).eval()
    result = {}
    modes = [("kv_cache", True, False), ("no_cache", False, False)]
    for name, use_cache, compile in modes + ([("kv_cache_compiled", True, True)] if compile_sampler else []):
        # warm-up; compiled, two full-size calls: the first compiles (static shapes), its second step
        # recompiles with a dynamic cache length, and the second call must hit the cache of compiled code
        for _ in range(2 if compile else 1):
            generate(model, prompts, s["new_tokens"] if compile else 4, stop_ids=(), pad_id=tok.pad_id,
                     use_cache=use_cache, compile=compile)
        rates = []
        for r in range(repeats):
            info(f"sample {name}: repeat {r + 1}/{repeats}")
            gen = torch.Generator(device=device).manual_seed(r)
            sync(device)
            t0 = time.perf_counter()
            _, _, lengths, _ = generate(model, prompts, s["new_tokens"], temperature=1.0, stop_ids=(),
                                        pad_id=tok.pad_id, generator=gen, use_cache=use_cache, compile=compile)
            sync(device)
            rates.append(int(lengths.sum()) / (time.perf_counter() - t0))
        result[name] = median_and_runs(rates, "new_tokens_per_s")
    result["speedup"] = result["kv_cache"]["new_tokens_per_s"] / result["no_cache"]["new_tokens_per_s"]
    if compile_sampler:
        result["compiled_speedup"] = result["kv_cache_compiled"]["new_tokens_per_s"] / result["kv_cache"]["new_tokens_per_s"]
    result["config"] = {"prompts": len(prompts), "new_tokens": s["new_tokens"], "temperature": 1.0,
                        "prompt_tokens_max": max(map(len, prompts)), "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts)}
    return result


def bench_grpo(tok, device, s, repeats, preset="bench", dtype="float32", compile_sampler=False):
    """One train_rl run; its logged step times (after the first grpo_skip) are the repeats."""
    n = s["grpo_prompts"] * s["grpo_generations"]
    with tempfile.TemporaryDirectory() as out:
        init = os.path.join(out, "init")
        save_checkpoint(init, bench_model(tok, "cpu", preset), tok, 0, {"bench": "random init, seed 0"}, "bench")
        argv = ["--algo", "grpo", "--init", init, "--out", os.path.join(out, "rl"), "--device", str(device),
                "--steps", str(s["grpo_steps"]), "--prompts_per_step", str(s["grpo_prompts"]),
                "--num_generations", str(s["grpo_generations"]), "--max_completion_length", str(s["grpo_tokens"]),
                "--beta", "0.04", "--num_iterations", str(s["grpo_iterations"]),
                "--families", "roots", "--n_prompts", str(s["grpo_prompts"] * s["grpo_steps"]),
                "--eval_prompts", "1", "--eval_every", "0", "--log_every", "1", "--seed", "0", "--dtype", dtype]
        argv += ["--compile_sampler"] if compile_sampler else []
        info("grpo: train_rl.py " + " ".join(argv))
        with contextlib.redirect_stdout(sys.stderr):  # its summary line is not ours
            train_rl.main(argv)
        with open(os.path.join(out, "rl", "metrics.jsonl")) as f:
            steps = [json.loads(line) for line in f][s["grpo_skip"]:]
    step_s = [m["step_s"] for m in steps]
    return {**median_and_runs(step_s, "s_per_step"), "completions_per_s": n / statistics.median(step_s),
            "sample_s": statistics.median(m["sample_s"] for m in steps),
            "grade_s": statistics.median(m["grade_s"] for m in steps),
            "completion_length": statistics.mean(m["completion_length"] for m in steps),
            "config": {"prompts_per_step": s["grpo_prompts"], "num_generations": s["grpo_generations"],
                       "max_completion_length": s["grpo_tokens"], "beta": 0.04, "steps": s["grpo_steps"],
                       "num_iterations": s["grpo_iterations"],
                       "skipped_steps": s["grpo_skip"], "train_rl_argv": argv[4:]}}


BENCHES = {"sft": bench_sft, "sample": bench_sample, "grpo": bench_grpo}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default="sft,sample,grpo", help="comma-separated benchmarks: sft, sample, grpo")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (the median is reported)")
    p.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--preset", default="bench", help="model shape: bench (the HF comparison) | gpt2 (124M, for MFU on a GPU)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 (autocast; GPU)")
    p.add_argument("--grpo_iterations", type=int, default=None,
                   help="num_iterations of the grpo benchmark (default 1, TRL's default; train_rl.py's is 2)")
    p.add_argument("--compile_sampler", action="store_true",
                   help="sample: also time generate(compile=True) (kv_cache_compiled); grpo: train_rl.py --compile_sampler")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 1 repeat: a smoke test, not a measurement")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHES)}")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sizes, repeats = (QUICK, 1) if args.quick else (FULL, args.repeats)
    if args.grpo_iterations is not None:
        sizes = {**sizes, "grpo_iterations": args.grpo_iterations}
    tok = bench_tokenizer()
    model_cfg = model_config(tok, args.preset).to_dict()
    lines = []
    for name in names:
        set_seed(0)
        sampler = {"compile_sampler": args.compile_sampler} if name != "sft" else {}  # SFT does not sample
        result = BENCHES[name](tok, device, sizes, repeats, args.preset, args.dtype, **sampler)
        line = {"bench": name, **result, "device": f"{device.type} ({device_name(device)})",
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "config": {**result["config"], "model": model_cfg, "dtype": args.dtype, "repeats": repeats,
                           "quick": args.quick, **sampler},
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        print(json.dumps(line), flush=True)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
