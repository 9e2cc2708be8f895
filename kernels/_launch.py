"""The one entry point every kernel launch in ``kernels/*.py`` goes through: ``launch``.

It does three things.

1. **Observers.**  ``observe_launches(callback)`` sees every launch (``Launch``: the JIT
   function, grid, arguments, constexprs, warps, stages and, for an autotuned kernel, its
   configs) -- also under ``TRITON_INTERPRET=1``, so launch counts can be tested on the CPU.
   ``observe_launches(callback, execute=False)`` records without launching: how the compile
   gate (``fastgen/compile_gate/``) learns every configuration the library launches on a
   machine without a GPU.

2. **Autotuned kernels** (``triton.autotune``): pass the ``Autotuner``, a grid *function* of
   the meta-parameters and a ``tune_key`` that determines the autotuner's own key (its key
   arguments and the argument dtypes).  The first call for a ``tune_key`` goes through the
   autotuner; later ones launch its choice like a plain JIT function (below), which skips the
   autotuner's and the JIT's per-call bookkeeping -- the host time small convs are bound by.

3. **Direct launches.**  ``kernel[grid](...)`` re-binds and re-specialises every argument on
   every call and then looks the compiled kernel up in a cache.  With ~25 arguments that host
   work cost ~100 us per launch on the H100 host we measured (triton 3.6; ``benchmarks/
   results/h100/host_profile_k3B_fwdbwd.txt``) -- more than a 3x3 masked conv's whole kernel.
   The direct path does that work once per *key* and afterwards calls the ``CompiledKernel``
   that the first launch returned.

   Why this is safe: the key holds everything Triton specialises on -- the value of every
   scalar argument, every tensor's dtype, device and 16-byte alignment, the constexprs and the
   launch options -- so any call Triton would compile differently is a different key (a miss
   takes the normal path).  And it is checked, not assumed: the first time a key goes direct,
   the output of the normal launch is kept, the kernel is launched again directly, and the two
   outputs must agree bit for bit; if they differ or the direct call raises (a launcher that
   wants other arguments), that kernel takes the normal path for good, with one warning.  That
   check launches the kernel twice, which is harmless only for kernels that overwrite their
   output without reading it: a kernel that updates state in place (WaveNet's queues) says
   ``inplace=True`` and always takes Triton's normal launch.  (Those kernels run once per
   block of samples -- the persistent one -- or replayed in a CUDA graph, where host time per
   launch does not matter.)

   The direct path calls a ``CompiledKernel``'s launcher, whose calling convention is Triton
   internals: it is on only for the Triton versions it was verified with on a GPU
   (``TESTED_TRITON``).  ``FASTGEN_DIRECT_LAUNCH=1`` forces it on any version (still checked
   per key), ``FASTGEN_DIRECT_LAUNCH=0`` turns it off; under ``TRITON_INTERPRET=1`` it is off.
"""
import contextlib
import os
import sys
import warnings
from typing import Any, NamedTuple, Optional

import torch

# Triton versions (major.minor) whose CompiledKernel launcher the direct path was verified with
# on a GPU (tests/test_gpu_conv.py, tests/test_gpu_sampling.py).  Add a version after those
# tests pass with it and FASTGEN_DIRECT_LAUNCH=1.
TESTED_TRITON = ("3.6",)

_COMPILED = {}     # key -> CompiledKernel whose direct launch passed its check
_BROKEN = set()    # JIT functions whose direct launch failed: normal launches only
_TUNED = {}        # (autotuner, tune_key) -> the triton.Config the autotuner chose
_OBSERVERS = []    # (callback, execute) pairs installed by ``observe_launches``
_VERSION = []      # [(tested, version)]: the installed Triton, checked once


