"""Image-to-video inputs through a real ComfyUI: the image is used, odd images, bad graphs.

Each graph is the shrunk example (tests/server/test_i2v_server.server_graph); errors must name
the input and leave the server up (the next job runs).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from scripts.smoke_size import SMOKE_INPUTS, smoke_image_pixels
from tests.checks import rel_err
from tests.harness import size_graph
from tests.server.test_i2v_server import DIT_FILES, run_latent, server_graph

pytestmark = pytest.mark.server

SIZE = SMOKE_INPUTS["HunyuanVideoI2VEncode"]
T2V_DIT = "hunyuan_video_t2v_720p_bf16.safetensors"


def put_image(comfy, name: str, *, mode: str = "RGB", phase: int = 0, scale: float = 1.0) -> str:
    width, height = int(SIZE["width"] * scale), int(SIZE["height"] * scale)
    smoke_image_pixels(width, height, mode, phase).save(str(comfy.base_dir / "input" / name))
    return name


def test_the_image_is_used(comfy):
    """Another start image, another video (frames 1.., which token replace denoises)."""
    a = run_latent(comfy, server_graph("i2v_token_replace", image=put_image(comfy, "a.png"), tag="use_a"))
    b = run_latent(comfy, server_graph("i2v_token_replace", image=put_image(comfy, "b.png", phase=90), tag="use_b"))
    assert rel_err(a[:, :, :1], b[:, :, :1]) > 0.1  # frame 0 is each image's latent
    changed = rel_err(a[:, :, 1:], b[:, :, 1:])
    print(f"frames 1.. with another image: relative change {changed:.2e}")  # measured 3.6e-2
    assert changed > 1e-3


def test_t2v_mode_ignores_the_image(comfy):
    """mode t2v on a 16-channel DiT is text-to-video: the same latent as the graph without an image."""
    with_image = server_graph("i2v_token_replace", dit=T2V_DIT, mode="t2v", tag="t2v_img")
    without = server_graph("i2v_token_replace", dit=T2V_DIT, tag="t2v_none")
    del without["6"]["inputs"]["image_latent"]
    ignored, plain = run_latent(comfy, with_image), run_latent(comfy, without)
    assert rel_err(ignored, plain) <= 1e-6
    replaced = run_latent(comfy, server_graph("i2v_token_replace", dit=T2V_DIT, tag="t2v_tr"))
    assert rel_err(replaced[:, :, 1:], plain[:, :, 1:]) > 1e-5  # token_replace on a T2V file runs: it cannot tell


@pytest.mark.parametrize("dit", ["concat", "skyreels"])
def test_i2v_dit_without_an_image_is_a_clear_error(comfy, dit):
    graph = server_graph("i2v_token_replace", dit=DIT_FILES[dit], tag=f"noimg_{dit}")
    del graph["6"]["inputs"]["image_latent"]
    message = comfy.run_expect_error(graph)
    assert "image: this DiT is an image-to-video model" in message and "I2V Encode" in message
    run_latent(comfy, server_graph("i2v_token_replace", tag="after_error"))  # the server is still up


def test_size_mismatch_between_encode_and_sampler_is_named(comfy):
    graph = server_graph("i2v_token_replace", tag="mismatch")
    graph["23"]["inputs"]["width"] = 96
    message = comfy.run_expect_error(graph)
    assert "image was encoded at 96x48 but the sampler makes 64x48" in message


def test_small_image_is_upscaled_like_the_references(comfy):
    small = run_latent(comfy, server_graph("i2v_token_replace", image=put_image(comfy, "small.png", scale=0.5),
                                           tag="small"))
    assert small.shape == (1, 16, 3, SIZE["height"] // 8, SIZE["width"] // 8)
    assert "smaller than the 64x48 video: upscaled" in comfy.log_text()


def test_grayscale_and_rgba_images_encode_as_rgb(comfy):
    """LoadImage already makes RGB; an RGBA IMAGE from another node (JoinImageWithAlpha) has its alpha dropped."""
    rgb = run_latent(comfy, server_graph("i2v_token_replace", image=put_image(comfy, "rgb.png"), tag="rgb"))
    rgba = server_graph("i2v_token_replace", image="rgb.png", tag="rgba")
    rgba["24"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["22", 0], "alpha": ["22", 1]}}
    rgba["23"]["inputs"]["image"] = ["24", 0]
    assert torch.equal(run_latent(comfy, rgba), rgb)
    gray = run_latent(comfy, server_graph("i2v_token_replace", image=put_image(comfy, "gray.png", mode="L"),
                                          tag="gray"))
    Image.open(comfy.base_dir / "input" / "gray.png").convert("RGB").save(str(comfy.base_dir / "input" / "gray_rgb.png"))
    gray_rgb = run_latent(comfy, server_graph("i2v_token_replace", image="gray_rgb.png", tag="gray_rgb"))
    assert gray.shape == rgb.shape and rel_err(gray, rgb) > 1e-3
    assert torch.equal(gray, gray_rgb)


def test_i2v_size_gives_tencents_bucket_for_the_image(comfy):
    """A 3:2 portrait image: the 360p bucket closest to its aspect (hunyuan.sampling.image.bucket_for)."""
    Image.new("RGB", (200, 300), (30, 60, 90)).save(str(comfy.base_dir / "input" / "portrait.png"))
    outputs = comfy.run(size_graph("portrait.png"), timeout=120)["outputs"]
    assert (outputs["83"]["text"][0], outputs["84"]["text"][0]) == ("384", "576")  # width, height
    message = comfy.run_expect_error(size_graph("portrait.png", "1080p"))
    assert "resolution" in message and "1080p" in message
