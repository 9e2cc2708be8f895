"""The one registry behind ``fastgen train`` and ``fastgen sample``: for every trainable zoo
model, its class, its default constructor arguments for a data set, how a batch becomes its
loss, and how it is sampled.

A ``ModelSpec`` holds plain functions, so adding a model is one entry here:

- ``data``: the kind of data it trains on: ``'image'`` (integer images [N, C, H, W]),
  ``'audio'`` (float clips [N, T] in [-1, 1]), ``'video'`` (integer clips [N, T, C, H, W]) or
  ``'density'`` (no data: a target density exp(-U) that the model fits by the reverse KL; the
  batch holds sample slots, see ``fastgen.train.data``);
- ``defaults(info)``: constructor arguments (JSON-serialisable) for a ``DataInfo``;
  ``--config`` entries are merged over them (dictionaries recursively);
- ``build(args)``: the model (``cls(**args)`` unless given);
- ``loss(model, batch, rng)``: a scalar loss for a ``Batch``; ``rng.cpu()`` / ``rng.on(device)``
  are the step's generators (seeded from the run seed and the sample index, see
  ``fastgen.train.loop``); ``units``: 'bits/dim', 'bits/sample' or 'nats' when the loss is one;
- ``sample(model, n, opts, generator, labels)``: n outputs -- long images [n, C, H, W] in
  [0, levels), audio [n, T], long videos [n, T, C, H, W] or float points [n, D] (density);
- ``train_step`` / ``optimizers``: for models with their own update (the GANs' two optimizers);
- ``data_init(model, batch, rng)``: a data-dependent initialisation run once on the first
  global batch before training (Glow's ActNorm), identical on every rank;
- ``after_step(model)``: run after every optimizer step (MADE's next mask, the VQ-VAEs' step
  counter that switches them from the autoencoder stage to the prior stage);
- ``unused_parameters(model)``: whether the loss leaves some parameters out (a staged model at
  some steps, a dead parameter), so DDP must look for them (``find_unused_parameters``); an
  optimizer skips parameters whose gradient is None, Adam's moments included;
- ``log_values(model)``: extra values for the training log, read after the step at log steps
  (strings as they are, scalar tensors averaged over the ranks like the loss).

Models the zoo has but this registry cannot train are in ``NOT_TRAINABLE`` with the reason.
Models are imported lazily (``module:Class``): an entry whose module is missing is reported
as unavailable, never an import error at startup.
"""
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


class UsageError(ValueError):
    """A bad command-line input: the CLI prints its message on one line and exits with code 2."""


class DataInfo(NamedTuple):
    """What a model is built for.  image: shape (C, H, W), levels; audio: shape (T,) (the
    training segment), sample_rate; video: shape (T, C, H, W) (frames first), levels; density:
    shape (D,) of the points z, energy: the target's name (``fastgen.data.densities``: 'u1'..).
    num_classes: labels available (None: none)."""
    kind: str
    shape: Tuple[int, ...]
    levels: Optional[int] = None
    num_classes: Optional[int] = None
    sample_rate: Optional[int] = None
    energy: Optional[str] = None


class Batch(NamedTuple):
    """One batch on the training device: x (long images [B, C, H, W], float audio [B, T], long
    videos [B, T, C, H, W] or, for a density, long sample slots [B]) and labels [B] (or None)."""
    x: Tensor
    labels: Optional[Tensor]


