"""
The HuggingFace stack on bench.py's workloads, on the same machine: the comparison issue 7's speed
goals are stated against. Needs `pip install transformers trl` (not a nanopost dependency; nothing
else imports this file).

    python bench_hf.py                     # sft, sample, grpo; one JSON line each, like bench.py
    python bench_hf.py --only sft,sample --repeats 5   # (grpo's repeats are its 10 timed steps, as in bench.py)

Same model shape (transformers.GPT2LMHeadModel with GPTConfig.preset("bench")'s 4 layers, 4 heads,
128 wide, context 256, vocab 512, dropout 0.1; randomly initialised, seed 0), same token ids
(bench.py's 512-token BPE tokenizer renders the same conversations and prompts), fp32, the same
thread count. transformers needs a tokenizer object for padding and decoding, so the ids travel as
text ("17 204 9 ...") through a word-level tokenizer whose word i is token i: what the model sees
is exactly what nanopost's model sees.

TRL's configs turn activation checkpointing on by default (recomputing each layer's forward in the
backward pass); --no_checkpointing turns it off, which is the like-for-like setting for compute.
--keep_freed_memory gives TRL's process the glibc malloc settings nanopost's scripts apply to
themselves on CPU (freed activations stay in the heap); TRL gains from them too.

  sft     trl.SFTTrainer, completion-only loss (our loss mask as `completion_mask`), 32 rows per
          step, no packing (rows padded to the longest in the batch) and `packing_strategy="wrapped"`
          (rows of 256); real (non-padding) tokens / s over 20 timed steps after 3 warm-up steps.
  sample  model.generate on 64 left-padded prompts x 48 new tokens (min_new_tokens = 48, as
          bench.py forces all 48), temperature 1, with and without the KV cache.
  grpo    trl.GRPOTrainer, 8 prompts x 8 generations x 32 new tokens, beta 0.04 (a reference model),
          num_iterations 1, the same roots prompts as bench.py; the reward is a cheap pure-Python
          function of the completion (ours grades with math_grader, ~1 ms per step). s_per_step is
          the median step time after the first 2 of 12 steps.
"""
import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time

import torch

import bench
from nanopost.common import keep_freed_memory
from nanopost.instruct_world import rl_family_records
from nanopost.model import GPTConfig
from nanopost.tokenizer import render_prompt

try:
    import transformers
    import trl
    from datasets import Dataset
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
except ImportError as e:
    sys.exit(f"bench_hf.py needs the HuggingFace stack: pip install transformers trl ({e})")


def hf_model(tok):
    """transformers' GPT-2 with the bench preset's shape, seed 0."""
    c = GPTConfig.preset("bench", vocab_size=max(tok.vocab_size, GPTConfig.preset("bench").vocab_size))
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.block_size,
                                     vocab_size=c.vocab_size, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
                                     attn_pdrop=c.dropout, bos_token_id=tok.bos_id, eos_token_id=tok.end_id,
                                     pad_token_id=tok.pad_id)
    return transformers.GPT2LMHeadModel(config)


def id_tokenizer(tok):
    """A word-level tokenizer whose word str(i) is token i (see the module docstring)."""
    vocab = {str(i): i for i in range(tok.vocab_size)}
    core = HFTokenizer(models.WordLevel(vocab, unk_token=str(tok.pad_id)))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token=str(tok.pad_id),
                                                eos_token=str(tok.end_id), bos_token=str(tok.bos_id))


def as_text(ids):
    return " ".join(map(str, ids))


class StepTimer(transformers.TrainerCallback):
    """Wall time of each optimiser step."""
    def __init__(self):
        self.times, self.t0 = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t0)


def quiet_args(cls, out, trl_args, **kw):
    """A TRL config without logging, saving or progress bars; trl_args: the command line's overrides."""
    return cls(output_dir=out, report_to="none", use_cpu=True, logging_steps=1000, save_strategy="no",
               disable_tqdm=True, seed=0, dataloader_num_workers=0, **trl_args, **kw)


def bench_sft(tok, s, repeats, trl_args):
    row_len = GPTConfig.preset("bench").block_size - 1
    rows = bench.sft_examples(tok, s["sft_records"], row_len)
    data = Dataset.from_dict({"input_ids": [ids for ids, _ in rows], "completion_mask": [m for _, m in rows]})
    total = s["warmup"] + s["steps"]
    modes = {}
    for mode, extra in (("no_packing", {}), ("wrapped_packing", {"packing": True, "packing_strategy": "wrapped"})):
        rates = []
        for r in range(repeats):
            bench.info(f"hf sft {mode}: repeat {r + 1}/{repeats}")
            timer, real = StepTimer(), []
            with tempfile.TemporaryDirectory() as out:
                args = quiet_args(trl.SFTConfig, out, trl_args, per_device_train_batch_size=s["sft_rows"],
                                  max_steps=total, learning_rate=3e-4, max_length=row_len + 1,
                                  completion_only_loss=True, **extra)
                trainer = trl.SFTTrainer(model=hf_model(tok), args=args, train_dataset=data,
                                         processing_class=id_tokenizer(tok), callbacks=[timer])
                collate = trainer.data_collator

                def counting(features, collate=collate):
                    batch = collate(features)
                    mask = batch.get("attention_mask")
                    real.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
                    return batch
                trainer.data_collator = counting
                trainer.train()
            timed = timer.times[s["warmup"]:]
            rates.append(sum(real[s["warmup"]:total]) / sum(timed))
        modes[mode] = bench.median_and_runs(rates, "tokens_per_s")
    return {"modes": modes, "config": {"rows": s["sft_rows"], "row_len": row_len, "conversations": len(rows),
                                       "warmup_steps": s["warmup"], "timed_steps": s["steps"]}}


