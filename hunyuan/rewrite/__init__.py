"""Prompt rewrite: turn a short user prompt into the detailed English description the DiT
was trained on, with a local chat LM or an OpenAI-compatible endpoint.

The pieces, in the order a call goes through them: :mod:`.templates` builds the chat messages
for a mode, a backend (:mod:`.local` or :mod:`.endpoint`) produces the raw reply,
:mod:`.cleaning` strips what is not prompt text, and :mod:`.core` ties it together with the
fallback to the original prompt and an in-process LRU cache.
"""

from .cleaning import clean_output
from .core import DEFAULT_CACHE, RewriteCache, RewriteResult, SamplingParams, rewrite
from .templates import MODES, build_messages, system_prompt

__all__ = [
    "DEFAULT_CACHE",
    "MODES",
    "RewriteCache",
    "RewriteResult",
    "SamplingParams",
    "build_messages",
    "clean_output",
    "rewrite",
    "system_prompt",
]
