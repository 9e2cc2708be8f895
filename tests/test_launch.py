"""The launch entry point (``fastgen.kernels._launch``): the direct-launch cache on a stand-in
for a Triton JIT function, the version gate, the observers, and that every kernel goes through it.

On a GPU the real kernels go direct (``tests/test_gpu_conv.py``); here a fake kernel
"out = 2 * x + ALPHA" checks the logic: which calls go direct, the bit-for-bit check of the
first direct launch, and the fallback when that check fails.  Its arguments: x, out, N (int),
scale (float), offset (an int the kernel would declare ``do_not_specialize``), ALPHA (constexpr).
"""
import ast
import pathlib
import warnings

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
        def run(x, out, n, scale, offset, ALPHA, num_warps, num_stages, **meta):
            self.log.append(("jit", grid))
            self.meta = dict(meta, num_warps=num_warps)
            out.copy_(2 * scale * x + ALPHA)
            return FakeCompiled(self.log, self.broken)
        return run


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("FASTGEN_DIRECT_LAUNCH", raising=False)
    monkeypatch.setattr(_launch, "_VERSION", [(True, "3.6.0")])     # a tested Triton
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
    with pytest.warns(RuntimeWarning, match="direct launch .* unavailable"):
        out = _call(fn, x, torch.empty(8))
    assert torch.equal(out, 2 * x + 3)                       # the normal launch's result stands
    assert fn in _launch._BROKEN
    out = _call(fn, x, torch.empty(8))
    assert torch.equal(out, 2 * x + 3)
    assert [kind for kind, _ in fn.log] == ["jit", "direct", "jit"]


