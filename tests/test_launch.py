"""The direct-launch cache (``fastgen.kernels._launch``), on a stand-in for a Triton JIT function.

On a GPU the real kernels go through it (``tests/test_gpu_conv.py``); here a fake kernel
"out = 2 * x + ALPHA" checks the logic: which calls go direct, the bit-for-bit check of the
first direct launch, and the fallback when that check fails.  Its arguments: x, out, N (int),
scale (float), offset (an int the kernel would declare ``do_not_specialize``), ALPHA (constexpr).
"""
import pytest
import torch

from fastgen.kernels import _launch


class FakeCompiled:
    def __init__(self, log, broken=None):
        self.log, self.broken = log, broken

    def __getitem__(self, grid):
        def runner(*args):            # every argument, constexprs included, in signature order
            x, out, n, scale, offset, alpha = args
            self.log.append(("direct", (grid[0], grid[1], grid[2])))   # as Triton's launcher reads it
            if self.broken == "raise":
                raise TypeError("launcher takes other arguments")
            out.copy_(2 * scale * x + alpha + (1 if self.broken == "wrong" else 0))
        return runner


class FakeJIT:
    arg_names = ["x_ptr", "out_ptr", "N", "scale", "offset", "ALPHA"]

    def __init__(self, broken=None):
        self.log, self.broken = [], broken

    def __getitem__(self, grid):
        def run(x, out, n, scale, offset, ALPHA, num_warps, num_stages):
            self.log.append(("jit", grid))
            out.copy_(2 * scale * x + ALPHA)
            return FakeCompiled(self.log, self.broken)
        return run


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_launch, "_COMPILED", {})
    monkeypatch.setattr(_launch, "_BROKEN", set())


def _call(fn, x, out, alpha=3, grid=(4, 1, 1), scale=1.0, offset=0):
    _launch.launch(fn, grid, (x, out, x.numel(), scale, offset), dict(ALPHA=alpha), out, unspecialized=("offset",))
    return out


def test_second_call_goes_direct(direct):
    fn, x = FakeJIT(), torch.arange(8.0)
    out = _call(fn, x, torch.full((8,), float("nan")))
    assert torch.equal(out, 2 * x + 3)
    assert [kind for kind, _ in fn.log] == ["jit", "direct"]       # launched, then checked
    out = _call(fn, x + 1, torch.full((8,), float("nan")))
    assert torch.equal(out, 2 * (x + 1) + 3)
    assert [kind for kind, _ in fn.log] == ["jit", "direct", "direct"]


def test_anything_triton_specialises_on_is_a_new_key(direct):
    fn, x = FakeJIT(), torch.arange(8.0)
    _call(fn, x, torch.empty(8))
    _call(fn, x, torch.empty(8), alpha=4)                    # another constexpr
    _call(fn, x[:7], torch.empty(7))                         # another scalar (N)
    _call(fn, torch.arange(9.0)[1:], torch.empty(8))         # a pointer not 16-byte aligned
    _call(fn, x.double(), torch.empty(8, dtype=torch.float64))
    _call(fn, x, torch.empty(8), grid=(5, 1, 1))
    assert [kind for kind, _ in fn.log] == ["jit", "direct"] * 6


def test_float_values_and_unspecialised_ints_share_a_key(direct):
    """Triton compiles one kernel for every float value and every do_not_specialize int of the
    same width: per-step coefficients and Philox offsets must not cost a check each step."""
    fn, x = FakeJIT(), torch.arange(8.0)
    for step in range(3):
        out = _call(fn, x, torch.empty(8), scale=0.5 + step, offset=step * 1000)
        assert torch.equal(out, 2 * (0.5 + step) * x + 3)
    _call(fn, x, torch.empty(8), offset=2 ** 31)         # a 64-bit offset compiles differently (i64)
    _call(fn, x, torch.empty(8), offset=2 ** 62)
    _call(fn, x, torch.empty(8), offset=2 ** 63)         # and u64 again differently
    assert [kind for kind, _ in fn.log] == ["jit", "direct", "direct", "direct", "jit", "direct", "direct",
                                            "jit", "direct"]


def test_unspecialised_names_come_from_the_kernel_where_it_has_them():
    class Param:
        def __init__(self, name, dns):
            self.name, self.do_not_specialize = name, dns

    class WithParams(FakeJIT):
        params = [Param("x_ptr", False), Param("out_ptr", False), Param("N", True), Param("scale", False),
                  Param("offset", False), Param("ALPHA", False)]

    assert _launch._unspecialized(WithParams(), ("offset",)) == {"N"}
    assert _launch._unspecialized(FakeJIT(), ("offset",)) == {"offset"}


def test_a_grid_of_fewer_than_three_dimensions_is_padded(direct):
    fn, x = FakeJIT(), torch.arange(8.0)
    for _ in range(2):
        _call(fn, x, torch.empty(8), grid=(4, 2))
    assert fn.log == [("jit", (4, 2, 1)), ("direct", (4, 2, 1)), ("direct", (4, 2, 1))]
    assert not _launch._BROKEN


@pytest.mark.parametrize("broken", ["wrong", "raise"])
def test_a_direct_launch_that_disagrees_is_never_used(direct, broken):
    fn, x = FakeJIT(broken), torch.arange(8.0)
    out = _call(fn, x, torch.empty(8))
    assert torch.equal(out, 2 * x + 3)                       # the normal launch's result stands
    assert fn in _launch._BROKEN
    out = _call(fn, x, torch.empty(8))
    assert torch.equal(out, 2 * x + 3)
    assert [kind for kind, _ in fn.log] == ["jit", "direct", "jit"]


def test_off_under_the_interpreter_and_by_switch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not _launch.enabled()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FASTGEN_DIRECT_LAUNCH", "0")
    assert not _launch.enabled()
    fn = FakeJIT()
    _call(fn, torch.arange(8.0), torch.empty(8))
    _call(fn, torch.arange(8.0), torch.empty(8))
    assert [kind for kind, _ in fn.log] == ["jit", "jit"]
