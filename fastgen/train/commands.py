"""The ``fastgen train`` and ``fastgen sample`` subcommands: argument parsers (per-subcommand help
with defaults) and the commands.  Every bad input is checked before any work and reported as
one line on stderr with exit code 2."""
import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import torch

from fastgen.train.registry import NOT_TRAINABLE, REGISTRY, DataInfo, SampleOptions, UsageError, get

MODELS_HELP = "one of: " + ", ".join(REGISTRY) + (" (not trainable here: " + ", ".join(NOT_TRAINABLE) + ")"
                                                   if NOT_TRAINABLE else "")

# what one sample of each kind of data is called in messages
UNITS = {"image": "images", "audio": "clips", "video": "clips", "density": "samples"}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown for every option that has one (None / off: the help text says what happens)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _usage(command: str, err: Exception) -> int:
    print(f"fastgen {command}: error: {err}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------ train

TRAIN_EPILOG = """examples:
  fastgen train gated-pixelcnn --data digits --steps 2000 --out runs/gated
  fastgen train ddpm --data digits --steps 5000 --ema 0.999 --sample-every 1000 --out runs/ddpm
  fastgen train gated-pixelcnn --data digits --steps 4000 --out runs/gated --resume   # continue a run
  torchrun --nproc-per-node 4 -m fastgen train ddpm --data digits --steps 5000 --batch 256 --out runs/ddpm4
  fastgen train planar-flow --data density:u1 --steps 5000 --sample-every 1000 --out runs/planar-u1

--batch is the global batch: under torchrun each of the K processes takes batch / K samples.
For the same --seed, the autoregressive models (deterministic losses) train to the same weights
whatever K; models whose loss draws noise (diffusion, flows, VAEs) draw it per rank from the seed
and the sample index (see fastgen/train/loop.py).

planar-flow and radial-flow fit no data: --data density:u1 .. density:u4 name a 2-D target
density exp(-U) (Rezende & Mohamed 2015, figure 3; fastgen/data/densities.py), and the loss is
KL(q || p) in nats, estimated from --batch samples of the flow per step."""


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model; checkpoints that fastgen sample reads",
                       description="Train a model of the zoo on images, audio or videos, with checkpoints\n"
                                   "(safetensors + config.json) that `fastgen sample` reads.  Runs on one device, or\n"
                                   "on several under torchrun (DistributedDataParallel).",
                       formatter_class=_Formatter, epilog=TRAIN_EPILOG)
    p.add_argument("model", help=MODELS_HELP)
    p.add_argument("--data", default="digits",
                   help="digits (bundled 8x8 digits), audio-synthetic (chords and chirps), moving-digits (4-frame "
                        "clips of a digit bouncing across a 12x12 canvas), an .npy file of integer images "
                        "[N, (C,) H, W] or videos [N, T, (C,) H, W], a folder of 16-bit .wav files, or for "
                        "planar-flow / radial-flow a target density density:u1 .. density:u4")
    p.add_argument("--steps", type=int, default=1000, help="total optimisation steps (with --resume: the total, "
                                                           "not the number still to run)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: 64 images, 8 audio clips, 32 "
                                                           "video clips or 256 samples of a density flow; "
                                                           "resuming: the run's)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the model's, e.g. 1e-3)")
    p.add_argument("--out", default=None, help="checkpoint folder (default: runs/MODEL)")
    p.add_argument("--config", default=None,
                   help="model constructor arguments as a JSON file or an inline JSON object, merged over the "
                        "model's defaults, e.g. '{\"channels\": 64, \"layers\": 8}'")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out (weights, optimizer, "
                                                         "EMA, step, data order): the same run as without a break")
    p.add_argument("--amp", choices=["bf16"], default=None, help="autocast the forward pass to bfloat16")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep EMA weights with this decay (e.g. 0.999); fastgen sample uses them")
    p.add_argument("--compile", action="store_true", help="run the model and loss under torch.compile")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard parameters, gradients and optimizer states over the processes "
                        "(FSDP2) instead of replicating them (DDP); for models whose training state does not fit "
                        "one GPU")
    p.add_argument("--sample-every", type=int, default=0, metavar="K",
                   help="write samples (PNG grid, WAV, a PNG of video clips one per row, or a density flow's "
                        "target beside the histogram of 10000 samples) to OUT/samples every K steps (0: never)")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="K",
                   help="write a checkpoint every K steps (and at the end)")
    p.add_argument("--seed", type=int, default=None, help="run seed (default 0; resuming: the run's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available; under torchrun "
                                                  "each process takes its LOCAL_RANK's GPU)")
    p.add_argument("--levels", type=int, default=256, help="grey levels of an .npy image or video data set")
    p.add_argument("--segment", type=int, default=2048, help="audio training clip length in samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _read_config(value: Optional[str]) -> Dict[str, Any]:
    if value is None:
        return {}
    text = value
    if not value.lstrip().startswith("{"):
        if not os.path.isfile(value):
            raise UsageError(f"--config {value}: no such file (give a JSON file or an inline JSON object)")
        with open(value) as f:
            text = f.read()
    try:
        config = json.loads(text)
    except ValueError as err:
        raise UsageError(f"--config: not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise UsageError("--config must be a JSON object of constructor arguments")
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from fastgen.train.loop import TrainOptions, train
    try:
        opts = TrainOptions(model=args.model, data=args.data, steps=args.steps, batch=args.batch, lr=args.lr,
                            out=args.out, config=_read_config(args.config), resume=args.resume, amp=args.amp,
                            ema=args.ema, compile=args.compile, fsdp=args.fsdp, sample_every=args.sample_every,
                            checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                            levels=args.levels, segment=args.segment, progress=not args.no_progress)
        train(opts)
    except UsageError as err:
        return _usage("train", err)
    return 0


# ----------------------------------------------------------------------------------------- sample

SAMPLE_EPILOG = """examples:
  fastgen sample gated-pixelcnn --checkpoint runs/gated --n 64 --out samples.png
  fastgen sample ddpm --checkpoint runs/ddpm --n 16 --steps 100 --out ddpm.png
  fastgen sample wavenet --checkpoint runs/wavenet --seconds 2 --n 3 --out out.wav   # out-0.wav .. out-2.wav
  fastgen sample video-transformer --checkpoint runs/video --n 16 --out clips.gif     # or clips.png
  fastgen sample planar-flow --checkpoint runs/planar-u1 --n 10000 --out q.png       # or q.npy
  torchrun --nproc-per-node 4 -m fastgen sample ddpm --checkpoint runs/ddpm --num-samples 1024 --batch 64 --out big.png

Images go into one PNG grid; audio clips into one WAV each (OUT for one clip, OUT-<i>.wav for
several); video clips into one PNG (a row per clip, frames left to right) or one animated GIF
(.gif: frame t shows every clip's frame t); points of planar-flow / radial-flow into a PNG
(the target density beside the samples' 2-D histogram) or an .npy array [n, 2].  --batch
samples are drawn at a time; the same --seed and --batch give the same samples on one process
or many (each chunk of --batch is seeded by its first sample index)."""


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate from a checkpoint of fastgen train (or a WaveNet.save file)",
                       description="Draw samples from a model trained by `fastgen train` (a checkpoint folder),\n"
                                   "or from a WaveNet saved with WaveNet.save (a .pt file).",
                       formatter_class=_Formatter, epilog=SAMPLE_EPILOG)
    p.add_argument("model", help=MODELS_HELP)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder written by fastgen train (wavenet: also a "
                                                       "file written by WaveNet.save)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=None,
                   help="how many samples (default: 64 images, 8 video clips, 10000 points of a density flow or "
                        "1 audio clip; audio with only --batch given: --batch clips).  Under torchrun write "
                        "--num-samples: torchrun's own parser takes --n for an abbreviation of its options")
    p.add_argument("--out", default=None, help="output file: .png for images, .wav for audio, .png or .gif for "
                                               "video, .png or .npy for a density flow (default: samples.png, "
                                               "out.wav or clips.gif)")
    p.add_argument("--batch", type=int, default=None, help="samples drawn at a time (default: min(n, 64) images "
                                                           "or video clips, all the audio clips or points)")
    p.add_argument("--method", choices=["fast", "naive"], default=None,
                   help="fast: incremental caches / fused kernels; naive: full recompute (the reference) -- "
                        "autoregressive and diffusion models only (default: fast)")
    p.add_argument("--cuda-graph", action="store_true", help="replay the sampling loop as a CUDA graph "
                                                             "(CUDA, --method fast)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default 1): > 0 for categorical samplers, >= 0 for flows and the "
                        "hierarchical VAE (0: the prior means)")
    p.add_argument("--seconds", type=float, default=None, help="audio length per clip in seconds (default 1.0)")
    p.add_argument("--speaker", type=int, default=None, help="global-conditioning id (WaveNet trained with "
                                                             "global_classes)")
    p.add_argument("--label", type=int, default=None, help="class id for every sample of a class-conditional "
                                                           "image model (default: cycle through the classes)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps of ddpm (DDIM, default 50) and ncsn "
                                                           "(default: its sigmas)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if the checkpoint has EMA ones")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=cmd_sample)


