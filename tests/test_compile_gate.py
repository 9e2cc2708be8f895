"""The compile gate (``fastgen/compile_gate/``): its parsers, its occupancy arithmetic, that it
fails a kernel that spills or asks for too much shared memory, that it reads registers from a
real cubin, and (slow) a quick run of the whole gate.

Compiling needs real (not interpreted) JIT functions, and this test session runs Triton's
interpreter (conftest): the compiling tests run a script in a subprocess without it.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fastgen import compile_gate as gate

RESOURCE_USAGE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,7]
host = linux
compile_size = 64bit

Resource usage:
 Common:
  GLOBAL:0
 Function wavenet_step_kernel:
  REG:255 STACK:16 SHARED:1024 LOCAL:0 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function helper:
  REG:12 STACK:0 SHARED:0 LOCAL:8 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'wavenet_step_kernel' for 'sm_90a'
ptxas info    : Function properties for wavenet_step_kernel
    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size
"""


def test_resource_usage_parser():
    usage = gate.parse_resource_usage(RESOURCE_USAGE)
    assert usage == {"wavenet_step_kernel": dict(registers=255, stack=16, shared=1024, local=0),
                     "helper": dict(registers=12, stack=0, shared=0, local=8)}


def test_ptxas_log_parser():
    assert gate.parse_ptxas_log(PTXAS_LOG) == {
        "wavenet_step_kernel": dict(stack_frame=16, spill_stores=12, spill_loads=20)}


@pytest.mark.parametrize("registers, shared, warps, cc, expected", [
    (255, 0, 4, 90, (8, "registers")),             # 8192 registers per warp: 8 warps fit
    (32, 0, 4, 90, (64, "warps")),
    (64, 0, 4, 80, (32, "registers")),             # 2048 per warp: 32 warps
    (40, 100 * 1024, 4, 80, (4, "shared memory")),  # 164 KiB per SM: one 101 KiB block
    (40, 100 * 1024, 4, 90, (8, "shared memory")),  # 228 KiB per SM: two
    (16, 0, 1, 90, (32, "blocks")),                # at most 32 blocks per SM
])
def test_occupancy(registers, shared, warps, cc, expected):
    assert gate.occupancy(registers, shared, warps, gate.ARCHS[cc]) == expected


def test_verdict():
    ok = dict(error=None, spill_stores=0, spill_loads=0, shared=1000)
    assert gate.verdict(ok, gate.ARCHS[90]) == []
    assert gate.verdict(dict(ok, spill_stores=4), gate.ARCHS[90]) == ["spills (4 B stores, 0 B loads)"]
    assert gate.verdict(dict(ok, shared=200 * 1024), gate.ARCHS[80]) == ["shared memory 204800 B > 166912 B per block"]
    assert gate.verdict(dict(ok, shared=200 * 1024), gate.ARCHS[90]) == []
    assert gate.verdict(dict(error="boom"), gate.ARCHS[90]) == ["compile error"]
    assert gate.verdict(dict(ok, spill_stores=None), gate.ARCHS[90]) == ["no ptxas spill report"]


def test_known_failures_are_a_ratchet(tmp_path):
    """Failures already listed (same kinds) are reported but pass; a new failure, or a new kind
    of failure for a listed configuration, fails."""
    def row(config, *failures):
        return dict(kernel="k", arch="sm_90", dtype="fp32", precision="ieee", config=config, failures=list(failures))
    known_path = tmp_path / "known.json"
    gate.write_known([row("A", "spills (4 B stores, 4 B loads)"), row("B")], known_path, {})
    known = gate.load_known(known_path)
    assert known == {"k | sm_90 | fp32 ieee | A": ["spills"]}
    rows = [row("A", "spills (8 B stores, 8 B loads)"), row("B"), row("C", "spills (4 B stores, 0 B loads)"),
            row("A", "spills (4 B stores, 4 B loads)", "shared memory 300000 B > 232448 B per block")]
    assert gate.mark_known(rows, known) == [rows[2], rows[3]]
    assert [r["known"] for r in rows] == [True, False, False, False]
    gate.write_known(rows, known_path, known)                 # merged
    assert gate.load_known(known_path)["k | sm_90 | fp32 ieee | A"] == ["shared memory", "spills"]
    assert gate.load_known(str(tmp_path / "missing.json")) == {} and gate.load_known("") == {}


