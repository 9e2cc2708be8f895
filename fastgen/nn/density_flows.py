"""Flow layers on vectors x [B, D]: the autoregressive affine layers of MAF and IAF (on a
``GaussianMADE``) and the planar and radial layers of Rezende & Mohamed (2015).

Every layer has ``forward(x, cond=None) -> FlowOutput(out, logdet)`` (logdet [B], float32, or
float64 for float64 inputs: log |det d out / d x| per sample) and ``inverse(y, cond=None) -> x``.
``forward`` is the direction the layer computes in one pass:

| layer | forward (one pass) | inverse |
|---|---|---|
| ``MAFLayer`` | data -> noise, u = (x - mu(x_<d)) exp(-alpha(x_<d)) | D passes of the MADE |
| ``IAFLayer`` | noise -> data, x = u exp(alpha(u_<d)) + mu(u_<d) | D passes of the MADE |
| ``PlanarLayer`` | z -> z + u_hat tanh(w.z + b) | 1-D root find on w.z + b (bisection) |
| ``RadialLayer`` | z -> z + beta (z - z0) / (alpha + r) | closed form (a quadratic in r) |

The autoregressive inverse: the D outputs are fixed one position of the ordering per MADE pass
(pass k makes the first k dimensions of the ordering exact), so D passes invert exactly.
"""
import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.nn.made import GaussianMADE, GaussianMADEOutput
from fastgen.ops.flow_coupling.bundles import FlowOutput


class FlowSample(NamedTuple):
    """A draw from a flow with its log-density under the flow: ``sample`` [n, D], ``log_prob`` [n]
    (float32, or float64 for a float64 model)."""
    sample: Tensor
    log_prob: Tensor


def logdet_dtype(x: Tensor) -> torch.dtype:
    """Log-dets are float32 whatever the input dtype, float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def check_vectors(x, dim: int, name: str, like: Optional[Tensor] = None) -> None:
    """x must be a finite floating tensor [B, dim] (with ``like``'s dtype and device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor [B, {dim}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [B, {dim}], got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape [B, {dim}], got {tuple(x.shape)}")
    if like is not None and x.dtype != like.dtype:
        raise TypeError(f"{name} must have the parameters' dtype {like.dtype}, got {x.dtype}")
    if like is not None and x.device != like.device:
        raise ValueError(f"{name} is on {x.device} but the parameters are on {like.device}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")


def check_cond(cond, cond_dim: int, batch: int, like: Tensor, owner: str) -> None:
    """cond must be None when cond_dim == 0, else a finite tensor [batch, cond_dim]."""
    if cond_dim == 0:
        if cond is not None:
            raise ValueError(f"{owner} is unconditional (cond_dim=0); cond must be None")
        return
    if cond is None:
        raise ValueError(f"{owner} has cond_dim={cond_dim}; pass cond [B, {cond_dim}]")
    check_vectors(cond, cond_dim, "cond", like)
    if cond.shape[0] != batch:
        raise ValueError(f"cond has batch {cond.shape[0]} but the input has batch {batch}")


def _normalize(x: Tensor, p: GaussianMADEOutput) -> Tensor:
    """u = (x - mu) exp(-alpha): the data -> noise affine map (log-det -sum alpha)."""
    return (x - p.shift) * torch.exp(-p.log_scale)


def _denormalize(u: Tensor, p: GaussianMADEOutput) -> Tensor:
    """x = u exp(alpha) + mu: the noise -> data affine map (log-det +sum alpha)."""
    return u * torch.exp(p.log_scale) + p.shift


class _FlowLayer(nn.Module):
    """``forward``/``inverse`` check their input (and cond) and call ``_forward``/``_inverse``,
    which the model stacks call directly after checking once: an intermediate result is not user
    input, and re-checking it would cost a host sync per layer."""

    names = ("x", "y")                   # what forward and inverse call their input in errors

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """x [B, dim] -> FlowOutput(out [B, dim], logdet [B]) after checking x and cond."""
        self._check(x, cond, self.names[0])
        return self._forward(x, cond)

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """y [B, dim] -> x [B, dim] with forward(x).out = y, after checking y and cond."""
        self._check(y, cond, self.names[1])
        return self._inverse(y, cond)


class _AutoregressiveAffine(_FlowLayer):
    """A GaussianMADE and the checks and the D-pass solver the MAF and IAF layers share."""

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 512), cond_dim: int = 0,
                 order: Optional[Sequence[int]] = None, seed: int = 0, activation: str = "tanh"):
        super().__init__()
        self.made = GaussianMADE(dim, hidden, cond_dim, order, seed, activation)
        self.dim, self.cond_dim = dim, cond_dim

    @property
    def order(self):
        """The dimensions in autoregressive order (mu_d, alpha_d see the dimensions before d)."""
        return self.made.order

    def _check(self, x: Tensor, cond: Optional[Tensor], name: str) -> None:
        weight = self.made.layers[0].weight
        check_vectors(x, self.dim, name, weight)
        check_cond(cond, self.cond_dim, x.shape[0], weight, type(self).__name__)

    def _solve(self, target: Tensor, cond: Optional[Tensor], step) -> Tensor:
        """The z with z = step(target, made(z)): D passes, each fixing one more position."""
        z = torch.zeros_like(target)
        for _ in range(self.dim):
            z = step(target, self.made(z, cond))
        return z


