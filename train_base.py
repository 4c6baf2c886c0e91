"""
Train the tiny base model: next-token prediction on web-like text (§1). Also continued
pretraining / mid-training: --init an existing checkpoint and --data a targeted corpus.

    python train_base.py                                   # built-in corpus, ~1.5 min on 2 CPU cores
    python train_base.py --init runs/base/ckpt --data my_corpus.txt --out runs/mid
    torchrun --nproc_per_node 2 train_base.py              # (distributed: see the README)

Data: --data is a .txt file (documents separated by a blank line) or a .jsonl file of
{"text": ...} records. Without --init a byte-level BPE tokenizer is trained on the corpus first.
Documents are split into pieces of at most one context and packed into rows (§4); each piece
starts with <|bos|> and attends only to itself.
"""
import dataclasses
import os
import random
import time

import torch

from nanopost import world
from nanopost.checkpoint import load_checkpoint, save_checkpoint
from nanopost.common import RunLog, flag, parse_config, pick_device, rng_state, set_rng_state, set_seed
from nanopost.data import DataError, load_records
from nanopost.model import GPT, GPTConfig
from nanopost.nexttoken import EpochBatches, NextTokenConfig, padding_efficiency, stop_on_nonfinite, train_steps
from nanopost.tokenizer import Tokenizer


@dataclasses.dataclass
class BaseConfig(NextTokenConfig):
    out: str = flag("runs/base", "output folder")
    steps: int = flag(300, "optimiser steps")
    # model
    model: str = flag("tiny", "model size preset (tiny, small, gpt2, ...)", "model")
    vocab_size: int = flag(1024, "tokenizer vocabulary, special tokens included (new tokenizer only)", "model")
    # data
    n_docs: int = flag(24000, "documents of the built-in corpus", "data")
    lr: float = flag(2e-3, "peak learning rate", "optimisation")
    warmup: int = flag(20, "warm-up steps", "optimisation")
    weight_decay: float = flag(0.1, "AdamW weight decay on matrices", "optimisation")


def read_corpus(path):
    if path.endswith(".jsonl"):
        def text_of(record):
            if not isinstance(record.get("text"), str) or not record["text"].strip():
                raise ValueError("record needs a non-empty string 'text'")
            return record["text"]
        docs, _ = load_records(path, text_of)
        return docs
    with open(path, encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    if not docs:
        raise DataError(f"{path}: no documents (documents are separated by a blank line)")
    return docs


def corpus_examples(docs, tok, row_len):
    """Documents -> (ids, loss_mask) pieces of at most row_len + 1 tokens, every token a target.
    Long documents are split (pretraining text has no turn structure to break)."""
    examples = []
    for doc in docs:
        ids = tok.encode(doc)
        for k in range(0, len(ids), row_len):
            piece = [tok.bos_id] + ids[k:k + row_len]
            examples.append((piece, [0] + [1] * (len(piece) - 1)))
    return examples


def main(argv=None):
    cfg = parse_config(BaseConfig, argv, description=__doc__.split("\n\n")[0])
    t_start = time.time()
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    ckpt_path = os.path.join(cfg.out, "ckpt")

    # data
    docs = read_corpus(cfg.data) if cfg.data else world.base_corpus(cfg.n_docs, cfg.seed)

    # tokenizer and model: from --resume, from --init (continued pretraining), or new
    start_step, state = 0, None
    if cfg.resume:
        state = load_checkpoint(ckpt_path, device)
        model, tok, start_step = state["model"], state["tok"], state["meta"]["step"]
    elif cfg.init:
        state = load_checkpoint(cfg.init, device)
        model, tok, state = state["model"], state["tok"], None
    else:
        sample = "\n\n".join(random.Random(cfg.seed).sample(docs, min(len(docs), 20000)))
        tok = Tokenizer.train(sample, cfg.vocab_size)
        model = GPT(GPTConfig.preset(cfg.model, vocab_size=tok.vocab_size)).to(device)
    row_len = model.config.block_size - 1
    examples = corpus_examples(docs, tok, row_len)
    batches = EpochBatches(examples, "pack", cfg.batch_size, row_len, tok.pad_id, cfg.seed)
    optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay, device_type=device.type)
    if state is not None:
        optimizer.load_state_dict(state["optimizer_state"])
        set_rng_state(state["rng"])
    if cfg.compile:
        model = torch.compile(model)

    log = RunLog(cfg.out, cfg.steps, start_step, stage="base")
    log.info(f"{len(docs)} documents, {sum(len(e[0]) for e in examples)} tokens, vocab {tok.vocab_size}, "
             f"{model.num_params() / 1e6:.2f}M parameters, device {device}")

    def save(step):
        save_checkpoint(ckpt_path, model, tok, step, dataclasses.asdict(cfg), "base", optimizer, rng_state())

    with stop_on_nonfinite(log):
        stats = train_steps(model, optimizer, batches, cfg, device, log, start_step, save)
    save(cfg.steps)
    return log.finish({"stage": "base", "steps": cfg.steps, "loss": stats["losses"][-1] if stats["losses"] else None,
                       "tokens_per_s": stats["tokens_per_s"], "padding_efficiency": padding_efficiency(batches),
                       "params": model.num_params(), "wall_s": time.time() - t_start, "ckpt": ckpt_path})


if __name__ == "__main__":
    main()