def test_the_fallback_warns_once_per_kernel(direct):
    fn, other, x = FakeJIT("raise"), FakeJIT("wrong"), torch.arange(8.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _call(fn, x, torch.empty(8))
            _call(other, x, torch.empty(8))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2, messages
    assert "TypeError" in messages[0] and "differed" in messages[1]


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


def test_only_tested_triton_versions_go_direct(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("FASTGEN_DIRECT_LAUNCH", raising=False)
    monkeypatch.setattr(_launch, "_VERSION", [])
    monkeypatch.setattr(_launch, "TESTED_TRITON", ("0.1",))
    on, why = _launch.status()
    assert not on and "not one of the tested versions 0.1" in why and "FASTGEN_DIRECT_LAUNCH=1" in why
    fn = FakeJIT()
    _call(fn, torch.arange(8.0), torch.empty(8))
    _call(fn, torch.arange(8.0), torch.empty(8))
    assert [kind for kind, _ in fn.log] == ["jit", "jit"]
    monkeypatch.setenv("FASTGEN_DIRECT_LAUNCH", "1")             # forced: on, still checked per key
    assert _launch.status() == (True, f"forced by FASTGEN_DIRECT_LAUNCH=1 on triton {_launch._VERSION[0][1]}")
    monkeypatch.setattr(_launch, "_VERSION", [])
    from importlib import metadata
    monkeypatch.setattr(_launch, "TESTED_TRITON", (".".join(metadata.version("triton").split(".")[:2]),))
    monkeypatch.delenv("FASTGEN_DIRECT_LAUNCH")
    assert _launch.status()[0]
    monkeypatch.setenv("TRITON_INTERPRET", "1")                   # never under the interpreter
    monkeypatch.setenv("FASTGEN_DIRECT_LAUNCH", "1")
    assert _launch.status() == (False, "TRITON_INTERPRET=1: the interpreter has no compiled kernels")


def test_info_says_why_the_direct_launch_is_off(capsys):
    from fastgen import cli
    cli.main(["info"])              # (here under the interpreter: setting TRITON_INTERPRET=0 would
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("launch")][0]   # recompile kernels)
    assert "off" in line and "TRITON_INTERPRET=1" in line


def test_the_switch_turns_it_off_with_its_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FASTGEN_DIRECT_LAUNCH", "0")
    assert _launch.status() == (False, "FASTGEN_DIRECT_LAUNCH=0")


def test_inplace_kernels_are_never_launched_twice(direct):
    """A kernel that reads state it writes (WaveNet's queues) takes the normal launch: the
    direct path's check would launch it a second time."""
    fn, x = FakeJIT(), torch.arange(8.0)
    for _ in range(3):
        _launch.launch(fn, (4,), (x, torch.empty(8), 8, 1.0, 0), dict(ALPHA=3), None, inplace=True)
    assert [kind for kind, _ in fn.log] == ["jit"] * 3


def test_observers_see_every_launch_and_can_stop_it(direct):
    fn, x = FakeJIT(), torch.arange(8.0)
    seen, outer = [], []
    with _launch.observe_launches(outer.append):
        _call(fn, x, torch.empty(8))
        with _launch.observe_launches(seen.append, execute=False):
            out = _call(fn, x, torch.full((8,), float("nan")), alpha=5)
        _call(fn, x, torch.empty(8))
    _call(fn, x, torch.empty(8))                                  # no observer any more
    assert out.isnan().all()                                       # recorded, not launched
    assert [kind for kind, _ in fn.log] == ["jit", "direct", "direct", "direct"]
    assert len(outer) == 3 and len(seen) == 1
    info = seen[0]
    assert info.kernel is fn and info.grid == (4, 1, 1) and info.constexprs == {"ALPHA": 5}
    assert (info.num_warps, info.num_stages, info.configs, info.inplace) == (4, 3, None, False)


class FakeConfig:
    def __init__(self, kwargs, num_warps, num_stages):
        self.kwargs, self.num_warps, self.num_stages = kwargs, num_warps, num_stages


@pytest.fixture
def fake_autotuner(monkeypatch):
    """An autotuner over FakeJIT whose choice is BLOCK=2 with 8 warps (ALPHA plays no part)."""
    class FakeAutotuner:
        def __init__(self):
            self.fn, self.calls = FakeJIT(), 0
            self.configs = [FakeConfig(dict(BLOCK=1), 4, 3), FakeConfig(dict(BLOCK=2), 8, 4)]

        def __getitem__(self, grid):
            def run(x, out, n, scale, offset, ALPHA):
                self.calls += 1
                self.best_config = self.configs[1]
                self.fn.log.append(("tune", grid(self.best_config.kwargs)))
                out.copy_(2 * scale * x + ALPHA)
            return run

    monkeypatch.setattr(_launch, "_is_autotuner", lambda kernel: isinstance(kernel, FakeAutotuner))
    monkeypatch.setattr(_launch, "_TUNED", {})
    return FakeAutotuner()


def test_an_autotuned_kernel_tunes_once_per_key_then_launches_its_choice(direct, fake_autotuner):
    tuner, x = fake_autotuner, torch.arange(8.0)
    seen = []

    def tuned(key):
        out = torch.empty(8)
        _launch.launch(tuner, lambda meta: (8 // meta["BLOCK"],), (x, out, 8, 1.0, 0), dict(ALPHA=3), out,
                       tune_key=key)
        return out

    with _launch.observe_launches(seen.append):
        for key in ("a", "a", "a", "b"):
            assert torch.equal(tuned(key), 2 * x + 3)
    assert tuner.calls == 2
    assert tuner.fn.meta == {"BLOCK": 2, "num_warps": 8}           # the choice reached the kernel
    assert [kind for kind, _ in tuner.fn.log] == ["tune", "jit", "direct", "direct", "tune"]
    assert [i.num_warps for i in seen] == [None, 8, 8, None]
    assert seen[1].constexprs == {"ALPHA": 3, "BLOCK": 2} and seen[1].grid == (4, 1, 1)
    assert all(i.kernel is tuner.fn and i.configs is tuner.configs for i in seen)


def test_autotuned_launches_are_recorded_with_every_config_without_tuning(direct, fake_autotuner):
    seen, out = [], torch.full((8,), float("nan"))
    with _launch.observe_launches(seen.append, execute=False):
        _launch.launch(fake_autotuner, lambda meta: (1,), (torch.arange(8.0), out, 8, 1.0, 0), dict(ALPHA=3), out,
                       tune_key="k")
    assert fake_autotuner.calls == 0 and out.isnan().all() and not _launch._TUNED
    assert len(seen[0].configs) == 2 and callable(seen[0].grid)


KERNELS = pathlib.Path(__file__).resolve().parents[1] / "kernels"


@pytest.mark.parametrize("path", sorted(p.name for p in KERNELS.glob("*.py")))
def test_every_kernel_launch_goes_through_the_entry_point(path):
    """No ``kernel[grid](...)`` outside kernels/_launch.py: a subscript that is called."""
    if path == "_launch.py":
        return
    tree = ast.parse((KERNELS / path).read_text())
    direct_calls = [node.lineno for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)]
    assert not direct_calls, f"{path}: kernel[grid](...) at lines {direct_calls}; use _launch.launch"


def test_the_wavenet_kernels_go_through_the_entry_point_as_inplace(monkeypatch):
    """Under the interpreter the hook still sees them: both WaveNet kernels, marked in place."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from fastgen.kernels import wavenet_step as k
    L, R, S, A, K, B, T = 2, 16, 32, 16, 2, 3, 2
    f32 = dict(dtype=torch.float32)
    weights = (torch.randn(A, R), torch.randn(L, K, R, 2 * R) * 0.1, torch.zeros(L, 2 * R), torch.zeros(L, 0, 2 * R),
               torch.randn(L, R, R) * 0.1, torch.zeros(L, R), torch.randn(L, R, S) * 0.1, torch.zeros(L, S),
               torch.randn(S, S) * 0.1, torch.zeros(S), torch.randn(S, A) * 0.1, torch.zeros(A))
    offsets = torch.tensor([0, 1], dtype=torch.int32)
    queue, gterm, scratch = torch.zeros(3, B, R), torch.zeros(L, B, 2 * R), torch.zeros(B, S)
    prev = torch.zeros(B, dtype=torch.long)
    seen = []
    with _launch.observe_launches(seen.append):
        k.wavenet_step(prev, torch.zeros(B, dtype=torch.long), queue, offsets, weights, gterm, None,
                       torch.zeros(B, A, **f32), scratch, 0, 1, K, 1.0)
        k.wavenet_steps(prev, torch.zeros(T, B, dtype=torch.long), queue, offsets, weights, gterm, None,
                        torch.zeros(T, B, A, **f32), scratch, 1, 1, K, 1.0)
    names = [getattr(i.kernel, "__name__", None) or i.kernel.fn.__name__ for i in seen]
    assert names == ["wavenet_step_kernel", "wavenet_steps_kernel"]
    assert all(i.inplace and i.num_warps == k.NUM_WARPS for i in seen)
