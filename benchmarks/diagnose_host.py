"""Host-side (Python) profile of one conv forward+backward on the GPU machine.

    python3 benchmarks/diagnose_host.py     # cProfile by cumulative time, and host vs wall per call
"""
import cProfile
import pstats
import time

import torch

from fastgen import bench


def main():
    device = torch.device("cuda")
    cases = bench.masked_conv_cases(device, torch.bfloat16, compile_baseline=False)
    case = next(c for c in cases if "k3B" in c.name and c.name.endswith("fwdbwd"))
    for impl in ("fastgen_channels_last", "cudnn_channels_last"):
        fn = case.impls[impl]
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(100):
            fn()
        host = (time.perf_counter() - t0) * 10
        torch.cuda.synchronize()
        print(f"{case.name} {impl}: host {host:.3f} ms/call, wall {(time.perf_counter() - t0) * 10:.3f} ms/call")
    prof = cProfile.Profile()
    fn = case.impls["fastgen_channels_last"]
    prof.enable()
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumtime").print_stats(30)


if __name__ == "__main__":
    main()
