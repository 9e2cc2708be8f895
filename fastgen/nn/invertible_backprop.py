"""Backpropagation through a chain of invertible layers without storing their activations
(Gomez et al. 2017, "The Reversible Residual Network"; the memory-saving trick Glow's
authors describe, Kingma & Dhariwal 2018, Sec. 3.3 footnote).

A normalizing flow's layers are invertible, so the input of every layer can be recomputed from
its output.  ``InvertibleBackprop(chain)`` runs ``chain`` (a ``FlowSequential``: ``forward(x,
cond) -> FlowOutput``, ``inverse(y, cond)``) forward *without* recording autograd and keeps only
its output.  In backward it walks the layers in reverse: x_i = layer_i.inverse(y_i) (no grad),
then layer_i(x_i) again with grad, and backpropagates (grad y_i, grad logdet) through that one
layer -- so at any moment only one layer's activations are alive (its conditioner's hidden
maps, the largest tensors of a Glow).

Memory: O(one layer) activations instead of O(all layers) -- independent of depth.  Cost: one
inverse and one extra forward per layer in backward (~1.5x the compute of plain backprop).  The
recomputed inputs differ from the originals by float rounding (inverse(forward(x)) to ~1e-6 in
float32), so gradients match plain backprop to that accuracy, not bitwise.

Layers that change state in forward (ActNorm's data-dependent initialisation) must be
initialised before: the chain runs normally while any layer's ``needs_initialization()`` is True.

``invertible_backprop(chain, x, cond)`` is the function (what ``Glow(invertible_backprop=True)``
calls on each level); ``InvertibleBackprop(chain)`` the same as a module wrapping the chain.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from fastgen.ops.flow_coupling.bundles import FlowOutput


def _needs_init(chain: nn.Module) -> bool:
    return any(m.needs_initialization() for m in chain.modules() if hasattr(m, "needs_initialization"))


def invertible_backprop(chain: nn.Module, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
    """``chain(x, cond)`` -> FlowOutput, differentiable, storing only the output (module docstring).
    Runs the plain chain without autograd recording, or while a layer needs initialising."""
    if not torch.is_grad_enabled() or _needs_init(chain):
        return FlowOutput(*chain(x, cond))
    params = [p for p in chain.parameters() if p.requires_grad]
    if not x.requires_grad and not params:
        return FlowOutput(*chain(x, cond))
    out, logdet = _RecomputeFromOutput.apply(chain, cond, x, *params)
    return FlowOutput(out, logdet)


class _RecomputeFromOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, chain, cond, x, *params):
        with torch.no_grad():
            out, logdet = chain(x, cond)
        ctx.chain = chain
        ctx.params = params
        ctx.save_for_backward(out, cond if cond is not None else x.new_empty(0))
        ctx.has_cond = cond is not None
        return out, logdet

    @staticmethod
    def backward(ctx, grad_out, grad_logdet):
        out, cond = ctx.saved_tensors
        cond = cond if ctx.has_cond else None
        layers = list(ctx.chain)
        owned = [[p for p in layer.parameters() if p.requires_grad] for layer in layers]
        index = {id(p): i for i, p in enumerate(ctx.params)}
        param_grads = [None] * len(ctx.params)
        cond_grad = None
        y = out.detach()
        for layer, params in zip(reversed(layers), reversed(owned)):
            with torch.no_grad():
                x = layer.inverse(y, cond)
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                c = cond.detach().requires_grad_(cond.requires_grad) if cond is not None else None
                y_again, logdet = layer(x, c)
                wrt = [x] + params + ([c] if c is not None and c.requires_grad else [])
                pairs = [(o, g) for o, g in ((y_again, grad_out), (logdet, grad_logdet)) if o.requires_grad]
                grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
            grad_out = grads[0]
            for p, g in zip(params, grads[1:1 + len(params)]):
                if g is not None:
                    i = index[id(p)]
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
            if c is not None and c.requires_grad and grads[-1] is not None:
                cond_grad = grads[-1] if cond_grad is None else cond_grad + grads[-1]
            y = x.detach()
        return (None, cond_grad, grad_out, *param_grads)


class InvertibleBackprop(nn.Module):
    """Wrap a chain of flow layers so that training stores none of its activations (module
    docstring).  forward(x, cond=None) -> FlowOutput(out, logdet [B] float32) -- the chain's own
    values --; inverse(y, cond=None) is the chain's inverse.  Without autograd recording (eval,
    ``torch.no_grad``) it is the plain chain."""

    def __init__(self, chain: nn.Module):
        super().__init__()
        if not (hasattr(chain, "inverse") and isinstance(chain, nn.Sequential)):
            raise TypeError("InvertibleBackprop wraps a FlowSequential (an nn.Sequential of flow layers with inverse), "
                            f"got {type(chain).__name__}")
        self.chain = chain

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        return invertible_backprop(self.chain, x, cond)

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.chain.inverse(y, cond)
