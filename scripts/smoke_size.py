"""Shrink an example workflow to a size tiny random weights run in seconds on a CPU.

The files in workflows/ carry real settings (848x480, 61 frames, 30 steps) for real weights. The
demo and the tests run the same graphs with only these numbers changed.
"""

from __future__ import annotations

import copy

SMOKE_INPUTS = {
    "HunyuanVideoSampler": {"width": 64, "height": 48, "frames": 9},
    "HunyuanVideoScheduler": {"steps": 3},
    "HunyuanVideoI2VEncode": {"width": 64, "height": 48},
    "HunyuanVideoPromptRewrite": {"max_new_tokens": 12},
}


def shrink(api: dict) -> dict:
    """A copy of an API-format workflow with the smoke-test sizes (linked inputs are kept)."""
    out = copy.deepcopy(api)
    for node in out.values():
        for name, value in SMOKE_INPUTS.get(node["class_type"], {}).items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return out


I2V_INPUT = "hunyuan_i2v_input.png"  # the image workflows/i2v_*_api.json load from input/


def smoke_image_pixels(width: int, height: int, mode: str = "RGB", phase: int = 0):
    """A colourful test picture as a PIL image (``mode`` RGB, L or RGBA; ``phase`` shifts the pattern)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 4 + phase) % 256, (yy * 5 + 2 * phase) % 256, (xx + yy * 3) % 256], -1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(((xx * 7) % 256).astype(np.uint8), "L"))
    return image.convert(mode) if mode != "RGBA" else image


def write_smoke_input_image(path) -> None:
    """The I2V examples' start image, at the smoke size."""
    size = SMOKE_INPUTS["HunyuanVideoI2VEncode"]
    smoke_image_pixels(size["width"], size["height"]).save(str(path))


V2V_INPUT = "hunyuan_v2v_input.mp4"  # the file workflows/v2v_api.json loads from input/


def write_smoke_input_video(path) -> None:
    """A short colourful clip at the smoke size, as the v2v example's input."""
    import av
    import numpy as np

    size = SMOKE_INPUTS["HunyuanVideoSampler"]
    width, height, frames = size["width"], size["height"], size["frames"]
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.stack([(xx * 4 + i * 16) % 256, (yy * 5) % 256, np.full_like(xx, 128 + 8 * i)], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
