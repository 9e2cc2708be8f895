"""Where a conv op's wall time goes on the GPU machine: host (Python) time per call, the
Triton kernel alone, and a cProfile of the host side.

    python3 benchmarks/diagnose_overhead.py
"""
import cProfile
import pstats
import time

import torch
from triton.testing import do_bench

from fastgen import bench


def main():
    device = torch.device("cuda")
    cases = [c for c in bench.masked_conv_cases(device, torch.bfloat16, compile_baseline=False)]
    for case in cases:
        for impl in ("fastgen_channels_last", "cudnn_channels_last"):
            fn = case.impls[impl]
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            host = (time.perf_counter() - t0) / 200 * 1e3
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 200 * 1e3
            print(f"{case.name} {impl}: host {host:.4f} ms/call, wall {wall:.4f} ms/call, "
                  f"do_bench {do_bench(fn, return_mode='median'):.4f} ms")
        prof = cProfile.Profile()
        fn = case.impls["fastgen_channels_last"]
        prof.enable()
        for _ in range(100):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
