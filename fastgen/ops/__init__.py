"""fastgen ops: one public function per operation, dispatched to Triton or the reference.

Each op is registered with ``torch.library`` (``torch.ops.fastgen.*``) with a fake
implementation for ``torch.compile`` and an autograd formula; ``fastgen.ops.reference``
holds the plain-PyTorch specification of each.
"""
from fastgen.ops.conv import causal_conv1d, masked_conv2d
from fastgen.ops.pixelcnnpp import pixelcnnpp_resnet_at
from fastgen.ops.reference import pixelcnn_mask

__all__ = ["causal_conv1d", "masked_conv2d", "pixelcnn_mask", "pixelcnnpp_resnet_at"]
