"""``fastgen demo --model diffusion``: train a small class-conditional DDPM (UNet, L_simple with
condition dropout for classifier-free guidance) on scikit-learn's 8x8 digits, then sample one
digit of every class with several of fastgen's fused samplers from the same x_T.

Writes ``diffusion_samples.png`` (one row per sampler, one column per class 0-9) and prints each
sampler's wall time.  The pixel values are scaled from 17 grey levels to [-1, 1] for training
and back for the picture.
"""
import os
import time
from typing import Dict, Optional, Union

import torch
from tqdm import tqdm

from fastgen.data import load_digits
from fastgen.demo import save_grid
from fastgen.models import DDPM, UNet
from fastgen.sampling import diffusion

# (row label, sampler, steps, extra keyword arguments)
SAMPLERS = [("DDPM, 100 steps", "ddpm", 100, {}),
            ("DDIM, 50 steps", "ddim", 50, {}),
            ("DDIM eta=1, 50 steps", "ddim", 50, {"eta": 1.0}),
            ("DPM-Solver++(2M), 20 steps", "dpmpp2m", 20, {}),
            ("DDPM + Langevin corrector (pc_vp), 50 steps", "pc_vp", 50, {})]


def run(steps: int = 2000, out_dir: str = ".", device: Optional[Union[torch.device, str]] = None,
        seed: int = 0, batch: int = 128, channels: int = 32,
        guidance: float = 1.5) -> Dict[str, Optional[float]]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    train = load_digits("train")
    levels = train.levels
    images = (train.images.float() * (2.0 / (levels - 1)) - 1.0).to(device)      # [N, 1, 8, 8] in [-1, 1]
    labels = train.labels.to(device)
    unet = UNet(in_channels=1, channels=channels, channel_mult=(1, 2), blocks=1, attention_at=(4,), image_size=8,
                dropout=0.0, num_classes=10).to(device)
    ddpm = DDPM(unet, cond_drop=0.1).to(device)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    print(f"Training a class-conditional DDPM (UNet, {sum(p.numel() for p in unet.parameters()) / 1e3:.0f}k "
          f"parameters) on {len(images)} 8x8 digits, {device}")
    bar = tqdm(range(steps), desc="train", unit="step", mininterval=0.5)
    for _ in bar:
        pick = torch.randint(len(images), (batch,), generator=generator).to(device)
        loss = ddpm.loss(images[pick], labels[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{loss.item():.4f}", refresh=False)

    unet.eval()
    cond = torch.arange(10, device=device)
    uncond = torch.full_like(cond, 10)                  # the null class of the condition dropout
    rows, timings = [], {}
    for label, sampler, n_steps, extra in SAMPLERS:
        start = time.perf_counter()
        x = diffusion.sample(unet, (10, 1, 8, 8), sampler, n_steps, guidance=guidance, cond=cond, uncond=uncond,
                             generator=torch.Generator().manual_seed(seed + 1), device=device, clip=True, **extra)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[label] = time.perf_counter() - start
        rows.append(((x.clamp(-1, 1) + 1) * (levels - 1) / 2).round().long().cpu())
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "diffusion_samples.png")
    save_grid(torch.cat(rows), levels, path, rows=len(rows))
    for label, seconds in timings.items():
        print(f"  {label:<46} {seconds:6.2f} s for 10 digits")
    print(f"wrote {path} (rows: {', '.join(label for label, *_ in SAMPLERS)}; columns: classes 0-9; "
          f"guidance w = {guidance})")
    return {"final_loss": loss.item() if steps else None, **timings}
