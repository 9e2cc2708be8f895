"""``fastgen train``: one training loop for every registered model, on one device or under
``torchrun`` with ``DistributedDataParallel``.

The rule that makes results independent of the world size (where the maths allows):

- ``--batch`` is the *global* batch: with K processes each takes batch / K samples (K must
  divide it).  The data order comes from ``torch.utils.data.DistributedSampler`` (shuffled
  with the run seed and the epoch, last incomplete batch dropped); at step s the K ranks
  together hold exactly the samples a single process takes at step s, and DDP averages the
  gradients, so the update is the single-process update up to float summation order.
- Randomness is derived, not drawn (``fastgen.train.distributed.derive``): a step's loss
  generators (DDPM's timesteps and noise, the flows' dequantisation, the VAEs' posterior draws)
  and the global torch RNG (dropout) are seeded from the run seed and the global index of the
  rank's first sample in that step.  Models whose loss is deterministic (the autoregressive
  models: PixelCNN family, MADE, WaveNet, the transformers without dropout) therefore train to
  the same parameters whatever K; models whose loss draws noise get the same noise for the same
  K on every run, but K ranks draw different noise than one process (same distribution, other
  bits).
- Models that update themselves (the GANs' ``train_step``: two optimizers, R1's double
  backward) are not wrapped in DDP, which allows one forward and one backward per iteration;
  each optimizer step first averages the gradients over the ranks with one all-reduce and the
  buffers are broadcast from rank 0 after the step (``fastgen.train.distributed``).  Batch
  norm then normalises with per-rank statistics, as DDP without SyncBatchNorm would.
- Initialisation is seeded from the run seed alone and data-dependent initialisation (Glow's
  ActNorm) runs on the whole first global batch in every rank, before DDP wraps the model.

Resuming (``--resume``) restores the weights, optimizer states, EMA weights, step, the
sampler position and the state a spec keeps outside the weights (``get_state``: MADE's mask
index, EBM / JEM's replay buffer of SGLD chains); with every random number derived from (seed,
step, sample index), an interrupted run that resumes is the same run bit for bit.
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from fastgen.train import checkpoint as ckpt_io
from fastgen.train import data as data_io
from fastgen.train import sharding
from fastgen.train.distributed import (DistEnv, average_gradients_on_step, barrier, broadcast_buffers, derive,
                                       dist_env, init, resolve_device, shutdown)
from fastgen.train.generate import draw, write
from fastgen.train.registry import (Batch, DataInfo, ModelSpec, SampleOptions, StepRNG, UsageError, attach_data, get,
                                    merge)


@dataclass
class TrainOptions:
    """``fastgen train``'s options (see ``fastgen train --help``).  batch/lr/seed/ema/amp: None
    means the default of a new run, or the checkpoint's value when resuming."""
    model: str
    data: str = "digits"
    steps: int = 1000
    batch: Optional[int] = None
    lr: Optional[float] = None
    out: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    amp: Optional[str] = None
    ema: Optional[float] = None
    compile: bool = False
    fsdp: bool = False
    sample_every: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    seed: Optional[int] = None
    device: Optional[str] = None
    levels: int = 256
    segment: int = 2048
    progress: bool = True


DEFAULT_BATCH = {"image": 64, "audio": 8, "video": 32, "density": 256}


class EMA:
    """Exponential moving average of a model's state dict (floating tensors; others copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            e = self.state[k]
            if e.is_floating_point():
                e.lerp_(v.detach().to(e.dtype), 1.0 - self.decay)
            else:
                e.copy_(v)


class StepSampler:
    """The indices of the samples a rank takes at each step (module docstring)."""

    def __init__(self, n: int, batch: int, env: DistEnv, seed: int) -> None:
        from torch.utils.data import DistributedSampler
        self.batch, self.env = batch, env
        self.local = batch // env.world_size
        self.steps_per_epoch = n // batch
        self.sampler = DistributedSampler(range(n), num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                          seed=seed % (2 ** 31), drop_last=True)
        self._epoch, self._indices = None, None

    def position(self, step: int):
        return divmod(step, self.steps_per_epoch)

    def indices(self, step: int) -> List[int]:
        epoch, pos = self.position(step)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._indices = epoch, list(self.sampler)
        return self._indices[pos * self.local:(pos + 1) * self.local]

    def state(self, step: int) -> Dict[str, int]:
        epoch, pos = self.position(step)
        return {"epoch": epoch, "batch_in_epoch": pos, "steps_per_epoch": self.steps_per_epoch}


class _LossModule(nn.Module):
    """model + its registry loss as one module, so that DDP sees the loss as ``forward``."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x: Tensor, labels: Optional[Tensor], rng: StepRNG) -> Tensor:
        return self.spec.loss(self.model, Batch(x, labels), rng)