class StepRNG:
    """The generators of one training step (one rank): seeded from ``seed``, created on demand
    on the host or on a device (a loss that draws noise with ``torch.rand(..., device=...)``
    needs a generator there)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._gens: Dict[str, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        key = str(torch.device(device))
        if key not in self._gens:
            self._gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gens[key]

    def cpu(self) -> torch.Generator:
        return self.on(torch.device("cpu"))


class SampleOptions(NamedTuple):
    """What ``fastgen sample`` passes to a spec's ``sample`` (None: the spec's default)."""
    method: str = "fast"
    temperature: Optional[float] = None
    cuda_graph: bool = False
    length: Optional[int] = None          # audio: samples per clip
    speaker: Optional[int] = None         # audio: global-conditioning id
    steps: Optional[int] = None           # diffusion / score models: sampler steps
    seed: int = 0                         # this chunk's seed (samplers that draw noise in a kernel)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    target: str                                       # "module:Class"
    data: str                                         # 'image' | 'audio' | 'video' | 'density'
    summary: str
    defaults: Callable[[DataInfo], Dict[str, Any]]
    loss: Callable[..., Tensor]
    sample: Callable[..., Tensor]
    tiny: Dict[str, Any] = field(default_factory=dict)      # overrides for tests and quick checks
    build: Optional[Callable[[Dict[str, Any]], nn.Module]] = None
    units: Optional[str] = None                       # 'bits/dim' | 'bits/sample' | 'nats' | None
    lr: float = 1e-3
    methods: Tuple[str, ...] = ("fast",)             # sampling methods ('fast' always the default)
    temperature: Optional[str] = None                 # None (not used), '>0' or '>=0'
    cuda_graph: bool = False
    num_classes: Callable[[nn.Module], Optional[int]] = lambda model: getattr(model, "num_classes", None)
    train_step: Optional[Callable[..., Tensor]] = None
    optimizers: Optional[Callable[[nn.Module, float], List[torch.optim.Optimizer]]] = None
    data_init: Optional[Callable[..., None]] = None
    get_state: Optional[Callable[[nn.Module], Dict[str, Any]]] = None
    set_state: Optional[Callable[[nn.Module, Dict[str, Any]], None]] = None
    after_step: Optional[Callable[[nn.Module], None]] = None
    sample_generator: str = "cpu"                     # where ``sample``'s generator lives: 'cpu' | 'model'
    unused_parameters: Callable[[nn.Module], bool] = lambda model: False   # DDP's find_unused_parameters
    log_values: Optional[Callable[[nn.Module], Dict[str, Any]]] = None   # extra log entries

    @property
    def cls(self) -> type:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)

    def available(self) -> bool:
        try:
            self.cls
        except (ImportError, AttributeError):
            return False
        return True

    def make(self, args: Dict[str, Any]) -> nn.Module:
        """The model for constructor arguments ``args``; a bad argument is a UsageError."""
        try:
            return self.build(args) if self.build else self.cls(**args)
        except (TypeError, ValueError) as err:
            raise UsageError(f"cannot build {self.name} from its configuration {args}: {err}") from err


def merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """``override`` over ``base``, dictionaries merged recursively (JSON configs)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ------------------------------------------------------------------------------------------
# helpers shared by the entries

def _image_args(info: DataInfo) -> Dict[str, Any]:
    return {"image_shape": list(info.shape), "levels": info.levels}


def _to_unit(x: Tensor, levels: int) -> Tensor:
    """Integer pixels -> floats in [-1, 1]."""
    return x.float() * (2.0 / (levels - 1)) - 1.0


def _from_unit(x: Tensor, levels: int) -> Tensor:
    """Floats in [-1, 1] -> long pixels in [0, levels)."""
    return ((x.float().clamp(-1, 1) + 1) * (levels - 1) / 2).round().long()


def _labels(model_classes: Optional[int], batch: Batch) -> Optional[Tensor]:
    if model_classes is None:
        return None
    if batch.labels is None:
        raise UsageError(f"the model is class-conditional ({model_classes} classes) but the data has no labels")
    return batch.labels


def _temperature(opts: SampleOptions) -> float:
    return 1.0 if opts.temperature is None else opts.temperature


# autoregressive image models (PixelCNN family, transformers): loss in bits/dim, fastgen.sampling.sample

def _pixel_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    return model.loss(batch.x, _labels(model.num_classes, batch))


def _pixel_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    from fastgen.sampling import sample
    return sample(model, n, labels, method=opts.method, generator=generator, temperature=_temperature(opts),
                  cuda_graph=opts.cuda_graph)


def _pixel_spec(name, target, summary, defaults, tiny, **kw) -> ModelSpec:
    return ModelSpec(name, target, "image", summary, defaults, _pixel_loss, _pixel_sample, tiny, units="bits/dim",
                     methods=("fast", "naive"), temperature=">0", cuda_graph=True, **kw)


# VideoTransformer: the data holds videos frames first [B, T, C, H, W], the model [B, C, T, H, W]

def _video_args(info: DataInfo) -> Dict[str, Any]:
    T, C, H, W = info.shape
    # whole-frame blocks, memory 1: each layer reaches one frame further back, so 3 layers let the
    # last of moving-digits' 4 frames see the first
    return {"video_shape": [C, T, H, W], "levels": info.levels, "dim": 32, "heads": 2, "layers": 3}


def _video_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    return model.loss(batch.x.transpose(1, 2), _labels(model.num_classes, batch))


def _video_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    videos = model.sample(n, labels, opts.method, generator, _temperature(opts))      # [n, C, T, H, W]
    return videos.transpose(1, 2).contiguous()