def _check_out(out: str, kind: str) -> None:
    from fastgen.train.generate import OUTPUTS
    fmt = OUTPUTS[kind]
    want = " or ".join(fmt.extensions)
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a folder; give a file name ending in {want}")
    if not out.lower().endswith(fmt.extensions):
        raise UsageError(f"--out {out}: this model writes {fmt.description}; give a file name ending in {want}")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {out}: the folder {os.path.dirname(out) or folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--out {out}: the folder {os.path.dirname(out) or folder} is not writable")


def _load(args, spec, device):
    """(model, DataInfo) from a checkpoint folder, or from a WaveNet.save file."""
    path = args.checkpoint
    if spec.name == "wavenet" and os.path.isfile(path):
        from fastgen.models import WaveNet
        try:
            model, saved = WaveNet.load(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
            raise UsageError(f"--checkpoint {path}: not a WaveNet.save file ({type(err).__name__}: {err})") from err
        return model.to(device).eval(), DataInfo("audio", (0,), sample_rate=saved.get("sample_rate", 16000))
    if os.path.isfile(path):
        raise UsageError(f"--checkpoint {path} is a file; fastgen train writes checkpoint folders "
                         f"(config.json + safetensors)")
    from fastgen.train.generate import load_model
    _, model, info, _ = load_model(path, spec.name, device, ema=not args.no_ema)
    return model, info


def _check_sample_args(args, spec, model, info) -> SampleOptions:
    """Every option against this model; the SampleOptions to draw with."""
    if args.n is not None and args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.method is not None and args.method not in spec.methods:
        raise UsageError(f"--method {args.method}: {spec.name} has one sampler; leave --method out")
    if args.temperature is not None:
        t = args.temperature
        if spec.temperature is None:
            raise UsageError(f"--temperature: {spec.name} samples without a temperature; leave it out")
        if not math.isfinite(t) or t < 0 or (spec.temperature == ">0" and t == 0):
            raise UsageError(f"--temperature {t:g}: {spec.name} needs a finite temperature "
                             f"{'> 0 (0 would be greedy argmax decoding, which it does not do)' if spec.temperature == '>0' else '>= 0'}")
    length = None
    if spec.data == "audio":
        seconds = 1.0 if args.seconds is None else args.seconds
        if not math.isfinite(seconds) or seconds <= 0:
            raise UsageError(f"--seconds must be > 0, got {seconds:g}")
        length = int(round(seconds * info.sample_rate))
        if length < 1:
            raise UsageError(f"--seconds {seconds:g} is less than one sample at {info.sample_rate} Hz "
                             f"(the shortest is {1 / info.sample_rate:.2g} s)")
        if model.local_channels:
            raise UsageError("this WaveNet needs local conditioning features; sample it from Python with "
                             "model.stream(...)")
    elif args.seconds is not None:
        raise UsageError(f"--seconds: {spec.name} draws {'points' if spec.data == 'density' else spec.data + 's'}; "
                         f"use --n")
    if args.speaker is not None:
        classes = getattr(model, "global_classes", None) if spec.data == "audio" else None
        if not classes:
            raise UsageError(f"--speaker {args.speaker}: this {spec.name} model has no global conditioning "
                             f"(trained without global_classes)")
        if not 0 <= args.speaker < classes:
            raise UsageError(f"--speaker {args.speaker}: the model has speakers 0..{classes - 1}")
    if args.label is not None:
        classes = spec.num_classes(model) if spec.data != "audio" else None
        if not classes:
            raise UsageError(f"--label {args.label}: this {spec.name} model is not class-conditional")
        if not 0 <= args.label < classes:
            raise UsageError(f"--label {args.label}: the model has classes 0..{classes - 1}")
    if args.steps is not None:
        if spec.name not in ("ddpm", "ncsn"):
            raise UsageError(f"--steps: {spec.name} has no sampler steps (ddpm and ncsn do)")
        if args.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.cuda_graph:
        if not spec.cuda_graph:
            raise UsageError(f"--cuda-graph: {spec.name} has no CUDA-graph sampler")
        if next(model.parameters()).device.type != "cuda":
            raise UsageError("--cuda-graph needs a CUDA device (--device cuda)")
        if args.method == "naive":
            raise UsageError("--cuda-graph replays the fast sampler; it does not combine with --method naive")
    return SampleOptions(method=args.method or "fast", temperature=args.temperature, cuda_graph=args.cuda_graph,
                         length=length, speaker=args.speaker, steps=args.steps)


def cmd_sample(args: argparse.Namespace) -> int:
    from fastgen.train.distributed import dist_env, init, resolve_device, shutdown
    from fastgen.train.generate import OUTPUTS, draw, write
    try:
        spec = get(args.model)
        env = dist_env()
        device = resolve_device(args.device, env)
        if not os.path.exists(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint}: no such file or folder")
        out = args.out or OUTPUTS[spec.data].default
        _check_out(out, spec.data)
        model, info = _load(args, spec, device)
        options = _check_sample_args(args, spec, model, info)
    except UsageError as err:
        return _usage("sample", err)
    n = args.n or {"image": 64, "video": 8, "density": 10000}.get(spec.data) or args.batch or 1
    batch = args.batch or (n if spec.data in ("audio", "density") else min(n, 64))
    created = init(env, device)
    try:
        bar = None
        if env.is_main:
            from tqdm import tqdm
            bar = tqdm(total=n, desc=f"sample {spec.name} ({options.method})", unit=UNITS[spec.data][:-1])
        start = time.perf_counter()
        samples = draw(spec, model, n, batch, args.seed, options, env, args.label,
                       progress=None if bar is None else lambda k: bar.update(min(k, n - bar.n)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if env.is_main:
            paths = write(samples, info, out)
            if spec.data == "audio":
                rate = f"{n * options.length / seconds:,.0f} samples/s ({n} x {options.length} samples"
            else:
                unit = UNITS[spec.data]
                rate = f"{n / seconds:,.1f} {unit}/s ({n} {unit}"
            shown = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]}"
            print(f"{rate} in {seconds:.1f} s); wrote {shown}")
    finally:
        shutdown(created)
    return 0
