"""TEST-ONLY ComfyUI custom node: native HunyuanVideo DiT detection at the tiny test widths.

ComfyUI reads a HunyuanVideo DiT's config from its keys (``comfy.model_detection.detect_unet_config``)
but fixes three numbers to the real model's: ``num_heads = hidden_size // 128``, RoPE axes
``[16, 56, 56]`` and a pooled-text width (``vec_in_dim``) of 768. The test server's tiny DiTs
(``hunyuan.dit.tiny``: hidden 64, 4 heads of 16, axes 4+6+6, pooled width 32) would be built with
0 heads and fail to load. The test harness (tests/harness.py) links this folder into the session
server's ``custom_nodes/``; at import it wraps ``detect_unet_config`` so that, for a HunyuanVideo
file whose hidden size is the tiny one, exactly those three numbers come from the tiny config
(``vec_in_dim`` from the file's ``vector_in`` weight). Every other file's config is ComfyUI's own.

Everything else stays ComfyUI's real code: the file reading and key renames, the variant choice
(``HunyuanVideo`` / ``HunyuanVideoI2V`` 33 ch / ``HunyuanVideoSkyreelsI2V`` 32 ch, from the
channels), the model, ``UNETLoader``, ``HunyuanImageToVideo``, ``KSampler``. This never ships to
users: it lives under tests/, the pack does not import it, and ComfyUI only loads it where the
test harness links it. It registers no nodes.
"""

import logging
import sys
from pathlib import Path

import comfy.model_detection as detection

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

log = logging.getLogger("hyvid_test_native_dit_widths")  # __name__ is a path here
REPO = Path(__file__).resolve().parents[3]


def _tiny():
    """The pack's tiny DiT config (repo root on sys.path only briefly)."""
    sys.path.insert(0, str(REPO))
    try:
        from hunyuan.dit.tiny import tiny_config
    finally:
        sys.path.remove(str(REPO))
    return tiny_config()


def _tiny_detection(original, tiny):
    def detect_unet_config(state_dict, key_prefix, metadata=None):
        config = original(state_dict, key_prefix, metadata=metadata)
        if not config or config.get("image_model") != "hunyuan_video" or config.get("hidden_size") != tiny.hidden_size:
            return config
        vector = state_dict.get(f"{key_prefix}vector_in.in_layer.weight")
        config = {**config, "num_heads": tiny.num_heads, "axes_dim": list(tiny.rope_axes),
                  "vec_in_dim": None if vector is None else int(vector.shape[1])}
        log.warning("TEST SHIM: tiny HunyuanVideo DiT detected (%d input channels): num_heads %d, axes_dim %s, "
                    "vec_in_dim %s", config["in_channels"], config["num_heads"], config["axes_dim"],
                    config["vec_in_dim"])
        return config

    detect_unet_config.hyvid_test_shim = True
    return detect_unet_config


def install() -> None:
    if getattr(detection.detect_unet_config, "hyvid_test_shim", False):
        return
    tiny = _tiny()
    detection.detect_unet_config = _tiny_detection(detection.detect_unet_config, tiny)
    log.warning("TEST SHIM: hyvid_test_native_dit_widths is active: native HunyuanVideo DiTs of hidden size %d "
                "are detected at the tiny test widths. Never use this with real weights.", tiny.hidden_size)


install()
