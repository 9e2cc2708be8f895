"""Count what a GPU would launch, on a CPU: Triton kernels (run by the interpreter) and every
other aten op, plus host-device synchronisations.

- Triton launches: every kernel the interpreter runs (``InterpretedFunction.run``), and, as a
  cross-check, every launch the one entry point ``fastgen.kernels._launch.launch`` sees.
- Other ops: every aten op dispatched outside a Triton launch, view-like ops (views, aliases,
  ``detach``) and pure metadata queries excepted -- on a GPU each would be a kernel launch or
  an allocation.
- Host syncs: ops whose result the host must wait for: ``.item()`` / ``int(t)`` / ``bool(t)``
  (``aten._local_scalar_dense``), ``aten.nonzero`` and ``aten.equal`` (data-dependent), copies
  to the CPU from another device, and ``Tensor.tolist`` / ``Tensor.numpy``.
"""
import contextlib
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero"}
_FREE_OPS = {"aten::detach", "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset",
             "aten::lift_fresh", "aten::_unsafe_view"}


@dataclasses.dataclass
class Counts:
    triton: int = 0            # Triton kernels run
    entry_point: int = 0       # launches seen by fastgen.kernels._launch.launch
    ops: int = 0               # other aten ops (kernel launches or allocations on a GPU)
    syncs: int = 0             # host-device synchronisations
    op_names: dict = dataclasses.field(default_factory=dict)

    def per(self, items):
        """(triton, ops, syncs) per generated item."""
        return self.triton / items, self.ops / items, self.syncs / items


class _Ops(TorchDispatchMode):
    def __init__(self, counts, paused):
        super().__init__()
        self.counts, self.paused = counts, paused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused[0]:
            name = func._schema.name
            if name in _SYNC_OPS:
                self.counts.syncs += 1
            elif name == "aten::_to_copy" and kwargs.get("device") is not None \
                    and torch.device(kwargs["device"]).type == "cpu" and args[0].device.type != "cpu":
                self.counts.syncs += 1
            if not (func.is_view or name in _FREE_OPS):
                self.counts.ops += 1
                self.counts.op_names[name] = self.counts.op_names.get(name, 0) + 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as counts: ...`` (Triton kernels must run under TRITON_INTERPRET=1)."""
    from triton.runtime.interpreter import InterpretedFunction
    from fastgen.kernels import _launch

    counts, paused = Counts(), [False]
    original_run = InterpretedFunction.run

    def run(self, *args, **kwargs):
        if kwargs.get("warmup"):
            return original_run(self, *args, **kwargs)
        counts.triton += 1
        paused[0] = True                  # the interpreter's own tensor work is not the GPU's
        try:
            return original_run(self, *args, **kwargs)
        finally:
            paused[0] = False

    def host_sync(original):
        def wrapped(self, *args, **kwargs):
            if not paused[0]:
                counts.syncs += 1
            return original(self, *args, **kwargs)
        return wrapped

    def seen(launch):
        counts.entry_point += 1

    patches = [(InterpretedFunction, "run", run),
               (torch.Tensor, "tolist", host_sync(torch.Tensor.tolist)),
               (torch.Tensor, "numpy", host_sync(torch.Tensor.numpy))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        with _launch.observe_launches(seen), _Ops(counts, paused):
            yield counts
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
