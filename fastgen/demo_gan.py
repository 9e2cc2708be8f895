"""``fastgen demo --model gan``: train a small class-conditional DCGAN (conditional batch norm in
the generator, a spectrally normalised projection discriminator, hinge loss) on scikit-learn's
8x8 digits scaled to [-1, 1], then judge its samples with a classifier trained on the real
training digits.

Writes ``gan_samples.png`` (one row per digit class 0-9) and prints: the classifier's accuracy on
the real test digits, its accuracy on the GAN's samples (does a sample of class y look like a y?),
and the Frechet distance between classifier features of 1,000 samples and of the test digits, next
to the same distance for the real training digits (the floor a perfect generator would reach) and
for the per-pixel independent model (pixels drawn from their marginal histograms: a baseline).

``run(dataset='faces')`` trains on scikit-image's ``lfw_subset`` faces (25x25 greys, resized to
16x16) instead, when scikit-image is installed: unconditional, samples only.
"""
import os
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from fastgen.data import load_digits
from fastgen.demo import save_grid
from fastgen.models import DCGAN


def to_unit(images: Tensor, levels: int) -> Tensor:
    """Integer images in [0, levels) -> floats in [-1, 1]."""
    return images.float() / (levels - 1) * 2 - 1


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Floats in [-1, 1] -> integer images in [0, levels) (nearest level)."""
    return ((x.clamp(-1, 1) + 1) / 2 * (levels - 1)).round().long()


class _Judge(nn.Module):
    """A small MLP classifier of 8x8 digits: 64 -> 128 -> 64 (the features) -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_judge(images: Tensor, labels: Tensor, steps: int = 600, seed: int = 0) -> _Judge:
    """The classifier the samples are judged by, trained on real digits in [-1, 1] (with small
    pixel noise, so that it does not read the 17 exact levels)."""
    torch.manual_seed(seed)
    judge = _Judge()
    opt = torch.optim.Adam(judge.parameters(), 3e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(judge(images + 0.05 * torch.randn_like(images)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return judge.eval()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) of two feature sets [N, D]
    (the Frechet distance of Gaussians fitted to them, as FID computes it), in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)

    def sqrtm(m: Tensor) -> Tensor:
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    root = sqrtm(s_a)
    cross = sqrtm(root @ s_b @ root)
    return ((mu_a - mu_b).square().sum() + torch.trace(s_a + s_b - 2 * cross)).item()


class GANReport(NamedTuple):
    """The demo's numbers."""
    judge_test_accuracy: float       # the classifier on the real test digits
    sample_accuracy: float           # the classifier agrees with the class a sample was drawn for
    fd_samples: float                # Frechet distance, samples vs test digits (classifier features)
    fd_train: float                  # the same for the real training digits (the floor)
    fd_independent: float            # the same for independent per-pixel samples (a baseline)


@torch.no_grad()
def evaluate(model: DCGAN, train_images: Tensor, test_images: Tensor, train_labels: Tensor, test_labels: Tensor,
             levels: int, per_class: int = 100, seed: int = 0) -> GANReport:
    """Judge 10 x ``per_class`` quantised samples with a classifier trained on the real digits."""
    device = next(model.parameters()).device
    judge = train_judge(to_unit(train_images, levels), train_labels, seed=seed)
    test_x = to_unit(test_images, levels)
    judge_acc = (judge(test_x).argmax(1) == test_labels).float().mean().item()
    model.eval()
    classes = torch.arange(10).repeat_interleave(per_class)
    samples = model.sample(len(classes), classes.to(device), torch.Generator().manual_seed(seed + 7)).cpu()
    samples = to_unit(to_levels(samples, levels), levels)
    sample_acc = (judge(samples).argmax(1) == classes).float().mean().item()
    # the independent per-pixel model: each pixel from its marginal histogram over the training set
    g = torch.Generator().manual_seed(seed + 11)
    flat = train_images.flatten(1)
    pick = torch.randint(len(flat), (len(classes), flat.shape[1]), generator=g)
    independent = to_unit(flat.gather(0, pick).view(-1, *train_images.shape[1:]), levels)
    feats = lambda x: judge.body(x)          # noqa: E731
    test_f = feats(test_x)
    model.train()
    return GANReport(judge_acc, sample_acc, frechet_distance(feats(samples), test_f),
                     frechet_distance(feats(to_unit(train_images, levels)), test_f),
                     frechet_distance(feats(independent), test_f))


def load_faces(size: int = 16) -> Optional[Tensor]:
    """scikit-image's ``lfw_subset`` (the 100 face crops among its 200 images, 25x25 greys) resized
    to ``size`` x ``size`` in [-1, 1] -> [100, 1, size, size]; None without scikit-image."""
    try:
        from skimage.data import lfw_subset
    except ImportError:
        return None
    images = torch.from_numpy(lfw_subset()[:100]).float()[:, None]       # [100, 1, 25, 25] in [0, 1]
    return F.interpolate(images, size=(size, size), mode="area") * 2 - 1


def run(steps: int = 2000, out_dir: str = ".", device: Optional[Union[torch.device, str]] = None, seed: int = 0,
        batch: int = 64, channels: int = 32, latent: int = 32, g_lr: float = 1e-3, d_lr: float = 1e-3,
        betas: Tuple[float, float] = (0.5, 0.999), dataset: str = "digits") -> Dict[str, float]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    if dataset not in ("digits", "faces"):
        raise ValueError(f"dataset must be 'digits' or 'faces', got {dataset!r}")
    if dataset == "faces":
        faces = load_faces()
        if faces is None:
            print("the faces demo needs scikit-image (pip install scikit-image); skipped")
            return {}
        images, labels, num_classes, levels = faces.to(device), None, None, None
    else:
        train, test = load_digits("train"), load_digits("test")
        levels = train.levels
        images, labels, num_classes = to_unit(train.images, levels).to(device), train.labels.to(device), 10
    model = DCGAN(tuple(images.shape[1:]), latent=latent, channels=channels, num_classes=num_classes,
                  spectral=True).to(device)
    # DCGAN's Adam betas (0.5, 0.999); a higher rate than its 2e-4 suits this tiny model (2000 steps in minutes)
    g_opt = torch.optim.Adam(model.generator.parameters(), g_lr, betas=betas)
    d_opt = torch.optim.Adam(model.discriminator.parameters(), d_lr, betas=betas)
    print(f"Training a class-conditional DCGAN (spectrally normalised projection discriminator, hinge loss, "
          f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters) on {len(images)} "
          f"{'x'.join(map(str, images.shape[2:]))} {dataset}, {device}")
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="train", unit="step", mininterval=0.5)
    for _ in bar:
        pick = torch.randint(len(images), (batch,), generator=generator).to(device)
        step = model.train_step(images[pick], labels[pick] if labels is not None else None, g_opt, d_opt,
                                loss="hinge", generator=generator)
        bar.set_postfix(d_loss=f"{step.discriminator_loss:.3f}", g_loss=f"{step.generator_loss:.3f}", refresh=False)

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gan_samples.png")
    model.eval()
    draw = torch.Generator().manual_seed(seed + 1)
    if dataset == "faces":
        samples = model.sample(64, None, draw).cpu()
        save_grid(255 - to_levels(samples, 256), 256, path, rows=8, scale=4)    # light faces on dark
        print(f"wrote {path} (64 samples)")
        return {}
    classes = torch.arange(10, device=device).repeat_interleave(10)
    samples = model.sample(len(classes), classes, draw).cpu()
    save_grid(to_levels(samples, levels), levels, path, rows=10)
    report = evaluate(model, train.images, test.images, train.labels, test.labels, levels, seed=seed)
    print(f"classifier accuracy: real test digits {report.judge_test_accuracy:.3f}, "
          f"GAN samples (their conditioning class) {report.sample_accuracy:.3f}")
    print(f"Frechet distance to the test digits (classifier features): GAN samples {report.fd_samples:.2f}, "
          f"real training digits {report.fd_train:.2f}, independent per-pixel samples {report.fd_independent:.2f}")
    print(f"wrote {path} (one row per class 0-9)")
    return report._asdict()
