"""The compile gate's compiler: specialise a recorded launch as Triton does, compile it to a
cubin for an architecture, read its resources, and judge it (``run``, ``verdict``)."""
import contextlib
import io
import os
import re
import subprocess
import tempfile
import time
import warnings
from typing import NamedTuple

from fastgen.compile_gate.configurations import record


class Arch(NamedTuple):
    cc: int
    name: str
    shared_per_block: int     # bytes, the opt-in maximum of one block
    shared_per_sm: int        # bytes, shared memory per SM (what blocks share)


ARCHS = {
    80: Arch(80, "sm_80", 163 * 1024, 164 * 1024),
    90: Arch(90, "sm_90", 227 * 1024, 228 * 1024),
}
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256           # registers are allocated per warp in units of 256
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
RESERVED_SHARED_PER_BLOCK = 1024   # the CUDA runtime's own shared memory per block (sm_80+)
RESULTS = os.path.join("benchmarks", "results", "compile")


def _kernel_name(fn):
    return fn.fn.__name__             # JITFunction.fn: the Python function


def _kernel_module(fn):
    return fn.fn.__module__


def specialise(fn, args, constexprs, num_warps, num_stages, cc):
    """What Triton's JITFunction.run compiles for these arguments on target sm_<cc>:
    (target, signature, constexprs, attrs, options as a dict)."""
    target, backend, binder = _binder(fn, cc)
    kwargs = dict(constexprs, num_warps=num_warps, num_stages=num_stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # triton 3.9's notice about its future fp-fusion default
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, consts, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return target, signature, consts, attrs, dict(options.__dict__)


_BINDERS = {}


def _binder(fn, cc):
    if (fn, cc) not in _BINDERS:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
        target = GPUTarget("cuda", cc, 32)
        backend = make_backend(target)
        _BINDERS[fn, cc] = target, backend, create_function_from_signature(fn.signature, fn.params, backend)
    return _BINDERS[fn, cc]


def _key(fn, spec):
    target, signature, consts, attrs, options = spec
    return repr((_kernel_module(fn), _kernel_name(fn), target.arch, sorted(signature.items()), sorted(consts.items()),
                 sorted(attrs.items()), sorted(options.items())))


def tool(name):
    """Path of a CUDA tool Triton ships (cuobjdump, ptxas)."""
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else name


_RESOURCE = re.compile(r"Function ([^\s:]+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_SPILLS = re.compile(r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                     r"(\d+) bytes spill loads")


def parse_resource_usage(text):
    """``cuobjdump --dump-resource-usage`` output -> {function: dict(registers, stack, shared, local)}."""
    return {m[1]: dict(registers=int(m[2]), stack=int(m[3]), shared=int(m[4]), local=int(m[5]))
            for m in _RESOURCE.finditer(text)}


def parse_ptxas_log(text):
    """ptxas -v log -> {function: dict(stack_frame, spill_stores, spill_loads)}."""
    return {m[1]: dict(stack_frame=int(m[2]), spill_stores=int(m[3]), spill_loads=int(m[4]))
            for m in _SPILLS.finditer(text)}


def resource_usage(cubin):
    """Registers, stack, static shared and local memory of every function in a cubin (bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return parse_resource_usage(text)


def _worker_init(cache_dir):
    warnings.simplefilter("ignore")     # triton 3.9's fp-fusion notice, once per worker
    _set_knobs(cache_dir)


def _set_knobs(cache_dir):
    import triton
    triton.knobs.cache.dir = cache_dir
    triton.knobs.compilation.always_compile = True     # a fresh ptxas run (and its log) every time
    triton.knobs.nvidia.dump_ptxas_log = True          # printed to stdout: captured per compile


def compile_one(module, name, target, signature, consts, attrs, options):
    """Compile one specialised kernel (``module.name``, a JIT function or an autotuner) in this
    process: a result dict, never an exception."""
    import importlib

    from triton.runtime.jit import JITFunction
    fn = getattr(importlib.import_module(module), name)
    return _compile(fn if isinstance(fn, JITFunction) else fn.fn, target, signature, consts, attrs, options)


def _compile(fn, target, signature, consts, attrs, options):
    import triton
    from triton.compiler import ASTSource
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(fn, signature, consts, attrs), target=target, options=options)
        usage = resource_usage(kernel.asm["cubin"])
        mine = usage.get(kernel.metadata.name) or next(iter(usage.values()))
        ptxas = parse_ptxas_log(log.getvalue())
        spills = ptxas.get(kernel.metadata.name) or next(iter(ptxas.values()), None)
        return dict(error=None, registers=mine["registers"], stack=mine["stack"], local=mine["local"],
                    static_shared=mine["shared"], dynamic_shared=int(kernel.metadata.shared),
                    spill_stores=None if spills is None else spills["spill_stores"],
                    spill_loads=None if spills is None else spills["spill_loads"],
                    seconds=time.perf_counter() - start)
    except Exception as error:          # noqa: BLE001 -- a compile error is a result of the gate
        text = f"{type(error).__name__}: {error}"
        return dict(error=text[-2000:], seconds=time.perf_counter() - start)


def _finish(row, arch):
    """Add total shared memory, occupancy and the verdict to a compiled row."""
    if not row["error"]:
        row["shared"] = row["static_shared"] + row["dynamic_shared"]
        row["warps_per_sm"], row["occupancy_limit"] = occupancy(row["registers"], row["shared"], row["num_warps"],
                                                                arch)
        row["occupancy_pct"] = round(100 * row["warps_per_sm"] / MAX_WARPS_PER_SM, 1)
    row["failures"] = verdict(row, arch)
    return row


def check_kernel(fn, args, constexprs, num_warps=4, num_stages=3, cc=90):
    """Compile one JIT function for sm_<cc> in this process, as the gate does, and judge it:
    a row (registers, spills, shared, occupancy, ``failures``).  The process must not run
    Triton's interpreter.  (For tests and for checking a kernel by hand.)"""
    import triton
    cache = tempfile.mkdtemp(prefix="fastgen-compile-gate-")
    knobs = triton.knobs
    saved = knobs.cache.dir, knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    try:
        _set_knobs(cache)
        row = _compile(fn, *specialise(fn, args, constexprs, num_warps, num_stages, cc))
    finally:
        knobs.cache.dir, knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
        import shutil
        shutil.rmtree(cache, ignore_errors=True)
    row.update(kernel=_kernel_name(fn), arch=ARCHS[cc].name, num_warps=num_warps, num_stages=num_stages)
    return _finish(row, ARCHS[cc])


def occupancy(registers, shared, warps, arch):
    """(resident warps per SM, what limits it) for blocks of ``warps`` warps using
    ``registers`` per thread and ``shared`` bytes of shared memory."""
    per_warp = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    limits = {"warps": MAX_WARPS_PER_SM // warps, "blocks": MAX_BLOCKS_PER_SM,   # (ties: the hardware maxima)
              "registers": (REGISTERS_PER_SM // per_warp) // warps}
    if shared:
        limits["shared memory"] = arch.shared_per_sm // (shared + RESERVED_SHARED_PER_BLOCK)
    limiter = min(limits, key=limits.get)
    return limits[limiter] * warps, limiter


def verdict(row, arch):
    """Why a compiled configuration fails the gate ([] when it passes)."""
    if row["error"]:
        return ["compile error"]
    why = []
    if row["spill_stores"] is None:
        why.append("no ptxas spill report")
    elif row["spill_stores"] or row["spill_loads"]:
        why.append(f"spills ({row['spill_stores']} B stores, {row['spill_loads']} B loads)")
    if row["shared"] > arch.shared_per_block:
        why.append(f"shared memory {row['shared']} B > {arch.shared_per_block} B per block")
    return why


def _config_text(job):
    skip = ("PRECISION",)
    parts = [f"{k}={v}" for k, v in sorted(job.constexprs.items()) if k not in skip]
    return " ".join(parts + [f"w{job.num_warps}", f"s{job.num_stages}"])


def _dtype_text(signature):
    ptrs = [v[1:] for v in signature.values() if isinstance(v, str) and v.startswith("*")]
    return max(set(ptrs), key=ptrs.count) if ptrs else ""


def run(archs=(80, 90), quick=False, jobs=None, families=None, full=False, progress=print):
    """Record, specialise, compile and check: (rows, seconds)."""
    start = time.perf_counter()
    recorded = record(quick, families, full)
    unique = {}                        # key -> row
    for job in recorded:
        for cc in archs:
            spec = specialise(job.kernel, job.args, job.constexprs, job.num_warps, job.num_stages, cc)
            key = _key(job.kernel, spec)
            row = unique.get(key)
            if row is None:
                row = unique[key] = dict(
                    kernel=_kernel_name(job.kernel), family=job.family, arch=ARCHS[cc].name,
                    config=_config_text(job), dtype=_dtype_text(spec[1]), precision=job.constexprs.get("PRECISION", ""),
                    num_warps=job.num_warps, num_stages=job.num_stages, used_by=[], _spec=spec,
                    _module=_kernel_module(job.kernel))
            if job.label not in row["used_by"]:
                row["used_by"].append(job.label)
    rows = list(unique.values())
    progress(f"compile gate: {len(recorded)} launches x {len(archs)} archs -> {len(rows)} distinct compiles "
             f"(triton {triton_version()})")
    import concurrent.futures
    import multiprocessing
    cache = tempfile.mkdtemp(prefix="fastgen-compile-gate-")
    workers = jobs or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(cache,)) as pool:
        futures = [pool.submit(compile_one, row["_module"], row["kernel"], *row["_spec"]) for row in rows]
        for n, (row, future) in enumerate(zip(rows, futures), 1):
            row.update(future.result())
            _finish(row, ARCHS[int(row["arch"][3:])])
            del row["_spec"], row["_module"]
            if row["failures"] or n % 25 == 0 or n == len(rows):
                progress(f"  [{n}/{len(rows)}] {row['kernel']} {row['arch']} {row['config']}: "
                         + (", ".join(row["failures"]) or f"{row['registers']} regs"))
    import shutil
    shutil.rmtree(cache, ignore_errors=True)
    return rows, time.perf_counter() - start


def triton_version():
    import triton
    return triton.__version__
