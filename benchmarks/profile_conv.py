"""Kernel-level profile of the conv ops on a GPU: which kernels run and how long each takes.

    python3 benchmarks/profile_conv.py     # prints one table per case
"""
import torch
from torch.profiler import ProfilerActivity, profile

from fastgen import bench


def main():
    device = torch.device("cuda")
    cases = [c for c in bench.conv_cases(device, dtypes=[torch.bfloat16])
             if "_d1_" in c.name or "masked" in c.name]
    for case, impl in [(c, i) for c in cases for i in ("fastgen", "fastgen_channels_last")]:
        fn = case.impls[impl]
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        print(f"\n=== {case.name} {impl} (10 calls)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))


if __name__ == "__main__":
    main()