# MADE: the image flattened to a vector of D = C*H*W values

def _made_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    return model.loss(batch.x.flatten(1))


def _made_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    from fastgen.sampling import sample_sequence
    return sample_sequence(model, n, opts.method, generator, _temperature(opts)).view(n, *model.image_shape)


def _made_after_step(model) -> None:
    if model.num_masks > 1:
        model.next_mask()         # connectivity-agnostic training: the next mask set every step


# WaveNet: audio clips [B, T]

def _wavenet_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    if model.local_channels:
        raise UsageError("fastgen train has no local-conditioning features for WaveNet: train it unconditioned "
                         "(local_channels=None) or from Python")
    return model.loss(batch.x, None, None if not model.global_classes else _labels(model.global_classes, batch))


def _wavenet_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    gc = None
    if model.global_classes:
        gc = torch.full((n,), opts.speaker or 0, dtype=torch.long, device=next(model.parameters()).device)
    return model.generate(opts.length, n, None, gc, opts.method, generator, _temperature(opts),
                          cuda_graph=opts.cuda_graph)


# diffusion (DDPM over a UNet) and score models (NCSN over a UNet): images scaled to [-1, 1]

def _unet_args(info: DataInfo) -> Dict[str, Any]:
    C, H, _ = info.shape
    return {"in_channels": C, "channels": 32, "channel_mult": [1, 2], "blocks": 1, "attention_at": [H // 2],
            "image_size": H, "dropout": 0.0, "num_classes": None, "groups": 8}


def _build_ddpm(args):
    from fastgen.models import DDPM, UNet
    return DDPM(UNet(**args["unet"]), **args.get("ddpm", {}))


def _build_ncsn(args):
    from fastgen.models import NCSN, UNet
    return NCSN(UNet(**args["unet"]), **args.get("ncsn", {}))


def _diffusion_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    classes = model.model.num_classes if hasattr(model, "model") else model.unet.num_classes
    return model.loss(_to_unit(batch.x, model.levels), _labels(classes, batch), generator=rng.cpu())


def _ddpm_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    from fastgen.sampling import diffusion
    device = next(model.parameters()).device
    noise = {"seed": opts.seed} if opts.cuda_graph else {"generator": generator}
    x = diffusion.sample(model.model, (n, *model.image_shape), "ddim", opts.steps or 50, betas=model.betas,
                         prediction=model.prediction, cond=labels, device=device, clip=True,
                         cuda_graph=opts.cuda_graph, backend="reference" if opts.method == "naive" else None, **noise)
    return _from_unit(x, model.levels)


def _ncsn_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    from fastgen.sampling import diffusion
    device = next(model.parameters()).device
    noise = {"seed": opts.seed} if opts.cuda_graph else {"generator": generator}
    x = diffusion.sample(model, (n, *model.image_shape), "pc_ve", len(model.sigmas) if opts.steps is None
                         else opts.steps, sigmas=_geometric(model.sigmas, opts.steps), cond=labels, device=device,
                         cuda_graph=opts.cuda_graph, backend="reference" if opts.method == "naive" else None, **noise)
    return _from_unit(x, model.levels)


def _geometric(sigmas: Tensor, steps: Optional[int]) -> Tensor:
    """The model's sigmas, or ``steps`` geometric sigmas over their range."""
    if steps is None or steps == len(sigmas):
        return sigmas
    hi, lo = float(sigmas.max()), float(sigmas.min())
    return torch.logspace(math.log10(hi), math.log10(lo), steps)


def _diffusion_num_classes(model) -> Optional[int]:
    return (model.model if hasattr(model, "model") else model.unet).num_classes


# normalizing flows over images (NICE, RealNVP, Glow): integer images, loss = bits/dim

def _flow_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    return model.loss(batch.x, _labels(model.num_classes, batch), generator=rng.on(batch.x.device))


def _flow_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    x = model.sample(n, _temperature(opts), labels, generator=generator)
    return model.quantize(x).view(n, *model.image_shape)


def _glow_init(model, batch: Batch, rng: StepRNG) -> None:
    """ActNorm's data-dependent initialisation on the first global batch (every rank alike)."""
    with torch.no_grad():
        model.loss(batch.x, _labels(model.num_classes, batch), generator=rng.on(batch.x.device))


# MAF / IAF: vectors of D = C*H*W dequantised values, x = (pixel + u) / L - 0.5

def _vector_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    from fastgen.models.flows import dequantize
    levels = model.pixel_levels
    x = dequantize(batch.x.flatten(1), levels, rng.on(batch.x.device))
    D = x.shape[1]
    return ((-model.log_prob(x) + D * math.log(levels)) / (D * math.log(2))).mean()


def _vector_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    from fastgen.models.flows import quantize
    x = model.sample(n, _temperature(opts), generator)
    return quantize(x, model.pixel_levels).view(n, *model.image_shape)


# VAEs: integer images, loss = the negative ELBO in bits/dim

def _vae_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    return model.loss(batch.x, generator=rng.on(batch.x.device))


def _vae_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    return model.sample(n, generator=generator)


def _hvae_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    return model.sample(n, _temperature(opts), generator=generator)


# GANs: two optimizers and the model's own train_step; images scaled to [-1, 1]

def _gan_optimizers(model, lr: float) -> List[torch.optim.Optimizer]:
    return [torch.optim.Adam(model.generator.parameters(), lr=lr, betas=(0.0, 0.99)),
            torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.0, 0.99))]


