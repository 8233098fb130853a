"""Building the LLM (transformers ``LlamaModel``) and CLIP-L (``CLIPTextModel``) without copies.

The files' key names (see :mod:`.layouts`) are mapped onto whatever the installed transformers
(4.5x or 5.x) names the parameters; users never re-save weights for a transformers upgrade.

Streaming load: the module is created with empty (meta) parameters; :mod:`.layouts` indexes a
safetensors file's header, and the tensors are then read and assigned in place
(``load_state_dict(assign=True)``). Those kept in the file's dtype come from one memory map of the
file: the parameters ARE the file's pages, so peak RAM is about one copy of the weights. The
converted ones are read with plain reads (no map), a layer at a time, so a dtype change peaks at
the converted model plus one layer or the embedding, whichever is larger (not the file as well).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

from ..checkpoint_io import CheckpointError, MapRefused, read_stored
from .dtypes import FP8, DtypeChoice, converting_choices, make_fp8_linears, resolve
from .layouts import FoundWeights, find_clip, find_llm

log = logging.getLogger(__name__)

# LLaVA-Llama-3-8B (xtuner/llava-llama-3-8b-v1_1) language model; shapes are re-read from the weights.
LLAVA_LLAMA3_8B = dict(
    vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001, pad_token_id=128258,
)
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


def _heads_for(hidden: int, head_dim: int) -> int:
    """Single files carry no config: real widths use the model's head_dim, test-sized ones 4 heads."""
    return hidden // head_dim if hidden >= 4 * head_dim else 4


# Fields of a config.json that describe the file, not the model; transformers sets them itself.
_FILE_FIELDS = ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path")


def _rope_as_saved_by_4x(config: dict) -> dict:
    """A config.json saved by transformers 5 holds ``rope_parameters``; 4.x reads only ``rope_theta``
    and ``rope_scaling`` (and would silently use theta 10000), 5.x reads both spellings. Use the 4.x one."""
    config = dict(config)
    params = dict(config.pop("rope_parameters", None) or {})
    if "rope_theta" in params:
        config.setdefault("rope_theta", params.pop("rope_theta"))
    if params.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", params)
    return config


