"""The VAE stage nodes in a real ComfyUI: schema, decode of native latents, encode, clear errors."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server

TINY_VAE = "hyvid_tiny_vae.safetensors"
NODES = ("HunyuanVideoVAELoader", "HunyuanVideoVAEDecode", "HunyuanVideoVAEEncode")


def _inputs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def test_schema(comfy):
    info = comfy.object_info()
    loader = _inputs(info["HunyuanVideoVAELoader"])
    assert TINY_VAE in (loader["vae_name"][0] if isinstance(loader["vae_name"][0], list) else loader["vae_name"][1]["options"])
    assert info["HunyuanVideoVAELoader"]["output"] == ["HYVID_VAE"]
    assert info["HunyuanVideoVAEDecode"]["output"] == ["IMAGE"]
    assert info["HunyuanVideoVAEEncode"]["output"] == ["LATENT"]
    for node in NODES:
        for name, spec in _inputs(info[node]).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def _graph(tiling: str, latent_node: dict) -> dict:
    tiles = {"tiling": tiling, "tile_size": 64, "tile_overlap": 16, "temporal_chunk": 1, "shared_norm": True}
    return {
        "1": {"class_type": "HunyuanVideoVAELoader", "inputs": {"vae_name": TINY_VAE, "dtype": "fp32"}},
        "2": latent_node,
        "3": {"class_type": "HunyuanVideoVAEDecode", "inputs": {"vae": ["1", 0], "samples": ["2", 0], **tiles}},
        "4": {"class_type": "HunyuanVideoVAEEncode", "inputs": {"vae": ["1", 0], "pixels": ["3", 0], **tiles}},
        "5": {"class_type": "HunyuanVideoVAEDecode", "inputs": {"vae": ["1", 0], "samples": ["4", 0], **tiles}},
        "6": {"class_type": "GetImageSize", "inputs": {"image": ["3", 0]}},
        "7": {"class_type": "GetImageSize", "inputs": {"image": ["5", 0]}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["6", 2]}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["7", 2]}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["7", 1]}},
    }


EMPTY_VIDEO = {"class_type": "EmptyHunyuanLatentVideo",
               "inputs": {"width": 96, "height": 80, "length": 9, "batch_size": 1}}


@pytest.mark.parametrize("tiling", ["custom", "auto", "off"])
def test_native_latent_decodes_and_reencodes(comfy, tiling):
    """native LATENT -> our decode (9 frames) -> our encode -> our decode again (still 9 frames of 80 px)."""
    outputs = comfy.run(_graph(tiling, EMPTY_VIDEO))["outputs"]
    assert outputs["8"]["text"] == ["9"] and outputs["9"]["text"] == ["9"] and outputs["10"]["text"] == ["80"], outputs


def test_image_latent_is_a_clear_error(comfy):
    image_latent = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    message = comfy.run_expect_error(_graph("off", image_latent))
    assert "expects video latents" in message and "16" in message


def test_encode_rejects_frames_that_are_not_4k_plus_1(comfy):
    prompt = {
        "1": {"class_type": "HunyuanVideoVAELoader", "inputs": {"vae_name": TINY_VAE, "dtype": "default"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 6, "color": 0}},
        "3": {"class_type": "HunyuanVideoVAEEncode", "inputs": {
            "vae": ["1", 0], "pixels": ["2", 0], "tiling": "off", "tile_size": 256, "tile_overlap": 64,
            "temporal_chunk": 2, "shared_norm": True}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    assert "pixels: frames=6 is not 4k+1; nearest valid: 5 or 9" in comfy.run_expect_error(prompt)