def _gan_train_step(model, batch: Batch, rng: StepRNG, optimizers) -> Tensor:
    g_opt, d_opt = optimizers
    real = _to_unit(batch.x, model.levels)
    step = model.train_step(real, _labels(model.num_classes, batch), g_opt, d_opt, generator=rng.cpu())
    return torch.tensor(step.discriminator_loss + step.generator_loss)


def _gan_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    return _from_unit(model.sample(n, labels, generator=generator), model.levels)


def _gan_args(info: DataInfo) -> Dict[str, Any]:
    return {"image_shape": list(info.shape), "latent": 32, "channels": 32}


def _gan_spec(name, target, summary) -> ModelSpec:
    return ModelSpec(name, target, "image", summary, _gan_args, lambda *a: None, _gan_sample,
                     {"latent": 8, "channels": 8}, lr=2e-4, train_step=_gan_train_step, optimizers=_gan_optimizers)


# energy models (EBM, JEM): images scaled to [-1, 1]; contrastive divergence with SGLD negatives
# started from a replay buffer.  The buffer is training state, not weights: it travels in the
# checkpoint's state-*.pt (get_state / set_state), so --resume continues the same chains.  Under
# torchrun it is one buffer replicated on every rank (each rank continues chains from its own
# block of rows, every rank writes all ranks' chains: fastgen.models.ebm.ReplayBuffer), so rank
# 0's copy is the whole buffer.  Samples run SGLD from uniform noise (sample_steps steps).

def _sgld_defaults() -> Dict[str, Any]:
    # Du & Mordatch / JEM: 20 steps of size 2 (a gradient step of 1), noise 0.01, 5% restarts
    return {"sgld_options": {"steps": 20, "step_size": 2.0, "noise": 0.01, "clamp": [-1.0, 1.0]},
            "buffer_size": 10000, "reinit": 0.05, "sample_steps": 100}


def _ebm_args(info: DataInfo) -> Dict[str, Any]:
    return {"image_shape": list(info.shape), "channels": 32, "spectral": False, "reg_weight": 1.0,
            **_sgld_defaults()}


def _jem_args(info: DataInfo) -> Dict[str, Any]:
    if info.num_classes is None:
        raise UsageError("jem is a classifier read as an energy model: it trains on labelled images "
                         "(--data digits); this data has no labels (use ebm)")
    return {"image_shape": list(info.shape), "num_classes": info.num_classes,
            "classifier": {"channels": 32, "spectral": False}, "reg_weight": 0.0, "gen_weight": 1.0,
            **_sgld_defaults()}


def _build_jem(args):
    from fastgen.models import JEM
    from fastgen.models.ebm import EnergyNet
    rest = {k: v for k, v in args.items() if k != "classifier"}
    classifier = EnergyNet(args["image_shape"], outputs=args["num_classes"], **args.get("classifier", {}))
    return JEM(classifier, **rest)


def _energy_real(model, batch: Batch) -> Tensor:
    """The batch in [-1, 1], once this process's rows of the replay buffer can start its chains."""
    from fastgen.models.ebm import process_group_part
    start, stop = model.buffer.rows(process_group_part())
    if len(batch.x) > stop - start:
        raise UsageError(f"each process starts {len(batch.x)} SGLD chains per step from its {stop - start} rows of "
                         f"the replay buffer (buffer_size {len(model.buffer)}): give --config a buffer_size of at "
                         f"least --batch")
    return _to_unit(batch.x, model.levels)


def _ebm_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    # shared=True: under torchrun the ranks keep one replicated buffer (a no-op in one process)
    return model.loss(_energy_real(model, batch), rng.on(batch.x.device), shared=True).loss


