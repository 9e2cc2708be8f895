"""The compile gate: every Triton kernel fastgen launches, compiled for real GPUs on a machine
without one, and checked for what would make it fail or crawl there.

    fastgen compile-gate [--arch 80,90] [--out DIR] [--quick] [--jobs N]

The package: ``configurations`` (what is compiled), ``compiling`` (specialise, compile, judge),
``results`` (known failures, tables), ``cli`` (the command).

How it works (no GPU, no CUDA driver):

1. **Configurations.**  ``configurations()`` calls the launch wrappers in ``kernels/*.py`` with
   *meta* tensors (shapes, strides and dtypes, no memory) at the sizes the library runs: the
   model zoo's defaults and the benchmark cases (``fastgen/bench``), with the layouts, dtypes
   and dot precisions the ops pass.  ``kernels/_launch.observe_launches(..., execute=False)``
   records every launch instead of executing it: the JIT function, its arguments, constexprs,
   warps and stages -- and for an autotuned kernel (tap_conv) every config of its space.
2. **Specialisation.**  Each launch is specialised exactly as Triton's own ``JITFunction.run``
   does it (the same binder: argument types, ints equal to 1 or divisible by 16, 16-byte
   aligned pointers -- meta tensors count as aligned, as PyTorch's allocations are), for each
   target ``GPUTarget("cuda", arch, 32)``; identical compiles are done once.
3. **Compile.**  ``triton.compile`` down to a cubin with the ptxas Triton ships, in worker
   processes.  ptxas's ``-v`` log gives the spill stores/loads; ``cuobjdump
   --dump-resource-usage`` on the cubin gives registers, stack, static shared and local memory;
   Triton's metadata gives the dynamic shared memory it requests at launch.
4. **Verdict.**  A configuration fails on a compile error, on any spill, or on shared memory
   (static + dynamic) above the architecture's per-block limit (sm_80: 163 KiB opt-in,
   sm_90: 227 KiB).  The table (markdown + JSON, ``benchmarks/results/compile/``) also gives
   the resulting occupancy: resident warps per SM from registers, shared memory and warps.

Known failures: ``benchmarks/results/compile/known_failures.json`` lists the failures the gate
found when it was introduced (most fused sampling kernels spill); they are reported in the
table, and the gate fails only on a failure not listed there with the same kinds -- a
ratchet: nothing gets worse while they are fixed.  ``--known ''`` makes it strict.

Exit status: 0 when no new failure, 1 otherwise (2: bad arguments).
The kernels must not be interpreted: under ``TRITON_INTERPRET=1`` the gate re-runs itself in a
subprocess without it.
"""
from fastgen.compile_gate.cli import add_arguments, cmd, main
from fastgen.compile_gate.compiling import (ARCHS, Arch, check_kernel, occupancy, parse_ptxas_log,
                                            parse_resource_usage, run, verdict)
from fastgen.compile_gate.configurations import FAMILIES, Job, configurations, record
from fastgen.compile_gate.results import KNOWN, load_known, mark_known, summary, write, write_known

__all__ = ["ARCHS", "Arch", "FAMILIES", "Job", "KNOWN", "add_arguments", "check_kernel", "cmd", "configurations",
           "load_known", "main", "mark_known", "occupancy", "parse_ptxas_log", "parse_resource_usage", "record", "run",
           "summary", "verdict", "write", "write_known"]
