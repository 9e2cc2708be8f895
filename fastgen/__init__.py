"""fastgen: hand-written GPU kernels for deep generative models.

Layers: ``fastgen.kernels`` (Triton) -> ``fastgen.ops`` (torch.library ops, dispatch,
references) -> ``fastgen.nn`` / ``fastgen.sampling`` / ``fastgen.models``.
"""
__version__ = "0.1.0"

from fastgen import ops  # noqa: E402  (registers torch.ops.fastgen.*)

__all__ = ["ops", "__version__"]