def test_the_known_list_names_real_rows():
    """Every entry of the committed list has the identity format the gate writes."""
    known = gate.load_known()
    for name, kinds in known.items():
        kernel, arch, dtype, config = name.split(" | ")
        assert arch in ("sm_80", "sm_90") and kernel.endswith("_kernel") and kinds


# Three synthetic kernels compiled for sm_90 in a clean process: a small one (passes, and its
# registers come from the cubin), one that keeps a 128x128 fp32 tile live in one warp (512
# values per thread: spills), and a 128x128x128 fp16 GEMM pipelined 5 deep (5 x 64 KiB of
# shared memory, over sm_90's 227 KiB).
SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import triton
    import triton.language as tl
    from fastgen import compile_gate as gate

    @triton.jit
    def small(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < N) * 2, mask=offs < N)

    @triton.jit
    def live_tile(x_ptr, y_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        x = tl.load(x_ptr + offs[:, None] * N + offs[None, :])
        tl.store(y_ptr + offs[:, None] * N + offs[None, :], x * tl.max(tl.max(x, 1), 0))

    @triton.jit
    def deep_pipeline(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
        offs, ks = tl.arange(0, BLOCK), tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = tl.load(a_ptr + offs[:, None] * K + (k + ks)[None, :])
            b = tl.load(b_ptr + (k + ks)[:, None] * BLOCK + offs[None, :])
            acc = tl.dot(a, b, acc)
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], acc)

    x = torch.empty(256 * 256, device="meta")
    h = torch.empty(128 * 1024, dtype=torch.float16, device="meta")
    rows = {
        "small": gate.check_kernel(small, (x, x, 1000), dict(BLOCK=128)),
        "live_tile": gate.check_kernel(live_tile, (x, x), dict(N=128), num_warps=1),
        "deep_pipeline": gate.check_kernel(deep_pipeline, (h, h, x, 1024), dict(BLOCK=128, BLOCK_K=128),
                                           num_warps=8, num_stages=5),
    }
    json.dump(rows, sys.stdout)
''')


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    script = tmp_path_factory.mktemp("gate") / "synthetic.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=_clean_env(),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_registers_come_from_a_real_cubin(synthetic):
    row = synthetic["small"]
    assert row["error"] is None and row["failures"] == []
    assert 8 <= row["registers"] <= 64 and row["spill_stores"] == 0 and row["stack"] == 0
    assert row["warps_per_sm"] == 64 and row["arch"] == "sm_90"


def test_a_kernel_that_spills_fails(synthetic):
    row = synthetic["live_tile"]
    assert row["error"] is None
    assert row["spill_stores"] > 0 and row["stack"] > 0
    assert any(f.startswith("spills") for f in row["failures"])


def test_a_kernel_over_the_shared_memory_limit_fails(synthetic):
    row = synthetic["deep_pipeline"]
    assert row["error"] is None and row["shared"] > gate.ARCHS[90].shared_per_block
    assert any(f.startswith("shared memory") for f in row["failures"])


def test_every_family_has_configurations():
    """Recording happens at compile time in a clean process; here: the configuration lists
    build (their labels), cheaply, for every family."""
    labels = {family: [label for f, label, _ in gate.configurations() if f == family] for family in gate.FAMILIES}
    assert all(labels.values()), labels
    assert any("wavenet_steps R128" in label for label in labels["wavenet_step"])
    assert any("everything on" in label for label in labels["diffusion_step"])


def test_bad_arguments_exit_2(capsys):
    assert gate.main(["--arch", "75"]) == 2
    assert gate.main(["--family", "nope"]) == 2


@pytest.mark.slow
def test_the_quick_gate_records_every_kernel_and_writes_its_tables(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fastgen.compile_gate", "--quick", "--arch", "90", "--out",
                           str(tmp_path)], capture_output=True, text=True, env=_clean_env(), timeout=1200)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    [table] = tmp_path.glob("*.json")
    result = json.loads(table.read_text())
    kernels = {row["kernel"] for row in result["compiles"]}
    assert kernels >= {"transpose_kernel", "tap_conv_fwd_kernel", "tap_conv_wgrad_kernel", "gated_pixel_step_kernel",
                       "wavenet_step_kernel", "resnet_conv1_kernel", "resnet_conv2_gate_kernel",
                       "diffusion_step_kernel"}
    new = [row for row in result["compiles"] if row["failures"] and not row["known"]]
    assert done.returncode == (1 if new else 0)         # only failures not already known fail it
    assert all(row["error"] is None for row in result["compiles"]), [r["error"] for r in result["compiles"]]
    assert table.with_suffix(".md").read_text().startswith("# Compile gate")
