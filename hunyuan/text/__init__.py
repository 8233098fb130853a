"""Text-encoder stage: LLaVA-Llama-3 language model + CLIP-L, templates, encoding.

Loading works from every layout users have (see :mod:`.layouts`); encoding returns
:class:`hunyuan.conditioning.TextEmbeds` (states, mask, pooled). Image-to-video adds LLaVA's
vision tower (:mod:`.vision`) and the image-conditioned encoding (:mod:`.encode_image`).
"""

from .dtypes import DTYPE_CHOICES, DtypeChoice, parse_dtype
from .encode import EncodeOptions, encode_prompts, encode_texts
from .encode_image import encode_prompts_image
from .loader import TextEncoders, load_clip, load_llm
from .templates import (
    IMAGE,
    TEMPLATE_NAMES,
    VIDEO,
    VIDEO_I2V,
    PromptTemplate,
    crop_start,
    get_template,
    image_template,
)
from .tokenizers import load_clip_tokenizer, load_llm_tokenizer
from .vision import LlavaVision, load_vision

__all__ = [
    "DTYPE_CHOICES", "DtypeChoice", "EncodeOptions", "IMAGE", "LlavaVision", "PromptTemplate", "TEMPLATE_NAMES",
    "TextEncoders", "VIDEO", "VIDEO_I2V", "crop_start", "encode_prompts", "encode_prompts_image", "encode_texts",
    "get_template", "image_template", "load_clip", "load_clip_tokenizer", "load_llm", "load_llm_tokenizer",
    "load_vision", "parse_dtype",
]
