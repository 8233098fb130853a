"""Reduce an LM reply to the prompt text itself.

Chat models wrap their answer in things the DiT should never see: reasoning blocks
(``<think>...</think>``), leaked role tags (``<|assistant|>``, ``assistant:``), chatty openers
("Sure! Here is the rewritten prompt:"), labels ("Rewritten prompt:"), closing offers ("Let me
know if...") and quotes or code fences around the whole text. :func:`clean_output` removes
them and returns "" when nothing is left, so the caller can fall back to the user's prompt.
"""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<(think|thinking|reasoning)>.*", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"</(?:think|thinking|reasoning)>", re.IGNORECASE)

# Special tokens of the common chat formats: <|eot_id|>, <|im_start|>, [INST], </s>, ...
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|]{1,40}\|>|\[/?INST\]|</?s>|<start_of_turn>|<end_of_turn>")
_ROLE_LINE = re.compile(r"^\s*(?:\*\*)?(assistant|system|user|model|ai)(?:\*\*)?\s*(?::|\n)\s*", re.IGNORECASE)

_OPENER = re.compile(
    r"^\s*(?:sure(?:\s+thing)?|certainly|of\s+course|okay|ok|absolutely|alright|here\s+you\s+go)\s*[!.,:]\s*",
    re.IGNORECASE,
)
# "Here is the rewritten prompt:" / "Here's an enhanced version." / "Below is the prompt:"
_HERE_IS = re.compile(
    r"^\s*(?:here\s+is|here's|here\s+are|below\s+is|i\s+have\s+rewritten|i've\s+rewritten)"
    r"(?=[^\n]{0,100}?(?:prompt|rewrit|version|descript|enhanc|expan|improv|refin))"
    r"[^\n:]{0,100}?(?::|\.(?=\s*\n)|\n)\s*",
    re.IGNORECASE,
)
# A label line such as "Rewritten prompt:" or "**Enhanced Prompt:**".
_LABEL = re.compile(
    r"^\s*[*#_ ]*(?:(?:rewritten|enhanced|improved|final|expanded|detailed|refined|new|english|"
    r"video|output)\s+)*(?:prompt|rewrite|output|answer|description|result|response)\s*"
    r"(?:\([^)\n]{0,30}\))?\s*[*_]*\s*:\s*[*_]*\s*",
    re.IGNORECASE,
)
_CLOSER = re.compile(
    r"\n\s*(?:let me know|i hope|feel free|hope this|if you(?:'d| would) like|note:)[^\n]*\s*$",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"), ("`", "`"))


def strip_reasoning(text: str) -> str:
    """Drop reasoning blocks; an unclosed one (the reply ran out of tokens) drops the rest."""
    text = _THINK_BLOCK.sub("", text)
    close = list(_THINK_CLOSE.finditer(text))
    if close:  # the template opened the block for the model: keep what follows the last close
        text = text[close[-1].end():]
    return _THINK_OPEN.sub("", text)


def strip_role_tags(text: str) -> str:
    """Remove special chat tokens and a leading role name such as ``assistant:``."""
    text = _SPECIAL_TOKEN.sub("\n", text)
    previous = None
    while previous != text:
        previous = text
        text = _ROLE_LINE.sub("", text, count=1)
    return text


def strip_preamble(text: str) -> str:
    """Remove openers ("Sure!"), "Here is..." lead-ins and labels ("Rewritten prompt:")."""
    previous = None
    while previous != text:
        previous = text
        text = text.lstrip()
        for pattern in (_OPENER, _HERE_IS, _LABEL):
            text = pattern.sub("", text, count=1)
    return _CLOSER.sub("", text)


def strip_wrapping(text: str) -> str:
    """Remove code fences and matching quotes around the whole text (repeatedly)."""
    previous = None
    while previous != text:
        previous = text
        text = text.strip()
        fence = _FENCE.match(text)
        if fence:
            text = fence.group(1)
            continue
        for left, right in _QUOTE_PAIRS:
            inner = text[len(left):-len(right)]
            if len(text) >= 2 and text.startswith(left) and text.endswith(right):
                # '"a" and "b"' is two quoted texts, not one; apostrophes make "'" the exception
                if left != "'" and (left in inner or right in inner):
                    continue
                text = inner
                break
    return text


def clean_output(text: str) -> str:
    """The prompt text inside an LM reply, or "" if there is none."""
    text = strip_reasoning(text or "")
    text = strip_role_tags(text)
    text = strip_preamble(text)
    text = strip_wrapping(text)
    text = strip_preamble(text)  # a label may sit inside the quotes
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