def _jem_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    labels = _labels(model.num_classes, batch)
    return model.loss(_energy_real(model, batch), labels, rng.on(batch.x.device), shared=True).loss


def _energy_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    return _from_unit(model.sample(n, labels, generator=generator), model.levels)


def _energy_get_state(model) -> Dict[str, Any]:
    return {"replay_buffer": model.buffer.images.detach().cpu().clone()}


def _energy_set_state(model, state: Dict[str, Any]) -> None:
    model.buffer.load(state["replay_buffer"])


def _energy_spec(name, target, summary, defaults, loss, tiny, **kw) -> ModelSpec:
    return ModelSpec(name, target, "image", summary, defaults, loss, _energy_sample, tiny, lr=1e-4,
                     get_state=_energy_get_state, set_state=_energy_set_state, sample_generator="model", **kw)


# VQ-VAE / VQ-VAE-2 with their Gated PixelCNN priors: two stages in one run and one checkpoint
# (fastgen.models.vqvae.VQVAEWithPrior): the model counts its steps (after_step) and trains the
# autoencoder for the first prior_start steps, then the prior(s) on the NLL bound in bits/dim
# with the autoencoder frozen.  Two Adam optimizers, one per part: the loop steps both, and the
# inactive part has no gradients (None), so Adam leaves it and its moments alone.

def _vq_args(info: DataInfo) -> Dict[str, Any]:
    # 8x8 digits: a 4x4 code map (VQ-VAE-2: 4x4 bottom, 2x2 top) over 32 codes, as fastgen demo
    return {**_image_args(info), "hidden": 64, "codes": 32, "code_dim": 8, "downsample": 2, "res_blocks": 2,
            "dead_code_steps": 50, "prior": {"channels": 32, "layers": 4}, "prior_start": 600, "sort_codes": True}


_VQ_TINY = {"hidden": 8, "codes": 8, "code_dim": 4, "res_blocks": 1, "prior": {"channels": 8, "layers": 2},
            "prior_start": 1}


def _vq_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    out = model.loss(batch.x, _labels(model.num_classes, batch))
    model.log_terms = out.log_terms()         # read by _vq_log at the loop's log steps
    return out.total


def _vq_log(model) -> Dict[str, Any]:
    return getattr(model, "log_terms", {})


def _vq_optimizers(model, lr: float) -> List[torch.optim.Optimizer]:
    priors = [p for name, p in model.named_parameters() if not name.startswith("autoencoder.")]
    return [torch.optim.Adam(model.autoencoder.parameters(), lr=lr), torch.optim.Adam(priors, lr=lr)]


def _vq_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    return model.sample(n, labels, opts.method, generator, _temperature(opts), cuda_graph=opts.cuda_graph).images


def _vq_spec(name, target, summary) -> ModelSpec:
    return ModelSpec(name, target, "image", summary, _vq_args, _vq_loss, _vq_sample, _VQ_TINY,
                     methods=("fast", "naive"), temperature=">0", cuda_graph=True, optimizers=_vq_optimizers,
                     after_step=lambda model: model.count_step(), unused_parameters=lambda model: True,
                     log_values=_vq_log)


# Planar / radial flows (fastgen.models.maf) as variational posteriors q(z), fitted to a target
# p(z) = exp(-U(z)) / Z of fastgen.data.densities by the reverse KL, as Rezende & Mohamed 2015
# (section 6.1, figure 3) do:
#
#     KL(q || p) = E_q[log q(z) + U(z)] + log Z,
#
# estimated with the batch's samples z ~ q drawn by sample_with_log_prob (one pass per layer);
# log Z comes from quadrature, so the loss is the KL itself, in nats (>= 0 in expectation, 0
# when q = p).  The batch carries no data: one sample is drawn per slot of batch.x (so under
# torchrun each rank draws its batch / K), every draw from the step's generator.
#
# Annealing (config anneal_steps = T > 0; the paper used T = 10000): the energy is weighted by
# beta_t = min(1, 0.01 + t / T) at step t, i.e. the gradient is that of E_q[log q + beta_t U].
# The step count t is a buffer of the model (part of its weights, so resuming continues the
# schedule), counted by after_step.  The loss value stays the KL to the target itself (the
# annealed objective plus the detached difference), so the log reads the same at every beta.

