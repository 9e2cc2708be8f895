"""Backend choice for every op: which implementation runs, and why.

- CUDA tensors -> the Triton kernel; CPU tensors -> the plain-PyTorch reference.
- ``FASTGEN_BACKEND=reference|triton`` (or an op's ``backend=`` argument) forces one.
  With ``TRITON_INTERPRET=1`` the Triton backend runs on CPU tensors: that is how CI,
  which has no GPU, executes every kernel.
- A forced backend that cannot run the input raises, naming the reason; an automatic
  choice falls back to the reference only for the documented cases (float64 inputs, no
  Triton installed) and logs why at DEBUG (``FASTGEN_LOG_LEVEL=DEBUG``).

Ops do not call this module directly: they are declared through ``fastgen.ops._define``,
whose ``OpDefinition.backend`` adds the kernel's own limits ("cannot take this shape").
"""
import contextlib
import functools
import logging
import os
from typing import Any, Literal, Optional, Tuple, Union

import torch
from torch import Tensor

BACKENDS = ("reference", "triton")
# use_backend's choice: a plain module global (not a ContextVar, which torch.compile cannot
# read without a graph break); process-wide, like FASTGEN_BACKEND
_forced: Optional[str] = None
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_log = logging.getLogger("fastgen")


@functools.lru_cache(maxsize=None)
def _configure_logging(level):
    """``FASTGEN_LOG_LEVEL``: give the ``fastgen`` logger a handler of its own at that level.
    The root logger and the application's handlers are left alone; records do not propagate
    to the root as well, so they are printed once."""
    if level:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(level.upper())
        _log.propagate = False


def log_decision(message: str, *args: Any) -> None:
    # torch.compile cannot trace logging calls: decisions are logged in eager mode only.
    if torch.compiler.is_compiling():
        return
    _configure_logging(os.environ.get("FASTGEN_LOG_LEVEL", ""))
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(message, *args)


_triton_version = []  # filled on first use: [version or None]


def triton_version() -> Optional[str]:
    """The installed Triton's version, or None."""
    if not _triton_version:
        try:
            import triton
            _triton_version.append(triton.__version__)
        except ImportError:
            _triton_version.append(None)
    return _triton_version[0]


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def can_run_triton(device: Union[torch.device, str], dtype: torch.dtype) -> Tuple[bool, str]:
    """(ok, reason): whether the Triton kernels can run tensors of this device and dtype."""
    if triton_version() is None:
        return False, "triton is not installed"
    device = torch.device(device)
    if device.type == "cpu" and not interpreting():
        return False, "CPU tensor and TRITON_INTERPRET is not set"
    if device.type not in ("cuda", "cpu"):
        return False, f"device type {device.type!r} is not supported"
    if dtype not in TRITON_DTYPES:
        return False, f"dtype {dtype} is not one of float32/float16/bfloat16 (float64 runs on the reference)"
    return True, "ok"


@contextlib.contextmanager
def use_backend(name: str):
    """Within the block, every op called without its own ``backend=`` runs on ``name``
    ('reference' | 'triton'), over ``FASTGEN_BACKEND`` -- e.g. the reference for a computation
    that needs a second derivative through an op whose Triton backward has none.  Process-wide
    (every thread), like the environment variable."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def requested_backend(backend: Optional[str] = None) -> Optional[Literal["reference", "triton"]]:
    """The backend the caller, ``use_backend`` or ``FASTGEN_BACKEND`` asks for (in that order),
    or None for automatic."""
    name = backend if backend is not None else _forced or os.environ.get("FASTGEN_BACKEND") or None
    if name is not None and name not in BACKENDS:
        source = "backend" if backend is not None else "FASTGEN_BACKEND"
        raise ValueError(f"{source} must be one of {BACKENDS} or unset, got {name!r}")
    return name


def choose_backend(op: str, tensor: Tensor, backend: Optional[str] = None) -> Literal["reference", "triton"]:
    """Pick the backend for ``op`` on inputs like ``tensor``; returns 'reference' or 'triton'."""
    wanted = requested_backend(backend)
    ok, why = can_run_triton(tensor.device, tensor.dtype)
    if wanted == "triton" and not ok:
        raise RuntimeError(f"{op}: the triton backend was requested but cannot run: {why}")
    if wanted is None:
        wanted = "triton" if ok and tensor.device.type == "cuda" else "reference"
    log_decision("%s: %s backend for %s %s (triton: %s)", op, wanted, tensor.device, tensor.dtype, why)
    return wanted


def empty(*shape: int, dtype: torch.dtype, device: Union[torch.device, str]) -> Tensor:
    """Allocate an output the kernel will overwrite (the tests poison this with NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device)