class Launch(NamedTuple):
    """One launch as the observers see it.

    kernel: the ``JITFunction`` (an autotuned kernel's inner function); grid: a 3-tuple, or
    for an autotuned kernel whose config is not chosen yet, the grid function of the meta-
    parameters; args: runtime arguments in signature order; constexprs: by name (an autotuned
    kernel's chosen config included once known); num_warps / num_stages: None while an
    autotuned kernel's config is not chosen; configs: the autotuner's ``triton.Config`` list
    (None for a plain kernel); inplace: the kernel reads state it writes."""
    kernel: Any
    grid: Any
    args: tuple
    constexprs: dict
    num_warps: Optional[int]
    num_stages: Optional[int]
    configs: Optional[list] = None
    inplace: bool = False


@contextlib.contextmanager
def observe_launches(callback, execute=True):
    """Call ``callback(Launch)`` for every launch inside the block.  ``execute=False``: record
    only, launch nothing (outputs stay unwritten; autotuners do not tune).  Nests."""
    entry = (callback, execute)
    _OBSERVERS.append(entry)
    try:
        yield
    finally:
        _OBSERVERS.remove(entry)


def _triton_tested():
    if not _VERSION:
        # the installed distribution's version, without importing triton (an import decides,
        # from TRITON_INTERPRET at that moment, whether triton.language is interpreted)
        from importlib import metadata
        try:
            version = metadata.version("triton")
        except metadata.PackageNotFoundError:
            version = None
        tested = version is not None and ".".join(version.split(".")[:2]) in TESTED_TRITON
        _VERSION.append((tested, version))
    return _VERSION[0]


