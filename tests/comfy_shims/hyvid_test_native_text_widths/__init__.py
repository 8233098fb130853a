"""TEST-ONLY ComfyUI custom node: native hunyuan_video text encoders at the tiny test widths.

ComfyUI builds the hunyuan_video text encoder (``DualCLIPLoader`` type ``hunyuan_video``) at the
real widths: Llama-3-8B from ``comfy.text_encoders.llama.Llama2Config`` (``head_dim`` a class
attribute, not a field) and CLIP-L from ``comfy/sd1_clip_config.json``. The test server has only
the tiny random weights of ``hunyuan.text.tiny``, so its native text path would fail on shape
mismatches. The test harness (tests/harness.py) links this folder into the session server's
``custom_nodes/``; at import it changes exactly two things:

1. ``comfy.text_encoders.llama.Llama2Config`` becomes a subclass in which ``head_dim`` is a
   dataclass field with the same default (128), so a config dict may set it. Nothing that does
   not pass ``head_dim`` sees a difference.
2. ``comfy.text_encoders.hunyuan_video.hunyuan_video_clip`` (the factory ``comfy.sd`` calls for the
   hunyuan_video type) returns a subclass of ComfyUI's model class that adds
   ``llama_model_config`` / ``clip_l_model_config`` to its ``model_options``: ComfyUI's own
   per-model override hook in ``SDClipModel``, set to ``TINY_LLAMA`` / ``TINY_CLIP``.

Tokenizers, the prompt template, the crop, file loading, ``DualCLIPLoader`` and ``CLIPTextEncode``
stay ComfyUI's real code. This never ships to users: it lives under tests/, the pack does not
import it, and ComfyUI only loads it where the test harness links it. It registers no nodes.
"""

import dataclasses
import logging
import sys
from pathlib import Path

import comfy.text_encoders.hunyuan_video as hunyuan_video
import comfy.text_encoders.llama as llama

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

log = logging.getLogger("hyvid_test_native_text_widths")  # __name__ is a path here
REPO = Path(__file__).resolve().parents[3]


def _tiny_widths() -> tuple[dict, dict]:
    """TINY_LLAMA and TINY_CLIP from the pack's own tiny-weight writer (repo root on sys.path only briefly)."""
    sys.path.insert(0, str(REPO))
    try:
        from hunyuan.text.tiny import TINY_CLIP, TINY_LLAMA
    finally:
        sys.path.remove(str(REPO))
    return dict(TINY_LLAMA), dict(TINY_CLIP)


@dataclasses.dataclass
class Llama2ConfigSettableHeadDim(llama.Llama2Config):
    head_dim: int = llama.Llama2Config.head_dim


def _tiny_factory(original, widths: dict):
    def hunyuan_video_clip(*args, **kwargs):
        real = original(*args, **kwargs)

        class TinyHunyuanVideoClipModel(real):
            def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
                log.warning("TEST SHIM: building the hunyuan_video text encoder at tiny widths %s", widths)
                # Merge per model: ComfyUI itself may already put e.g. max_position_embeddings there.
                merged = {**model_options, **{k: {**v, **model_options.get(k, {})} for k, v in widths.items()}}
                super().__init__(device=device, dtype=dtype, model_options=merged)

        return TinyHunyuanVideoClipModel

    hunyuan_video_clip.hyvid_test_shim = True
    return hunyuan_video_clip


def install() -> None:
    if getattr(hunyuan_video.hunyuan_video_clip, "hyvid_test_shim", False):
        return
    tiny_llama, tiny_clip = _tiny_widths()
    llama.Llama2Config = Llama2ConfigSettableHeadDim
    widths = {"llama_model_config": tiny_llama, "clip_l_model_config": tiny_clip}
    hunyuan_video.hunyuan_video_clip = _tiny_factory(hunyuan_video.hunyuan_video_clip, widths)
    log.warning("TEST SHIM: hyvid_test_native_text_widths is active: native hunyuan_video text encoders are "
                "built at the tiny test widths (Llama %s, CLIP-L %s). Never use this with real weights.",
                tiny_llama, tiny_clip)


install()
