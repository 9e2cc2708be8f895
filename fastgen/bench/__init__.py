"""fastgen's benchmarks: fastgen against what a user would use instead, in the same run on the
same device.  One runner (``runner.py``: ``Case``, ``measure``, ``run_cases``, ``save``) and one
module per op family that builds its cases and calls it: ``conv``, ``sampling`` (PixelCNN,
Gated PixelCNN, PixelCNN++ samplers and the PixelCNN++ resnet step), ``wavenet``,
``diffusion``, ``flows``, ``stylegan``, ``vq``, ``attention`` (block-local).  Floors and targets are in each family module's docstring.

    fastgen bench conv|sampling|wavenet|diffusion|flows|stylegan|vq|attention [--quick] [--json PATH] [--filter S] [--dtypes D,...]
    pytest benchmarks/ --benchmark-only          # the same cases through pytest-benchmark
"""
import sys
from typing import Optional

import torch

from fastgen.bench.attention import attention_cases, attention_rows
from fastgen.bench.conv import HEADER, causal_conv_cases, conv_cases, format_row, masked_conv_cases
from fastgen.bench.diffusion import diffusion_loop_rows, diffusion_rows, step_cases
from fastgen.bench.flows import coupling_cases, flow_rows
from fastgen.bench.runner import CPU_TIMER_NOTE, Case, Measurement, environment, measure, run_cases, save
from fastgen.bench.stylegan import stylegan_cases, stylegan_rows
from fastgen.bench.sampling import (half_precision_sampling_rows, pixelcnnpp_resnet_rows, sampler_cases,
                                    sampling_rows)
from fastgen.bench.vq import layer_cases as vq_layer_cases, search_cases as vq_search_cases, vq_rows
from fastgen.bench.wavenet import EagerQueueDraw, ModelWithCache, wavenet_cases, wavenet_rows

__all__ = ["attention_cases", "attention_rows", "Case", "EagerQueueDraw", "Measurement", "ModelWithCache", "causal_conv_cases", "conv_cases", "coupling_cases",
           "diffusion_loop_rows", "diffusion_rows", "environment", "flow_rows", "format_row", "half_precision_sampling_rows",
           "masked_conv_cases", "measure", "pixelcnnpp_resnet_rows", "run", "run_cases", "sampler_cases",
           "sampling_rows", "save", "step_cases", "stylegan_cases", "stylegan_rows", "wavenet_cases", "wavenet_rows", "vq_layer_cases", "vq_rows",
           "vq_search_cases"]


def run(what: str, device: torch.device, quick: bool = False, json_path: Optional[str] = None,
        name_filter: str = "", dtypes: str = "", command: Optional[str] = None) -> int:
    """``fastgen bench <what>``: run one family's benchmarks, print them, optionally write JSON.
    ``name_filter`` and ``dtypes`` (comma-separated, e.g. ``bfloat16,float32``) select conv cases."""
    device = torch.device(device)
    quick = quick or device.type != "cuda"
    command = command or " ".join(["fastgen"] + sys.argv[1:])
    if device.type != "cuda":
        print(CPU_TIMER_NOTE)
    if what == "conv":
        types = [getattr(torch, name) for name in dtypes.split(",")] if dtypes else None
        cases = [c for c in conv_cases(device, quick=quick, dtypes=types) if name_filter in c.name]
        print(HEADER)
        rows = run_cases(cases, device, progress=lambda row: print(format_row(row), flush=True))
    elif what == "sampling":
        rows = (sampling_rows(device, quick=quick) + half_precision_sampling_rows(device, quick=quick)
                + pixelcnnpp_resnet_rows(device, quick=quick))
    elif what == "wavenet":
        rows = wavenet_rows(device, quick=quick)
    elif what == "diffusion":
        rows = diffusion_rows(device, quick=quick)
    elif what == "flows":
        rows = flow_rows(device, quick=quick)
    elif what == "stylegan":
        rows = stylegan_rows(device, quick=quick)
    elif what == "vq":
        rows = vq_rows(device, quick=quick)
    elif what == "attention":
        rows = attention_rows(device, quick=quick)
    else:
        raise ValueError(f"what must be conv, sampling, wavenet, diffusion, flows, stylegan, vq or attention, got {what!r}")
    if json_path:
        save(rows, json_path, command, device)
        print(f"wrote {json_path}")
    return 0