def _check_options(opts: TrainOptions, spec: ModelSpec, env: DistEnv) -> None:
    if opts.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {opts.steps}")
    if opts.batch is not None and opts.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {opts.batch}")
    if opts.lr is not None and not (opts.lr > 0 and math.isfinite(opts.lr)):
        raise UsageError(f"--lr must be a positive number, got {opts.lr}")
    if opts.ema is not None and not 0 < opts.ema < 1:
        raise UsageError(f"--ema is a decay in (0, 1) such as 0.999, got {opts.ema}")
    if opts.amp not in (None, "bf16"):
        raise UsageError(f"--amp {opts.amp}: only bf16 is supported")
    if opts.sample_every < 0:
        raise UsageError(f"--sample-every must be >= 0, got {opts.sample_every}")
    if opts.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {opts.checkpoint_every}")
    if opts.segment < 2:
        raise UsageError(f"--segment must be >= 2 samples, got {opts.segment}")
    if opts.fsdp and env.world_size == 1:
        raise UsageError("--fsdp shards the model over the processes of a torchrun launch (torchrun "
                         "--nproc-per-node K -m fastgen train ... --fsdp); with one process, leave it out")
    if opts.fsdp and spec.train_step is not None:
        raise UsageError(f"--fsdp: {spec.name} updates itself through its own train_step (two optimizers); "
                         f"train it without --fsdp (gradients are then averaged over the processes)")
    if opts.fsdp and opts.sample_every:
        raise UsageError("--sample-every with --fsdp: the sharded weights are not whole on any process during "
                         "training; sample from the checkpoints with fastgen sample")
    if opts.out is not None and os.path.exists(opts.out) and not os.path.isdir(opts.out):
        raise UsageError(f"--out {opts.out} is a file; it must be a folder for checkpoints and samples")
    data_io.check_source(opts.data, spec.data)


def _resolve_run(opts: TrainOptions, spec: ModelSpec, out: str, info: DataInfo):
    """(constructor args, batch, lr, seed, ema, amp, checkpoint or None) for a new or resumed run."""
    found = ckpt_io.exists(out)
    if found and not opts.resume:
        step = ckpt_io.read_config(out)["train"]["step"]
        raise UsageError(f"--out {out} already holds a checkpoint (step {step}); pass --resume to continue it "
                         f"or choose another --out")
    if not found:
        if opts.resume and os.path.isdir(out) and os.listdir(out):
            print(f"fastgen train: no checkpoint in {out} yet; starting from step 0", file=sys.stderr)
        args = json.loads(json.dumps(merge(spec.defaults(info), opts.config)))
        batch = opts.batch or DEFAULT_BATCH[spec.data]
        return (args, batch, opts.lr or spec.lr, 0 if opts.seed is None else opts.seed, opts.ema, opts.amp, None)
    ckpt = ckpt_io.open_checkpoint(out, spec.name, option="--out")
    saved = ckpt.config
    if tuple(saved["data"]["shape"]) != tuple(info.shape) or saved["data"].get("levels") != info.levels:
        raise UsageError(f"--resume: the checkpoint in {out} was trained on data of shape {saved['data']['shape']} "
                         f"with {saved['data'].get('levels')} levels; --data {opts.data} has shape "
                         f"{list(info.shape)} with {info.levels} levels")
    if saved["data"].get("energy") != info.energy:
        raise UsageError(f"--resume: the checkpoint in {out} was fitted to --data {saved['data']['source']}, "
                         f"not --data {opts.data}")
    args = saved["args"]
    if opts.config and json.loads(json.dumps(merge(args, opts.config))) != args:
        raise UsageError(f"--resume: --config does not match the checkpoint's model configuration {args}")
    t = saved["train"]
    for name, given, kept in (("batch", opts.batch, t["batch"]), ("lr", opts.lr, t["lr"]), ("seed", opts.seed, t["seed"]),
                              ("ema", opts.ema, t["ema"]), ("amp", opts.amp, t["amp"])):
        if given is not None and given != kept:
            raise UsageError(f"--resume: --{name} {given} differs from the checkpoint's {kept}; resuming keeps "
                             f"the run's settings (leave --{name} out)")
    if opts.fsdp != t.get("fsdp", False):
        raise UsageError(f"--resume: the checkpoint in {out} was trained {'with' if not opts.fsdp else 'without'} "
                         f"--fsdp; resume it the same way (its optimizer states are stored in that run's format)")
    if opts.steps <= ckpt.step:
        raise UsageError(f"--resume: the checkpoint in {out} is at step {ckpt.step} already; --steps is the total "
                         f"number of steps, give more than {ckpt.step}")
    return args, t["batch"], t["lr"], t["seed"], t["ema"], t["amp"], ckpt


