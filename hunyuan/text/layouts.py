"""Finding the LLM and CLIP-L weights in every on-disk layout users have.

Layouts of the LLaVA-Llama-3 language model:

* an HF folder with a Llama ``config.json`` (Tencent's text-encoder split, or our split tool);
* the FULL LLaVA checkpoint (``LlavaForConditionalGeneration``): keys ``language_model.model.*``
  on disk (transformers < 4.52 and xtuner's release) or ``model.language_model.*`` (4.52+).
  Only shards that hold language-model keys are opened; vision tower and projector are skipped;
* ComfyUI's single file (``models/text_encoders/llava_llama3_fp16.safetensors``): keys
  ``model.*``; its ``fp8_scaled`` variant stores ``X.weight`` as float8 plus a float32
  ``X.scale_weight`` and a top-level ``scaled_fp8`` marker.

CLIP-L: an HF ``CLIPTextModel`` folder, or ComfyUI's ``clip_l.safetensors`` (``text_model.*``).
Weights are returned as memory-mapped tensors (nothing is copied here), under the names the
real files use (:func:`llama_layout`, :func:`clip_text_layout`). Those names are the pack's own
facts: they do not follow whatever the installed transformers calls its parameters (transformers
5 dropped ``CLIPTextModel``'s ``text_model.`` level, for one); :mod:`.loader` maps them onto the
model it builds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint_io import CheckpointError, StoredTensor, open_state_dict, read_stored, weight_files

log = logging.getLogger(__name__)

# Language-model key prefixes, most specific first (a LLaVA file also has "model.vision_tower.*").
LLM_PREFIXES = ("language_model.model.", "model.language_model.", "model.", "")
CLIP_PREFIXES = ("", "clip_l.transformer.", "cond_stage_model.transformer.", "transformer.", "te1.")
LLM_SKIP = ("lm_head.", "language_model.lm_head.", "vision_tower.", "model.vision_tower.",
            "multi_modal_projector.", "model.multi_modal_projector.")


Shapes = dict[str, tuple[int, ...]]


def llama_layout(*, vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                 head_dim: int) -> Shapes:
    """Keys and shapes of a Llama language model as the real files hold them, without a prefix
    (HF folders and ComfyUI's single file add ``model.``, a full LLaVA ``language_model.model.``)."""
    out: Shapes = {"embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    out["norm.weight"] = (hidden,)
    return out


def clip_encoder_layout(prefix: str, *, hidden: int, intermediate: int, layers: int) -> Shapes:
    """The transformer layers of a CLIP text or vision tower (``{prefix}layers.N.*``)."""
    out: Shapes = {}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out.update({f"{p}self_attn.{proj}.weight": (hidden, hidden), f"{p}self_attn.{proj}.bias": (hidden,)})
        out.update({p + "layer_norm1.weight": (hidden,), p + "layer_norm1.bias": (hidden,),
                    p + "mlp.fc1.weight": (intermediate, hidden), p + "mlp.fc1.bias": (intermediate,),
                    p + "mlp.fc2.weight": (hidden, intermediate), p + "mlp.fc2.bias": (hidden,),
                    p + "layer_norm2.weight": (hidden,), p + "layer_norm2.bias": (hidden,)})
    return out


def clip_text_layout(*, vocab: int, hidden: int, intermediate: int, layers: int, positions: int) -> Shapes:
    """Keys and shapes of a CLIP text model as ``clip_l.safetensors`` and HF folders hold them
    (``text_model.*``; the ``position_ids`` buffer some files carry is not a weight)."""
    out: Shapes = {"text_model.embeddings.token_embedding.weight": (vocab, hidden),
                   "text_model.embeddings.position_embedding.weight": (positions, hidden)}
    out.update(clip_encoder_layout("text_model.encoder.", hidden=hidden, intermediate=intermediate, layers=layers))
    out.update({"text_model.final_layer_norm.weight": (hidden,), "text_model.final_layer_norm.bias": (hidden,)})
    return out


@dataclass
class FoundWeights:
    """Tensors under the model's own key names, the JSON config if one came with them,
    and per-weight fp8 scales (``{key: scale}``) from ComfyUI's fp8_scaled files."""

    source: Path
    tensors: dict[str, torch.Tensor | StoredTensor]  # safetensors: header entries, read when assigned
    config: dict | None = None
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def read_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"config {str(path)!r} is not valid JSON: {exc}") from exc


def config_json(model_type: str, architecture: str | None, fields: dict, dtype: str = "float16") -> dict:
    """A config.json as the real folders have it: transformers 4.x field names (``rope_theta``,
    ``torch_dtype``), which transformers 4.5x and 5.x both read; the loaders' ``*_fields`` give ``fields``."""
    head = {"architectures": [architecture]} if architecture else {}
    return {**head, "model_type": model_type, **fields, "torch_dtype": dtype}


def is_llava_config(config: dict | None) -> bool:
    return bool(config) and (config.get("model_type") == "llava" or "text_config" in config)


def _llm_prefix(keys, source: Path) -> str:
    for prefix in LLM_PREFIXES:
        if f"{prefix}embed_tokens.weight" in keys and f"{prefix}layers.0.self_attn.q_proj.weight" in keys:
            return prefix
    sample = ", ".join(sorted(keys)[:4])
    raise CheckpointError(
        f"checkpoint {str(source)!r} is not a Llama language model: no 'model.embed_tokens.weight' / "
        f"'model.layers.0.self_attn.q_proj.weight' keys (found e.g. {sample}); expected LLaVA-Llama-3-8B "
        "weights (an HF folder, the full LLaVA checkpoint, or ComfyUI's llava_llama3 file)"
    )


def _is_llm_key(key: str) -> bool:
    return not key.startswith(LLM_SKIP) and key != "scaled_fp8"


def _split_scales(sd: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Separate ComfyUI fp8_scaled ``X.scale_weight`` entries from the weights."""
    scales, tensors = {}, {}
    for key, value in sd.items():
        if key.endswith(".scale_weight"):
            scales[key[: -len(".scale_weight")] + ".weight"] = value
        elif key.endswith(".scale_input") or key == "scaled_fp8":
            continue
        else:
            tensors[key] = value
    return tensors, scales


def find_llm(path: str | Path) -> FoundWeights:
    """Llama language-model weights from a folder (HF or full LLaVA) or a single file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"LLM source {str(path)!r} does not exist (expected a folder or a .safetensors file)")
    config = None
    if path.is_dir():
        config = read_config(path)
        if config is None:
            raise CheckpointError(f"LLM folder {str(path)!r} has no config.json (expected an HF Llama or LLaVA folder)")
        if is_llava_config(config):
            config = config.get("text_config") or {}
        files = weight_files(path, wanted=_is_llm_key)
    else:
        files = [path]
    raw: dict[str, torch.Tensor] = {}
    for file in files:
        raw.update({k: v for k, v in open_state_dict(file).items() if _is_llm_key(k)})
    raw, scales = _split_scales(raw)
    scales = read_stored(scales, copy=True)
    prefix = _llm_prefix(raw.keys(), path)
    tensors = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    scales = {k[len(prefix):]: v for k, v in scales.items() if k.startswith(prefix)}
    log.info("LLM weights: %d tensors from %d file(s) under %s (prefix %r)", len(tensors), len(files), path, prefix)
    return FoundWeights(path, tensors, config, scales, files)


def find_clip(path: str | Path) -> FoundWeights:
    """CLIP-L text-model weights (``text_model.*`` names) from an HF folder or a single file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"CLIP source {str(path)!r} does not exist (expected a folder or a .safetensors file)")
    config = None
    if path.is_dir():
        config = read_config(path)
        if config is not None and "text_config" in config:
            config = config["text_config"]
        files = weight_files(path, wanted=lambda k: "text_model." in k)
    else:
        files = [path]
    raw: dict[str, torch.Tensor] = {}
    for file in files:
        raw.update(open_state_dict(file))
    for prefix in CLIP_PREFIXES:
        if f"{prefix}text_model.embeddings.token_embedding.weight" in raw:
            tensors = {k[len(prefix):]: v for k, v in raw.items()
                       if k.startswith(prefix + "text_model.") and not k.endswith("position_ids")}
            return FoundWeights(path, tensors, config, {}, files)
    sample = ", ".join(sorted(raw)[:4])
    raise CheckpointError(
        f"checkpoint {str(path)!r} is not a CLIP text model: no 'text_model.embeddings.token_embedding.weight' "
        f"key (found e.g. {sample}); expected CLIP-L (clip_l.safetensors or an HF CLIPTextModel folder)"
    )
