"""The compile gate: every Triton kernel fastgen launches, compiled for real GPUs on a machine
without one, and checked for what would make it fail or crawl there.

    fastgen compile-gate [--arch 80,90] [--out DIR] [--quick] [--jobs N]

How it works (no GPU, no CUDA driver):

1. **Configurations.**  ``configurations()`` calls the launch wrappers in ``kernels/*.py`` with
   *meta* tensors (shapes, strides and dtypes, no memory) at the sizes the library runs: the
   model zoo's defaults and the benchmark cases (``fastgen/bench``), with the layouts, dtypes
   and dot precisions the ops pass.  ``kernels/_launch.observe_launches(..., execute=False)``
   records every launch instead of executing it: the JIT function, its arguments, constexprs,
   warps and stages -- and for an autotuned kernel (tap_conv) every config of its space.
2. **Specialisation.**  Each launch is specialised exactly as Triton's own ``JITFunction.run``
   does it (the same binder: argument types, ints equal to 1 or divisible by 16, 16-byte
   aligned pointers -- meta tensors count as aligned, as PyTorch's allocations are), for each
   target ``GPUTarget("cuda", arch, 32)``; identical compiles are done once.
3. **Compile.**  ``triton.compile`` down to a cubin with the ptxas Triton ships, in worker
   processes.  ptxas's ``-v`` log gives the spill stores/loads; ``cuobjdump
   --dump-resource-usage`` on the cubin gives registers, stack, static shared and local memory;
   Triton's metadata gives the dynamic shared memory it requests at launch.
4. **Verdict.**  A configuration fails on a compile error, on any spill, or on shared memory
   (static + dynamic) above the architecture's per-block limit (sm_80: 163 KiB opt-in,
   sm_90: 227 KiB).  The table (markdown + JSON, ``benchmarks/results/compile/``) also gives
   the resulting occupancy: resident warps per SM from registers, shared memory and warps.

Known failures: ``benchmarks/results/compile/known_failures.json`` lists the failures the gate
found when it was introduced (most fused sampling kernels spill); they are reported in the
table, and the gate fails only on a failure not listed there with the same kinds -- a
ratchet: nothing gets worse while they are fixed.  ``--known ''`` makes it strict.

Exit status: 0 when no new failure, 1 otherwise (2: bad arguments).
The kernels must not be interpreted: under ``TRITON_INTERPRET=1`` the gate re-runs itself in a
subprocess without it.
"""
import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from typing import NamedTuple, Optional

import torch


class Arch(NamedTuple):
    cc: int
    name: str
    shared_per_block: int     # bytes, the opt-in maximum of one block
    shared_per_sm: int        # bytes, shared memory per SM (what blocks share)


ARCHS = {
    80: Arch(80, "sm_80", 163 * 1024, 164 * 1024),
    90: Arch(90, "sm_90", 227 * 1024, 228 * 1024),
}
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256           # registers are allocated per warp in units of 256
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
RESERVED_SHARED_PER_BLOCK = 1024   # the CUDA runtime's own shared memory per block (sm_80+)
RESULTS = os.path.join("benchmarks", "results", "compile")


# ------------------------------------------------------------------------ configurations

def _t(*shape, dtype=torch.float32):
    """A meta tensor: shape, strides and dtype without memory."""
    return torch.empty(*shape, dtype=dtype, device="meta")


_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# (storage dtype, dot precision) pairs the ops pass: fp32 is exact ("ieee") unless TF32 is
# allowed (PyTorch's default for convs); 16-bit always multiplies on the tensor cores.
PRECISIONS = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.bfloat16, "tf32"), (torch.float16, "tf32")]
H100_SMS = 132                # for the weight-gradient split count the conv op derives from the GPU


