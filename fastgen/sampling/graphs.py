"""One cache of captured CUDA graphs for every sampler.

A sampling loop with no host syncs can be captured once as a CUDA graph and replayed: no
host work per pixel, sample or step.  Every sampler (autoregressive images, WaveNet blocks,
diffusion loops) captures through ``GRAPHS.replay``, which

- keys an entry on its **owner** (the model or denoiser whose weights the graph reads), held
  weakly: the entry is dropped when the owner is garbage-collected, and the cache never keeps
  a model alive;
- and on a hashable **configuration** (shapes, dtypes, options, the weights' versions) -- never
  on the identity of a tensor.  Conditioning, noise and starting values are **static inputs**:
  copied into the graph's own input buffers before each replay, so a service that samples
  with a fresh label tensor per request replays one graph instead of capturing a new one;
- is bounded (least recently used entries go first, ``max_entries``) and can be cleared
  (``GRAPHS.clear()``).

``replay`` returns the graph's output buffers, which the next replay overwrites: callers
clone what they return to users.
"""
import collections
import dataclasses
import weakref
from typing import Any, Callable, Dict, Hashable, Mapping, Optional

import torch
from torch import Tensor


@dataclasses.dataclass
class _Captured:
    graph: Any                       # torch.cuda.CUDAGraph (or the backend's stand-in)
    inputs: Dict[str, Tensor]        # the graph's static input buffers
    outputs: Any                     # what the captured run returned (buffers the graph writes)


class CudaGraphBackend:
    """How graphs are made, captured and replayed: CUDA graphs (the only real backend)."""

    def supports(self, device: torch.device) -> bool:
        return torch.device(device).type == "cuda"

    def capture(self, run: Callable[[Dict[str, Tensor]], Any], inputs: Dict[str, Tensor]) -> _Captured:
        run(inputs)                       # warm up outside the capture: compile, tune, allocate
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run(inputs)
        return _Captured(graph, inputs, outputs)

    def replay(self, captured: _Captured) -> None:
        captured.graph.replay()


class EagerReplayBackend(CudaGraphBackend):
    """A stand-in for machines without a GPU (the tests): "capturing" keeps the loop and
    "replaying" runs it again over the static buffers, on any device.  It exercises the cache's
    keys, static inputs and lifetimes exactly as CUDA graphs would, without their speed."""

    def supports(self, device: torch.device) -> bool:
        return True

    def capture(self, run, inputs):
        return _Captured(run, inputs, run(inputs))

    def replay(self, captured: _Captured) -> None:
        captured.outputs = captured.graph(captured.inputs)


class GraphCache:
    """Captured sampling loops, keyed by (owner, configuration); see the module docstring."""

    def __init__(self, max_entries: int = 16, backend: Optional[CudaGraphBackend] = None):
        self.max_entries = max_entries
        self.backend = backend or CudaGraphBackend()
        self.captures = 0                 # how many graphs were captured (tests, diagnostics)
        self._entries: "collections.OrderedDict[tuple, _Captured]" = collections.OrderedDict()
        self._owners: Dict[int, weakref.finalize] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def supports(self, device: torch.device) -> bool:
        """Whether loops on ``device`` can be captured (CUDA devices)."""
        return self.backend.supports(device)

    def clear(self) -> None:
        """Drop every captured graph (and the memory its buffers hold)."""
        self._entries.clear()
        for finalizer in self._owners.values():
            finalizer.detach()
        self._owners.clear()

    def replay(self, owner: object, config: Hashable, inputs: Mapping[str, Tensor],
               run: Callable[[Dict[str, Tensor]], Any]) -> Any:
        """Copy ``inputs`` into the static input buffers of the graph for (owner, config) --
        captured now from ``run`` if there is none -- replay it and return its outputs.

        run(buffers) -> outputs: the loop over the static input buffers (a dict like
        ``inputs``); it is called once to warm up and once under capture, and must read its
        inputs only from ``buffers`` (anything else it reads is baked into the graph, so it
        belongs in ``config``)."""
        key = (id(owner), config)
        captured = self._entries.get(key)
        if captured is None:
            buffers = {name: value.clone() for name, value in inputs.items()}
            captured = self.backend.capture(run, buffers)
            self.captures += 1
            self._remember(owner, key, captured)
        else:
            self._entries.move_to_end(key)
            for name, value in inputs.items():
                captured.inputs[name].copy_(value)
        self.backend.replay(captured)
        return captured.outputs

    def _remember(self, owner, key, captured):
        self._entries[key] = captured
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        if id(owner) not in self._owners:     # drop the owner's graphs when it dies
            self._owners[id(owner)] = weakref.finalize(owner, self._forget_owner, id(owner))

    def _forget_owner(self, owner_id: int) -> None:
        self._owners.pop(owner_id, None)
        for key in [k for k in self._entries if k[0] == owner_id]:
            del self._entries[key]


GRAPHS = GraphCache()


def weights_version(module: torch.nn.Module) -> tuple:
    """A configuration part that changes whenever a parameter is written in place (training,
    ``load_state_dict``): a captured graph reads the weights it was captured with."""
    return tuple(p._version for p in module.parameters())
