"""The pack's HTTP routes on a real server: the VRAM estimate validates what it is given."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server


def test_estimate_grows_with_the_video(comfy):
    small = comfy.get("/hunyuanvideo/estimate?width=544&height=960&frames=129")
    large = comfy.get("/hunyuanvideo/estimate?width=1280&height=720&frames=129")
    assert 0 < small["peak_bytes"] < large["peak_bytes"]


def test_block_swap_lowers_the_estimate(comfy):
    none = comfy.get("/hunyuanvideo/estimate?width=848&height=480&frames=61")
    swapped = comfy.get("/hunyuanvideo/estimate?width=848&height=480&frames=61&double_blocks=20&single_blocks=40")
    assert swapped["peak_bytes"] < none["peak_bytes"] - 10 * 2**30  # most of the 25.6 GB of bf16 weights


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("width=1000&height=720&frames=129", "width=1000"),
        ("width=1280&height=720&frames=130", "frames=130"),
        ("width=abc", "width='abc'"),
        ("width=-16", "width"),
        ("width=99999999", "width=99999999"),
        ("frames=0", "frames=0"),
        ("double_blocks=1.5", "double_blocks"),
        ("weight_dtype=int4", "weight_dtype='int4'"),
        ("cfg=maybe", "cfg='maybe'"),
        ("colour=blue", "colour"),
    ],
)
def test_bad_parameters_get_400_naming_them(comfy, query, names):
    status, body = comfy.request("GET", f"/hunyuanvideo/estimate?{query}")
    assert status == 400, body
    assert names in body["error"], body
    assert comfy.alive()
