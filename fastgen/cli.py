"""The ``fastgen`` command.

    fastgen demo [--model pixelcnn|diffusion|flow|transformer|gan|vqvae] [--steps N] [--out DIR]
                                 train a Gated PixelCNN (a DDPM, a Glow, a local transformer, a VQ-VAE and its
                                 prior) on the bundled digits and sample it
    fastgen train MODEL --data digits|audio-synthetic|moving-digits|PATH --steps N [--out DIR] [--resume] ...
                                 train any registered zoo model (checkpoints: safetensors + config.json);
                                 several GPUs: torchrun --nproc-per-node K -m fastgen train ...
    fastgen sample MODEL --checkpoint DIR --n N --out FILE [--method fast|naive] [--cuda-graph] ...
                                 sample a checkpoint into a PNG grid, WAV files or (video) a PNG /
                                 animated GIF (wavenet: also a WaveNet.save file, as before)
    fastgen info                 versions, device, the backend each op uses, native extension
    fastgen compile-gate [--arch 80,90] [--out DIR] [--quick]
                                 compile every kernel at every configuration the library launches
                                 for sm_80 / sm_90 (no GPU needed): registers, spills, shared memory
    fastgen bench conv|sampling|wavenet|diffusion|flows|stylegan|vq|attention [--quick] [--json PATH]
                                 time the conv kernels against cuDNN / torch.compile, the
                                 PixelCNN samplers, WaveNet generation or diffusion steps here
"""
import argparse
import importlib
import platform
import sys
from typing import List, Optional

import torch


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cmd_info(args: argparse.Namespace) -> int:
    from fastgen import __version__, _native
    from fastgen.ops._backend import can_run_triton, triton_version

    device = _device()
    try:
        import cupy
        cupy_version = cupy.__version__
    except Exception:  # cupy missing or without a usable CUDA
        cupy_version = None
    print(f"fastgen   {__version__}")
    print(f"python    {platform.python_version()}")
    print(f"torch     {torch.__version__}")
    print(f"triton    {triton_version() or 'not installed'}")
    print(f"cupy      {cupy_version or 'not installed'}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device    {device} ({name})")
    print(f"native    {_native.status()}")
    from fastgen.kernels import _launch
    direct, why = _launch.status()
    launch = "direct after the first call per argument key" if direct else "Triton's (direct launch off)"
    print(f"launch    {launch}: {why}")
    dtypes = (torch.float32, torch.bfloat16, torch.float64)
    print("ops       by family -- backend here for float32 / bfloat16 / float64; the flag fp32 TF32 follows")
    from fastgen.ops._define import TF32_FLAG_NAMES, ops_by_family
    for family, ops in ops_by_family().items():
        print(f"  {family}")
        for op in ops:
            backends = " / ".join(op.backend(torch.empty(0, dtype=d, device=device)) for d in dtypes)
            print(f"    {op.name:<21} {backends:<34} {TF32_FLAG_NAMES[op.tf32]}")
            print(f"    {'':<21} {op.summary}")
    reasons = {str(d)[6:]: can_run_triton(device, d)[1] for d in dtypes}
    print("          no triton: " + "; ".join(f"{d}: {why}" for d, why in reasons.items() if why != "ok")
          if any(why != "ok" for why in reasons.values()) else "")
    return 0


# fastgen demo --model NAME: its module (a ``run(steps, out_dir, device)``) and default steps
DEMOS = {"diffusion": ("demo_diffusion", 2000), "flow": ("demo_flow", 1500), "transformer": ("demo_transformer", 1200),
         "vqvae": ("demo_vqvae", 1500), "gan": ("demo_gan", 2000)}


def cmd_demo(args: argparse.Namespace) -> int:
    from fastgen import demo

    if args.steps is not None and args.steps < 0:
        print("--steps must be >= 0", file=sys.stderr)
        return 2
    if args.model != "pixelcnn":
        module, default_steps = DEMOS[args.model]
        run = importlib.import_module(f"fastgen.{module}").run
        run(steps=default_steps if args.steps is None else args.steps, out_dir=args.out, device=args.device)
        return 0
    demo.run(steps=1000 if args.steps is None else args.steps, out_dir=args.out, device=args.device)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fastgen import bench

    device = _device()
    return bench.run(args.what, device, quick=args.quick, json_path=args.json, name_filter=args.filter,
                     dtypes=args.dtypes, command=" ".join(["fastgen"] + sys.argv[1:]))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgen", description="Fast kernels for deep generative models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a Gated PixelCNN (or a DDPM) on the bundled 8x8 digits and sample it")
    p.add_argument("--model", choices=["pixelcnn", "diffusion", "flow", "transformer", "gan", "vqvae"],
                   default="pixelcnn",
                   help="pixelcnn: Gated PixelCNN, fast vs naive sampler (default); diffusion: a class-"
                        "conditional DDPM sampled with several fused samplers; flow: a class-conditional "
                        "Glow, bits/dim and samples at several temperatures; transformer: a class-conditional "
                        "LocalImageTransformer (block-local attention), KV-cache vs naive sampler; gan: a "
                        "class-conditional DCGAN (spectral norm, hinge loss), samples judged by a classifier; "
                        "vqvae: a VQ-VAE, then a Gated PixelCNN prior over its codes, samples through the prior")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default 1000; 2000 for diffusion, 1500 for flow, 1200 for transformer, "
                        "2000 for gan, 1500 for vqvae: VQ-VAE steps, then half as many prior steps)")
    p.add_argument("--out", default=".", help="where the PNGs go")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=cmd_demo)
    from fastgen.train.commands import add_sample_parser, add_train_parser
    add_train_parser(sub)
    add_sample_parser(sub)
    p = sub.add_parser("info", help="versions, device and backends")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("compile-gate", help="compile every kernel for sm_80 / sm_90 (no GPU needed); fail on "
                                            "compile errors, spills or too much shared memory")
    from fastgen import compile_gate
    compile_gate.add_arguments(p)
    p.set_defaults(func=compile_gate.cmd)
    p = sub.add_parser("bench", help="time fastgen against the alternatives on this machine")
    p.add_argument("what", choices=["conv", "sampling", "wavenet", "diffusion", "flows", "stylegan", "vq", "attention"],
                   help="which benchmark")
    p.add_argument("--quick", action="store_true", help="small sizes (always on without a GPU)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--filter", default="", help="only cases whose name contains this")
    p.add_argument("--dtypes", default="", help="comma-separated, e.g. bfloat16,float32")
    p.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
