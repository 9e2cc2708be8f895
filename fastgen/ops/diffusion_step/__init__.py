"""The fused diffusion sampler step and the predictor-corrector's norms and per-sample
coefficients: ops, reference and the named bundles they take (``StepCoefficients``,
``KeepCoefficients``, ``LearnedVariance``, ``CorrectorWorkspace``) and return (``KeptStep``)."""
from fastgen.ops.diffusion_step.bundles import (COEFFICIENTS, CorrectorWorkspace, KeepCoefficients, KeptStep,
                                                LearnedVariance, StepCoefficients)
from fastgen.ops.diffusion_step.op import (PREDICTIONS, corrector_coefficients, corrector_workspace, diffusion_step,
                                           score_noise_norms)

__all__ = ["COEFFICIENTS", "CorrectorWorkspace", "KeepCoefficients", "KeptStep", "LearnedVariance", "PREDICTIONS",
           "StepCoefficients", "corrector_coefficients", "corrector_workspace", "diffusion_step", "score_noise_norms"]