def llama_fields(found: FoundWeights) -> dict:
    """The LLM's config.json fields: the folder's config (if any) with every shape re-read from the weights."""
    sd = found.tensors
    base = {**LLAVA_LLAMA3_8B, **_rope_as_saved_by_4x(found.config or {})}
    vocab, hidden = sd["embed_tokens.weight"].shape
    if found.config is None or "num_attention_heads" not in found.config:
        base["num_attention_heads"] = _heads_for(hidden, 128)
    heads = base["num_attention_heads"]
    head_dim = hidden // heads
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    base.update(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, head_dim=head_dim,
        intermediate_size=sd["layers.0.mlp.gate_proj.weight"].shape[0],
        num_key_value_heads=sd["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
    )
    return {k: v for k, v in base.items() if k not in _FILE_FIELDS}


def llama_config(found: FoundWeights) -> LlamaConfig:
    return LlamaConfig(**llama_fields(found))


def clip_fields(found: FoundWeights) -> dict:
    """CLIP-L's config.json fields, shapes re-read from the (``text_model.*``) weights."""
    sd = found.tensors
    base = {**CLIP_L, **(found.config or {})}
    vocab, hidden = sd["text_model.embeddings.token_embedding.weight"].shape
    if found.config is None or "num_attention_heads" not in found.config:
        base["num_attention_heads"] = _heads_for(hidden, 64)
    base.update(
        vocab_size=vocab, hidden_size=hidden,
        num_hidden_layers=1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")),
        intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
    )
    return {k: v for k, v in base.items() if k not in _FILE_FIELDS}


def clip_config(found: FoundWeights) -> CLIPTextConfig:
    return CLIPTextConfig(**clip_fields(found))


def _file_dtype(found: FoundWeights, key: str) -> torch.dtype:
    """The file's dtype; fp8 as soon as any weight is fp8 (ComfyUI's fp8_scaled keeps embeddings 16-bit)."""
    if found.scales or any(t.dtype == FP8 for t in found.tensors.values()):
        return FP8
    return found.tensors[key].dtype


def _to_fp8(tensor: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scalar scale) with weight * scale ~= the original.

    Weights already in fp8 keep the file's scale (ComfyUI fp8_scaled) or 1. Others get a per-tensor
    scale amax / 448, so the full e4m3 range is used instead of flushing small weights to subnormals.
    """
    if tensor.dtype == FP8:
        return tensor, (torch.ones(()) if scale is None else scale.to(torch.float32).reshape(()))
    amax = tensor.abs().max().to(torch.float32)
    scale = torch.where(amax > 0, amax / torch.finfo(FP8).max, torch.ones(()))
    return (tensor.to(torch.float32) / scale).to(FP8), scale


def _cast(tensor: torch.Tensor, scale: torch.Tensor | None, dtype: DtypeChoice) -> torch.Tensor:
    """One non-fp8-stored tensor into the compute dtype (no copy when it already is)."""
    if tensor.dtype == FP8:  # fp8 file, non-fp8 storage: dequantize
        tensor = tensor.to(torch.float32) * (scale if scale is not None else 1.0)
    return tensor if tensor.dtype == dtype.compute else tensor.to(dtype.compute)


def _storage_dtype(fp8_storage: bool, dtype: DtypeChoice) -> torch.dtype:
    """What a tensor is stored as in the model: :func:`_to_fp8` and :func:`_cast` return a file's
    tensor unchanged exactly when it already is this."""
    return FP8 if fp8_storage else dtype.compute


LAYER = re.compile(r"^(?:.*?\.)?layers\.\d+\.")


def _by_layer(names) -> list[list[str]]:
    """``names`` grouped by transformer layer (``...layers.N.``), every other tensor on its own."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = LAYER.match(name)
        groups.setdefault(match.group(0) if match else name, []).append(name)
    return list(groups.values())


def _model_prefix(model: torch.nn.Module, anchor: str, what: str) -> str:
    """Where the installed transformers puts the weights the files keep under one common prefix:
    the part of ``model.state_dict()``'s name before ``anchor`` (``text_model.`` for CLIP under
    transformers 4, nothing under 5)."""
    owners = [k[: -len(anchor)] for k in model.state_dict() if k == anchor or k.endswith("." + anchor)]
    if len(owners) != 1:
        raise RuntimeError(
            f"the installed transformers builds a {type(model).__name__} with {len(owners)} parameters named "
            f"'...{anchor}'; expected exactly one (this transformers version is not supported for the {what})"
        )
    return owners[0]


def _assign(model: torch.nn.Module, found: FoundWeights, dtype: DtypeChoice, fp8_names: set[str], what: str,
            file_prefix: str, anchor: str):
    """Put the file's tensors (real names, all under ``file_prefix``) into ``model``.

    ``file_prefix + anchor`` is one file key; the model's own name for it tells how the file's
    names map onto the installed transformers' names.
    """
    model_prefix = _model_prefix(model, anchor, what)

    def to_model(name: str) -> str:
        return model_prefix + name[len(file_prefix):]

    def to_file(name: str) -> str:
        return file_prefix + name[len(model_prefix):] if name.startswith(model_prefix) else name

    state = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        scale = found.scales.get(name)
        name = to_model(name)
        if name in fp8_names:
            state[name], state[name[: -len("weight")] + "weight_scale"] = _to_fp8(tensor, scale)
        else:
            state[name] = _cast(tensor, scale, dtype)

    # Tensors kept as they are come from one map of their file (they stay views of it); the
    # converted ones are read into memory of their own, a layer at a time.
    kept = {n: found.tensors.pop(n) for n in list(found.tensors)
            if found.tensors[n].dtype == _storage_dtype(to_model(n) in fp8_names, dtype)}
    try:
        kept = read_stored(kept)
    except MapRefused as exc:
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in kept.values()})
        choices = converting_choices(t.dtype for t in kept.values())
        raise MapRefused(exc.path, f"The {what}'s {', '.join(dtypes)} tensors are kept in the file's dtype, read "
                         f"through a map of it; load it with dtype {' or '.join(map(repr, choices))}, which "
                         "converts every tensor with plain reads a layer at a time, or free memory.") from exc
    for name in list(kept):  # dropping our reference as we go
        put(name, kept.pop(name))
    for names in _by_layer(list(found.tensors)):
        layer = read_stored({n: found.tensors.pop(n) for n in names}, copy=True)
        for name in names:
            put(name, layer.pop(name))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        missing, unexpected = [to_file(k) for k in missing], [to_file(k) for k in unexpected]
        raise CheckpointError(
            f"{what} checkpoint {str(found.source)!r} does not match the model built from its shapes: "
            f"missing {missing[:5]} ({len(missing)} total), unexpected {unexpected[:5]} ({len(unexpected)} total)"
        )
    model.load_state_dict(state, strict=True, assign=True)


def build_llm(found: FoundWeights, dtype: DtypeChoice) -> LlamaModel:
    dtype = resolve(dtype, _file_dtype(found, "embed_tokens.weight"))
    config = llama_config(found)
    config._attn_implementation = "sdpa"
    with init_empty_weights():
        model = LlamaModel(config)
    fp8_names = make_fp8_linears(model) if dtype.fp8 else set()
    _assign(model, found, dtype, fp8_names, "LLM", "", "embed_tokens.weight")
    return model.eval().requires_grad_(False)


def build_clip(found: FoundWeights, dtype: DtypeChoice) -> CLIPTextModel:
    key = "text_model.embeddings.token_embedding.weight"
    dtype = resolve(dtype, _file_dtype(found, key))
    if dtype.fp8:  # CLIP-L is 123M params: fp8 storage is not worth its accuracy cost
        dtype = DtypeChoice(dtype.compute, dtype.compute)
    config = clip_config(found)
    config._attn_implementation = "sdpa"
    with init_empty_weights():
        model = CLIPTextModel(config)
    _assign(model, found, dtype, set(), "CLIP", "text_model.", "embeddings.token_embedding.weight")
    return model.eval().requires_grad_(False)


def load_llm(path: str | Path, dtype: DtypeChoice) -> LlamaModel:
    """LLaVA-Llama-3 language model from any layout (see :mod:`.layouts`), on the CPU."""
    return build_llm(find_llm(path), dtype)


def load_clip(path: str | Path, dtype: DtypeChoice) -> CLIPTextModel:
    return build_clip(find_clip(path), dtype)


@dataclass
class TextEncoders:
    """Both encoders and their tokenizers, as the encode step needs them."""

    llm: LlamaModel
    llm_tokenizer: object
    clip: CLIPTextModel
    clip_tokenizer: object
