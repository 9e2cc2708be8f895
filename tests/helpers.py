"""Shared test helpers: run a function on both backends and compare values and gradients."""
import torch


def values_and_grads(fn, inputs, grad_out_seed=1):
    """fn(*inputs) and the gradients of <fn(...), g> w.r.t. every input that requires grad."""
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=out.dtype)
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return out, torch.autograd.grad(out, wrt, g)


def assert_close_rel(actual, expected, rtol, name=""):
    """Relative error in the norm sense, plus an elementwise NaN check."""
    assert torch.isfinite(actual).all(), f"{name}: non-finite values (an unwritten output?)"
    err = ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()
    assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"
