"""Gradients right on the very first call, while the autotuner is still trying configs.

The autotuner runs every candidate config on the real arguments during the first call; a
kernel that accumulated into its output would then return a multiple of the gradient.  Checked at the benchmark
sizes (bf16) against cuDNN with a relative-norm tolerance.  python3 benchmarks/check_after_tuning.py
"""
import torch

from fastgen import bench


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    device = torch.device("cuda")
    cases = [c for c in bench.conv_cases(device, dtypes=[torch.bfloat16])
             if c.name.endswith("fwdbwd") and ("masked" in c.name or "_d1_" in c.name)]
    worst = 0.0
    for case in cases:
        first = case.impls["fastgen"]()          # tunes here
        second = case.impls["fastgen"]()
        ref = case.impls["cudnn"]()
        for i, (a, b, r) in enumerate(zip(first, second, ref)):
            err1, err2 = rel(a, r), rel(b, r)
            worst = max(worst, err1, err2)
            print(f"{case.name} grad[{i}]: first call {err1:.2e}, second {err2:.2e} (vs cuDNN)")
    print("OK" if worst < 2e-2 else f"FAIL: worst relative error {worst:.2e}")


if __name__ == "__main__":
    main()
