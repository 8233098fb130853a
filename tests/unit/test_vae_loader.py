"""Loading the VAE from every layout it ships in, config inference and clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan.checkpoint_io import CheckpointError
from hunyuan.vae.config import HUNYUAN_VIDEO_VAE, TINY_VAE, VAEConfig, groups_for
from hunyuan.vae.keys import comfy_to_diffusers, detect_layout, diffusers_to_comfy
from hunyuan.vae.loader import infer_config, load_vae
from hunyuan.vae.model import CausalVAE
from hunyuan.vae.tiny import TINY_NAME, random_state_dict, write_tiny
from tests.checks import FP32_RTOL, assert_same_weights, rel_err


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(TINY_VAE, seed=5)


@pytest.fixture(scope="module")
def latent():
    return torch.randn(1, 16, 2, 3, 4, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_every_layout_loads_to_the_same_model(sd, latent, tmp_path):
    reference = load_vae(sd)
    want = reference.decode(latent)
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": {f"vae.{k}": v for k, v in sd.items()}}, tmp_path / "b.pt")
    save_file(diffusers_to_comfy(sd), str(tmp_path / "c.safetensors"))
    bundled = {f"first_stage_model.{k}": v for k, v in diffusers_to_comfy(sd).items()}
    bundled["model.diffusion_model.x.weight"] = torch.zeros(1)  # other models' weights in one file
    sources = [tmp_path / "a.safetensors", tmp_path / "b.pt", tmp_path / "c.safetensors", bundled]
    for source in sources:
        vae = load_vae(source)
        assert vae.config == TINY_VAE
        assert_same_weights(vae, reference)
        assert rel_err(vae.decode(latent), want) < FP32_RTOL, source  # not bit equality: see assert_same_weights


def test_dtype_and_device_come_from_the_caller(sd):
    vae = load_vae(sd, device="cpu", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in vae.parameters())
    assert not any(p.requires_grad for p in vae.parameters())


def test_layout_conversion_round_trips_and_detects(sd):
    comfy = diffusers_to_comfy(sd)
    assert detect_layout(sd) == "diffusers" and detect_layout(comfy) == "comfy"
    assert "decoder.up.3.block.0.norm1.weight" in comfy  # up levels count from full resolution
    assert comfy["decoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1, 1)
    back = comfy_to_diffusers(comfy)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_real_config_inferred_from_shapes():
    with torch.device("meta"):
        shapes = CausalVAE(HUNYUAN_VIDEO_VAE).state_dict()
    assert infer_config(shapes) == HUNYUAN_VIDEO_VAE
    assert infer_config(comfy_to_diffusers(diffusers_to_comfy(shapes))) == HUNYUAN_VIDEO_VAE
    assert groups_for((128, 256, 512, 512)) == 32 and groups_for((8, 16, 16, 16)) == 8 and groups_for((16, 16, 16, 16)) == 16


def test_not_a_vae_fails_naming_what_is_missing(tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file({"double_blocks.0.img_attn_qkv.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a HunyuanVideo VAE.*decoder.up_blocks.0.resnets.0.norm1.weight"):
        load_vae(path)


def test_missing_and_misshaped_tensors_are_named(sd):
    partial = {k: v for k, v in sd.items() if k != "decoder.conv_out.conv.bias"}
    with pytest.raises(CheckpointError, match="missing 1 VAE tensors.*decoder.conv_out.conv.bias"):
        load_vae(partial)
    bad = dict(sd)
    bad["decoder.conv_out.conv.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointError, match=r"decoder.conv_out.conv.bias has shape \(4,\), expected \(3,\)"):
        load_vae(bad)


def test_unsupported_width_is_a_checkpoint_error(sd):
    with pytest.raises(ValueError, match="spatial halvings"):
        VAEConfig(block_channels=(8, 16, 16))
    odd = {k: v for k, v in sd.items() if not k.startswith("encoder.down_blocks.3")}
    with pytest.raises(CheckpointError):
        load_vae(odd)


def test_write_tiny_is_deterministic_and_loadable(tmp_path):
    (a,) = write_tiny(tmp_path / "one", seed=7)
    (b,) = write_tiny(tmp_path / "two", seed=7)
    assert a.name == TINY_NAME and a.parent.name == "vae"
    ta, tb = load_file(str(a)), load_file(str(b))
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert detect_layout(ta) == "diffusers"
    assert sum(v.numel() for v in ta.values()) < 500_000  # small enough for a seconds-long workflow
    assert load_vae(a).config == TINY_VAE
