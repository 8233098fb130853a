"""The HunyuanVideo DiT stage: config, model, token refiner, attention backends, loading."""

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
