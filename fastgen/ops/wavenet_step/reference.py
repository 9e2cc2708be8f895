"""Plain-PyTorch references of the WaveNet sampling steps: the specification of
``wavenet_step`` / ``wavenet_steps`` (the CPU path and the tests call them).

Shape legend: B batch, L layers, k kernel size, R residual channels, S skip channels,
A quantization levels, LC local-conditioning channels (weights: ``WaveNetStepWeights``).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastgen.ops.wavenet_step.bundles import WaveNetStepWeights


def _mm(x, w):
    """x @ w as the fused WaveNet kernels compute it: x rounded to w's dtype (fp32, fp16 or bf16),
    products accumulated in fp32."""
    return x.to(w.dtype).float() @ w.float()


def wavenet_step(prev: Tensor, queue: Tensor, queue_offsets: Tensor, t: int, cycle: int, kernel_size: int,
                 weights: Sequence[Tensor], gterm: Tensor, local_t: Optional[Tensor], gumbel: Tensor,
                 inv_temperature: float) -> Tuple[Tensor, Tensor]:
    """One WaveNet generation step (the math of kernels/wavenet_step.py).

    prev: codes [B] of the previous sample; queue [slots, B, R] holds layer l's past inputs
    in rows queue_offsets[l] .. + d_l (k-1) (slot = time mod span); gterm [L, B, 2R];
    local_t [B, LC] or None; gumbel [B, A]; weights: a ``WaveNetStepWeights`` (or its
    twelve tensors in that order).
    -> (codes [B], pushed [L, B, R] fp32: each layer's input at t, for slot t mod span).

    Precision: the matrices and the queue may be fp16/bf16 (biases, gterm, local, gumbel fp32);
    every matmul rounds its left operand to the weights' dtype and accumulates in fp32, and
    everything else (h, skip, gating, logits, argmax) is fp32.  The queue keeps h rounded to
    its dtype.
    """
    w = WaveNetStepWeights(*weights)
    L, k, R, _ = w.wtap.shape
    h = w.embed[prev].float()
    skip = 0
    pushed = []
    for layer in range(L):
        d = 2 ** (layer % cycle)
        span = d * (k - 1)
        offset = int(queue_offsets[layer])
        z = _mm(h, w.wtap[layer, k - 1]) + w.bconv[layer] + gterm[layer]
        for j in range(k - 1):
            z = z + _mm(queue[offset + (t - (k - 1 - j) * d) % span], w.wtap[layer, j])
        if local_t is not None:
            z = z + _mm(local_t, w.wlc[layer])
        u = torch.tanh(z[:, :R]) * torch.sigmoid(z[:, R:])
        skip = skip + _mm(u, w.wskip[layer]) + w.bskip[layer]
        pushed.append(h)
        h = h + _mm(u, w.wres[layer]) + w.bres[layer]
    logits = _mm(torch.relu(_mm(torch.relu(skip), w.w1) + w.b1), w.w2) + w.b2
    return (logits * inv_temperature + gumbel).argmax(dim=1), torch.stack(pushed)


def wavenet_push(queue: Tensor, pushed: Tensor, queue_offsets: Tensor, t: int, cycle: int,
                 kernel_size: int) -> None:
    """Write ``pushed`` [L, B, R] (from ``wavenet_step`` at time t) into the queue's slots
    t mod span, in place (rounded to the queue's dtype)."""
    for layer in range(pushed.shape[0]):
        span = 2 ** (layer % cycle) * (kernel_size - 1)
        queue[int(queue_offsets[layer]) + t % span] = pushed[layer]


def wavenet_steps(prev: Tensor, queue: Tensor, queue_offsets: Tensor, t0: int, cycle: int, kernel_size: int,
                  weights: Sequence[Tensor], gterm: Tensor, local: Optional[Tensor], gumbel: Tensor,
                  inv_temperature: float) -> Tuple[Tensor, Tensor]:
    """T WaveNet generation steps t0 .. t0+T-1, each drawn code the next step's input (the math
    of the persistent kernel in kernels/wavenet_step.py): ``wavenet_step`` and ``wavenet_push``
    in a loop.  local [T, B, LC] or None, gumbel [T, B, A]; the other arguments as in
    ``wavenet_step``.  -> (codes [T, B], the queue after the T steps; the input is not changed).
    """
    queue = queue.clone()
    codes = []
    for i in range(gumbel.shape[0]):
        prev, pushed = wavenet_step(prev, queue, queue_offsets, t0 + i, cycle, kernel_size, weights, gterm,
                                    None if local is None else local[i], gumbel[i], inv_temperature)
        wavenet_push(queue, pushed, queue_offsets, t0 + i, cycle, kernel_size)
        codes.append(prev)
    return torch.stack(codes), queue
