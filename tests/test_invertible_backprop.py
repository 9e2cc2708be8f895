"""fastgen.nn.InvertibleBackprop: gradients equal plain backprop's (inputs, every parameter,
the conditioning), the forward values are the chain's, ActNorm initialises through it, and the
activations of the chain are not kept (the saved tensors are only the output)."""
import pytest
import torch

from fastgen.nn.flows import ActNorm, AffineCoupling, FlowSequential, InvConv1x1
from fastgen.nn.invertible_backprop import InvertibleBackprop


def _chain(channels=4, steps=3, hidden=8, seed=0):
    torch.manual_seed(seed)
    chain = FlowSequential(*[FlowSequential(ActNorm(channels), InvConv1x1(channels),
                                            AffineCoupling(channels, hidden, scale="sigmoid"))
                             for _ in range(steps)])
    for layer in chain.modules():                      # a coupling that does something
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.1)
    return chain


def _grads(model, x):
    out, logdet = model(x)
    loss = (out ** 2).sum() + logdet.sum()
    return torch.autograd.grad(loss, [x, *model.parameters()])


def test_gradients_match_plain_backprop():
    chain = _chain()
    x = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        chain(x)                                       # ActNorm's initialisation
    wrapped = InvertibleBackprop(chain)
    x = x.requires_grad_(True)
    plain = _grads(chain, x)
    saving = _grads(wrapped, x)
    assert len(plain) == len(saving) > 10
    for a, b in zip(plain, saving):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wrapped(x).out, chain(x).out)


def test_actnorm_initialises_through_the_wrapper():
    chain = _chain()
    wrapped = InvertibleBackprop(chain)
    x = torch.randn(8, 4, 4, 4) * 3 + 1
    assert wrapped(x).out.shape == x.shape              # first call: plain, initialises
    first = chain[0][0]
    assert bool(first.initialized)
    normalised = first(x).out
    torch.testing.assert_close(normalised.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std((0, 2, 3)), torch.ones(4), atol=1e-2, rtol=0)


def test_only_the_output_is_saved():
    """Plain backprop keeps every conditioner's hidden maps; the wrapper keeps the output."""
    chain = _chain(hidden=64)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.no_grad():
        chain(x)
    wrapped = InvertibleBackprop(chain)
    sizes = {}
    for name, model in (("plain", chain), ("wrapped", wrapped)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            model(x)
        sizes[name] = sum(saved)
    assert sizes["wrapped"] <= 2 * x.numel() + 64     # the output (and tiny bookkeeping)
    assert sizes["plain"] > 20 * sizes["wrapped"]


def test_refuses_what_it_cannot_invert():
    with pytest.raises(TypeError, match="FlowSequential"):
        InvertibleBackprop(torch.nn.Linear(2, 2))


def test_glow_with_invertible_backprop_trains_like_plain_glow():
    """Same loss, same gradients (to rounding), same state dict keys; no host sync per ActNorm."""
    from fastgen.models import Glow
    torch.manual_seed(0)
    plain = Glow((1, 8, 8), levels=2, steps=2, hidden=8, num_classes=3, pixel_levels=17)
    saving = Glow((1, 8, 8), levels=2, steps=2, hidden=8, num_classes=3, pixel_levels=17, invertible_backprop=True)
    images = torch.randint(0, 17, (6, 1, 8, 8))
    labels = torch.arange(6) % 3
    with torch.no_grad():
        plain.loss(images, labels)
    saving.load_state_dict(plain.state_dict())
    for layer in saving.modules():           # a non-trivial coupling everywhere
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.05, generator=torch.Generator().manual_seed(1))
    plain.load_state_dict(saving.state_dict())
    losses, grads = [], []
    for model in (plain, saving):
        loss = model.loss(images, labels, torch.Generator().manual_seed(2))
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    torch.testing.assert_close(losses[1], losses[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
