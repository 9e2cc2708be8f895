"""The fused diffusion sampler step and the predictor-corrector's norms: ops, reference and the
named bundles they take (``StepCoefficients``, ``KeepCoefficients``, ``LearnedVariance``) and
return (``KeptStep``)."""
from fastgen.ops.diffusion_step.bundles import (COEFFICIENTS, KeepCoefficients, KeptStep, LearnedVariance,
                                                StepCoefficients)
from fastgen.ops.diffusion_step.op import PREDICTIONS, diffusion_step, score_noise_norms

__all__ = ["COEFFICIENTS", "KeepCoefficients", "KeptStep", "LearnedVariance", "PREDICTIONS", "StepCoefficients",
           "diffusion_step", "score_noise_norms"]
