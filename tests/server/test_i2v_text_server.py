"""The text sees the image (HunyuanVideo-I2V's LLaVA vision path) in a real ComfyUI.

The shrunk i2v_token_replace example graph, fp32, tiny weights. Only the Text Encode node's image
changes (node 80, a second LoadImage); the I2V Encode node keeps the same start image, so a change
in the video can only come through the text embeddings. Wrong wiring is a clear error naming the input.
"""

from __future__ import annotations

import pytest
import torch

from hunyuan.text.tiny import CLIP_FILE, LLAMA_FILE, LLAVA_DIR, VISION_FILE
from scripts.smoke_size import I2V_INPUT
from tests.checks import rel_err
from tests.server.test_i2v_inputs import put_image
from tests.server.test_i2v_server import run_latent, server_graph

pytestmark = pytest.mark.server


def text_image_graph(comfy, text_image: str, tag: str) -> dict:
    graph = server_graph("i2v_token_replace", tag=tag)
    graph["80"] = {"class_type": "LoadImage", "inputs": {"image": text_image}}
    graph["2"]["inputs"]["image"] = ["80", 0]
    return graph


def test_the_text_image_changes_the_video(comfy):
    a = run_latent(comfy, text_image_graph(comfy, put_image(comfy, "text_a.png"), "text_a"))
    b = run_latent(comfy, text_image_graph(comfy, put_image(comfy, "text_b.png", phase=90), "text_b"))
    assert torch.equal(a[:, :, :1], b[:, :, :1])  # the same start image: the same frame 0
    changed = rel_err(a[:, :, 1:], b[:, :, 1:])
    print(f"frames 1.. with another image for the text only: relative change {changed:.2e}")
    assert changed > 1e-4


def test_full_llava_folder_and_split_files_agree(comfy):
    """Tencent's text_encoder_i2v layout (vision from the LLaVA folder) = ComfyUI's split files (same values)."""
    split = run_latent(comfy, server_graph("i2v_token_replace", tag="split"))
    graph = server_graph("i2v_token_replace", tag="folder")
    graph["1"]["inputs"].update(llm=LLAVA_DIR, vision="from llm (full LLaVA folder)")
    folder = run_latent(comfy, graph)
    assert rel_err(folder, split) <= 1e-5


def test_image_without_a_vision_tower_is_named(comfy):
    graph = server_graph("i2v_token_replace", tag="novision")
    graph["1"]["inputs"]["vision"] = "none"
    message = comfy.run_expect_error(graph)
    assert "image is connected but the text encoder has no vision tower" in message


def test_i2v_template_without_an_image_is_named(comfy):
    graph = server_graph("i2v_token_replace", tag="noimage")
    del graph["2"]["inputs"]["image"]
    graph["2"]["inputs"]["template"] = "video_i2v"
    message = comfy.run_expect_error(graph)
    assert "template='video_i2v' has an '<image>' place but no image is connected" in message


def test_vision_from_a_text_only_folder_is_named(comfy):
    graph = server_graph("i2v_token_replace", tag="llamavision")
    graph["1"]["inputs"].update(llm="hyvid_tiny_llama", vision="from llm (full LLaVA folder)")
    message = comfy.run_expect_error(graph)
    assert "is not a full LLaVA checkpoint" in message and "hyvid_tiny_llama" in message


def encode_graph(prompt: str, with_image: bool) -> dict:
    graph = {
        "1": {"class_type": "HunyuanVideoTextEncoderLoader", "inputs": {
            "llm": LLAMA_FILE, "clip": CLIP_FILE, "dtype": "fp32", "vision": VISION_FILE}},
        "2": {"class_type": "HunyuanVideoTextEncode", "inputs": {
            "text_encoder": ["1", 0], "prompt": prompt, "template": "video", "custom_template": "",
            "hidden_state_skip_layer": 2, "apply_final_norm": False}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    if with_image:
        graph["80"] = {"class_type": "LoadImage", "inputs": {"image": I2V_INPUT}}
        graph["2"]["inputs"]["image"] = ["80", 0]
    return graph


def loads_during(comfy, graph: dict) -> int:
    """Models ComfyUI's manager loaded for the job (ModelPatcher logs 'loaded completely' per model)."""
    mark = comfy.log_size()
    comfy.run(graph)
    return comfy.log_path.read_bytes()[mark:].decode(errors="replace").count("loaded completely")


def test_vision_tower_loads_only_with_an_image_and_is_offloaded_after(comfy):
    assert loads_during(comfy, encode_graph("a fox in the snow, first", with_image=True)) == 3
    # all three were offloaded after the first job (ModelPatcher.detach), so they are loaded again
    assert loads_during(comfy, encode_graph("a fox in the snow, second", with_image=True)) == 3
    assert loads_during(comfy, encode_graph("a fox in the snow, third", with_image=False)) == 2
