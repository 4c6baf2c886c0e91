"""
Data-parallel training on PyTorch's own engine: torch.distributed + DistributedDataParallel (DDP),
NCCL on GPUs and gloo on CPUs. Every training script runs unchanged under torchrun:

    torchrun --standalone --nproc_per_node 8 train_sft.py                      # 8 GPUs, one machine
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 train_rl.py --algo grpo                 # 2 machines (run on each)
    torchrun --standalone --nproc_per_node 2 train_sft.py --device cpu         # 2 CPU processes (gloo)

The rules every loop follows (so N processes compute what one process computes on the same
global batch, to float tolerance; tests/test_dist.py checks it):
  - every rank builds the same data (the world and the batch order are pure functions of the seed)
    and takes its share of each step's global batch: item i of the step goes to rank i % world;
  - a loss is normalised by the step's *global* count (tokens, sequences, pairs), all-reduced
    before the backward, and multiplied by world because DDP averages gradients over ranks;
  - only the last micro-batch of a step synchronises gradients (DDP's no_sync for the others);
  - metrics are summed or averaged across ranks before logging; only rank 0 writes logs and
    checkpoints (everyone waits for the checkpoint before reading it).
Held-out evaluations run on every rank with identical models; only rank 0 reports them.
Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op.
"""
import contextlib
import os

import torch
import torch.distributed as dist


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def setup(device):
    """Join the process group when started by torchrun; -> the device this rank trains on
    (cuda:LOCAL_RANK on GPUs). Called by common.pick_device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        if dist.is_initialized() and device.type == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shard(items):
    """This rank's share of a step's global batch: items rank, rank + world, ... . Each rank must
    receive the same number of items (a collective per micro-batch must match on every rank)."""
    n = world_size()
    if len(items) % n:
        raise ValueError(f"a global batch of {len(items)} does not split over {n} processes; make it a multiple of {n}")
    return items[rank()::n]


def all_sum(value):
    """Σ over ranks of a number (float) or a tensor (returned as a new tensor)."""
    if not dist.is_initialized():
        return value
    t = torch.as_tensor(value, dtype=torch.float64).clone() if not torch.is_tensor(value) else value.detach().clone()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.to(device)
    dist.all_reduce(out)
    return float(out) if not torch.is_tensor(value) else out.to(value.device, value.dtype)


def all_mean(value):
    return all_sum(value) / world_size() if dist.is_initialized() else value


def wrap(module):
    """DDP around a module when distributed (parameters broadcast from rank 0), else the module."""
    if not dist.is_initialized():
        return module
    device = next(module.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def sync_grads(ddp_module, last):
    """Context for one micro-batch's backward: DDP all-reduces gradients only on the last one."""
    if isinstance(ddp_module, torch.nn.parallel.DistributedDataParallel) and not last:
        return ddp_module.no_sync()
    return contextlib.nullcontext()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_max(value):
    """max over ranks of a number."""
    if not dist.is_initialized():
        return value
    t = torch.tensor(float(value), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (any picklable object)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
