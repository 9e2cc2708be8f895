"""``fastgen demo --model vqvae``: train a VQ-VAE on scikit-learn's 8x8 digits (a 4x4 code map
over a 32-code EMA codebook, discretised-logistic decoder), then a class-conditional Gated
PixelCNN prior over its code maps, and sample digits through the prior.

Writes ``vqvae.png`` (rows: test digits, their reconstructions, then samples through the prior,
one column per class 0-9) and prints the test reconstruction bits/dim and mean absolute error,
the codebook usage (perplexity of the test codes, codes used), the prior's test bits per code,
the NLL bound in bits/dim next to the independent per-pixel baseline of ``fastgen demo``, and the
fast-vs-naive prior sampling time (the same codes and images from both).
"""
import math
import os
import time
from typing import Dict, Optional, Union

import torch
from tqdm import tqdm

from fastgen.data import load_digits
from fastgen.demo import independent_baseline_bits, save_grid
from fastgen.models.vqvae import VQVAE, fit_prior, make_prior

SAMPLE_ROWS = 3


@torch.no_grad()
def evaluate(model: VQVAE, prior: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Test metrics: reconstruction bits/dim and mean |error| (grey levels), the perplexity of the
    code usage and the codes used, the prior's bits per code and the NLL bound in bits/dim."""
    model.eval()
    codes = model.encode(images)
    counts = torch.bincount(codes.flatten(), minlength=model.codes).float()
    p = counts[counts > 0] / counts.sum()
    recon_bits = model.loss(images).reconstruction.item()
    prior_bits = prior.loss(codes[:, None], labels).item()
    return {"recon_bits": recon_bits,
            "recon_error": (model.decode(codes) - images).abs().float().mean().item(),
            "perplexity": math.exp(-(p * p.log()).sum().item()),
            "codes_used": int((counts > 0).sum()),
            "prior_bits_per_code": prior_bits,
            "nll_bound": recon_bits + prior_bits * math.prod(model.code_shape) / model.dims}


def run(steps: int = 1500, out_dir: str = ".", device: Optional[Union[torch.device, str]] = None, seed: int = 0,
        batch: int = 64, prior_steps: Optional[int] = None, hidden: int = 64, codes: int = 32, code_dim: int = 8,
        prior_channels: int = 32, prior_layers: int = 4) -> Dict[str, float]:
    """Train, evaluate and sample (see the module docstring); ``steps`` VQ-VAE steps, then
    ``prior_steps`` (default: ``steps // 2``; longer overfits the 1,438 training code maps)
    prior steps.  Returns the printed numbers."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prior_steps = steps // 2 if prior_steps is None else prior_steps
    torch.manual_seed(seed)
    train, test = load_digits("train"), load_digits("test")
    images, labels = train.images.to(device), train.labels.to(device)
    test_images, test_labels = test.images.to(device), test.labels.to(device)
    model = VQVAE((1, 8, 8), train.levels, hidden=hidden, codes=codes, code_dim=code_dim, downsample=2,
                  decoder="logistic", dead_code_steps=50).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1))
    print(f"Training a VQ-VAE ({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters; "
          f"{model.code_shape[0]}x{model.code_shape[1]} code map, {codes} codes of dim {code_dim}, EMA codebook) "
          f"on {len(images)} 8x8 digits ({train.levels} grey levels), {device}")
    pick = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="vq-vae", unit="step", mininterval=0.5)
    for _ in bar:
        loss = model.loss(images[torch.randint(len(images), (batch,), generator=pick).to(device)])
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        sched.step()
        bar.set_postfix(recon_bits=f"{loss.reconstruction.item():.3f}", commit=f"{loss.commitment.item():.3f}",
                        refresh=False)
    model.eval()
    model.sort_codes()          # nearby indices = similar codes: the prior reads an index as a scalar

    prior = make_prior(model, channels=prior_channels, layers=prior_layers, num_classes=10)
    prior_size = sum(p.numel() for p in prior.parameters()) / 1e3
    print(f"Training its class-conditional Gated PixelCNN prior ({prior_size:.0f}k parameters) on the "
          f"{model.code_shape[0]}x{model.code_shape[1]} code maps of the training digits")
    fit_prior(model, images, prior, prior_steps, labels=labels, batch=batch, generator=pick, progress=True)

    metrics = evaluate(model, prior, test_images, test_labels)
    base_bits = independent_baseline_bits(train.images, test.images, train.levels)
    print(f"test reconstruction: {metrics['recon_bits']:.3f} bits/dim, mean |error| {metrics['recon_error']:.3f} "
          f"grey levels (of 0-{train.levels - 1})")
    print(f"codebook usage: perplexity {metrics['perplexity']:.1f} of {codes} codes, {metrics['codes_used']} used")
    print(f"prior: {metrics['prior_bits_per_code']:.3f} bits/code on the test code maps (uniform: "
          f"{math.log2(codes):.3f}); NLL bound {metrics['nll_bound']:.3f} bits/dim "
          f"(independent per-pixel baseline {base_bits:.3f})")

    classes = torch.arange(10, device=device).repeat(SAMPLE_ROWS)
    timings, drawn = {}, {}
    for method in ("naive", "fast"):
        start = time.perf_counter()
        drawn[method] = model.sample(len(classes), prior, classes, method=method,
                                     generator=torch.Generator().manual_seed(seed + 1))
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[method] = time.perf_counter() - start
    identical = (drawn["fast"].codes == drawn["naive"].codes).float().mean().item()
    same_images = bool(torch.equal(drawn["fast"].images, drawn["naive"].images))
    print(f"sampled {len(classes)} code maps through the prior: naive {timings['naive']:.2f} s, fast "
          f"{timings['fast']:.2f} s ({timings['naive'] / timings['fast']:.1f}x); identical codes: "
          f"{100 * identical:.1f}%, identical images: {same_images}")

    shown = torch.stack([(test.labels == c).nonzero()[0, 0] for c in range(10)])     # one test digit per class
    originals = test_images[shown.to(device)]
    grid = torch.cat([originals, model.reconstruct(originals), drawn["fast"].images])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "vqvae.png")
    save_grid(grid.cpu(), train.levels, path, rows=2 + SAMPLE_ROWS)
    print(f"wrote {path} (rows: test digits, reconstructions, {SAMPLE_ROWS} rows of samples through the prior; "
          f"columns: classes 0-9)")
    return {**metrics, "baseline_bits": base_bits, "identical": identical, **timings}