def _build_density_flow(cls_name: str) -> Callable[[Dict[str, Any]], nn.Module]:
    def build(args: Dict[str, Any]) -> nn.Module:
        from fastgen.models import maf
        rest = dict(args)
        anneal_steps = rest.pop("anneal_steps", 0)
        if not isinstance(anneal_steps, int) or isinstance(anneal_steps, bool) or anneal_steps < 0:
            raise ValueError(f"anneal_steps must be an int >= 0 (0: no annealing), got {anneal_steps!r}")
        model = getattr(maf, cls_name)(**rest)
        model.anneal_steps = anneal_steps
        if anneal_steps:
            model.register_buffer("fit_step", torch.zeros((), dtype=torch.long))
        return model
    return build


def _beta(model, step: Tensor) -> Tensor:
    """The annealing weight of the energy at ``step`` (a long tensor), 0-d."""
    return (0.01 + step.float() / model.anneal_steps).clamp(max=1.0)


def _density_loss(model, batch: Batch, rng: StepRNG) -> Tensor:
    from fastgen.data.densities import energy
    z, log_q = model.sample_with_log_prob(len(batch.x), generator=rng.on(batch.x.device))
    u = energy(model.energy, z).to(log_q.dtype)
    kl = (log_q + u).mean() + model.log_z
    if not model.anneal_steps:
        return kl
    annealed = (log_q + _beta(model, model.fit_step) * u).mean()
    return annealed + (kl - annealed).detach()      # the annealed objective's gradient, the KL's value


def _density_after_step(model) -> None:
    if model.anneal_steps:
        model.fit_step += 1


def _density_log(model) -> Dict[str, Any]:
    # read after the step: the logged loss used the beta of step fit_step - 1
    return {"beta": _beta(model, model.fit_step - 1)} if model.anneal_steps else {}


def _density_sample(model, n, opts: SampleOptions, generator, labels) -> Tensor:
    return model.sample(n, generator=generator)


def _density_spec(name, cls_name, summary) -> ModelSpec:
    return ModelSpec(name, f"fastgen.models.maf:{cls_name}", "density", summary,
                     lambda i: {"dim": i.shape[0], "layers": 32, "anneal_steps": 0}, _density_loss, _density_sample,
                     {"layers": 2}, build=_build_density_flow(cls_name), units="nats", lr=1e-2,
                     num_classes=lambda m: None, after_step=_density_after_step, log_values=_density_log,
                     sample_generator="model")


# ------------------------------------------------------------------------------------------