class MAFLayer(_AutoregressiveAffine):
    """One MAF layer (Papamakarios et al. 2017) on x [B, dim]: forward is the density direction,

        u_d = (x_d - mu_d(x_<d)) exp(-alpha_d(x_<d)),   logdet = -sum_d alpha_d,

    one MADE pass; ``inverse`` (sampling) takes ``dim`` passes.  Arguments as ``GaussianMADE``;
    the layer starts as the identity."""

    names = ("x", "u")

    def _forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """x [B, dim] -> FlowOutput(u [B, dim], logdet [B])."""
        p = self.made(x, cond)
        return FlowOutput(_normalize(x, p), -p.log_scale.to(logdet_dtype(x)).sum(1))

    def _inverse(self, u: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """u [B, dim] -> x [B, dim] in ``dim`` MADE passes."""
        return self._solve(u, cond, _denormalize)


class IAFLayer(_AutoregressiveAffine):
    """One IAF layer (Kingma et al. 2016) on u [B, dim]: forward is the sampling direction,

        x_d = u_d exp(alpha_d(u_<d)) + mu_d(u_<d),   logdet = +sum_d alpha_d,

    one MADE pass (fast sampling, and the log-density of what it samples comes for free);
    ``inverse`` (the density of a given x) takes ``dim`` passes.  Arguments as ``GaussianMADE``;
    the layer starts as the identity."""

    names = ("u", "x")

    def _forward(self, u: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """u [B, dim] -> FlowOutput(x [B, dim], logdet [B])."""
        p = self.made(u, cond)
        return FlowOutput(_denormalize(u, p), p.log_scale.to(logdet_dtype(u)).sum(1))

    def _inverse(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """x [B, dim] -> u [B, dim] in ``dim`` MADE passes."""
        return self._solve(x, cond, _normalize)


class _VectorLayer(_FlowLayer):
    """Checks shared by the unconditional planar and radial layers."""

    names = ("z", "y")

    def _check(self, x: Tensor, cond: Optional[Tensor], name: str) -> None:
        if cond is not None:
            raise ValueError(f"{type(self).__name__} is unconditional; cond must be None")
        check_vectors(x, self.dim, name, self.param_like)


class PlanarLayer(_VectorLayer):
    """Planar flow layer (Rezende & Mohamed 2015) on z [B, dim]:

        f(z) = z + u_hat tanh(w.z + b),   logdet = log(1 + (1 - tanh^2(w.z + b)) w.u_hat),

    with u_hat = u + (m(w.u) - w.u) w / |w|^2 and m(s) = -1 + softplus(s), so that w.u_hat > -1
    and f is invertible.  ``inverse`` is numeric: a = w.z + b solves a + (w.u_hat) tanh(a) =
    w.y + b, which is strictly increasing in a with its root within |w.u_hat| of w.y + b;
    64 bisection halvings in float64 find it, then one Newton step taken under autograd gives
    the exact gradient of the root (implicit function theorem), and z = y - u_hat tanh(a)."""

    def __init__(self, dim: int, init_scale: float = 0.1):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.w = nn.Parameter(init_scale * torch.randn(dim))
        self.u = nn.Parameter(init_scale * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    @property
    def param_like(self) -> Tensor:
        """A parameter: inputs must share its dtype and device."""
        return self.w

    def u_hat(self) -> Tensor:
        """[dim] the constrained u (w.u_hat > -1)."""
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w).clamp_min(1e-12)

    def _forward(self, z: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """z [B, dim] -> FlowOutput(f(z) [B, dim], logdet [B])."""
        u_hat = self.u_hat()
        t = torch.tanh(z @ self.w + self.b)                                    # [B]
        logdet = torch.log1p((1 - t * t) * (self.w @ u_hat))
        return FlowOutput(z + t[:, None] * u_hat, logdet.to(logdet_dtype(z)))

    def _inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """y [B, dim] -> z [B, dim] (numeric: see the class docstring)."""
        u_hat = self.u_hat()
        s = self.w @ u_hat                                                     # > -1
        c = y @ self.w + self.b                                                # [B]
        with torch.no_grad():
            s64, c64 = s.double(), c.double()
            lo, hi = c64 - s64.abs(), c64 + s64.abs()
            for _ in range(64):
                mid = 0.5 * (lo + hi)
                above = mid + s64 * torch.tanh(mid) > c64
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            a0 = (0.5 * (lo + hi)).to(c.dtype)
        t0 = torch.tanh(a0)
        a = a0 - (a0 + s * t0 - c) / (1 + s * (1 - t0 * t0))
        return y - torch.tanh(a)[:, None] * u_hat


class RadialLayer(_VectorLayer):
    """Radial flow layer (Rezende & Mohamed 2015) on z [B, dim], with r = |z - z0|:

        f(z) = z + beta (z - z0) / (alpha + r),
        logdet = (dim - 1) log(1 + beta / (alpha + r)) + log(1 + alpha beta / (alpha + r)^2),

    alpha = softplus(alpha_raw) > 0 and beta = -alpha + softplus(beta_raw) >= -alpha (invertible;
    strictly greater unless softplus underflows).
    ``inverse`` is closed form: |y - z0| = r (1 + beta / (alpha + r)) is a quadratic in r with
    one root >= 0, and then z - z0 = (y - z0) / (1 + beta / (alpha + r))."""

    def __init__(self, dim: int, init_scale: float = 0.1):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.z0 = nn.Parameter(init_scale * torch.randn(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(init_scale * torch.randn(()))

    @property
    def param_like(self) -> Tensor:
        """A parameter: inputs must share its dtype and device."""
        return self.z0

    def alpha_beta(self):
        """(alpha > 0, beta >= -alpha) as 0-d tensors."""
        alpha = F.softplus(self.alpha_raw)
        return alpha, F.softplus(self.beta_raw) - alpha

    def _forward(self, z: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """z [B, dim] -> FlowOutput(f(z) [B, dim], logdet [B])."""
        alpha, beta = self.alpha_beta()
        diff = z - self.z0
        r = diff.norm(dim=1)                                                   # [B]
        h = 1 / (alpha + r)
        logdet = (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h * h)
        return FlowOutput(z + (beta * h)[:, None] * diff, logdet.to(logdet_dtype(z)))

    def _inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """y [B, dim] -> z [B, dim] (closed form: see the class docstring)."""
        alpha, beta = self.alpha_beta()
        diff = y - self.z0
        r_y = diff.norm(dim=1)
        # r^2 + (alpha + beta - r_y) r - alpha r_y = 0; the two forms of the root >= 0 avoid
        # cancellation (coefficient >= 0: the rationalised form; < 0: the textbook one).
        b = alpha + beta - r_y
        root = torch.sqrt(b * b + 4 * alpha * r_y)
        r = torch.where(b >= 0, 2 * alpha * r_y / (b + root).clamp_min(1e-30), 0.5 * (root - b))
        return self.z0 + diff / (1 + beta / (alpha + r))[:, None]


def standard_normal_log_prob(u: Tensor) -> Tensor:
    """u [B, D] -> [B] log N(u; 0, I), in logdet_dtype(u)."""
    u = u.to(logdet_dtype(u))
    return -0.5 * (u * u).sum(1) - 0.5 * u.shape[1] * math.log(2 * math.pi)
