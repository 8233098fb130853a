"""The pack loads into a real ComfyUI and presents its nodes the way users will see them."""

from __future__ import annotations

import pytest

from scripts.comfy_server import PACK_NAME

pytestmark = pytest.mark.server

# Every node the pack ships. A node that disappears or is renamed breaks saved workflows.
EXPECTED_NODES = {
    "HunyuanVideoTextEncoderLoader",
    "HunyuanVideoTextEncode",
    "HunyuanVideoConditioningBridge",
    "HunyuanVideoDiTLoader",
    "HunyuanVideoTokenRefiner",
    "HunyuanVideoScheduler",
    "HunyuanVideoSampler",
    "HunyuanVideoBlockSwap",
    "HunyuanVideoVAELoader",
    "HunyuanVideoVAEDecode",
    "HunyuanVideoVAEEncode",
    "HunyuanVideoRewriteModelLoader",
    "HunyuanVideoRewriteEndpoint",
    "HunyuanVideoStepCache",
    "HunyuanVideoCompile",
    "HunyuanVideoPromptRewrite",
}


def pack_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items()
            if info.get("python_module", "").endswith(PACK_NAME)}


def test_every_node_is_registered(comfy):
    ours = pack_nodes(comfy.object_info())
    assert set(ours) >= EXPECTED_NODES, f"missing: {sorted(EXPECTED_NODES - set(ours))}"


def test_nodes_share_one_category(comfy):
    ours = pack_nodes(comfy.object_info())
    categories = {info["category"] for info in ours.values()}
    assert categories == {"HunyuanVideo"}, categories


def test_every_input_has_a_tooltip(comfy):
    missing = []
    for name, info in pack_nodes(comfy.object_info()).items():
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not options.get("tooltip"):
                    missing.append(f"{name}.{input_name}")
    assert not missing, f"inputs without a tooltip: {missing}"


def test_display_names_are_readable(comfy):
    for name, info in pack_nodes(comfy.object_info()).items():
        assert info["display_name"] and info["display_name"] != name, name
        assert info["display_name"].startswith("HunyuanVideo"), info["display_name"]


def test_pack_route_answers(comfy):
    assert comfy.get("/hunyuanvideo/version")["pack"] == PACK_NAME
