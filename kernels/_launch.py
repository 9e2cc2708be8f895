"""Low-overhead launches of already-compiled Triton kernels.

``kernel[grid](...)`` re-binds and re-specialises every argument on every call and then
looks the compiled kernel up in a cache.  With ~25 arguments that host work cost ~100 us per
launch on the H100 host we measured (triton 3.6; ``benchmarks/results/h100/
host_profile_k3B_fwdbwd.txt``) -- more than a 3x3 masked conv's whole kernel, which is why
small convs were host-bound.  ``launch`` does that work once per *key* and afterwards
calls the ``CompiledKernel`` that the first launch returned, directly.

Why this is safe: the key holds everything Triton specialises on -- the value of every scalar
argument, every tensor's dtype, device and 16-byte alignment, the constexprs and the launch
options -- so any call Triton would compile differently is a different key (a miss takes
the normal path).  And it is checked, not assumed: the first time a key goes direct, the
output of the normal launch is kept, the kernel is launched again directly, and the two
outputs must agree bit for bit; if they differ or the direct call raises (a Triton version
whose launcher wants other arguments), that kernel takes the normal path for good.  The
kernels routed here overwrite their output and never read it, so launching twice is
harmless.  ``FASTGEN_DIRECT_LAUNCH=0`` turns it off; under ``TRITON_INTERPRET=1`` it is off.
"""
import logging
import os

import torch

log = logging.getLogger("fastgen")

_COMPILED = {}     # key -> CompiledKernel whose direct launch passed its check
_BROKEN = set()    # JIT functions whose direct launch failed: normal launches only


def enabled():
    return (os.environ.get("FASTGEN_DIRECT_LAUNCH", "1") != "0"
            and os.environ.get("TRITON_INTERPRET", "0") != "1")


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


def launch(fn, grid, args, constexprs, out, num_warps=4, num_stages=3, unspecialized=()):
    """Launch JIT function ``fn`` (not an autotuner) on a concrete ``grid`` tuple.

    args: the runtime arguments in signature order; constexprs: the constexpr arguments by
    name; out: a tensor the kernel writes (used once per key to check the direct launch);
    unspecialized: names of int arguments the kernel declares ``do_not_specialize``."""
    grid = tuple(grid) + (1,) * (3 - len(grid))   # a CompiledKernel's launcher reads grid[0..2]
    if not enabled() or fn in _BROKEN:
        fn[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
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
    except Exception as error:        # e.g. a launcher that takes a different argument list
        log.info("fastgen: direct launch of %s unavailable (%s); using Triton's launch", fn, error)
        same = False
    if same:
        if len(_COMPILED) >= 4096:    # shapes that change every call: keep the cache bounded
            _COMPILED.clear()
        _COMPILED[key] = compiled
    else:
        _BROKEN.add(fn)
        out.copy_(expected)           # the normal launch's result stands


def _signature_order(fn, args, constexprs):
    """Every argument, constexprs included, in the kernel's signature order: what a
    ``CompiledKernel``'s launcher takes (it skips the constexprs itself)."""
    names = fn.arg_names
    values = dict(zip(names, args))
    values.update(constexprs)
    return [values[name] for name in names]
