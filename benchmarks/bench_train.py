"""Training throughput of ``fastgen train`` (issue 13): items/s and peak memory of the Gated
PixelCNN (15 layers x 128 channels, 28x28, 256 levels) and the DDPM UNet (35.7M parameters,
3x32x32), global batch 64, fp32 and --amp bf16 where the model allows it.

    python benchmarks/bench_train.py --json OUT.json                  # one GPU
    torchrun --nproc-per-node K benchmarks/bench_train.py --json OUT.json   # K GPUs (DDP), same global batch

Random integer images stand in for data (throughput does not depend on the pixels).  items/s
is measured between the first logged step (after warm-up) and the last; rank 0 writes the JSON.
"""
import argparse
import json
import os
import tempfile

import numpy as np
import torch

from fastgen.train import TrainOptions, train
from fastgen.train.distributed import dist_env

CASES = [
    ("gated-pixelcnn_L15_C128_28x28_levels256", "gated-pixelcnn", (1, 28, 28), {"channels": 128, "layers": 15}),
    ("ddpm_unet35.7M_3x32x32", "ddpm", (3, 32, 32),
     {"unet": {"channels": 128, "channel_mult": [1, 2, 2, 2], "blocks": 2, "attention_at": [16], "groups": 32,
               "dropout": 0.1}}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    env = dist_env()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, model, shape, config in CASES:
            data = os.path.join(tmp, f"{case}.npy")              # each rank its own copy, the same values
            np.save(data, np.random.default_rng(0).integers(0, 256, (512, *shape)).astype(np.uint8))
            for amp in (None, "bf16"):
                out = os.path.join(tmp, f"{case}_{amp}")
                try:
                    summary = train(TrainOptions(model, data=data, steps=args.steps, batch=args.batch, out=out,
                                                 config=config, amp=amp, checkpoint_every=10 ** 9, log_every=10,
                                                 progress=False))
                except ValueError as err:          # e.g. --amp refused for this model, with the reason
                    rows.append({"case": f"{case}_{amp or 'fp32'}", "skipped": str(err)})
                    continue
                if not env.is_main:
                    continue
                log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
                first, last = log[0], log[-1]
                rate = ((last["step"] - first["step"]) * args.batch / (last["elapsed_s"] - first["elapsed_s"])
                        if len(log) > 1 else summary["items_per_s"])          # too few steps: with warm-up
                rows.append({"case": f"{case}_{amp or 'fp32'}", "world_size": env.world_size,
                             "global_batch": args.batch, "items_per_s": rate,
                             "peak_memory_gb": summary.get("peak_memory_gb"), "final_loss": summary["loss"]})
                print(json.dumps(rows[-1]))
    if env.is_main:
        meta = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        with open(args.json, "w") as f:
            json.dump({"env": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
