"""The DiT stage nodes in a real ComfyUI: how they present themselves and how the loader runs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server

TINY_DIT = "hyvid_tiny_dit.safetensors"


def _inputs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def _options(spec) -> list:
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options", [])


def test_loader_schema(comfy):
    info = comfy.object_info()["HunyuanVideoDiTLoader"]
    inputs = _inputs(info)
    assert TINY_DIT in _options(inputs["dit_name"])
    assert {"auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"} <= set(_options(inputs["weight_dtype"]))
    assert {"auto", "sdpa", "sage", "flash", "comfy"} <= set(_options(inputs["attention"]))
    assert info["output"] == ["HYVID_DIT"]


@pytest.mark.parametrize("node", ["HunyuanVideoDiTLoader", "HunyuanVideoTokenRefiner"])
def test_every_input_has_a_tooltip(comfy, node):
    for name, spec in _inputs(comfy.object_info()[node]).items():
        assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def test_refiner_schema(comfy):
    info = comfy.object_info()["HunyuanVideoTokenRefiner"]
    types = {name: spec[0] for name, spec in _inputs(info).items()}
    assert types == {"dit": "HYVID_DIT", "text_embeds": "HYVID_TEXT_EMBEDS", "sigmas": "SIGMAS"}
    assert info["output"] == ["HYVID_CONDITIONING"]


def _loader_prompt(weight_dtype: str, attention: str) -> dict:
    return {
        "1": {"class_type": "HunyuanVideoDiTLoader",
              "inputs": {"dit_name": TINY_DIT, "weight_dtype": weight_dtype, "attention": attention}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


@pytest.mark.parametrize("weight_dtype,attention", [("default", "auto"), ("fp8_e4m3fn", "comfy")])
def test_loader_runs(comfy, weight_dtype, attention):
    entry = comfy.run(_loader_prompt(weight_dtype, attention))
    shown = str(entry["outputs"]["2"])
    assert "BlockSwapPatcher" in shown, shown  # PreviewAny shows the loader's output: the DiT's ModelPatcher (nodes/blockswap.py)
    assert f"HunyuanVideo DiT {TINY_DIT}: compute torch.bfloat16, attention {attention}" in comfy.log_text()


def test_unavailable_attention_is_a_clear_error(comfy):
    message = comfy.run_expect_error(_loader_prompt("default", "flash"))
    assert "'flash' was requested but cannot run" in message
