"""HunyuanVideo's causal 3D VAE ("884-16c-hy"): model, loading, tiled decode/encode, tiny weights."""

from .config import HUNYUAN_VIDEO_VAE, SCALING_FACTOR, TINY_VAE, VAEConfig
from .loader import load_vae
from .model import CausalVAE

__all__ = ["HUNYUAN_VIDEO_VAE", "SCALING_FACTOR", "TINY_VAE", "CausalVAE", "VAEConfig", "load_vae"]
