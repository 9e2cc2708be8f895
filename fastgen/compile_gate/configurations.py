"""The compile gate's configurations: every kernel launch the library makes, per op family,
at the sizes it runs (``configurations``), recorded without executing (``record``)."""
import dataclasses
import math

import torch


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
    """The fused diffusion step, the corrector's norms and its rows at batch 64, 3x64x64 (the
    benchmark) and the 8x8 demo.  The step's eight switches make 1152 variants, of which the samplers use
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
        for prediction in ("eps", "score"):        # the corrector's rows from the norms' partial sums
            def rows(shape=shape, prediction=prediction):
                blocks = k.norms_blocks(math.prod(shape[1:]))[1]
                k.corrector_coefficients(_t(shape[0], blocks, 2), _t(shape[0], k.COEFFICIENTS), 0.16, 1.0, 0.5,
                                         prediction)
            cases.append((f"corrector_coefficients B{shape[0]} {'x'.join(map(str, shape[1:]))} {prediction}", rows))
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
