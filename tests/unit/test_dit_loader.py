"""load_dit: every supported layout and format, fp8 storage and scales, clear refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from hunyuan.checkpoint_io import CheckpointError
from hunyuan.dit import TINY
from hunyuan.dit.checkpoint import load_dit, read_config
from hunyuan.dit.keymap import to_comfy, to_diffusers
from hunyuan.dit.tiny import TINY_DIT_FILE, random_state_dict, write_tiny
from tests.checks import FP32_RTOL, assert_same_weights, rel_err


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(TINY, seed=2)


@pytest.fixture(scope="module")
def reference(sd):
    return load_dit(sd, dtype=torch.float32)


def run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    text = torch.randn(1, 5, TINY.text_states_dim, generator=g)
    pooled = torch.randn(1, TINY.text_states_dim_2, generator=g)
    return model(x, torch.tensor([600.0]), torch.ones(1, 5, dtype=torch.bool), pooled, torch.tensor([6.0]), text_states=text)


def assert_same_model(model, reference) -> None:
    assert_same_weights(model, reference)
    assert rel_err(run(model), run(reference)) < FP32_RTOL


LAYOUTS = {
    "tencent_safetensors": lambda sd: sd,
    "comfy_repackaged": lambda sd: {"model.diffusion_model." + k: v for k, v in sd.items()},
    "comfy_saved_internal_names": lambda sd: {"model.model." + k: v for k, v in to_comfy(sd).items()},
    "diffusers": to_diffusers,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_load_to_the_same_model(tmp_path, sd, reference, layout):
    path = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in LAYOUTS[layout](sd).items()}, str(path))
    assert_same_model(load_dit(path, dtype=torch.float32), reference)


def test_tencent_pt_with_module_wrapper(tmp_path, sd, reference):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": sd}, str(path))
    assert_same_model(load_dit(path, dtype=torch.float32), reference)


def test_weights_are_assigned_not_copied(sd):
    model = load_dit(sd, dtype=torch.float32)
    assert model.double_blocks[0].img_attn_qkv.weight.data_ptr() == sd["double_blocks.0.img_attn_qkv.weight"].data_ptr()


def test_bf16_compute(sd, reference):
    model = load_dit(sd, dtype=torch.bfloat16)
    assert model.double_blocks[0].img_attn_qkv.weight.dtype == torch.bfloat16
    out = run(model)
    assert out.dtype == torch.float32 and rel_err(out, run(reference)) < 0.05


def test_fp8_storage_is_kept_and_upcast_per_layer(sd, reference):
    model = load_dit(sd, dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
    assert model.double_blocks[0].img_attn_qkv.weight.dtype == torch.float8_e4m3fn
    assert model.single_blocks[1].linear1.weight.dtype == torch.float8_e4m3fn
    assert model.img_in.proj.weight.dtype == torch.float32  # only block Linears go fp8
    assert model.double_blocks[0].img_attn_q_norm.weight.dtype == torch.float32
    assert rel_err(run(model), run(reference)) < 0.05  # e4m3 has a 3-bit mantissa


def _quantize_with_scales(sd):
    """Tencent-style fp8: block Linear weights / scale stored as e4m3fn, scales in a map."""
    q, scales = {}, {}
    for k, v in sd.items():
        if k.startswith(("double_blocks.", "single_blocks.")) and k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max() / 448.0
            q[k] = (v / scale).to(torch.float8_e4m3fn)
            scales[k[: -len(".weight")]] = scale.reshape(1)
        else:
            q[k] = v
    return q, scales


def test_tencent_fp8_with_map_file(tmp_path, sd, reference):
    q, scales = _quantize_with_scales(sd)
    path = tmp_path / "mp_rank_00_model_states_fp8.pt"
    torch.save({"module": q}, str(path))
    torch.save(scales, str(tmp_path / "mp_rank_00_model_states_fp8_map.pt"))
    model = load_dit(path, dtype=torch.float32)
    layer = model.double_blocks[0].img_attn_qkv
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale is not None
    assert rel_err(run(model), run(reference)) < 0.05
    # without the scales the weights are ~1/scale too large: the map really is used
    assert rel_err(run(load_dit(q, dtype=torch.float32)), run(reference)) > 1.0


def test_comfy_scaled_fp8_keys(sd, reference):
    q, scales = _quantize_with_scales(sd)
    q = {**q, **{k + ".scale_weight": v for k, v in scales.items()}, "scaled_fp8": torch.zeros(0)}
    assert rel_err(run(load_dit(q, dtype=torch.float32)), run(reference)) < 0.05


def test_not_a_dit_names_what_is_missing(sd):
    with pytest.raises(CheckpointError, match="not a HunyuanVideo DiT"):
        load_dit({"encoder.conv_in.weight": torch.zeros(1)})
    partial = {k: v for k, v in sd.items() if not k.startswith("final_layer.")}
    with pytest.raises(CheckpointError, match="missing final_layer.linear.weight"):
        load_dit(partial)
    broken = {k: v for k, v in sd.items() if k != "double_blocks.1.txt_mlp.fc2.bias"}
    with pytest.raises(CheckpointError, match=r"double_blocks\.1\.txt_mlp\.fc2\.bias"):
        load_dit(broken)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dit(tmp_path / "nope.safetensors")


def test_write_tiny_is_deterministic_and_loads(tmp_path):
    a = write_tiny(tmp_path / "a", seed=4, text_states_dim=40, text_states_dim_2=24)
    b = write_tiny(tmp_path / "b", seed=4, text_states_dim=40, text_states_dim_2=24)
    assert a[0].name == TINY_DIT_FILE and a[0].parent.name == "diffusion_models"
    from safetensors.torch import load_file

    ta, tb = load_file(str(a[0])), load_file(str(b[0]))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    model = load_dit(a[0], dtype=torch.float32)
    assert model.config.text_states_dim == 40 and model.config.text_states_dim_2 == 24
    assert model.config.depth_double == 2 and model.config.depth_single == 2 and model.config.guidance_embed


def test_per_row_fp8_scales(sd, reference):
    q, scales = {}, {}
    for k, v in sd.items():
        if k.startswith("single_blocks.") and k.endswith(".weight") and v.ndim == 2:
            row_scale = v.abs().amax(dim=1) / 448.0
            q[k] = (v / row_scale[:, None]).to(torch.float8_e4m3fn)
            scales[k[: -len(".weight")]] = row_scale
        else:
            q[k] = v
    model = load_dit(q, dtype=torch.float32, scale_map=scales)
    assert model.single_blocks[0].linear1.weight_scale.shape == (q["single_blocks.0.linear1.weight"].shape[0], 1)
    assert rel_err(run(model), run(reference)) < 0.05
    with pytest.raises(CheckpointError, match="expected one value or one per output row"):
        load_dit(q, dtype=torch.float32, scale_map={"single_blocks.0.linear1": torch.ones(3)})


@pytest.fixture
def three_heads(tmp_path):
    """A diffusers-layout DiT of 3 heads x 32 whose config.json splits RoPE as 8/12/12, saved by
    diffusers itself (config.json + diffusion_pytorch_model.safetensors)."""
    import dataclasses

    from tests.peers import diffusers_dit

    cfg = dataclasses.replace(TINY, hidden_size=96, num_heads=3, rope_axes=(8, 12, 12))
    tencent = random_state_dict(cfg, seed=4)
    diffusers_dit(cfg, tencent).save_pretrained(tmp_path / "transformer")
    return cfg, tencent, tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"


def test_rope_split_from_config_json_beside_the_weights(three_heads, caplog):
    cfg, tencent, path = three_heads
    with caplog.at_level("WARNING", logger="hunyuan.dit.checkpoint"):
        model = load_dit(path, dtype=torch.float32)
    assert model.config.rope_axes == (8, 12, 12) and not caplog.records
    assert rel_err(run(model), run(dataclass_model(cfg, tencent))) <= FP32_RTOL
    guessed = load_dit(tencent, dtype=torch.float32)  # bare weights, no file: the split is guessed
    assert guessed.config.rope_axes != (8, 12, 12) and rel_err(run(guessed), run(model)) > 1e-4, "the split matters"


def test_a_guessed_rope_split_is_logged(three_heads, caplog, tmp_path):
    _, _, path = three_heads
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(path.read_bytes())  # the same weights without their config.json
    with caplog.at_level("WARNING", logger="hunyuan.dit.checkpoint"):
        model = load_dit(alone, dtype=torch.float32)
    assert model.config.rope_axes == (4, 14, 14)
    assert "head width 32, RoPE split (t, h, w) = (4, 14, 14) guessed" in caplog.text


def test_a_rope_split_that_does_not_fit_is_named(three_heads):
    import json

    _, _, path = three_heads
    settings = path.parent / "config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "rope_axes_dim": [8, 8, 8]}))
    with pytest.raises(CheckpointError, match=r"config.json: RoPE split \[8, 8, 8\] does not fit this DiT"):
        load_dit(path, dtype=torch.float32)


def dataclass_model(cfg, tencent):
    """Our DiT built straight from ``cfg`` (the split known) with the Tencent-layout weights."""
    from hunyuan.dit import HunyuanVideoDiT

    model = HunyuanVideoDiT(cfg).eval()
    model.load_state_dict(tencent)
    return model


def test_any_shard_of_a_sharded_diffusers_dit_reads_them_all(three_heads, tmp_path):
    cfg, tencent, _ = three_heads
    from tests.peers import diffusers_dit

    folder = tmp_path / "sharded"
    diffusers_dit(cfg, tencent).save_pretrained(folder, max_shard_size="200KB")  # diffusers names the shards
    shards = sorted(folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) >= 3
    for shard in (shards[0], shards[-1]):
        model = load_dit(shard, dtype=torch.float32)
        assert model.config.rope_axes == (8, 12, 12)
        assert_same_weights(model, dataclass_model(cfg, tencent))
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=rf"is shard 1 of {len(shards)}, but {shards[1].name} is missing"):
        load_dit(shards[0], dtype=torch.float32)


def test_read_config_is_the_loaders_config(tmp_path, sd):
    """read_config (no weight read) gives the config load_dit builds, for the text-to-video and the
    image-to-video tiny files (other input widths, with and without guidance) and a state dict."""
    for path in write_tiny(tmp_path)[:4]:
        assert read_config(path) == load_dit(path, dtype=torch.float32).config, path.name
    assert read_config(sd) == load_dit(sd, dtype=torch.float32).config
    with pytest.raises(CheckpointError, match="is not a HunyuanVideo DiT"):
        read_config({"something.weight": torch.zeros(2)})
