"""Socket types shared by the pack's nodes, and the one category they all live in."""

from comfy_api.latest import io

CATEGORY = "HunyuanVideo"

# Custom socket types. The strings are part of saved workflows: never rename them.
TextEncoder = io.Custom("HYVID_TEXT_ENCODER")  # LLM + CLIP-L, wrapped in ModelPatchers
TextEmbeds = io.Custom("HYVID_TEXT_EMBEDS")  # LLM states + mask + CLIP pooled (positive/negative)
DiT = io.Custom("HYVID_DIT")  # the DiT in a ModelPatcher, plus swap/attention options
Conditioning = io.Custom("HYVID_CONDITIONING")  # refined text tokens for every step of a schedule
VAE = io.Custom("HYVID_VAE")  # the causal 3D VAE in a ModelPatcher
RewriteModel = io.Custom("HYVID_REWRITE_MODEL")  # a rewrite backend: local causal LM or OpenAI-compatible endpoint
