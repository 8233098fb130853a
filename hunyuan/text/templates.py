"""Prompt templates for the LLaVA-Llama-3 text encoder.

HunyuanVideo wraps the user's prompt in a chat template before the LLM sees it, then drops the
template's tokens from the hidden states ("crop"). The template strings below are model inputs:
they must stay byte-identical to the ones the weights were trained with (Tencent's
``PROMPT_TEMPLATE`` for video and image), so they are kept as data, not prose.

The crop offset is measured with the real tokenizer (:func:`crop_start`) instead of being
hard-coded, so a custom template gets the right offset too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

PLACEHOLDER = "{}"

_VIDEO = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Describe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)

_IMAGE = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Describe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)


# HunyuanVideo-I2V: the image's tokens replace ``<image>``; the assistant header closes the chat.
_VIDEO_I2V = (
    "<|start_header_id|>system<|end_header_id|>\n\n<image>\nDescribe the video by detailing the following "
    "aspects according to the reference image: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>\n\n"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class PromptTemplate:
    """A chat template with exactly one ``{}`` where the prompt goes."""

    name: str
    text: str

    def __post_init__(self):
        count = self.text.count(PLACEHOLDER)
        if count != 1:
            raise ValueError(
                f"template {self.name!r} contains {count} '{{}}' placeholders; expected exactly one "
                "marking where the prompt is inserted"
            )

    @property
    def prefix(self) -> str:
        """The template text before the prompt."""
        return self.text.split(PLACEHOLDER)[0]

    def apply(self, prompt: str) -> str:
        return self.prefix + prompt + self.text.split(PLACEHOLDER)[1]

    @property
    def takes_image(self) -> bool:
        """True when the template has the ``<image>`` place the image's tokens go (before the prompt)."""
        return IMAGE_MARKER in self.prefix


VIDEO = PromptTemplate("video", _VIDEO)
IMAGE = PromptTemplate("image", _IMAGE)
VIDEO_I2V = PromptTemplate("video_i2v", _VIDEO_I2V)
TEMPLATES = {"video": VIDEO, "image": IMAGE, "video_i2v": VIDEO_I2V}
TEMPLATE_NAMES = ("video", "image", "video_i2v", "custom")


def get_template(name: str, custom_text: str = "") -> PromptTemplate:
    """Look up ``video``/``image``, or build ``custom`` from ``custom_text``."""
    if name == "custom":
        if not custom_text.strip():
            raise ValueError("template='custom' needs a custom_template text containing '{}'; got an empty text")
        return PromptTemplate("custom", custom_text)
    if name not in TEMPLATES:
        raise ValueError(f"template={name!r} is unknown; expected one of {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[name]


def image_template(template: PromptTemplate) -> PromptTemplate:
    """The template to use when an image comes with the prompt: ``video`` becomes ``video_i2v``
    (Tencent's HunyuanVideo-I2V template); any other must already have ``<image>`` before ``{}``."""
    if template is VIDEO:
        return VIDEO_I2V
    if not template.takes_image:
        raise ValueError(
            f"template={template.name!r} has no '{IMAGE_MARKER}' before '{{}}' but an image is connected; "
            "use template 'video' or 'video_i2v', or a custom template with '<image>' where the image tokens go"
        )
    return template


def crop_start(tokenizer, template: PromptTemplate) -> int:
    """Number of tokens (BOS included) the template puts before the prompt.

    The prefix is tokenized on its own; the result is checked against the tokenization of the
    full template with a sample prompt, so a template whose last token would merge with the
    prompt is reported instead of silently cropping one token too many or too few.
    """
    prefix_ids = tokenizer(template.prefix, add_special_tokens=True)["input_ids"]
    sample_ids = tokenizer(template.apply("A cat"), add_special_tokens=True)["input_ids"]
    if sample_ids[: len(prefix_ids)] != prefix_ids:
        raise ValueError(
            f"template {template.name!r}: its text before '{{}}' does not tokenize to a stable prefix "
            "(the last template token merges with the prompt); end the part before '{}' with a "
            "special token or a newline"
        )
    return len(prefix_ids)
