"""Loading the Llama-3 and CLIP tokenizers from a folder, with errors that say what is missing.

The pack never downloads: single-file checkpoints use the tokenizer folders ComfyUI ships
(``comfy/text_encoders/llama_tokenizer`` and ``comfy/sd1_tokenizer``), passed in by the caller.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import CLIPTokenizer, PreTrainedTokenizerFast

from ..checkpoint_io import CheckpointError

log = logging.getLogger(__name__)

LLAMA_FILES = ("tokenizer.json",)
CLIP_FILES = ("vocab.json", "merges.txt")


def _check(folder: Path, needed: tuple[str, ...], what: str) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"{what} tokenizer folder {str(folder)!r} does not exist (expected {', '.join(needed)})")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{what} tokenizer file {str(folder / missing[0])!r} is missing: the folder {str(folder)!r} "
            f"must contain {', '.join(needed)}"
        )


def load_llm_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Llama-3 tokenizer: ``tokenizer.json``'s own pipeline, the special tokens of
    ``tokenizer_config.json``; pads on the right.

    The class is chosen here, not by the config's ``tokenizer_class``: LLaVA-Llama-3 folders name
    ``LlamaTokenizer``, and transformers 5's class of that name rebuilds a SentencePiece-style
    (Metaspace) pipeline around the byte-level BPE vocabulary, which drops spaces and newlines.
    """
    folder = Path(folder)
    _check(folder, LLAMA_FILES, "Llama-3")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token_id is None:
        raise CheckpointError(
            f"Llama-3 tokenizer in {str(folder)!r} has no pad token; expected LLaVA's '<pad>' in tokenizer_config.json"
        )
    tokenizer.padding_side = "right"
    return tokenizer


def load_clip_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``)."""
    folder = Path(folder)
    _check(folder, CLIP_FILES, "CLIP")
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
