"""Plain-PyTorch references of the WaveNet sampling steps: the specification of
``wavenet_step`` / ``wavenet_steps`` (the CPU path and the tests call them).
"""
import torch


def _mm(x, w):
    """x @ w as the fused WaveNet kernels compute it: x rounded to w's dtype (fp32, fp16 or bf16),
    products accumulated in fp32."""
    return x.to(w.dtype).float() @ w.float()


def wavenet_step(prev, queue, queue_offsets, t, cycle, kernel_size, weights, gterm, local_t, gumbel,
                 inv_temperature):
    """One WaveNet generation step (the math of kernels/wavenet_step.py).

    prev: codes [B] of the previous sample; queue [slots, B, R] holds layer l's past inputs
    in rows queue_offsets[l] .. + d_l (k-1) (slot = time mod span); gterm [L, B, 2R];
    local_t [B, LC] or None; weights = (embed [A, R], wtap [L, k, R, 2R], bconv [L, 2R],
    wlc [L, LC, 2R], wres [L, R, R], bres, wskip [L, R, S], bskip, w1 [S, S], b1, w2 [S, A], b2).
    -> (codes [B], pushed [L, B, R] fp32: each layer's input at t, for slot t mod span).

    Precision: the matrices and the queue may be fp16/bf16 (biases, gterm, local, gumbel fp32);
    every matmul rounds its left operand to the weights' dtype and accumulates in fp32, and
    everything else (h, skip, gating, logits, argmax) is fp32.  The queue keeps h rounded to
    its dtype.
    """
    embed, wtap, bconv, wlc, wres, bres, wskip, bskip, w1, b1, w2, b2 = weights
    L, k, R, _ = wtap.shape
    h = embed[prev].float()
    skip = 0
    pushed = []
    for layer in range(L):
        d = 2 ** (layer % cycle)
        span = d * (k - 1)
        offset = int(queue_offsets[layer])
        z = _mm(h, wtap[layer, k - 1]) + bconv[layer] + gterm[layer]
        for j in range(k - 1):
            z = z + _mm(queue[offset + (t - (k - 1 - j) * d) % span], wtap[layer, j])
        if local_t is not None:
            z = z + _mm(local_t, wlc[layer])
        u = torch.tanh(z[:, :R]) * torch.sigmoid(z[:, R:])
        skip = skip + _mm(u, wskip[layer]) + bskip[layer]
        pushed.append(h)
        h = h + _mm(u, wres[layer]) + bres[layer]
    logits = _mm(torch.relu(_mm(torch.relu(skip), w1) + b1), w2) + b2
    return (logits * inv_temperature + gumbel).argmax(dim=1), torch.stack(pushed)


def wavenet_push(queue, pushed, queue_offsets, t, cycle, kernel_size):
    """Write ``pushed`` [L, B, R] (from ``wavenet_step`` at time t) into the queue's slots
    t mod span, in place (rounded to the queue's dtype)."""
    for layer in range(pushed.shape[0]):
        span = 2 ** (layer % cycle) * (kernel_size - 1)
        queue[int(queue_offsets[layer]) + t % span] = pushed[layer]


def wavenet_steps(prev, queue, queue_offsets, t0, cycle, kernel_size, weights, gterm, local, gumbel,
                  inv_temperature):
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
