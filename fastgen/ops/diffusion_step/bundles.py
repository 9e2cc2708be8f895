"""The named bundles ``diffusion_step`` takes and returns (plain tuples, so they unpack as before).

- ``StepCoefficients``: the numbers of one sampler update
  x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z, with s0 = sqrt(abar_t),
  s1 = sqrt(1 - abar_t) reading the denoiser output (s0 = 1, s1 = sigma for VE / score models).
- ``KeepCoefficients``: (k_x0, k_x) of the optional second output k_x0 x0 + k_x x.
- ``LearnedVariance``: (log beta~, log beta), the two log-variances a learned sigma interpolates.
- ``KeptStep``: (x_next, kept), what a step with ``keep`` returns.
- ``CorrectorWorkspace``: (partial, rows), the scratch the corrector's two small kernels write.
"""
from typing import NamedTuple, Sequence, Union

from torch import Tensor


class StepCoefficients(NamedTuple):
    """One sampler update's coefficients (every ``*_coefficients`` function in
    ``fastgen.sampling.diffusion`` returns one).  c_aux weights the ``aux`` tensor (Heun's half
    step, DPM-Solver++'s previous x0) and is 0 for single-stage samplers."""
    s0: float
    s1: float
    c_x0: float
    c_eps: float
    c_x: float
    sigma: float
    c_aux: float = 0.0

    @classmethod
    def of(cls, values: Union["StepCoefficients", Sequence[float]]) -> "StepCoefficients":
        """A ``StepCoefficients`` from itself or a plain sequence of 6 numbers (c_aux = 0) or 7
        (the order of ``COEFFICIENTS``) -- the form callers used before the bundle existed."""
        if isinstance(values, cls):
            return values
        try:
            values = tuple(float(v) for v in values)
        except TypeError:
            raise TypeError(f"coefficients must be a StepCoefficients, a sequence of numbers {COEFFICIENTS} "
                            f"or a [B, 7] tensor, got {type(values).__name__}") from None
        if len(values) not in (6, 7):
            raise ValueError(f"coefficients must be {COEFFICIENTS[:6]} or {COEFFICIENTS}, got {len(values)} values")
        return cls(*values)


COEFFICIENTS = StepCoefficients._fields   # also the column order of per-sample [B, 7] tensors


class KeepCoefficients(NamedTuple):
    """What a step also returns: k_x0 x0 + k_x x (Heun keeps its half step, DPM-Solver++ its x0)."""
    k_x0: float
    k_x: float


class LearnedVariance(NamedTuple):
    """Improved DDPM's variance range at one step: sigma^2 = exp(f log_large + (1 - f) log_small),
    f = (v + 1) / 2 with v the denoiser's extra channels."""
    log_small: float     # log beta~ (the posterior variance)
    log_large: float     # log beta


class KeptStep(NamedTuple):
    """A step with ``keep``: the next x and k_x0 x0 + k_x x, both like x."""
    x_next: Tensor
    kept: Tensor


class CorrectorWorkspace(NamedTuple):
    """What ``corrector_coefficients`` writes on the Triton backend instead of allocating (a
    sampling loop makes one per run: ``corrector_workspace``): partial [B, blocks, 2] float32,
    the norms kernel's per-block sums of squares, and rows [B, 7] float32, the corrector's
    per-sample coefficients (what it returns)."""
    partial: Tensor
    rows: Tensor
