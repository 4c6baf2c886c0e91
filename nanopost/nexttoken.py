"""
The next-token training loop shared by train_base.py (every token is a target) and
train_sft.py (only assistant tokens are, §5). One optimiser step:

    N     = number of target tokens in all grad_accum micro-batches of the step
    loss  = Σ_micro Σ_t masked_nll_t / N          (§5; a micro-batch never normalises alone)

so gradient accumulation gives the gradient of one big batch, and a step whose every target is
masked gives loss 0, not NaN. Under torchrun a step is grad_accum x world micro-batches, shared out
by nanopost.dist (N is then all-reduced first), so the result does not depend on the process count. Batches are a pure function of (seed, epoch): a run resumed at step
s sees exactly the batches the uninterrupted run would have seen.
"""
import contextlib
import dataclasses
import math
import sys
import time

import torch

from nanopost import dist
from nanopost.batching import make_batches
from nanopost.common import RunConfig, autocast, flag
from nanopost.losses import masked_nll, mean_over_tokens
from nanopost.model import document_block_mask, document_mask, estimate_mfu


@dataclasses.dataclass
class NextTokenConfig(RunConfig):
    """The optimisation flags of train_base.py and train_sft.py (each sets its own defaults)."""
    batch_size: int = flag(16, "rows per micro-batch", "optimisation")
    grad_accum: int = flag(1, "micro-batches per optimiser step", "optimisation")
    lr: float = flag(1e-3, "peak learning rate", "optimisation")
    warmup: int = flag(10, "warm-up steps", "optimisation")
    weight_decay: float = flag(0.0, "AdamW weight decay on matrices", "optimisation")
    grad_clip: float = flag(1.0, "gradient-norm clip", "optimisation")
    attention: str = flag("auto", "packed rows: sdpa (a (T, T) mask per row) | flex (a block mask, GPU) | auto "
                                  "(flex on cuda when the model has no dropout)", "optimisation")


class NonFiniteLoss(RuntimeError):
    pass


@contextlib.contextmanager
def stop_on_nonfinite(log):
    """A NonFiniteLoss inside ends the script: its message logged, exit status 1, nothing saved
    (the last good checkpoint is kept)."""
    try:
        yield
    except NonFiniteLoss as e:
        log.info(str(e))
        sys.exit(1)


def lr_at(step, total, lr, warmup):
    """Linear warm-up, then cosine decay to 10% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class EpochBatches:
    """Micro-batch number i of the run, epoch after epoch, reshuffled by (seed, epoch)."""

    def __init__(self, examples, mode, batch_size, row_len, pad_id, seed):
        self.args = (examples, mode, batch_size, row_len, pad_id)
        self.seed, self.epoch, self.batches = seed, -1, []
        self.per_epoch = len(make_batches(*self.args, seed=seed))

    def __getitem__(self, i):
        epoch = i // self.per_epoch
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, make_batches(*self.args, seed=self.seed * 1000 + epoch)
        return self.batches[i % self.per_epoch]


def use_flex(attention, model, device):
    if attention not in ("auto", "sdpa", "flex"):
        raise ValueError(f"unknown --attention {attention!r}; use auto, sdpa or flex")
    if attention == "flex" and device.type != "cuda":
        raise ValueError("--attention flex trains on CUDA only (PyTorch has no flex-attention backward on CPU)")
    return attention == "flex" or (attention == "auto" and device.type == "cuda" and model.config.dropout == 0)


def forward_nll(model, batch, device, dtype="float32", flex=False):
    """Per-token NLL (B, T) of one batch; packed rows get the block-diagonal document mask (as a
    flex-attention block mask when flex)."""
    doc_ids = batch["doc_ids"].to(device) if batch["doc_ids"] is not None else None
    attn_mask = None if doc_ids is None else document_block_mask(doc_ids) if flex else document_mask(doc_ids)
    keep = batch["loss_mask"].to(device).bool()  # only the targets go through lm_head and the softmax
    with autocast(device, dtype):
        logits = model(batch["idx"].to(device), pos=batch["pos"].to(device), attn_mask=attn_mask, keep=keep)  # (n, V)
    nll = masked_nll(logits, batch["targets"].to(device)[keep], torch.ones_like(keep[keep]))  # (n,)
    return torch.zeros(keep.shape, device=device).masked_scatter(keep, nll)  # (B, T), 0 off target


def train_steps(model, optimizer, batches, cfg, device, log, start_step=0, save=None):
    """Run optimiser steps start_step..cfg.steps-1. cfg needs: steps, lr, warmup, grad_accum,
    grad_clip, log_every, save_every, dtype. save(step) writes a checkpoint. Returns stats."""
    model.train()
    ddp_model, world = dist.wrap(model), dist.world_size()
    raw = getattr(model, "_orig_mod", model)  # the GPT under torch.compile
    flex = use_flex(cfg.attention, raw, device)
    real_tokens = target_tokens = 0
    train_time, losses = 0.0, []
    for step in range(start_step, cfg.steps):
        t0 = time.time()
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        per_step = cfg.grad_accum * world  # micro-batches in the step, over all processes
        micro = [batches[i] for i in dist.shard(range(step * per_step, (step + 1) * per_step))]
        n_targets = dist.all_sum(sum(float(b["loss_mask"].sum()) for b in micro))
        loss_value = 0.0
        for j, batch in enumerate(micro):
            with dist.sync_grads(ddp_model, last=j == len(micro) - 1):
                nll = forward_nll(ddp_model, batch, device, cfg.dtype, flex)
                # × world: DDP averages the gradients of the ranks, the step wants their sum
                loss = mean_over_tokens(nll, batch["loss_mask"].to(device), n_targets) * world
                loss.backward()
            loss_value += loss.item() / world
        loss_value = dist.all_sum(loss_value)
        if not math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"loss is {loss_value} at step {step + 1}; stopping without saving "
                                f"(the last good checkpoint is kept)")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        train_time += dt
        step_real = dist.all_sum(sum(b["n_real"] for b in micro))
        real_tokens += step_real
        target_tokens += n_targets
        losses.append(loss_value)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mfu = estimate_mfu(raw, step_real / dt / world, micro[0]["idx"].size(1), device, cfg.dtype)
            log.log(step + 1, loss=loss_value, lr=lr, grad_norm=float(grad_norm), tokens_per_s=step_real / dt,
                    mfu=mfu, target_tokens=n_targets)
        if save is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save(step + 1)
    return {"losses": losses, "real_tokens": real_tokens, "target_tokens": target_tokens,
            "train_s": train_time, "tokens_per_s": real_tokens / max(train_time, 1e-9)}


def padding_efficiency(batches):
    """Real tokens / token slots over one epoch of batches (§4)."""
    real = sum(batches[i]["n_real"] for i in range(batches.per_epoch))
    slots = sum(batches[i]["n_slots"] for i in range(batches.per_epoch))
    return real / max(slots, 1)