def train(opts: TrainOptions) -> Dict[str, Any]:
    """Run ``fastgen train``; returns a summary (final step, loss, items/s, checkpoint folder).
    Bad options raise ``UsageError`` before any work."""
    spec = get(opts.model)
    env = dist_env()
    _check_options(opts, spec, env)
    device = resolve_device(opts.device, env)
    out = opts.out or os.path.join("runs", spec.name)
    data = data_io.load(opts.data, spec.data, levels=opts.levels, segment=opts.segment)
    info = data.info
    args, batch, lr, seed, ema_decay, amp, ckpt = _resolve_run(opts, spec, out, info)
    if batch % env.world_size:
        raise UsageError(f"--batch {batch} is the global batch and must be divisible by the world size "
                         f"{env.world_size} (each process takes batch / world size)")
    if len(data.x) < batch:
        raise UsageError(f"--batch {batch} is larger than the data set ({len(data.x)} items in --data {opts.data})")
    created = init(env, device)
    try:
        summary = _run(opts, spec, env, device, out, data, args, batch, lr, seed, ema_decay, amp, ckpt)
        barrier(env)              # every rank done before the group is destroyed (gloo aborted at exit otherwise)
        return summary
    finally:
        shutdown(created)


def _run(opts, spec, env, device, out, data, args, batch, lr, seed, ema_decay, amp, ckpt) -> Dict[str, Any]:
    info = data.info
    torch.manual_seed(derive(seed, "init"))             # the same initial weights on every rank
    model = attach_data(spec.make(args), spec, info).to(device)
    sampler = StepSampler(len(data.x), batch, env, seed)
    start, state = 0, None
    if ckpt is not None:
        ckpt_io.load_weights(model, ckpt.path("model"))
        state = torch.load(ckpt.path("state"), map_location="cpu", weights_only=True)
        if spec.set_state and state.get("model_state"):
            spec.set_state(model, state["model_state"])
        start = ckpt.step
    elif spec.data_init is not None:
        first = StepSampler(len(data.x), batch, DistEnv(0, 1, 0), seed).indices(0)
        spec.data_init(model, _batch(data, first, device), StepRNG(derive(seed, "data-init")))
    runner: nn.Module = _LossModule(model, spec)
    if opts.fsdp:
        sharding.shard(runner, device)            # before the optimizers: it replaces the parameters
    optimizers = spec.optimizers(model, lr) if spec.optimizers else [torch.optim.Adam(model.parameters(), lr=lr)]
    if state is not None and opts.fsdp:
        sharding.load_optimizers(model, optimizers, state["optimizers"])
    elif state is not None:
        for opt, sd in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
    ema = EMA(model, ema_decay) if ema_decay else None
    if ema is not None and ckpt is not None and ckpt.path("ema"):
        from safetensors.torch import load_file
        whole = load_file(ckpt.path("ema"))
        ema.state = sharding.shard_like(whole, ema.state) if opts.fsdp else {k: v.to(device) for k, v in whole.items()}
    if env.world_size > 1 and spec.train_step is not None:
        for opt in optimizers:                    # models with their own update: see average_gradients_on_step
            average_gradients_on_step(opt, env)
    elif env.world_size > 1 and not opts.fsdp:     # (FSDP averages the gradients itself)
        from torch.nn.parallel import DistributedDataParallel
        runner = DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None,
                                         find_unused_parameters=spec.unused_parameters(model))
    if opts.compile:
        runner = torch.compile(runner)
    config = {"model": spec.name, "class": spec.target, "args": args,
              "data": {**info._asdict(), "shape": list(info.shape), "source": opts.data},
              "train": {"step": start, "steps": opts.steps, "batch": batch, "lr": lr, "seed": seed, "ema": ema_decay,
                        "amp": amp, "world_size": env.world_size, "compile": opts.compile,
                        "fsdp": opts.fsdp}}
    from fastgen import __version__
    config["versions"] = {"fastgen": __version__, "torch": torch.__version__}
    if env.is_main:
        os.makedirs(out, exist_ok=True)
        n_params = sum(p.numel() for p in model.parameters())
        source = (f"{len(data.x)} items from {opts.data}" if info.kind != "density"
                  else f"fitted to {opts.data} with its own samples")
        print(f"fastgen train {spec.name}: {n_params / 1e3:.1f}k parameters, {source}, "
              f"global batch {batch} over {env.world_size} process(es), {device}, steps {start} -> {opts.steps}, "
              f"checkpoints in {out}", file=sys.stderr)
    bar = None
    if env.is_main and opts.progress:
        from tqdm import tqdm
        bar = tqdm(total=opts.steps, initial=start, desc=f"train {spec.name}", unit="step", mininterval=0.5)
    model.train()
    tic, items, loss_value = time.perf_counter(), 0, float("nan")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
    step = start
    try:
        while step < opts.steps:
            first_index = step * batch + env.rank            # the global index of this rank's first sample
            torch.manual_seed(derive(seed, "torch", first_index))
            rng = StepRNG(derive(seed, "loss", first_index))
            b = _batch(data, sampler.indices(step), device)
            if spec.train_step is not None:
                with autocast:
                    loss = spec.train_step(model, b, rng, optimizers)
            else:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = runner(b.x, b.labels, rng)
                loss.backward()
                for opt in optimizers:
                    opt.step()
            if spec.train_step is not None and env.world_size > 1:
                broadcast_buffers(model, env)
            if spec.after_step is not None:
                spec.after_step(model)
            if ema is not None:
                ema.update(model)
            step += 1
            items += batch
            if step % opts.log_every == 0 or step == opts.steps:
                loss_value = _mean_over_ranks(loss.detach().float(), env)
                extra = {key: value if isinstance(value, str) else _mean_over_ranks(value.detach().float(), env)
                         for key, value in (spec.log_values(model) if spec.log_values else {}).items()}
                rate = items / max(time.perf_counter() - tic, 1e-9)
                if env.is_main:
                    record = {"step": step, "loss": loss_value, **extra, "items_per_s": rate,
                              "elapsed_s": time.perf_counter() - tic}
                    if spec.units:
                        record[spec.units] = loss_value
                    if device.type == "cuda":
                        record["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                    with open(os.path.join(out, "log.jsonl"), "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if bar is not None:
                        post = {"loss": f"{loss_value:.4f}", "items/s": f"{rate:,.0f}",
                                **{key: value if isinstance(value, str) else f"{value:.3f}"
                                   for key, value in extra.items()}}
                        if spec.units:
                            post[spec.units] = f"{loss_value:.3f}"
                        bar.set_postfix(post, refresh=False)
            if bar is not None:
                bar.update(1)
            if opts.sample_every and step % opts.sample_every == 0 and env.is_main:
                _sample_during_training(spec, model, ema, info, out, step, seed, device)
            if step % opts.checkpoint_every == 0 or step == opts.steps:
                if opts.fsdp:                                  # every rank gathers, rank 0 writes
                    weights, optimizer_states = sharding.full_states(model, optimizers)
                    ema_state = sharding.full_tensors(ema.state) if ema else None
                else:
                    weights, optimizer_states = model.state_dict(), [opt.state_dict() for opt in optimizers]
                    ema_state = ema.state if ema else None
                if env.is_main:
                    config["train"]["step"] = step
                    ckpt_io.save(out, config, weights, ema_state,
                                 {"step": step, "optimizers": optimizer_states,
                                  "sampler": sampler.state(step), "model_state": spec.get_state(model)
                                  if spec.get_state else {},
                                  "rng": {"torch": torch.get_rng_state(),
                                          "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}})
                barrier(env)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - tic
    summary = {"step": step, "loss": loss_value, "items_per_s": items / max(seconds, 1e-9), "out": out,
               "seconds": seconds}
    if device.type == "cuda":
        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    if env.is_main:
        unit = f" ({spec.units})" if spec.units else ""
        print(f"step {step}: loss{unit} {loss_value:.4f}, {summary['items_per_s']:,.1f} items/s; "
              f"checkpoint in {out}", file=sys.stderr)
    return summary


def _batch(data: data_io.TrainData, indices: List[int], device: torch.device) -> Batch:
    index = torch.as_tensor(indices, dtype=torch.long)
    labels = data.labels[index].to(device) if data.labels is not None else None
    return Batch(data.x[index].to(device), labels)


def _mean_over_ranks(value: Tensor, env: DistEnv) -> float:
    if env.world_size > 1:
        import torch.distributed as dist
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world_size
    return float(value)


def _sample_during_training(spec, model, ema, info, out, step, seed, device) -> None:
    """Samples of the current (EMA) weights into out/samples/step-<step>.png|wav; the training
    RNG and the model's mode are left as they were."""
    folder = os.path.join(out, "samples")
    os.makedirs(folder, exist_ok=True)
    was = model.training
    live = None
    if ema is not None:
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ema.state)
    model.eval()
    try:
        n = {"image": 16, "video": 8, "density": 10000}.get(spec.data, 1)
        length = min(info.sample_rate // 2, 8000) if spec.data == "audio" else None
        samples = draw(spec, model, n, n, seed, SampleOptions(length=length))
        write(samples, info, os.path.join(folder, f"step-{step:08d}.{'wav' if spec.data == 'audio' else 'png'}"))
    finally:
        if live is not None:
            model.load_state_dict(live)
        model.train(was)
