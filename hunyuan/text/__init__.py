"""Text-encoder stage: LLaVA-Llama-3 language model + CLIP-L, templates, encoding.

Loading works from every layout users have (see :mod:`.layouts`); encoding returns
:class:`hunyuan.conditioning.TextEmbeds` (states, mask, pooled).
"""

from .dtypes import DTYPE_CHOICES, DtypeChoice, parse_dtype
from .encode import EncodeOptions, encode_prompts, encode_texts
from .loader import TextEncoders, load_clip, load_llm
from .templates import IMAGE, TEMPLATE_NAMES, VIDEO, PromptTemplate, crop_start, get_template
from .tokenizers import load_clip_tokenizer, load_llm_tokenizer

__all__ = [
    "DTYPE_CHOICES", "DtypeChoice", "EncodeOptions", "IMAGE", "PromptTemplate", "TEMPLATE_NAMES",
    "TextEncoders", "VIDEO", "crop_start", "encode_prompts", "encode_texts", "get_template",
    "load_clip", "load_clip_tokenizer", "load_llm", "load_llm_tokenizer", "parse_dtype",
]
