"""The PixelCNN++ GatedResnet sampling step: op and reference."""
from fastgen.ops.pixelcnnpp_resnet.op import pixelcnnpp_resnet_at

__all__ = ["pixelcnnpp_resnet_at"]
