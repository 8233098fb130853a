"""The sampling-stage nodes (Scheduler, Block Swap, Sampler) in a real ComfyUI process."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.server

TINY_DIT = "hyvid_tiny_dit.safetensors"
NODES = ("HunyuanVideoScheduler", "HunyuanVideoBlockSwap", "HunyuanVideoSampler")


def _inputs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def _tiny_option(comfy, node: str, name: str) -> str:
    spec = _inputs(comfy.object_info()[node])[name]
    options = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])
    return next(o for o in options if "tiny" in o)


@pytest.mark.parametrize("node", NODES)
def test_every_input_has_a_tooltip(comfy, node):
    for name, spec in _inputs(comfy.object_info()[node]).items():
        assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def test_socket_types(comfy):
    info = comfy.object_info()
    assert info["HunyuanVideoScheduler"]["output"] == ["SIGMAS"]
    assert info["HunyuanVideoBlockSwap"]["output"] == ["HYVID_DIT"]
    assert info["HunyuanVideoSampler"]["output"] == ["LATENT"]
    types = {k: v[0] for k, v in _inputs(info["HunyuanVideoSampler"]).items()}
    assert types["dit"] == "HYVID_DIT" and types["conditioning"] == "HYVID_CONDITIONING"
    assert types["sigmas"] == "SIGMAS" and types["latent"] == "LATENT"


def graph(comfy, *, frames=5, sampler_sigmas=None, refiner_sigmas=None, swap=True, steps=3, prefix="hyvid_sampler"):
    """Text encode -> DiT -> token refiner -> (block swap) -> sampler -> SaveLatent."""
    g = {
        "te": {"class_type": "HunyuanVideoTextEncoderLoader",
               "inputs": {"llm": _tiny_option(comfy, "HunyuanVideoTextEncoderLoader", "llm"),
                          "clip": _tiny_option(comfy, "HunyuanVideoTextEncoderLoader", "clip"), "dtype": "auto"}},
        "enc": {"class_type": "HunyuanVideoTextEncode",
                "inputs": {"text_encoder": ["te", 0], "prompt": "a red fox runs", "negative_prompt": "blurry",
                           "template": "video", "custom_template": "", "hidden_state_skip_layer": 2,
                           "apply_final_norm": False}},
        "dit": {"class_type": "HunyuanVideoDiTLoader",
                "inputs": {"dit_name": TINY_DIT, "weight_dtype": "fp32", "attention": "sdpa"}},
        "sched": {"class_type": "HunyuanVideoScheduler", "inputs": {"steps": steps, "shift": 7.0, "denoise": 1.0}},
        "swap": {"class_type": "HunyuanVideoBlockSwap",
                 "inputs": {"dit": ["dit", 0], "double_blocks": 1, "single_blocks": 2, "prefetch": 1,
                            "offload_txt_in": False, "offload_img_in": True, "mode": "manual"}},
        "ref": {"class_type": "HunyuanVideoTokenRefiner",
                "inputs": {"dit": ["dit", 0], "text_embeds": ["enc", 0], "sigmas": refiner_sigmas or ["sched", 0]}},
        "sample": {"class_type": "HunyuanVideoSampler",
                   "inputs": {"dit": ["swap", 0] if swap else ["dit", 0], "conditioning": ["ref", 0],
                              "sigmas": sampler_sigmas or ["sched", 0], "seed": 7, "width": 64, "height": 48,
                              "frames": frames, "embedded_guidance": 6.0, "cfg": 2.0, "solver": "dpmpp_2m",
                              "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}},
    }
    return g


def _saved_latent(comfy, entry) -> torch.Tensor:
    files = comfy.output_files(entry)
    (path,) = [f for f in files if f.suffix == ".latent"]
    return load_file(str(path))["latent_tensor"]


def test_text_to_video_latent_with_block_swap(comfy):
    entry = comfy.run(graph(comfy, prefix="hyvid_sampler_t2v"))
    latent = _saved_latent(comfy, entry)
    assert latent.shape == (1, 16, 2, 6, 8) and torch.isfinite(latent).all()
    assert "swap is a no-op" in comfy.log_text()  # --cpu: the swap clone loads like the plain DiT


def test_native_sigma_nodes_interoperate(comfy):
    # native SplitSigmas takes our schedule; its part that ends above 0 is accepted by refiner and sampler
    g = graph(comfy, steps=4, prefix="hyvid_sampler_split")
    g["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 2}}
    g["ref"]["inputs"]["sigmas"] = ["split", 0]
    g["sample"]["inputs"]["sigmas"] = ["split", 0]
    latent = _saved_latent(comfy, comfy.run(g))
    assert latent.shape == (1, 16, 2, 6, 8)
    # and a native scheduler's sigmas drive our refiner and sampler
    g = graph(comfy, prefix="hyvid_sampler_karras")
    g["karras"] = {"class_type": "KarrasScheduler",
                   "inputs": {"steps": 3, "sigma_max": 1.0, "sigma_min": 0.01, "rho": 7.0}}
    g["ref"]["inputs"]["sigmas"] = ["karras", 0]
    g["sample"]["inputs"]["sigmas"] = ["karras", 0]
    assert _saved_latent(comfy, comfy.run(g)).shape == (1, 16, 2, 6, 8)


def test_bad_frames_is_a_clear_error(comfy):
    message = comfy.run_expect_error(graph(comfy, frames=6, prefix="hyvid_sampler_bad"))
    assert "frames=6 is not 4k+1; nearest valid: 5 or 9" in message


def test_schedule_mismatch_is_a_clear_error(comfy):
    g = graph(comfy, prefix="hyvid_sampler_mismatch")
    g["sched2"] = {"class_type": "HunyuanVideoScheduler", "inputs": {"steps": 4, "shift": 7.0, "denoise": 1.0}}
    g["sample"]["inputs"]["sigmas"] = ["sched2", 0]
    message = comfy.run_expect_error(g)
    assert "refined for 3 steps" in message and "sampler got 4 steps" in message
