"""Checkpoints of ``fastgen train``: a folder holding

- ``config.json``: the model's registry name and class, its constructor arguments, the data it
  was trained on (kind, shape, levels, sample rate) and the training state (step, options), plus
  the names of the files below -- the commit point;
- ``model-<step>.safetensors``: the weights (parameters and persistent buffers);
- ``ema-<step>.safetensors``: the EMA weights, when training kept them;
- ``state-<step>.pt``: what resuming needs besides the weights: optimizer states, the RNG
  states and the data sampler's position (``torch.load(weights_only=True)`` reads it).

Writing is crash-safe: the step's files are written under temporary names and renamed
(``os.replace``), then ``config.json`` is replaced atomically the same way, and only then are
the previous step's files deleted.  A crash at any point leaves ``config.json`` naming a
complete earlier checkpoint.
"""
import json
import os
import tempfile
from typing import Any, Dict, NamedTuple, Optional

import torch
from torch import Tensor, nn

from fastgen.train.registry import DataInfo, UsageError

FORMAT = "fastgen-checkpoint"
VERSION = 1
CONFIG = "config.json"


class Checkpoint(NamedTuple):
    folder: str
    config: Dict[str, Any]

    @property
    def step(self) -> int:
        return self.config["train"]["step"]

    @property
    def data_info(self) -> DataInfo:
        d = self.config["data"]
        return DataInfo(d["kind"], tuple(d["shape"]), d.get("levels"), d.get("num_classes"), d.get("sample_rate"),
                        d.get("energy"))

    def path(self, key: str) -> Optional[str]:
        name = self.config["files"].get(key)
        return os.path.join(self.folder, name) if name else None


def _write_atomic(path: str, write) -> None:
    """``write(tmp_path)``, then rename onto ``path`` (same folder, so the rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _tensors(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A state dict safetensors accepts: contiguous CPU tensors that share no memory."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save(folder: str, config: Dict[str, Any], model_state: Dict[str, Tensor],
         ema_state: Optional[Dict[str, Tensor]], train_state: Dict[str, Any]) -> str:
    """Write the checkpoint of ``config['train']['step']`` into ``folder`` (see the module
    docstring); returns the path of ``config.json``."""
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    step = config["train"]["step"]
    files = {"model": f"model-{step:08d}.safetensors", "state": f"state-{step:08d}.pt"}
    if ema_state is not None:
        files["ema"] = f"ema-{step:08d}.safetensors"
    _write_atomic(os.path.join(folder, files["model"]), lambda p: save_file(_tensors(model_state), p))
    if ema_state is not None:
        _write_atomic(os.path.join(folder, files["ema"]), lambda p: save_file(_tensors(ema_state), p))
    _write_atomic(os.path.join(folder, files["state"]), lambda p: torch.save(train_state, p))
    previous = read_config(folder) if os.path.exists(os.path.join(folder, CONFIG)) else None
    config = {**config, "format": FORMAT, "version": VERSION, "files": files}

    def write_json(p):
        with open(p, "w") as f:
            json.dump(config, f, indent=2)
    _write_atomic(os.path.join(folder, CONFIG), write_json)
    if previous is not None:                       # the new checkpoint is committed: drop the old files
        for name in previous.get("files", {}).values():
            if name not in files.values() and os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
    return os.path.join(folder, CONFIG)


def read_config(folder: str) -> Dict[str, Any]:
    with open(os.path.join(folder, CONFIG)) as f:
        return json.load(f)


def exists(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, CONFIG))


def open_checkpoint(folder: str, model_name: Optional[str] = None, option: str = "--checkpoint") -> Checkpoint:
    """The checkpoint in ``folder``; a UsageError when there is none, it is not a fastgen
    checkpoint, a file it names is missing, or it holds another model than ``model_name``."""
    if not os.path.exists(folder):
        raise UsageError(f"{option} {folder}: no such folder")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {folder} is a file; fastgen train writes checkpoints as folders "
                         f"(config.json + safetensors)")
    if not exists(folder):
        raise UsageError(f"{option} {folder}: no {CONFIG} here (not a checkpoint written by fastgen train)")
    try:
        config = read_config(folder)
    except (OSError, ValueError) as err:
        raise UsageError(f"{option} {folder}: cannot read {CONFIG}: {err}") from err
    if config.get("format") != FORMAT:
        raise UsageError(f"{option} {folder}: {CONFIG} is not a fastgen checkpoint")
    ckpt = Checkpoint(folder, config)
    for key in config.get("files", {}):
        path = ckpt.path(key)
        if not os.path.isfile(path):
            raise UsageError(f"{option} {folder}: {os.path.basename(path)} named by {CONFIG} is missing")
    if model_name is not None and config["model"] != model_name:
        raise UsageError(f"{option} {folder} holds a {config['model']} model, not {model_name}")
    return ckpt


def load_weights(module: nn.Module, path: str) -> None:
    """Load a safetensors state dict into ``module``; a UsageError naming the mismatch otherwise."""
    from safetensors.torch import load_file
    state = load_file(path)
    missing, unexpected = [], []
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise UsageError(f"{path} does not fit the model built from its config.json: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    module.load_state_dict(state)
