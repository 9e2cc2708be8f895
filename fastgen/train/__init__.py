"""Training and sampling at scale: ``fastgen train`` (``loop.train``), checkpoints
(``checkpoint``: safetensors weights + a JSON config, written atomically), ``fastgen sample``
over any checkpoint (``generate``), the model registry both read (``registry``), and
multi-process runs under ``torchrun`` (``distributed``: DDP, the seed rule)."""
from fastgen.train.loop import TrainOptions, train
from fastgen.train.registry import NOT_TRAINABLE, REGISTRY, DataInfo, ModelSpec, UsageError, available, get

__all__ = ["DataInfo", "ModelSpec", "NOT_TRAINABLE", "REGISTRY", "TrainOptions", "UsageError", "available", "get",
           "train"]