def status():
    """(on, reason): whether launches go direct after the first call per key, and why (not)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False, "TRITON_INTERPRET=1: the interpreter has no compiled kernels"
    switch = os.environ.get("FASTGEN_DIRECT_LAUNCH", "")
    if switch == "0":
        return False, "FASTGEN_DIRECT_LAUNCH=0"
    tested, version = _triton_tested()
    if switch == "1":
        return True, f"forced by FASTGEN_DIRECT_LAUNCH=1 on triton {version}"
    if tested:
        return True, f"triton {version} is a tested version"
    return False, (f"triton {version} is not one of the tested versions {', '.join(TESTED_TRITON)} "
                   "(FASTGEN_DIRECT_LAUNCH=1 forces it)")


def enabled():
    return status()[0]


def _int_type(a):
    """The type Triton gives an int argument it does not specialise: i32, u64 or i64 by range."""
    return "i32" if -2 ** 31 <= a < 2 ** 31 else ("u64" if a >= 2 ** 63 else "i64")


def _unspecialized(fn, declared):
    """Names of the kernel's ``do_not_specialize`` arguments: read off the JIT function's
    parameters where it has them (so they cannot drift from the decorator), else ``declared``."""
    params = getattr(fn, "params", None)
    if params is None:
        return set(declared)
    names = _UNSPECIALIZED.get(fn)
    if names is None:                 # once per kernel: this runs on every launch
        names = _UNSPECIALIZED[fn] = frozenset(p.name for p in params if getattr(p, "do_not_specialize", False))
    return names


_UNSPECIALIZED = {}


def _key(fn, grid, args, constexprs, options, unspecialized=()):
    """What Triton specialises a launch on.  Floats: their type only (Triton never specialises
    on a float's value: per-step coefficients share one key).  Ints the kernel declares
    ``do_not_specialize``: their type (i32/i64/u64 by range).  Every other int: its value."""
    parts = [fn, grid, options]
    unspecialized = _unspecialized(fn, unspecialized)
    for name, a in zip(fn.arg_names, args):
        if isinstance(a, torch.Tensor):
            parts.append((a.dtype, a.device, a.data_ptr() % 16 == 0))
        elif isinstance(a, float):
            parts.append(float)
        elif name in unspecialized and type(a) is int:
            parts.append(_int_type(a))
        else:
            parts.append((type(a), a))      # 1 and True specialise differently
    parts.append(tuple(sorted(constexprs.items())))
    return tuple(parts)


def _bytes(t):
    return t.detach().contiguous().view(-1).view(torch.uint8)


def _is_autotuner(kernel):
    # (no import: if triton's autotuner module is not loaded, nothing is an Autotuner)
    module = sys.modules.get("triton.runtime.autotuner")
    return module is not None and isinstance(kernel, module.Autotuner)


def _pad(grid):
    return tuple(grid) + (1,) * (3 - len(grid))   # a CompiledKernel's launcher reads grid[0..2]


def launch(kernel, grid, args, constexprs, out, num_warps=4, num_stages=3, unspecialized=(), inplace=False,
           tune_key=None):
    """Launch ``kernel`` -- a JIT function, or an ``Autotuner`` -- on ``grid``.

    args: the runtime arguments in signature order; constexprs: the constexpr arguments by
    name; out: a tensor the kernel writes (used once per key to check the direct launch);
    unspecialized: names of int arguments the kernel declares ``do_not_specialize``;
    inplace: the kernel reads state it also writes (e.g. a queue): never launched twice, so
    never direct.  Autotuned kernels: ``grid`` is a function of the meta-parameters and
    ``tune_key`` a hashable that determines the autotuner's choice (num_warps / num_stages
    come from the chosen config)."""
    if _is_autotuner(kernel):
        config = _TUNED.get((kernel, tune_key))
        if config is None:            # first call for this key: the autotuner picks
            if _notify(Launch(kernel.fn, grid, tuple(args), dict(constexprs), None, None, kernel.configs, inplace)):
                kernel[grid](*args, **constexprs)
                _TUNED[(kernel, tune_key)] = kernel.best_config
            return
        constexprs = {**constexprs, **config.kwargs}
        grid, num_warps, num_stages = grid(constexprs), config.num_warps, config.num_stages
        configs, kernel = kernel.configs, kernel.fn
    else:
        configs = None
    grid = _pad(grid)
    if _OBSERVERS and not _notify(Launch(kernel, grid, tuple(args), dict(constexprs), num_warps, num_stages,
                                         configs, inplace)):
        return
    if inplace or kernel in _BROKEN or not enabled():
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    _direct(kernel, grid, args, constexprs, out, num_warps, num_stages, unspecialized)


def _notify(info):
    """Tell every observer; False when one of them asked not to execute."""
    execute = True
    for callback, run in list(_OBSERVERS):
        callback(info)
        execute = execute and run
    return execute


def _direct(fn, grid, args, constexprs, out, num_warps, num_stages, unspecialized):
    key = _key(fn, grid, args, constexprs, (num_warps, num_stages), unspecialized)
    compiled = _COMPILED.get(key)
    if compiled is not None:
        compiled[grid](*_signature_order(fn, args, constexprs))
        return
    compiled = fn[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
    capturing = out.is_cuda and torch.cuda.is_current_stream_capturing()
    if compiled is None or not hasattr(compiled, "__getitem__") or capturing:
        return                        # nothing to check against (or no host sync allowed now)
    expected = out.clone()
    try:
        compiled[grid](*_signature_order(fn, args, constexprs))
        same = torch.equal(_bytes(out), _bytes(expected))
        why = "its result differed from Triton's launch"
    except Exception as error:        # e.g. a launcher that takes a different argument list
        same = False
        why = f"{type(error).__name__}: {error}"
    if same:
        if len(_COMPILED) >= 4096:    # shapes that change every call: keep the cache bounded
            _COMPILED.clear()
        _COMPILED[key] = compiled
    else:
        _BROKEN.add(fn)
        out.copy_(expected)           # the normal launch's result stands
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", repr(fn))
        warnings.warn(f"fastgen: the direct launch of {name} is unavailable ({why}); it uses Triton's normal "
                      "launch from now on (kernels/_launch.py)", RuntimeWarning, stacklevel=3)


def _signature_order(fn, args, constexprs):
    """Every argument, constexprs included, in the kernel's signature order: what a
    ``CompiledKernel``'s launcher takes (it skips the constexprs itself)."""
    names = fn.arg_names
    values = dict(zip(names, args))
    values.update(constexprs)
    return [values[name] for name in names]