SPECS: List[ModelSpec] = [
    _pixel_spec("pixelcnn", "fastgen.models.pixelcnn:PixelCNN", "PixelCNN (masked convs, residual blocks)",
                lambda i: {**_image_args(i), "channels": 32, "residual_blocks": 4},
                {"channels": 8, "residual_blocks": 1}),
    _pixel_spec("gated-pixelcnn", "fastgen.models.pixelcnn:GatedPixelCNN", "Gated PixelCNN (vertical/horizontal "
                "stacks)", lambda i: {**_image_args(i), "channels": 32, "layers": 5}, {"channels": 8, "layers": 2},
                # conditioned, the last layer's cond_vertical feeds only the vertical output nothing reads
                unused_parameters=lambda model: model.cond_dim is not None),
    _pixel_spec("pixelcnnpp", "fastgen.models.pixelcnnpp:PixelCNNpp", "PixelCNN++ (discretised logistic mixture)",
                lambda i: {**_image_args(i), "channels": 32, "nr_resnet": 1, "nr_mix": 5, "dropout": 0.0},
                {"channels": 8, "nr_resnet": 1, "nr_mix": 2}),
    _pixel_spec("pixelsnail", "fastgen.models.pixelsnail:PixelSNAIL", "PixelSNAIL (gated convs + causal attention)",
                lambda i: {**_image_args(i), "channels": 32, "blocks": 1, "res_layers": 1, "heads": 2},
                {"channels": 8, "heads": 2}),
    _pixel_spec("local-transformer", "fastgen.models.transformer:LocalImageTransformer",
                "Image transformer on block-local attention",
                lambda i: {**_image_args(i), "dim": 32, "heads": 2, "layers": 2}, {"dim": 16, "heads": 2, "layers": 1}),
    ModelSpec("video-transformer", "fastgen.models.transformer:VideoTransformer", "video",
              "Video transformer on causal 3-D block-local attention", _video_args, _video_loss, _video_sample,
              {"dim": 16, "heads": 2, "layers": 1}, units="bits/dim", methods=("fast", "naive"), temperature=">0"),
    ModelSpec("made", "fastgen.models.made:MADE", "image", "MADE over the flattened image",
              lambda i: {"dim": math.prod(i.shape), "hidden": [256, 256], "levels": i.levels},
              _made_loss, _made_sample, {"hidden": [16]}, units="bits/dim", methods=("fast", "naive"),
              temperature=">0", num_classes=lambda m: None, after_step=_made_after_step,
              get_state=lambda m: {"mask_index": m.mask_index},
              set_state=lambda m, s: (setattr(m, "mask_index", s["mask_index"]), m._install(s["mask_index"]))),
    ModelSpec("wavenet", "fastgen.models.wavenet:WaveNet", "audio", "WaveNet (mu-law or mixture of logistics)",
              lambda i: {"layers": 10, "cycle": 5, "residual_channels": 32, "skip_channels": 64, "quantization": 256},
              _wavenet_loss, _wavenet_sample,
              {"layers": 3, "cycle": 3, "residual_channels": 8, "skip_channels": 8, "quantization": 16},
              units="bits/sample", methods=("fast", "naive"), temperature=">0", cuda_graph=True,
              num_classes=lambda m: m.global_classes),
    ModelSpec("ddpm", "fastgen.models.unet:DDPM", "image", "DDPM over a UNet (sampled with DDIM)",
              lambda i: {"unet": _unet_args(i), "ddpm": {"prediction": "eps", "cond_drop": 0.0}},
              _diffusion_loss, _ddpm_sample,
              {"unet": {"channels": 8, "groups": 4}, "ddpm": {"betas": [1e-4 + 0.02 * k / 99 for k in range(100)]}},
              build=_build_ddpm, lr=2e-3, methods=("fast", "naive"), cuda_graph=True,
              num_classes=_diffusion_num_classes),
    ModelSpec("ncsn", "fastgen.models.unet:NCSN", "image", "Noise-conditional score network over a UNet "
              "(predictor-corrector sampling)",
              lambda i: {"unet": _unet_args(i), "ncsn": {"sigmas": None}}, _diffusion_loss, _ncsn_sample,
              {"unet": {"channels": 8, "groups": 4}}, build=_build_ncsn, lr=2e-3, methods=("fast", "naive"),
              cuda_graph=True, num_classes=_diffusion_num_classes),
    ModelSpec("nice", "fastgen.models.flows:NICE", "image", "NICE (additive couplings)",
              lambda i: {"shape": list(i.shape), "layers": 4, "hidden": 256, "depth": 2, "pixel_levels": i.levels},
              _flow_loss, _flow_sample, {"layers": 2, "hidden": 16, "depth": 1}, units="bits/dim", temperature=">=0", sample_generator="model"),
    ModelSpec("realnvp", "fastgen.models.flows:RealNVP", "image", "RealNVP (multi-scale affine couplings)",
              lambda i: {"image_shape": list(i.shape), "scales": 2, "hidden": 32, "pixel_levels": i.levels},
              _flow_loss, _flow_sample, {"hidden": 8}, units="bits/dim", temperature=">=0", sample_generator="model"),
    ModelSpec("glow", "fastgen.models.flows:Glow", "image", "Glow (ActNorm, invertible 1x1 convs, couplings)",
              lambda i: {"image_shape": list(i.shape), "levels": 2, "steps": 4, "hidden": 32, "pixel_levels": i.levels},
              _flow_loss, _flow_sample, {"levels": 1, "steps": 2, "hidden": 8}, units="bits/dim", temperature=">=0",
              data_init=_glow_init, sample_generator="model"),
    ModelSpec("maf", "fastgen.models.maf:MAF", "image", "Masked autoregressive flow over the flattened image",
              lambda i: {"dim": math.prod(i.shape), "hidden": [128, 128], "layers": 4},
              _vector_loss, _vector_sample, {"hidden": [16], "layers": 2}, units="bits/dim", temperature=">=0",
              num_classes=lambda m: None, sample_generator="model"),
    ModelSpec("iaf", "fastgen.models.maf:IAF", "image", "Inverse autoregressive flow over the flattened image",
              lambda i: {"dim": math.prod(i.shape), "hidden": [128, 128], "layers": 4},
              _vector_loss, _vector_sample, {"hidden": [16], "layers": 2}, units="bits/dim", temperature=">=0",
              num_classes=lambda m: None, sample_generator="model"),
    ModelSpec("vae", "fastgen.models.vae:VAE", "image", "VAE (discretised logistic decoder)",
              lambda i: {"image_shape": list(i.shape), "latent": 16, "hidden": 32, "decoder": "logistic",
                         "levels": i.levels},
              _vae_loss, _vae_sample, {"latent": 4, "hidden": 8}, units="bits/dim", num_classes=lambda m: None, sample_generator="model"),
    ModelSpec("hvae", "fastgen.models.hvae:HierarchicalVAE", "image", "Hierarchical VAE (NVAE / VD-VAE style)",
              lambda i: {**_image_args(i), "groups_per_scale": [1, 2, 2], "channels": 32, "latent_channels": 4},
              _vae_loss, _hvae_sample, {"groups_per_scale": [1, 1], "channels": 8, "latent_channels": 2},
              units="bits/dim", temperature=">=0", num_classes=lambda m: None, sample_generator="model"),
    _vq_spec("vqvae", "fastgen.models.vqvae:VQVAEWithPrior", "VQ-VAE, then a Gated PixelCNN prior over its codes "
             "(two stages, one run: config prior_start)"),
    _vq_spec("vqvae2", "fastgen.models.vqvae:VQVAE2WithPriors", "VQ-VAE-2, then Gated PixelCNN priors over its top "
             "and bottom codes (two stages, one run: config prior_start)"),
    _gan_spec("dcgan", "fastgen.models.gan:DCGAN", "DCGAN (two optimizers, the model's train_step)"),
    _gan_spec("sngan", "fastgen.models.gan:SNGAN", "SNGAN (spectral norm, the model's train_step)"),
    _gan_spec("stylegan2", "fastgen.models.gan:StyleGAN2", "StyleGAN2 (the model's train_step)"),
    _energy_spec("ebm", "fastgen.models.ebm:EBM", "Energy-based model (contrastive divergence, SGLD negatives "
                 "from a replay buffer; samples: SGLD from noise)", _ebm_args, _ebm_loss,
                 {"channels": 4, "buffer_size": 16, "sgld_options": {"steps": 2}, "sample_steps": 2}),
    _energy_spec("jem", "fastgen.models.ebm:JEM", "Joint energy model (a classifier read as an energy: "
                 "cross-entropy + contrastive divergence; samples: SGLD on p(x | y) from noise)", _jem_args,
                 _jem_loss, {"classifier": {"channels": 4}, "buffer_size": 16, "sgld_options": {"steps": 2},
                             "sample_steps": 2}, build=_build_jem),
    _density_spec("planar-flow", "PlanarFlow", "Planar flow fitted to a 2-D target density exp(-U) by the reverse KL "
                  "(--data density:u1 .. density:u4; samples: points [n, 2])"),
    _density_spec("radial-flow", "RadialFlow", "Radial flow fitted to a 2-D target density exp(-U) by the reverse KL "
                  "(--data density:u1 .. density:u4; samples: points [n, 2])"),
]

