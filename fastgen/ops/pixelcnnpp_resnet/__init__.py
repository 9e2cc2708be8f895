"""The PixelCNN++ GatedResnet sampling step: op, reference and its weights bundle."""
from fastgen.ops.pixelcnnpp_resnet.bundles import ResnetWeights
from fastgen.ops.pixelcnnpp_resnet.op import pixelcnnpp_resnet_at

__all__ = ["ResnetWeights", "pixelcnnpp_resnet_at"]
