"""``fastgen train --fsdp``: fully sharded data parallel training with PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``) instead of DDP.

What is sharded: the parameters, their gradients and the optimizer states are split over the K
processes (each holds 1/K of every tensor), so a model whose Adam states do not fit one GPU
beside its activations can still train.  The whole model is one FSDP unit (``fully_shard`` on
the module whose ``forward`` is the loss): its parameters are all-gathered for the step's
forward, freed after it, gathered again for the backward, and the gradients are
reduce-scattered -- the averaged update of the global batch, as with DDP.  One unit rather
than one per layer because a zoo model's loss is a method (``model.loss(x)``) that may use a
layer's weights outside that layer's ``forward`` (weight tying, the fused sampling steps), which
per-layer units would not have gathered.

Checkpoints hold whole tensors, as without FSDP: the sharded states are gathered to rank 0
(``torch.distributed.checkpoint.state_dict``) and a resumed run shards them again.  Every
function here is a collective: all ranks call it.
"""
from typing import Dict, List, NamedTuple

import torch
from torch import Tensor, nn


class FullStates(NamedTuple):
    """Whole (unsharded) states on rank 0, on the host; other ranks get empty dictionaries."""
    model: Dict[str, Tensor]
    optimizers: List[dict]


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def shard(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` as one FSDP unit over all processes (in place; returned for chaining).  Build
    optimizers after this call: it replaces the parameters with sharded ones."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    fully_shard(module, mesh=mesh)
    return module


def full_states(model: nn.Module, optimizers: List[torch.optim.Optimizer]) -> FullStates:
    """The model's and the optimizers' whole states, gathered to rank 0.  Optimizer states are
    keyed by parameter name (not by index), the format ``load_optimizers`` reads."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    weights = get_model_state_dict(model, options=_options())
    return FullStates(weights, [get_optimizer_state_dict(model, opt, options=_options()) for opt in optimizers])


def load_optimizers(model: nn.Module, optimizers: List[torch.optim.Optimizer], states: List[dict]) -> None:
    """Shard whole optimizer states (from ``full_states``, read on every rank) into the optimizers."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    for opt, state in zip(optimizers, states):
        set_optimizer_state_dict(model, opt, state, options=_options())


def full_tensors(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Whole host copies of a dictionary of sharded (DTensor) and plain tensors (the EMA weights)."""
    from torch.distributed.tensor import DTensor
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()}


def shard_like(whole: Dict[str, Tensor], like: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``whole`` tensors split as the corresponding tensors of ``like`` are (the EMA weights of a
    resumed run, laid out like the sharded model's state)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    out = {}
    for k, ref in like.items():
        value = whole[k].to(ref.device if not isinstance(ref, DTensor) else ref.to_local().device, ref.dtype)
        out[k] = distribute_tensor(value, ref.device_mesh, ref.placements) if isinstance(ref, DTensor) else value
    return out
