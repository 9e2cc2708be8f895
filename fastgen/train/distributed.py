"""Process-group plumbing for ``fastgen train`` / ``fastgen sample`` under ``torchrun``, the
device choice, and the seeds.

Seeds are derived, never drawn: ``derive(seed, *parts)`` hashes the run seed with what
identifies a piece of work -- for a training step, the global index of the rank's first
sample in that step; for a chunk of samples, the index of its first sample -- so a result
depends on the seed and on the sample indices, not on which rank did the work or on how many
steps ran before in this process.
"""
import hashlib
import os
from typing import NamedTuple, Optional

import torch

from fastgen.train.registry import UsageError


class DistEnv(NamedTuple):
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Rank, world size and local rank from torchrun's environment (1 process without it)."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: Optional[str], env: DistEnv) -> torch.device:
    """--device: None = cuda (this process's local GPU) when available, else cpu; 'cuda' without
    CUDA and unknown names are UsageErrors."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name}: not a device name (cpu, cuda, cuda:1)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: this PyTorch has no usable CUDA device "
                             f"(torch {torch.__version__}, cuda {torch.version.cuda}); use --device cpu")
        if device.index is None:
            device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: fastgen runs on cpu or cuda")
    return device


def init(env: DistEnv, device: torch.device) -> bool:
    """Join the process group when launched by torchrun with more than one process (NCCL on
    CUDA, gloo on CPU).  Returns whether this call created it (``shutdown`` it then)."""
    import torch.distributed as dist
    if env.world_size == 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def shutdown(created: bool) -> None:
    import torch.distributed as dist
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    import torch.distributed as dist
    if env.world_size > 1 and dist.is_initialized():
        dist.barrier()


def average_gradients_on_step(optimizer: torch.optim.Optimizer, env: DistEnv) -> None:
    """Make every ``optimizer.step()`` first average its parameters' gradients over the ranks
    (one all-reduce of the flattened gradients).

    For models that update themselves through their own ``train_step`` (the GANs: a
    discriminator step with R1's double backward and several forward passes, then a generator
    step): ``DistributedDataParallel`` expects one forward and one backward per module per
    iteration and does not support double backward, so these models keep the plain modules and
    the collective runs where the update needs it, just before each optimizer step -- the
    update is then the data-parallel update of the global batch.  Gradients that are None are
    left alone (every rank runs the same graph, so they are None on every rank)."""
    import torch.distributed as dist

    def hook(opt, args, kwargs):
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= env.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    optimizer.register_step_pre_hook(hook)


def broadcast_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (batch-norm running statistics, spectral-norm vectors) to every
    rank, as DDP does before each forward: checkpoints and samples then see one model."""
    import torch.distributed as dist
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def derive(seed: int, *parts) -> int:
    """A 63-bit seed from the run seed and the parts (ints / strings); see the module docstring."""
    digest = hashlib.blake2b(repr((int(seed),) + tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
