"""The fused diffusion sampler step and the predictor-corrector's norms: ops and reference."""
from fastgen.ops.diffusion_step.op import COEFFICIENTS, PREDICTIONS, diffusion_step, score_noise_norms

__all__ = ["COEFFICIENTS", "PREDICTIONS", "diffusion_step", "score_noise_norms"]
