"""Extract the text encoder (the Llama language model) from a full LLaVA-Llama-3 checkpoint.

    python -m hunyuan.tools.split_llava SRC_LLAVA_DIR DST_DIR

DST_DIR becomes an HF ``LlamaForCausalLM`` folder (config.json, tokenizer files, safetensors
shards + index) - the same layout Tencent's preprocessing writes. CPU only. The tool walks the
source index shard by shard and opens only shards holding language-model keys (the vision tower
is never read); each output shard is streamed to disk from the memory-mapped input, so peak RAM
stays around the largest input shard.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import struct
import sys
from pathlib import Path

import torch

from ..checkpoint_io import SAFETENSORS_DTYPES, CheckpointError, load_state_dict, weight_files
from ..text.layouts import FoundWeights, config_json, is_llava_config, read_config
from ..text.loader import llama_fields

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "generation_config.json")
# source prefix -> LlamaForCausalLM name (old xtuner/transformers<4.52 names and 4.52+ names)
RENAMES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
           ("model.language_model.", "model."), ("lm_head.", "lm_head."))
ST_DTYPES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}  # torch dtype -> header name


def language_model_name(key: str) -> str | None:
    """The LlamaForCausalLM name of a LLaVA key, or None for vision tower / projector keys."""
    for src, dst in RENAMES:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None,
                      make=None) -> None:
    """Stream tensors into a safetensors file one by one (no in-memory copy of the whole shard).

    ``make(name, tensor)``, when given, makes each tensor's data just before it is written (the
    names, shapes and dtypes come from ``tensors``, which may then be meta tensors): a file far
    larger than memory can be written this way (``scripts/rehearse.py``)."""
    header, offset = {}, 0
    for name, tensor in tensors.items():
        if tensor.dtype not in ST_DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": ST_DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, tensor in tensors.items():
            tensor = make(name, tensor) if make is not None else tensor
            flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(flat.numpy()))


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        log.warning("%s has no tokenizer.json/tokenizer.model: pass a tokenizer folder when loading %s", src, dst)
    return copied


def split_llava(src: str | Path, dst: str | Path) -> Path:
    """Write the text-encoder-only HF folder for the LLaVA checkpoint in ``src`` into ``dst``."""
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if not is_llava_config(config):
        raise CheckpointError(f"{str(src / 'config.json')!r} is not a LLaVA config (expected model_type 'llava' with a text_config)")
    shards = weight_files(src, wanted=lambda k: language_model_name(k) is not None)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map, shapes, total = {}, {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        part = {}
        for key, tensor in load_state_dict(shard).items():
            new = language_model_name(key)
            if new is not None:
                part[new] = tensor
        write_safetensors(dst / name, part, {"format": "pt"})
        for key, tensor in part.items():
            weight_map[key] = name
            shapes[key] = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
            total += tensor.numel() * tensor.element_size()
        log.info("%s: %d language-model tensors -> %s", shard.name, len(part), name)
        del part
    found = FoundWeights(src, {k[len("model."):]: v for k, v in shapes.items() if k.startswith("model.")},
                         config.get("text_config") or {})
    dtype = str(found.tensors["embed_tokens.weight"].dtype).removeprefix("torch.")
    config = config_json("llama", "LlamaForCausalLM", llama_fields(found), dtype)
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    _copy_tokenizer(src, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hunyuan.tools.split_llava", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="full LLaVA-Llama-3 folder (config.json + safetensors shards + index)")
    parser.add_argument("dst", type=Path, help="output folder for the text-encoder-only HF checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = split_llava(args.src, args.dst)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
