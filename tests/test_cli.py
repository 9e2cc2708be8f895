"""The fastgen command: info and the conv benchmark run on a machine without a GPU."""
import json

import pytest

from fastgen import cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "triton", "device", "native"):
        assert word in out
    from fastgen.ops._define import REGISTRY
    assert len(REGISTRY) >= 8          # every op of every family, listed from the registry
    for op in REGISTRY.values():
        assert f"{op.name} " in out and op.summary in out
    assert "reference / reference / reference" in out     # a CPU without TRITON_INTERPRET


def test_bench_conv_quick(capsys, tmp_path):
    path = tmp_path / "conv.json"
    assert cli.main(["bench", "conv", "--quick", "--filter", "k3B", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "not speed claims" in out
    data = json.loads(path.read_text())
    assert data["env"]["torch"]
    rows = data["results"]
    assert {r["case"] for r in rows} == {"masked_conv2d_k3B_B2_C16_8x8_float32_fwd",
                                         "masked_conv2d_k3B_B2_C16_8x8_float32_fwdbwd"}
    assert all(r["ms"]["fastgen"] > 0 and r["ms"]["cudnn"] > 0 for r in rows)


def test_bench_sampling_quick(capsys, tmp_path):
    path = tmp_path / "sampling.json"
    assert cli.main(["bench", "sampling", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    assert [r["case"].split("_")[0] for r in rows] == ["gated", "gated", "pixelcnnpp", "gated", "pixelcnnpp"]
    assert all(r["seconds"]["fast"] > 0 and r["seconds"]["naive"] > 0 for r in rows[:4])
    assert rows[3]["case"].endswith("_bfloat16") and 0 <= rows[3]["fraction_identical_fast_vs_naive"] <= 1
    assert rows[4]["case"].startswith("pixelcnnpp_resnet_at") and rows[4]["ms"]["pytorch_ops"] > 0


def test_bench_wavenet_quick(tmp_path):
    path = tmp_path / "wavenet.json"
    assert cli.main(["bench", "wavenet", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    timed, agreement = rows[:2], rows[2:]
    assert all(set(r["samples_per_s"]) == {"fused", "persistent", "persistent_float16", "persistent_bfloat16",
                                           "eager_queue", "naive"} for r in timed)
    assert [r["case"].split("_")[-4] for r in agreement] == ["float16", "bfloat16"]
    assert all(0.9 <= r["identical_to_fp32"] <= 1 and r["draws"] == 256 for r in agreement)


def test_bench_flows_quick(tmp_path):
    """The coupling cases run, agree with the eager math (check_coupling_case), and compare; the
    Glow training step runs for fastgen (plain and invertible backprop) and the eager model."""
    path = tmp_path / "flows.json"
    assert cli.main(["bench", "flows", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    assert [r["case"] for r in rows] == ["affine_coupling_glow_B2_C8_8x8_float32_fwdbwd",
                                         "affine_coupling_glow_B2_C8_8x8_bfloat16_fwdbwd",
                                         "glow_K2_L2_h16_B4_8x8_train_step"]
    assert all(r["ms"]["fastgen"] > 0 and r["ms"]["eager"] > 0 and r["best_alternative"] for r in rows[:2])
    glow = rows[2]["ms"]
    assert {"fastgen", "fastgen_invertible_backprop", "eager_same_architecture"} <= set(glow)
    assert all(v > 0 for v in glow.values())


def test_bench_attention_quick(tmp_path):
    """The block-local attention cases (forward; forward + backward) run, agree with the dense-mask
    SDPA and the permuted SDPA (check_attention_case), and report flops and the memory floor."""
    path = tmp_path / "attention.json"
    assert cli.main(["bench", "attention", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    assert [r["case"] for r in rows] == [f"block_local_attention_{name}_B{b}_H2_D16_float32_{part}"
                                         for name, b in (("video_4x4x4_blk2x2x2", 1), ("image_8x8_blk4x4_mem1", 1),
                                                         ("seq_64_blk16_mem1", 1)) for part in ("fwd", "fwdbwd")]
    assert all(r["ms"]["fastgen"] > 0 and r["ms"]["sdpa_dense_mask"] > 0 and r["fastgen_TFLOPs"]
               and r["pct_of_memory_floor"] for r in rows)
    assert "permute_blocks_sdpa" in rows[0]["ms"] and "permute_blocks_sdpa" not in rows[2]["ms"]


def test_bench_vq_quick(tmp_path):
    """The VQ cases run (fastgen's indices checked against cdist+argmin first) and compare."""
    path = tmp_path / "vq.json"
    assert cli.main(["bench", "vq", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    assert [r["case"] for r in rows] == ["vq_search_N256_D16_K40_fp32", "vq_search_N256_D16_K40_fp32_tf32",
                                         "vq_search_N256_D16_K100_fp32", "vq_search_N256_D16_K100_fp32_tf32",
                                         "vq_layer_train_step_N256_D16_K40_fp32",
                                         "vq_layer_train_step_N256_D16_K100_fp32"]
    assert all(r["ms"]["fastgen"] > 0 and r["best_alternative"] and r["floor_ms_h100_tf32"] > 0 for r in rows)
    assert all(r["ms"]["cdist_argmin"] > 0 for r in rows[:4])


def test_bench_stylegan_quick(tmp_path):
    """The StyleGAN2 op cases run, agree with the eager formulations (check_case), and compare."""
    path = tmp_path / "stylegan.json"
    assert cli.main(["bench", "stylegan", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    names = [r["case"] for r in rows]
    assert "bias_act_lrelu_clamp_B2_C8_8x8_float32_fwdbwd" in names
    assert "upfirdn2d_upsample2d_4x4_B2_C8_4x4_bfloat16_fwd" in names
    assert "modulated_conv3x3_up2_B2_C8_4x4_float32_fwdbwd" in names
    assert all(r["ms"]["fastgen"] > 0 and r["best_alternative"] for r in rows)


@pytest.mark.slow
def test_demo_flow_runs(tmp_path, capsys):
    """`fastgen demo --model flow` end to end at 2 training steps: both pictures written, the
    trained flow inverts, bits/dim and the baseline printed."""
    assert cli.main(["demo", "--model", "flow", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "flow_samples.png").stat().st_size > 0
    assert (tmp_path / "flow_temperatures.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "independent per-pixel baseline 2.423" in out
    error = float(out.split("max |inverse(forward(x)) - x| = ")[1].split()[0])
    assert error < 1e-4
