"""The WaveNet fused sampling steps (one sample, or a block in a persistent kernel): ops and reference."""
from fastgen.ops.wavenet_step.op import (WAVENET_DTYPES, wavenet_persistent_preferred, wavenet_step,
                                          wavenet_steps)

__all__ = ["WAVENET_DTYPES", "wavenet_persistent_preferred", "wavenet_step", "wavenet_steps"]
