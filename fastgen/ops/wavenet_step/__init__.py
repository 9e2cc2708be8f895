"""The WaveNet fused sampling steps (one sample, or a block in a persistent kernel): ops,
reference and their weights bundle."""
from fastgen.ops.wavenet_step.bundles import WaveNetStepWeights
from fastgen.ops.wavenet_step.op import WAVENET_DTYPES, wavenet_step, wavenet_steps

__all__ = ["WAVENET_DTYPES", "WaveNetStepWeights", "wavenet_step", "wavenet_steps"]