REGISTRY: Dict[str, ModelSpec] = {spec.name: spec for spec in SPECS}

# name -> why fastgen train refuses it (a zoo model without an entry; none at present)
NOT_TRAINABLE: Dict[str, str] = {}


def available() -> List[str]:
    """Names of the registered models whose code is present."""
    return [name for name, spec in REGISTRY.items() if spec.available()]


def get(name: str) -> ModelSpec:
    """The spec of ``name``; a UsageError naming the choices otherwise."""
    key = name.lower().replace("_", "-")
    if key in NOT_TRAINABLE:
        raise UsageError(f"{name} cannot be trained by fastgen train: {NOT_TRAINABLE[key]}")
    spec = REGISTRY.get(key)
    if spec is None:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    if not spec.available():
        raise UsageError(f"model {name!r} ({spec.target}) is not available in this installation of fastgen")
    return spec


def attach_data(model: nn.Module, spec: ModelSpec, info: DataInfo) -> nn.Module:
    """Store the data facts a model needs for sampling but does not take as arguments
    (``image_shape`` and ``levels`` of diffusion models and GANs, ``levels`` of EBM / JEM,
    ``pixel_levels`` of MAF/IAF, the target ``energy`` of a density flow and its ``log_z``)."""
    if spec.data == "density":
        from fastgen.data.densities import log_normalizer
        model.energy = info.energy
        model.log_z = log_normalizer(info.energy)     # here, once: a constant (under --compile too)
    if spec.data != "image":
        return model
    if spec.name in ("made", "maf", "iaf", "nice", "realnvp", "glow", "ddpm", "ncsn") or spec.train_step:
        model.image_shape = tuple(info.shape)
    if spec.name in ("ddpm", "ncsn", "ebm", "jem") or spec.train_step:
        model.levels = info.levels
    if spec.name in ("maf", "iaf"):
        model.pixel_levels = info.levels
    return model