def bench_sample(tok, s, repeats, trl_args):
    prompts = bench.sample_prompts(tok, s["sample_prompts"])
    L = max(map(len, prompts))
    idx = torch.tensor([[tok.pad_id] * (L - len(p)) + p for p in prompts])  # left padding, as generate wants
    attention = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    model = hf_model(tok).eval()
    n = s["new_tokens"]
    result = {}
    for name, use_cache in (("kv_cache", True), ("no_cache", False)):
        kw = dict(attention_mask=attention, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=n,
                  min_new_tokens=n, use_cache=use_cache, pad_token_id=tok.pad_id)
        with torch.no_grad():
            model.generate(idx, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
            rates = []
            for r in range(repeats):
                bench.info(f"hf sample {name}: repeat {r + 1}/{repeats}")
                torch.manual_seed(r)
                t0 = time.perf_counter()
                out = model.generate(idx, **kw)
                rates.append((out.size(1) - L) * len(prompts) / (time.perf_counter() - t0))
        result[name] = bench.median_and_runs(rates, "new_tokens_per_s")
    result["speedup"] = result["kv_cache"]["new_tokens_per_s"] / result["no_cache"]["new_tokens_per_s"]
    result["config"] = {"prompts": len(prompts), "new_tokens": n, "temperature": 1.0}
    return result


def bench_grpo(tok, s, repeats, trl_args):
    n_steps = s["grpo_steps"]
    with tempfile.TemporaryDirectory() as out:
        records = rl_family_records(s["grpo_prompts"] * n_steps, "train", 0, out, ["roots"])
        data = Dataset.from_dict({"prompt": [as_text(render_prompt(tok, r["prompt"])) for r in records]})

        def reward(completions, **kw):  # cheap and pure Python, like math_grader
            return [len(set(c.split())) / 32 for c in completions]
        timer = StepTimer()
        args = quiet_args(trl.GRPOConfig, out, trl_args,
                          per_device_train_batch_size=s["grpo_prompts"] * s["grpo_generations"],
                          num_generations=s["grpo_generations"], max_completion_length=s["grpo_tokens"], beta=0.04,
                          num_iterations=1, max_steps=n_steps, learning_rate=1e-4, temperature=1.0,
                          shuffle_dataset=False)
        hf_model(tok).save_pretrained(f"{out}/model")  # GRPOTrainer loads its reference model from a path
        trainer = trl.GRPOTrainer(model=f"{out}/model", reward_funcs=reward, args=args, train_dataset=data,
                                  processing_class=id_tokenizer(tok), callbacks=[timer])
        bench.info(f"hf grpo: {n_steps} steps")
        trainer.train()
    times = timer.times[s["grpo_skip"]:]
    return {**bench.median_and_runs(times, "s_per_step"),
            "completions_per_s": s["grpo_prompts"] * s["grpo_generations"] / statistics.median(times),
            "config": {"prompts_per_step": s["grpo_prompts"], "num_generations": s["grpo_generations"],
                       "max_completion_length": s["grpo_tokens"], "beta": 0.04, "steps": n_steps,
                       "skipped_steps": s["grpo_skip"], "num_iterations": 1}}


BENCHES = {"sft": bench_sft, "sample": bench_sample, "grpo": bench_grpo}


def main(argv=None):
    p = argparse.ArgumentParser(description="bench.py's workloads on transformers + trl (same machine, same ids).")
    p.add_argument("--only", default="sft,sample,grpo", help="comma-separated: sft, sample, grpo")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (the median is reported)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs, measures nothing")
    p.add_argument("--no_checkpointing", action="store_true",
                   help="turn off activation checkpointing, which TRL's SFTConfig and GRPOConfig turn on by default")
    p.add_argument("--keep_freed_memory", action="store_true",
                   help="the glibc malloc settings nanopost applies on CPU (common.keep_freed_memory), for TRL too")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHES)}")
    trl_args = {"gradient_checkpointing": False} if args.no_checkpointing else {}  # {}: TRL's defaults
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    s = bench.QUICK if args.quick else bench.FULL
    tok = bench.bench_tokenizer()
    for name in names:
        with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs; stdout keeps the JSON lines
            result = BENCHES[name](tok, s, 1 if args.quick else args.repeats, trl_args)
        print(json.dumps({"bench": f"hf_{name}", **result, "device": f"cpu ({bench.device_name(torch.device('cpu'))})",
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "trl": trl.__version__,
                          "activation_checkpointing": not args.no_checkpointing, "keep_freed_memory": kept,
                          "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
    main()
