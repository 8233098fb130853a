"""The HunyuanVideo DiT stage: config, model, token refiner, attention backends, loading.

Sampling without ``txt_in`` on the device: the token refiner depends only on (text, timestep),
so :func:`precompute_refined_text` runs it once per step of the schedule (positive and negative
prompts separately) and returns a :class:`~hunyuan.conditioning.RefinedText`. The DiT is then
called with ``refined_text=tokens[step]`` and never touches ``txt_in``.
:meth:`HunyuanVideoDiT.detach_refiner` takes ``txt_in`` out of the module tree so that moving,
sizing or swapping the DiT leaves the refiner where it is (the ComfyUI loader gives it its own
ModelPatcher). Module names follow Tencent's checkpoint keys; :mod:`.keymap` maps the ComfyUI
and diffusers layouts onto them and :func:`.checkpoint.load_dit` reads any of them.
"""

from .attention import AttentionBackendError, available_backends, register_attention_backend, resolve_backend
from .config import REAL, TINY, DiTConfig, infer_config
from .model import HunyuanVideoDiT
from .refiner import SingleTokenRefiner, precompute_refined_text

__all__ = [
    "REAL",
    "TINY",
    "AttentionBackendError",
    "DiTConfig",
    "HunyuanVideoDiT",
    "SingleTokenRefiner",
    "available_backends",
    "infer_config",
    "precompute_refined_text",
    "register_attention_backend",
    "resolve_backend",
]