def _masked_taps(k, mask_type, stack):
    """(Taps, T) of a PixelCNN mask, derived from the reference mask as the conv op does."""
    from fastgen.kernels.tap_conv import Taps
    from fastgen.ops import pixelcnn_mask
    mask = pixelcnn_mask(1, 1, k, mask_type, 1, stack)
    flat = torch.nonzero(mask.amax(dim=(0, 1)).flatten()).flatten()
    first = int(flat[0]) if len(flat) else 0
    return Taps(first, k, k // 2, k // 2, 1), len(flat)


def _tap_conv(B, H, W, c_in, c_out, taps, T, dtype, precision, bias=True):
    """Forward, input gradient and weight gradient of one tap conv, laid out as the conv op
    lays them out: channels-last activations, packed weights [T, C_in, C_out] (transposed
    view for the input gradient), fp32 weight-gradient partials."""
    from fastgen.kernels import layout, tap_conv
    x = _t(B, H, W, c_in, dtype=dtype)
    layout.to_channels_last(_t(B, c_in, H * W, dtype=dtype), x.view(B, H * W, c_in))   # NCHW input
    w = _t(T, c_in, c_out, dtype=dtype)
    tap_conv.tap_conv_forward(x, w, taps, _t(c_out, dtype=dtype) if bias else None, _t(B, H, W, c_out, dtype=dtype),
                              precision)
    gy = _t(B, H, W, c_out, dtype=dtype)
    tap_conv.tap_conv_forward(gy, w.transpose(1, 2), taps, None, _t(B, H, W, c_in, dtype=dtype), precision,
                              mirror=True)
    m = B * H * W
    tiles = T * -(-c_in // 128) * -(-c_out // 128)
    splits = max(1, min(-(-m // 512), -(-2 * H100_SMS // tiles)))
    tap_conv.tap_conv_weight_grad(x, gy, taps, _t(splits, T, c_in, c_out), precision)


def conv_configurations(quick=False, full=False):
    """The tap-conv kernels (and the channels-last copy in front of them), each with its
    forward, input gradient and weight gradient, every autotune config, in every dtype and dot
    precision: by default at two shapes -- the conv benchmark's 7x7 'A' masked conv (B64 C128
    32x32: the 2-D case) and its causal conv (k2, dilation 2, B16 C256 T16384: the 1-D case,
    H = 1).  ``full`` adds every other shape the library runs (bench, Gated PixelCNN, PixelCNN and
    WaveNet layers: each is a different Triton specialisation, 19 compiles per shape, dtype and
    arch -- ~2600 in all, ~35 min on two cores; the default is what CI affords)."""
    from fastgen.kernels.tap_conv import Taps
    cases = []
    for dtype, precision in (PRECISIONS if not quick else PRECISIONS[2:3]):
        tag = f"{_NAMES[dtype]}/{precision}"
        for k, mask in ([(7, "A"), (3, "B")] if full else [(7, "A")] if not quick else [(3, "B")]):
            taps, T = _masked_taps(k, mask, "raster")          # bench: B64 C128 32x32
            cases.append((f"masked_conv2d k{k}{mask} B64 C128 32x32 {tag}",
                          lambda taps=taps, T=T, dtype=dtype, p=precision: _tap_conv(64, 32, 32, 128, 128, taps, T,
                                                                                     dtype, p)))
        if quick:
            continue
        if not full:
            cases.append((f"causal_conv1d k2 d2 B16 C256 T16384 {tag}",
                          lambda dtype=dtype, p=precision: _tap_conv(16, 1, 16384, 256, 256, Taps(0, 2, 0, 1, 2), 2,
                                                                     dtype, p)))
            continue
        for mask in ("A", "B"):   # Gated PixelCNN (anchor: 15 layers x 128 channels, 28x28): its two stacks
            for stack in ("vertical", "horizontal"):
                taps, T = _masked_taps(3, mask, stack)
                cases.append((f"gated_pixelcnn {stack} k3{mask} B64 C128->256 28x28 {tag}",
                              lambda taps=taps, T=T, dtype=dtype, p=precision: _tap_conv(64, 28, 28, 128, 256, taps,
                                                                                         T, dtype, p)))
        # PixelCNN (defaults: 64 channels, 7x7 'A' input on grey / RGB images, 1x1 and 3x3 'B')
        for c_img in (1, 3):
            taps, T = _masked_taps(7, "A", "raster")
            cases.append((f"pixelcnn input k7A C{c_img}->128 28x28 {tag}",
                          lambda taps=taps, T=T, c=c_img, dtype=dtype, p=precision: _tap_conv(16, 28, 28, c, 128, taps,
                                                                                              T, dtype, p)))
        taps1, _ = _masked_taps(1, "B", "raster")
        taps3, T3 = _masked_taps(3, "B", "raster")
        cases.append((f"pixelcnn 1x1 / 3x3 'B' C64/128 28x28 {tag}",
                      lambda dtype=dtype, p=precision: (_tap_conv(16, 28, 28, 128, 64, taps1, 1, dtype, p),
                                                        _tap_conv(16, 28, 28, 64, 64, taps3, T3, dtype, p),
                                                        _tap_conv(16, 28, 28, 128, 768, taps1, 1, dtype, p))))
        # causal conv1d: the benchmark (k=2, B16 C256 T16384, dilations 1..512) and WaveNet's
        # dilated convs (R 64 / 128 -> 2R, k = 2 / 3), sequences of any length
        for d in (1, 2, 16):            # Triton specialises ints equal to 1 and divisible by 16
            cases.append((f"causal_conv1d k2 d{d} B16 C256 T16384 {tag}",
                          lambda d=d, dtype=dtype, p=precision: _tap_conv(16, 1, 16384, 256, 256,
                                                                          Taps(0, 2, 0, 1, d), 2, dtype, p)))
            for R, k in ((64, 2), (64, 3), (128, 2)):
                cases.append((f"wavenet conv R{R} k{k} d{d} B4 T7999 {tag}",
                              lambda d=d, R=R, k=k, dtype=dtype, p=precision: _tap_conv(
                                  4, 1, 7999, R, 2 * R, Taps(0, k, 0, k - 1, d), k, dtype, p)))
    return cases


def gated_pixel_configurations(quick=False):
    """The Gated PixelCNN's fused sampling kernels -- the per-pixel step and the per-row
    vertical stacks -- at the anchor model (15 layers x 128 channels, 28 wide, 256 levels), the
    default (8 x 64) and the demo (5 x 32, 8 wide, 17 levels), exact or TF32 dots, with the
    sampler's layouts (the step draws into a column of the image and embeds into a row of the
    row kernel's input ring)."""
    from fastgen.kernels.gated_pixel_step import gated_pixel_step, gated_vertical_row
    cases = []
    sizes = [(128, 256, 15, 28, 64), (64, 256, 8, 28, 1), (32, 17, 5, 8, 64)] if not quick else [(32, 17, 5, 8, 4)]
    for CH, levels, L, W, B in sizes:
        for precision in ("ieee", "tf32"):
            def step(CH=CH, levels=levels, L=L, W=W, B=B, precision=precision):
                weights = (_t(L, 2, CH, 2 * CH), _t(L, 2 * CH), _t(L, 2 * CH, 2 * CH), _t(L, 2 * CH), _t(L, CH, CH),
                           _t(L, CH), _t(CH, CH), _t(CH), _t(CH, levels), _t(levels), _t(CH), _t(CH))
                image = _t(B, 1, W, W, dtype=torch.long)
                ring = _t(L, B, 2, W + 2, CH)
                gated_pixel_step(_t(L, B, CH), _t(L, B, CH), _t(L, B, W, 2 * CH), _t(L, B, 2 * CH), weights,
                                 _t(B, levels), image[:, 0, 3, 5], ring[0, :, 1, 1:W + 1], 5, 1.0,
                                 2.0 / (levels - 1), precision=precision)

            def row(CH=CH, L=L, W=W, B=B, precision=precision):
                gated_vertical_row(_t(L, B, 2, W + 2, CH), _t(L, B, W, 2 * CH), _t(L, B, 2 * CH),
                                   (_t(L, 6, CH, 2 * CH), _t(L, 2 * CH)), 3, precision=precision)
            cases.append((f"gated_pixel_step CH{CH} levels{levels} L{L} W{W} {precision}", step))
            cases.append((f"gated_vertical_row CH{CH} L{L} W{W} {precision}", row))
    return cases


WAVENETS = [dict(R=64, S=256, K=2), dict(R=64, S=256, K=3), dict(R=128, S=256, K=2)]   # bench: 30 layers, A 256


def _wavenet(R, S, K, dtype, precision, LC, persistent, L=30, cycle=10, A=256, B=16, T=256):
    from fastgen.kernels import wavenet_step as k
    spans = [(1 << (l % cycle)) * (K - 1) for l in range(L)]
    weights = (_t(A, R, dtype=dtype), _t(L, K, R, 2 * R, dtype=dtype), _t(L, 2 * R), _t(L, LC, 2 * R, dtype=dtype),
               _t(L, R, R, dtype=dtype), _t(L, R), _t(L, R, S, dtype=dtype), _t(L, S), _t(S, S, dtype=dtype), _t(S),
               _t(S, A, dtype=dtype), _t(A))
    queue, offsets = _t(sum(spans), B, R, dtype=dtype), _t(L, dtype=torch.int32)
    gterm, scratch, prev = _t(L, B, 2 * R), _t(B, S, dtype=dtype), _t(B, dtype=torch.long)
    if persistent:
        k.wavenet_steps(prev, _t(T, B, dtype=torch.long), queue, offsets, weights, gterm, _t(T, B, LC) if LC else None,
                        _t(T, B, A), scratch, 0, cycle, K, 1.0, precision=precision)
    else:
        k.wavenet_step(prev, _t(B, dtype=torch.long), queue, offsets, weights, gterm, _t(B, LC) if LC else None,
                       _t(B, A), scratch, 5, cycle, K, 1.0, precision=precision)


def wavenet_configurations(quick=False):
    """WaveNet generation, both kernels (one step; persistent over a block of samples): the
    benchmark's three models (30 layers, R 64 / S 256 with k = 2 and 3, R 128), fp32 (exact
    and TF32 dots), fp16 and bf16 matrices; the first model also with local conditioning."""
    cases = []
    if quick:
        return [("wavenet_step R16 S32 k2 L4 fp32/ieee", lambda: _wavenet(16, 32, 2, torch.float32, "ieee", 0, False,
                                                                        L=4, cycle=2, A=16))]
    for i, model in enumerate(WAVENETS):
        for dtype, precision in PRECISIONS:
            for LC in ((0, 64) if i == 0 and dtype == torch.float32 else (0,)):
                for persistent in (False, True):
                    name = "wavenet_steps" if persistent else "wavenet_step"
                    cases.append((f"{name} R{model['R']} S{model['S']} k{model['K']} L30 LC{LC} "
                                  f"{_NAMES[dtype]}/{precision}",
                                  lambda m=model, d=dtype, p=precision, lc=LC, ps=persistent: _wavenet(
                                      m["R"], m["S"], m["K"], d, p, lc, ps)))
    return cases


def _resnet_at(B, C, NP, kw, n_aux, cond, dtype, precision):
    from fastgen.kernels.pixelcnnpp_resnet import resnet_at
    H = W = 32
    maps = [_t(B, C, H + 1, W + 2, dtype=dtype) for _ in range(2 + n_aux + 1)]
    x, mid, out, aux = maps[0], maps[1], maps[2], maps[3:3 + n_aux]
    A = n_aux * C
    resnet_at(x, aux, mid, out, _t(2 * kw, 2 * C, C), _t(C), _t(2 * A, C) if n_aux else None, _t(C) if n_aux else None,
              _t(2 * kw, 2 * C, 2 * C), _t(2 * C), _t(B, 2 * C) if cond else None, 7, 0, NP, 1, precision=precision)


def pixelcnnpp_configurations(quick=False):
    """PixelCNN++'s GatedResnet step (``resnet_at``): the paper's CIFAR model (160 channels), a
    down-shifted row of the u stream (2x3 window, 32 positions) and a down-right-shifted pixel of
    the ul stream (2x2, one position), with 0, 1 or 2 aux maps, with and without class
    conditioning; fp32 weights, maps fp32 / bf16 / fp16; at batch 1 (the sampler's launch
    budget) and 16.  A ul pixel is the one-launch ``resnet_fused_kernel``, a u row conv1 +
    conv2/gate."""
    if quick:
        return [("pixelcnnpp_resnet_at C16 B2 pixel k2x2 aux1 fp32/ieee (one launch)",
                 lambda: _resnet_at(2, 16, 1, 2, 1, False, torch.float32, "ieee")),
                ("pixelcnnpp_resnet_at C16 B2 row k2x3 aux1 fp32/ieee (two launches)",
                 lambda: _resnet_at(2, 16, 4, 3, 1, False, torch.float32, "ieee"))]
    cases = []
    for dtype, precision in PRECISIONS:
        for B in (1, 16):
            for NP, kw, stream in ((32, 3, "u row"), (1, 2, "ul pixel")):
                for n_aux in (0, 1, 2):
                    for cond in (False, True):
                        cases.append((f"pixelcnnpp_resnet_at C160 B{B} {stream} aux{n_aux}{' cond' if cond else ''} "
                                      f"{_NAMES[dtype]}/{precision}",
                                      lambda B=B, NP=NP, kw=kw, a=n_aux, c=cond, d=dtype, p=precision: _resnet_at(
                                          B, 160, NP, kw, a, c, d, p)))
    return cases


def pixelcnnpp_mixture_configurations(quick=False):
    """PixelCNN++'s mixture draw (one pixel's colour channels in one launch): the paper's CIFAR
    head (RGB, 256 levels, 10 logistics) and grey images, writing into the image's pixel, and the
    widest mixture tile the op sends to the kernel (64 logistics); and the draw with the head
    fused in (``pixelcnnpp_head_draw``: 160 features, batch 1 and 16)."""
    from fastgen.kernels.pixelcnnpp_mixture import mixture_draw
    sizes = [(3, 256, 10, 16), (1, 256, 10, 16), (1, 256, 5, 64), (3, 256, 64, 16)] if not quick else [(3, 16, 2, 2)]
    cases = []
    for C, levels, nr_mix, B in sizes:
        def draw(C=C, levels=levels, nr_mix=nr_mix, B=B):
            image, image_scaled = _t(B, C, 32, 32, dtype=torch.long), _t(B, C, 32, 32)
            params = nr_mix * (1 + 3 * C) if C > 1 else 3 * nr_mix
            mixture_draw(_t(B, params), _t(B, C, levels), _t(levels), image[:, :, 4, 7], image_scaled[:, :, 4, 7],
                         nr_mix, 1.0 / (levels - 1), -5.5, 1.0)
        cases.append((f"mixture_draw C{C} levels{levels} nr_mix{nr_mix}", draw))
    # with the head fused in (pixelcnnpp_head_draw): 160 features of the last ul map's pixel
    for C, levels, nr_mix, B in ([(3, 256, 10, 1), (3, 256, 10, 16), (1, 256, 10, 1)] if not quick else [(3, 16, 2, 2)]):
        def head_draw(C=C, levels=levels, nr_mix=nr_mix, B=B, F=160):
            image, image_scaled = _t(B, C, 32, 32, dtype=torch.long), _t(B, C, 32, 32)
            params = nr_mix * (1 + 3 * C) if C > 1 else 3 * nr_mix
            ul = _t(B, F, 33, 34)
            mixture_draw(ul[:, :, 5, 8], _t(B, C, levels), _t(levels), image[:, :, 4, 7], image_scaled[:, :, 4, 7],
                         nr_mix, 1.0 / (levels - 1), -5.5, 1.0, head_w=_t(F, params), head_b=_t(params))
        cases.append((f"mixture_draw with head F160 B{B} C{C} levels{levels} nr_mix{nr_mix}", head_draw))
    return cases


def _diffusion(shape, dtype, prediction="eps", clip=False, guidance=None, noise=0, learned=False, per_sample=False,
               aux=False, keep=False, threshold=False):
    from fastgen.kernels import diffusion_step as k
    x = _t(*shape, dtype=dtype)
    out = _t(2 * shape[0] if guidance is not None else shape[0], 2 * shape[1] if learned else shape[1], *shape[2:],
             dtype=dtype)
    sigma = 0.0 if noise == 0 and not per_sample else 0.5
    k.diffusion_step(x, out, _t(*shape, dtype=dtype) if noise == 1 else None, _t(*shape, dtype=dtype),
                     (0.5, 0.8, 1.0, 0.1, 0.2, sigma, 0.3), prediction, clip, guidance, seed=3, offset=7,
                     learned_variance=(-3.0, -2.0) if learned else None,
                     threshold_scale=_t(shape[0]) if threshold else None, aux=_t(*shape, dtype=dtype) if aux else None,
                     per_sample=_t(shape[0], k.COEFFICIENTS) if per_sample else None,
                     kept=_t(*shape, dtype=dtype) if keep else None, keep=(1.0, 0.0))


def diffusion_configurations(quick=False):
    """The fused diffusion step and the corrector's norms at batch 64, 3x64x64 (the benchmark)
    and the 8x8 demo.  The step's eight switches make 1152 variants, of which the samplers use
    a few: each sampler's combination (fastgen.sampling.diffusion), every value of every switch
    at least once, and everything on at once (the most registers), in fp32, bf16 and fp16."""
    from fastgen.kernels import diffusion_step as k
    if quick:
        return [("diffusion_step ddpm 4x3x8x8 fp32", lambda: _diffusion((4, 3, 8, 8), torch.float32, noise=1))]
    combos = {
        "ddpm/ddim eps noise": dict(noise=1), "ddpm philox": dict(noise=2), "ddim eta=0": dict(),
        "x0 (euler, heun keep)": dict(prediction="x0", keep=True), "heun correction": dict(prediction="x0", aux=True),
        "dpm++2m": dict(aux=True, keep=True), "v clip": dict(prediction="v", clip=True),
        "score langevin/pc": dict(prediction="score", noise=2), "corrector per-sample": dict(
            prediction="score", per_sample=True, noise=1),
        "guided learned variance": dict(guidance=2.0, learned=True, noise=2),
        "dynamic threshold": dict(threshold=True, noise=1),
        "everything on": dict(prediction="score", guidance=1.5, noise=2, learned=True, per_sample=True, aux=True,
                              keep=True, threshold=True),
    }
    cases = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for name, combo in combos.items():
            if dtype != torch.float32 and name not in ("ddpm/ddim eps noise", "ddpm philox", "everything on"):
                continue
            cases.append((f"diffusion_step {name} B64 3x64x64 {_NAMES[dtype]}",
                          lambda c=combo, d=dtype: _diffusion((64, 3, 64, 64), d, **c)))
    for shape in ((64, 3, 64, 64), (16, 1, 8, 8)):
        for guided in (False, True):
            for noise in (True, False):
                def norms(shape=shape, guided=guided, noise=noise):
                    size = math.prod(shape[1:])
                    block, blocks = k.norms_blocks(size)
                    k.score_noise_norms(_t(2 * shape[0] if guided else shape[0], *shape[1:]),
                                        _t(*shape) if noise else None, _t(shape[0], blocks, 2), size,
                                        1.5 if guided else None, seed=1, offset=2)
                cases.append((f"score_noise_norms B{shape[0]} {'x'.join(map(str, shape[1:]))}"
                              f"{' guided' if guided else ''} {'noise' if noise else 'philox'}", norms))
    return cases


def flow_coupling_configurations(quick=False):
    """The coupling transform, forward and backward, at Glow's shapes (B64: C48 32x32 and C96
    16x16, the coupled half being half the channels, a channel slice of the step's input) and
    RealNVP's checkerboard (B64, C6 = an x_b of 3 channels, 32x32): every scale and direction in fp32, the Glow scale in
    bf16 and fp16."""
    from fastgen.kernels.flow_coupling import BLOCK, coupling_backward, coupling_forward
    sizes = [(64, 48, 32, 32), (64, 96, 16, 16)] if not quick else [(2, 4, 4, 4)]
    cases = []

    def both(B, C, H, W, scale, checker, inverse, dtype):
        n = (C // 2) * H * W
        x = _t(B, C * H * W, dtype=dtype)[:, n:]            # the second half of the step's input
        h = _t(B, (n if scale == "additive" else 2 * n), dtype=dtype)
        y, grad = _t(B, n, dtype=dtype), _t(B, n, dtype=dtype)
        coupling_forward(x, h, y, _t(B, -(-n // BLOCK)), scale, checker, inverse, H * W, W)
        coupling_backward(x, h, grad, _t(B), _t(B, n, dtype=dtype), _t(*h.shape, dtype=dtype), scale, checker,
                          inverse, H * W, W)

    for B, C, H, W in sizes:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for scale in ("sigmoid", "exp_tanh", "additive"):
                if dtype != torch.float32 and scale != "sigmoid":
                    continue
                for inverse in (False, True):
                    cases.append((f"coupling {scale}{' inverse' if inverse else ''} B{B} C{C} {H}x{W} {_NAMES[dtype]}",
                                  lambda a=(B, C, H, W, scale, -1, inverse, dtype): both(*a)))
        if quick:
            break
    if not quick:
        for scale in ("exp_tanh", "additive"):
            for parity in (0, 1):
                cases.append((f"coupling {scale} checkerboard {parity} B64 C6 32x32 fp32",
                              lambda a=(64, 6, 32, 32, scale, parity, False, torch.float32): both(*a)))
    return cases


def _block_local(B, H, grid, block, memory, D, dtype, precision, decode=True):
    """Forward, backward (delta, dK/dV, dQ) and decode of block-local attention as the op lays
    them out: q, k, v [B, H, N, D] (SDPA's layout), out/grads contiguous, fp32 statistics."""
    from fastgen.kernels import block_local_attention as k
    N = math.prod(grid)
    q, out, lse = _t(B, H, N, D, dtype=dtype), _t(B, H, N, D, dtype=dtype), _t(B, H, N)
    k.block_local_forward(q, q, q, out, lse, grid, block, True, memory or 0, D ** -0.5, precision)
    k.block_local_backward(q, q, q, out, _t(B, H, N, D, dtype=dtype), lse, _t(B, H, N), _t(B, H, N, D, dtype=dtype),
                           _t(B, H, N, D, dtype=dtype), _t(B, H, N, D, dtype=dtype), grid, block, True, memory or 0,
                           D ** -0.5, precision)
    if decode:
        k.block_local_decode(_t(B, H, 1, D, dtype=dtype), q, q, _t(B, H, 1, D, dtype=dtype), N - 1, grid, block,
                             memory or 0, D ** -0.5)


def _sparse(B, H, N, pattern, width, D, dtype, precision):
    from fastgen.kernels import block_local_attention as k
    q, out, lse = _t(B, H, N, D, dtype=dtype), _t(B, H, N, D, dtype=dtype), _t(B, H, N)
    k.sparse_forward(q, q, q, out, lse, pattern, width, 1, True, D ** -0.5, precision)
    k.sparse_backward(q, q, q, out, _t(B, H, N, D, dtype=dtype), lse, _t(B, H, N), _t(B, H, N, D, dtype=dtype),
                      _t(B, H, N, D, dtype=dtype), _t(B, H, N, D, dtype=dtype), pattern, width, 1, True, D ** -0.5,
                      precision)


def block_local_attention_configurations(quick=False):
    """Block-local attention (forward, backward, decode) at the issue's benchmark shapes, 8 heads:
    video 16x32x32 tokens in 4x8x8 blocks (batch 1), a 64x64 image in 8x8 blocks with the block
    above as memory (batch 4), 65,536 tokens in 256-token blocks with the previous block (batch
    1) -- bf16 at head dims 64 (and 32 / 128 for the video), the video also fp32 (exact and
    TF32 dots); Sparse Transformer strided (l = 128) and fixed (l = 128) over 16,384 tokens."""
    if quick:
        return [("block_local_attention 8x8 blocks 4x4 mem1 D32 fp32/ieee",
                 lambda: _block_local(1, 2, (8, 8), (4, 4), 1, 32, torch.float32, "ieee"))]
    video, image, seq = ((16, 32, 32), (4, 8, 8), None, 1), ((64, 64), (8, 8), 1, 4), ((65536,), (256,), 1, 1)
    cases = []
    for name, (grid, block, memory, B) in (("video 16x32x32 blocks 4x8x8", video), ("image 64x64 blocks 8x8 mem1", image),
                                           ("1-D 65536 blocks 256 mem1", seq)):
        variants = [(64, torch.bfloat16, "tf32")]
        if grid == video[0]:
            variants += [(32, torch.bfloat16, "tf32"), (128, torch.bfloat16, "tf32"), (64, torch.float32, "ieee"),
                         (64, torch.float32, "tf32")]
        for D, dtype, precision in variants:
            cases.append((f"block_local_attention {name} B{B} H8 D{D} {_NAMES[dtype]}/{precision}",
                          lambda a=(B, 8, grid, block, memory, D, dtype, precision): _block_local(*a)))
    for pattern in ("strided", "fixed"):
        cases.append((f"sparse_attention {pattern} l128 N16384 H8 D64 bf16",
                      lambda p=pattern: _sparse(1, 8, 16384, p, 128, 64, torch.bfloat16, "tf32")))
    return cases


def vector_quantize_configurations(quick=False):
    """The VQ search (code norms + the tiled nearest-code kernel) at the benchmark's shapes, N =
    65,536 rows (a B64 32x32 latent map): D=64 with K=512 and K=8,192 in fp32 (exact and TF32) and
    bf16 / fp16, D=256 with K=8,192 (every dtype), and D=8 / D=128 (the other search tile
    shapes) -- and the EMA update kernels (decay, atomic scatter, finalize) at K=512 and 8,192,
    D=64 and 256, fp32 and bf16 z."""
    from fastgen.kernels.vector_quantize import code_norms, ema_update, nearest_codes
    cases = []

    def search(N, K, D, dtype, precision):
        z, c = _t(N, D, dtype=dtype), _t(K, D, dtype=dtype)
        norms = _t(K)
        code_norms(c, norms)
        nearest_codes(z, c, norms, _t(N, dtype=torch.int64), precision)

    def ema(N, K, D, dtype):
        ema_update(_t(K), _t(K, D), _t(N, D, dtype=dtype), _t(N, dtype=torch.int64), 0.99, 1e-5, _t(K, D))

    if quick:
        return [("vq search N64 K32 D16 fp32/ieee", lambda: search(64, 32, 16, torch.float32, "ieee")),
                ("vq ema N64 K32 D16 fp32", lambda: ema(64, 32, 16, torch.float32))]
    N = 65536
    shapes = [(512, 64), (8192, 64), (8192, 256), (512, 8), (512, 128)]
    for K, D in shapes:
        for dtype, precision in PRECISIONS:
            cases.append((f"vq search N{N} K{K} D{D} {_NAMES[dtype]}/{precision}",
                          lambda a=(N, K, D, dtype, precision): search(*a)))
    for K in (512, 8192):
        for D in (64, 256):
            for dtype in (torch.float32, torch.bfloat16):
                cases.append((f"vq ema N{N} K{K} D{D} {_NAMES[dtype]}", lambda a=(N, K, D, dtype): ema(*a)))
    return cases


def stylegan_configurations(quick=False):
    """StyleGAN2's ops at StyleGAN2 shapes (batch 32, 512 channels): bias_act forward and
    backward (first and second order; lrelu, linear and swish with clamp 256) on [32, 512, 64,
    64]; upfirdn2d with the [1, 3, 3, 1] filter (4x4, and separable) up 2 (32^2 -> 64^2, gain 4),
    down 2 (64^2 -> 32^2) and their gradients (each the other's arithmetic); the modulated conv
    3x3 at 16^2, 32^2, 64^2: forward, the upsampling transposed conv (U=2), the downsampling
    strided conv (S=2), their input gradients (with the styles' partial sums) and weight
    gradients -- fp32 (exact and TF32), bf16 and fp16."""
    from fastgen.kernels.stylegan import (bias_act_backward, bias_act_forward, conv_launch, upfirdn2d_launch,
                                          wgrad_launch, wgrad_splits, wgrad_tiles)
    B, C, R = (32, 512, 64) if not quick else (2, 16, 8)
    cases = []

    def bias_act(act, dtype):
        x = _t(B, C, R, R, dtype=dtype)
        bias_act_forward(x, _t(C, dtype=dtype), _t(B, C, R, R, dtype=dtype), act, 0.2, 1.4, 256.0, C, R * R)
        for order in (1, 2):
            bias_act_backward(x, x if order == 2 else None, x, _t(C, dtype=dtype) if act == "swish" else None,
                              _t(B, C, R, R, dtype=dtype), act, 0.2, 1.4, 256.0, C, R * R, order)

    def fir(separable, dtype):
        f = _t(4) if separable else _t(4, 4)
        lo, hi = R // 2, R
        upfirdn2d_launch(_t(B, C, lo, lo, dtype=dtype), f, _t(B, C, hi, hi, dtype=dtype), (2, 2), (1, 1),
                         (2, 1, 2, 1), False, 4.0)                                     # upsample2d
        upfirdn2d_launch(_t(B, C, hi, hi, dtype=dtype), f, _t(B, C, lo, lo, dtype=dtype), (1, 1), (2, 2),
                         (1, 1, 1, 1), False, 1.0)                                     # downsample2d / its gradient

    def conv(H, dtype, precision, up, stride):
        """The conv core as modulated_conv2d launches it: forward, input and weight gradient."""
        K = 3
        if up > 1:
            OH = H * up + 3 + 2 - K + 1                 # transposed conv before the FIR (padding 1 + filter)
            py = 3
        elif stride > 1:
            OH = (H - K) // stride + 1                  # H: the FIR-filtered, padded input (64 -> 65)
            py = 0
        else:
            OH, py = H, 1
        x, y = _t(B, C, H, H, dtype=dtype), _t(B, C, OH, OH, dtype=dtype)
        s, d = _t(B, C), _t(B, C)
        wk = _t(K, K, C, C, dtype=dtype)
        conv_launch(x, wk, s, d, y, None, up, stride, py, py, precision)
        conv_launch(y, wk, d, s, _t(B, C, H, H, dtype=dtype), x, stride, up, K - 1 - py, K - 1 - py, precision)
        block_ci, block_co, block_k = wgrad_tiles(C, C, precision, x.element_size())
        k_total = B * (-(-OH // up)) ** 2
        split, k_per_split = wgrad_splits(C, C, K * K, k_total, block_ci, block_co, block_k)
        wgrad_launch(x, y, s, d, _t(split, K, K, C, C), up, stride, py, py, K, K, precision, split, k_per_split)

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for act in (("lrelu", "linear", "swish") if dtype == torch.float32 else ("lrelu",)):
            cases.append((f"bias_act {act} clamp B{B} C{C} {R}x{R} fwd+bwd {_NAMES[dtype]}",
                          lambda a=act, d=dtype: bias_act(a, d)))
        for separable in (False, True):
            cases.append((f"upfirdn2d {'[4]' if separable else '4x4'} up2/down2 B{B} C{C} {R // 2}<->{R} "
                          f"{_NAMES[dtype]}", lambda sp=separable, d=dtype: fir(sp, d)))
    for dtype, precision in PRECISIONS:
        for H in ((16, 32, 64) if not quick else (R,)):
            for up, stride, what in ((1, 1, "3x3"), (2, 1, "up2 transposed 3x3"), (1, 2, "down2 strided 3x3")):
                size = H if up == 1 and stride == 1 else (H // 2 if up > 1 else H + 1)
                cases.append((f"modulated conv {what} B{B} C{C} {H}x{H} fwd+dx+dw {_NAMES[dtype]}/{precision}",
                              lambda a=(size, dtype, precision, up, stride): conv(*a)))
        if quick:
            break
    return cases


FAMILIES = {
    "conv": conv_configurations,
    "gated_pixel_step": gated_pixel_configurations,
    "wavenet_step": wavenet_configurations,
    "pixelcnnpp_resnet": pixelcnnpp_configurations,
    "pixelcnnpp_mixture": pixelcnnpp_mixture_configurations,
    "diffusion_step": diffusion_configurations,
    "flow_coupling": flow_coupling_configurations,
    "block_local_attention": block_local_attention_configurations,
    "vector_quantize": vector_quantize_configurations,
    "stylegan": stylegan_configurations,
}


def configurations(quick=False, families=None, full=False):
    """[(family, label, thunk)]: every configuration the gate compiles (thunks launch through
    the kernel wrappers and must run under ``observe_launches(..., execute=False)``)."""
    out = []
    for family, make in FAMILIES.items():
        if families is None or family in families:
            cases = make(quick, full) if family == "conv" else make(quick)
            out += [(family, label, thunk) for label, thunk in cases]
    return out


@dataclasses.dataclass
class Job:
    """One kernel at one configuration (one autotune config), before specialisation."""
    family: str
    label: str
    kernel: object            # the JITFunction
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int


def record(quick=False, families=None, full=False):
    """Run every configuration with launches recorded, not executed: [Job]."""
    from fastgen.kernels._launch import observe_launches
    jobs = []
    for family, label, thunk in configurations(quick, families, full):
        seen = []
        with observe_launches(seen.append, execute=False):
            thunk()
        for info in seen:
            configs = info.configs if info.configs is not None else [None]
            if quick:
                configs = configs[:1]
            for config in configs:
                constexprs, warps, stages = dict(info.constexprs), info.num_warps, info.num_stages
                if config is not None:
                    constexprs.update(config.kwargs)
                    warps, stages = config.num_warps, config.num_stages
                jobs.append(Job(family, label, info.kernel, info.args, constexprs, warps, stages))
    return jobs


# ------------------------------------------------------------------------------ compiling

def _kernel_name(fn):
    return fn.fn.__name__             # JITFunction.fn: the Python function


def _kernel_module(fn):
    return fn.fn.__module__


def specialise(fn, args, constexprs, num_warps, num_stages, cc):
    """What Triton's JITFunction.run compiles for these arguments on target sm_<cc>:
    (target, signature, constexprs, attrs, options as a dict)."""
    target, backend, binder = _binder(fn, cc)
    kwargs = dict(constexprs, num_warps=num_warps, num_stages=num_stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # triton 3.9's notice about its future fp-fusion default
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, consts, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return target, signature, consts, attrs, dict(options.__dict__)


_BINDERS = {}


def _binder(fn, cc):
    if (fn, cc) not in _BINDERS:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
        target = GPUTarget("cuda", cc, 32)
        backend = make_backend(target)
        _BINDERS[fn, cc] = target, backend, create_function_from_signature(fn.signature, fn.params, backend)
    return _BINDERS[fn, cc]


def _key(fn, spec):
    target, signature, consts, attrs, options = spec
    return repr((_kernel_module(fn), _kernel_name(fn), target.arch, sorted(signature.items()), sorted(consts.items()),
                 sorted(attrs.items()), sorted(options.items())))


def tool(name):
    """Path of a CUDA tool Triton ships (cuobjdump, ptxas)."""
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else name


_RESOURCE = re.compile(r"Function ([^\s:]+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_SPILLS = re.compile(r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                     r"(\d+) bytes spill loads")


def parse_resource_usage(text):
    """``cuobjdump --dump-resource-usage`` output -> {function: dict(registers, stack, shared, local)}."""
    return {m[1]: dict(registers=int(m[2]), stack=int(m[3]), shared=int(m[4]), local=int(m[5]))
            for m in _RESOURCE.finditer(text)}


def parse_ptxas_log(text):
    """ptxas -v log -> {function: dict(stack_frame, spill_stores, spill_loads)}."""
    return {m[1]: dict(stack_frame=int(m[2]), spill_stores=int(m[3]), spill_loads=int(m[4]))
            for m in _SPILLS.finditer(text)}


def resource_usage(cubin):
    """Registers, stack, static shared and local memory of every function in a cubin (bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return parse_resource_usage(text)


def _worker_init(cache_dir):
    warnings.simplefilter("ignore")     # triton 3.9's fp-fusion notice, once per worker
    _set_knobs(cache_dir)


def _set_knobs(cache_dir):
    import triton
    triton.knobs.cache.dir = cache_dir
    triton.knobs.compilation.always_compile = True     # a fresh ptxas run (and its log) every time
    triton.knobs.nvidia.dump_ptxas_log = True          # printed to stdout: captured per compile


def compile_one(module, name, target, signature, consts, attrs, options):
    """Compile one specialised kernel (``module.name``, a JIT function or an autotuner) in this
    process: a result dict, never an exception."""
    import importlib

    from triton.runtime.jit import JITFunction
    fn = getattr(importlib.import_module(module), name)
    return _compile(fn if isinstance(fn, JITFunction) else fn.fn, target, signature, consts, attrs, options)


def _compile(fn, target, signature, consts, attrs, options):
    import triton
    from triton.compiler import ASTSource
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(fn, signature, consts, attrs), target=target, options=options)
        usage = resource_usage(kernel.asm["cubin"])
        mine = usage.get(kernel.metadata.name) or next(iter(usage.values()))
        ptxas = parse_ptxas_log(log.getvalue())
        spills = ptxas.get(kernel.metadata.name) or next(iter(ptxas.values()), None)
        return dict(error=None, registers=mine["registers"], stack=mine["stack"], local=mine["local"],
                    static_shared=mine["shared"], dynamic_shared=int(kernel.metadata.shared),
                    spill_stores=None if spills is None else spills["spill_stores"],
                    spill_loads=None if spills is None else spills["spill_loads"],
                    seconds=time.perf_counter() - start)
    except Exception as error:          # noqa: BLE001 -- a compile error is a result of the gate
        text = f"{type(error).__name__}: {error}"
        return dict(error=text[-2000:], seconds=time.perf_counter() - start)


def _finish(row, arch):
    """Add total shared memory, occupancy and the verdict to a compiled row."""
    if not row["error"]:
        row["shared"] = row["static_shared"] + row["dynamic_shared"]
        row["warps_per_sm"], row["occupancy_limit"] = occupancy(row["registers"], row["shared"], row["num_warps"],
                                                                arch)
        row["occupancy_pct"] = round(100 * row["warps_per_sm"] / MAX_WARPS_PER_SM, 1)
    row["failures"] = verdict(row, arch)
    return row


def check_kernel(fn, args, constexprs, num_warps=4, num_stages=3, cc=90):
    """Compile one JIT function for sm_<cc> in this process, as the gate does, and judge it:
    a row (registers, spills, shared, occupancy, ``failures``).  The process must not run
    Triton's interpreter.  (For tests and for checking a kernel by hand.)"""
    import triton
    cache = tempfile.mkdtemp(prefix="fastgen-compile-gate-")
    knobs = triton.knobs
    saved = knobs.cache.dir, knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    try:
        _set_knobs(cache)
        row = _compile(fn, *specialise(fn, args, constexprs, num_warps, num_stages, cc))
    finally:
        knobs.cache.dir, knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
        import shutil
        shutil.rmtree(cache, ignore_errors=True)
    row.update(kernel=_kernel_name(fn), arch=ARCHS[cc].name, num_warps=num_warps, num_stages=num_stages)
    return _finish(row, ARCHS[cc])


def occupancy(registers, shared, warps, arch):
    """(resident warps per SM, what limits it) for blocks of ``warps`` warps using
    ``registers`` per thread and ``shared`` bytes of shared memory."""
    per_warp = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    limits = {"warps": MAX_WARPS_PER_SM // warps, "blocks": MAX_BLOCKS_PER_SM,   # (ties: the hardware maxima)
              "registers": (REGISTERS_PER_SM // per_warp) // warps}
    if shared:
        limits["shared memory"] = arch.shared_per_sm // (shared + RESERVED_SHARED_PER_BLOCK)
    limiter = min(limits, key=limits.get)
    return limits[limiter] * warps, limiter


def verdict(row, arch):
    """Why a compiled configuration fails the gate ([] when it passes)."""
    if row["error"]:
        return ["compile error"]
    why = []
    if row["spill_stores"] is None:
        why.append("no ptxas spill report")
    elif row["spill_stores"] or row["spill_loads"]:
        why.append(f"spills ({row['spill_stores']} B stores, {row['spill_loads']} B loads)")
    if row["shared"] > arch.shared_per_block:
        why.append(f"shared memory {row['shared']} B > {arch.shared_per_block} B per block")
    return why


def _config_text(job):
    skip = ("PRECISION",)
    parts = [f"{k}={v}" for k, v in sorted(job.constexprs.items()) if k not in skip]
    return " ".join(parts + [f"w{job.num_warps}", f"s{job.num_stages}"])


def _dtype_text(signature):
    ptrs = [v[1:] for v in signature.values() if isinstance(v, str) and v.startswith("*")]
    return max(set(ptrs), key=ptrs.count) if ptrs else ""


def run(archs=(80, 90), quick=False, jobs=None, families=None, full=False, progress=print):
    """Record, specialise, compile and check: (rows, seconds)."""
    start = time.perf_counter()
    recorded = record(quick, families, full)
    unique = {}                        # key -> row
    for job in recorded:
        for cc in archs:
            spec = specialise(job.kernel, job.args, job.constexprs, job.num_warps, job.num_stages, cc)
            key = _key(job.kernel, spec)
            row = unique.get(key)
            if row is None:
                row = unique[key] = dict(
                    kernel=_kernel_name(job.kernel), family=job.family, arch=ARCHS[cc].name,
                    config=_config_text(job), dtype=_dtype_text(spec[1]), precision=job.constexprs.get("PRECISION", ""),
                    num_warps=job.num_warps, num_stages=job.num_stages, used_by=[], _spec=spec,
                    _module=_kernel_module(job.kernel))
            if job.label not in row["used_by"]:
                row["used_by"].append(job.label)
    rows = list(unique.values())
    progress(f"compile gate: {len(recorded)} launches x {len(archs)} archs -> {len(rows)} distinct compiles "
             f"(triton {_triton_version()})")
    import concurrent.futures
    import multiprocessing
    cache = tempfile.mkdtemp(prefix="fastgen-compile-gate-")
    workers = jobs or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(cache,)) as pool:
        futures = [pool.submit(compile_one, row["_module"], row["kernel"], *row["_spec"]) for row in rows]
        for n, (row, future) in enumerate(zip(rows, futures), 1):
            row.update(future.result())
            _finish(row, ARCHS[int(row["arch"][3:])])
            del row["_spec"], row["_module"]
            if row["failures"] or n % 25 == 0 or n == len(rows):
                progress(f"  [{n}/{len(rows)}] {row['kernel']} {row['arch']} {row['config']}: "
                         + (", ".join(row["failures"]) or f"{row['registers']} regs"))
    import shutil
    shutil.rmtree(cache, ignore_errors=True)
    return rows, time.perf_counter() - start


def _triton_version():
    import triton
    return triton.__version__


# ------------------------------------------------------------------------- known failures

KNOWN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), RESULTS, "known_failures.json")


def identity(row):
    """What a known failure is matched on: kernel, arch, dtype and precision, configuration."""
    return f"{row['kernel']} | {row['arch']} | {row['dtype']} {row['precision']}".rstrip() + f" | {row['config']}"


def kinds(row):
    """The kinds of a row's failures: 'compile error', 'spills', 'shared memory', ..."""
    return sorted({"spills" if f.startswith("spills") else "shared memory" if f.startswith("shared memory") else f
                   for f in row["failures"]})


def load_known(path=KNOWN):
    """{identity: [kinds]} of the failures already reported (a ratchet: the gate fails on any
    other failure, so nothing gets worse while these are fixed); {} without the file."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)["failures"]


def mark_known(rows, known):
    """Set row['known'] for failing rows that the list already holds with the same kinds."""
    for row in rows:
        row["known"] = bool(row["failures"]) and set(kinds(row)) <= set(known.get(identity(row), ()))
    return [r for r in rows if r["failures"] and not r["known"]]


def write_known(rows, path, previous):
    """Record the current failures (merged with ``previous``: other Triton versions' runs)."""
    failures = dict(previous)
    for row in rows:
        if row["failures"]:
            failures[identity(row)] = sorted(set(failures.get(identity(row), ())) | set(kinds(row)))
    with open(path, "w") as f:
        json.dump({"note": "Failures the compile gate reported when it was introduced (spills, shared memory over "
                           "the per-block limit). The gate fails on any failure not listed here with the same "
                           "kinds; fix these and remove them (fastgen compile-gate --update-known rewrites it).",
                   "failures": dict(sorted(failures.items()))}, f, indent=1)


# ------------------------------------------------------------------------------- reports

def summary(rows):
    """Per kernel and arch: compiles, max registers, max spill bytes, max stack, max shared,
    min occupancy, failures."""
    out = {}
    for row in rows:
        s = out.setdefault((row["kernel"], row["arch"]), dict(kernel=row["kernel"], arch=row["arch"], compiles=0,
                                                              failures=0, max_registers=0, max_spill_bytes=0,
                                                              max_stack=0, max_shared=0, min_warps_per_sm=None))
        s["compiles"] += 1
        s["failures"] += bool(row["failures"])
        if row["error"]:
            continue
        s["max_registers"] = max(s["max_registers"], row["registers"])
        s["max_spill_bytes"] = max(s["max_spill_bytes"], (row["spill_stores"] or 0) + (row["spill_loads"] or 0))
        s["max_stack"] = max(s["max_stack"], row["stack"])
        s["max_shared"] = max(s["max_shared"], row["shared"])
        w = row["warps_per_sm"]
        s["min_warps_per_sm"] = w if s["min_warps_per_sm"] is None else min(s["min_warps_per_sm"], w)
    return list(out.values())


def markdown(rows, seconds, command):
    version = _triton_version()
    failed = [r for r in rows if r["failures"]]
    new = [r for r in failed if not r.get("known")]
    lines = [f"# Compile gate (triton {version})", "",
             f"`{command}`: {len(rows)} distinct compiles in {seconds:.0f} s, "
             f"{len(failed)} failing ({len(failed) - len(new)} of them known: `known_failures.json`, "
             f"{len(new)} new). Generated by `fastgen/compile_gate.py` on a machine without a GPU: registers, "
             "stack, static shared and local memory from `cuobjdump --dump-resource-usage` of each cubin, spill "
             "bytes from ptxas's `-v` log, dynamic shared memory from Triton's metadata. Fails on a compile error, "
             "on any spill, or on shared memory above the per-block limit (sm_80: 166912 B, sm_90: 232448 B). "
             "Occupancy: resident warps per SM (of 64) from registers, shared memory (+1 KiB reserved per block) "
             "and warps per block.", "",
             "## Per kernel", "",
             "| kernel | arch | compiles | failing | max registers | max spill bytes | max stack | max shared (B) "
             "| min warps/SM |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summary(rows):
        lines.append(f"| {s['kernel']} | {s['arch']} | {s['compiles']} | {s['failures']} | {s['max_registers']} | "
                     f"{s['max_spill_bytes']} | {s['max_stack']} | {s['max_shared']} | {s['min_warps_per_sm']} |")
    if failed:
        lines += ["", "## Failing", ""]
        lines += [f"- {'(known) ' if r.get('known') else '**new** '}{r['kernel']} {r['arch']} `{r['config']}` "
                  f"{r['dtype']} {r['precision']}: {', '.join(r['failures'])}"
                  + (f" -- {r['error'][:300]}" if r["error"] else "") for r in failed]
    lines += ["", "## Every compile", "",
              "| kernel | configuration | dtype | arch | registers | spill bytes (st/ld) | stack | local | shared (B) "
              "| warps | warps/SM (occupancy, limit) | used by |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        used = "; ".join(r["used_by"][:3]) + (f" (+{len(r['used_by']) - 3})" if len(r["used_by"]) > 3 else "")
        if r["error"]:
            lines.append(f"| {r['kernel']} | `{r['config']}` | {r['dtype']} | {r['arch']} | compile error | | | | | "
                         f"{r['num_warps']} | | {used} |")
            continue
        lines.append(f"| {r['kernel']} | `{r['config']}` | {r['dtype']} {r['precision']} | {r['arch']} | "
                     f"{r['registers']} | {_spill_text(r)} | {r['stack']} | {r['local']} | "
                     f"{r['shared']} | {r['num_warps']} | {r['warps_per_sm']} ({r['occupancy_pct']}%, "
                     f"{r['occupancy_limit']}) | {used} |")
    return "\n".join(lines) + "\n"


def _spill_text(row):
    text = f"{row['spill_stores']}/{row['spill_loads']}"
    return f"**{text}**" if row["spill_stores"] or row["spill_loads"] else text


def write(rows, seconds, out_dir, command):
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"compile_gate_triton-{_triton_version()}")
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, seconds, command))
    with open(stem + ".json", "w") as f:
        json.dump({"triton": _triton_version(), "torch": torch.__version__, "command": command,
                   "seconds": round(seconds, 1), "summary": summary(rows), "compiles": rows}, f, indent=1)
    return stem


def _interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastgen compile-gate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd(parser.parse_args(argv))


def add_arguments(parser):
    parser.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated (default 80,90)")
    parser.add_argument("--out", default=RESULTS, help=f"where the table goes (default {RESULTS}); '' for none")
    parser.add_argument("--quick", action="store_true", help="one small configuration per kernel, first config only")
    parser.add_argument("--full", action="store_true", help="every conv shape too (~2800 compiles; default: what CI runs)")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: CPU count)")
    parser.add_argument("--family", default="", help=f"comma-separated subset of {', '.join(FAMILIES)}")
    parser.add_argument("--known", default=KNOWN, help="the known failures (default: benchmarks/results/compile/"
                        "known_failures.json): only failures not listed there fail the gate; '' for none (strict)")
    parser.add_argument("--update-known", action="store_true", help="add this run's failures to the known list")


def cmd(args):
    try:
        archs = [int(a) for a in args.arch.split(",") if a]
        families = [f for f in args.family.split(",") if f] or None
        if any(a not in ARCHS for a in archs) or (families and any(f not in FAMILIES for f in families)):
            raise ValueError
    except ValueError:
        print(f"--arch takes {', '.join(map(str, ARCHS))}; --family takes {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    if _interpreted():        # the kernels would be interpreter objects: compile in a clean process
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = ["--arch", args.arch, "--out", args.out, "--family", args.family] + (["--quick"] if args.quick else [])
        argv += ["--full"] if args.full else []
        argv += ["--known", args.known] + (["--update-known"] if args.update_known else [])
        argv += ["--jobs", str(args.jobs)] if args.jobs else []
        return subprocess.run([sys.executable, "-m", "fastgen.compile_gate", *argv], env=env).returncode
    command = "fastgen compile-gate " + " ".join(
        [f"--arch {args.arch}"] + (["--quick"] if args.quick else []) + (["--full"] if args.full else [])
        + ([f"--family {args.family}"] if args.family else []))
    rows, seconds = run(archs, args.quick, args.jobs, families, args.full)
    known = load_known(args.known)
    if args.update_known:
        write_known(mark_known(rows, known), args.known or KNOWN, known)
        print(f"wrote {args.known or KNOWN}")
        known = load_known(args.known or KNOWN)
    new = mark_known(rows, known)
    failed = [r for r in rows if r["failures"]]
    if args.out:
        print(f"wrote {write(rows, seconds, args.out, command)}.md / .json")
    for s in summary(rows):
        print(f"  {s['kernel']:<28} {s['arch']}  {s['compiles']:>3} compiles  max {s['max_registers']} regs  "
              f"spills {s['max_spill_bytes']} B  stack {s['max_stack']} B  shared {s['max_shared']} B  "
              f"min {s['min_warps_per_sm']} warps/SM" + (f"  failing: {s['failures']}" if s["failures"] else ""))
    for r in new:
        print(f"NEW FAILURE: {identity(r)}: {', '.join(r['failures'])}" + (f"\n{r['error']}" if r["error"] else ""))
    print(f"compile gate: {len(rows)} compiles in {seconds:.0f} s, {len(failed)} failing, "
          f"{len(failed) - len(new)} of them known ({args.known or 'no list'}), {len(new)} new")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
