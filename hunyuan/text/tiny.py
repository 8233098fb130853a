"""Deterministic tiny text encoders in every real on-disk layout, for tests and the demo.

``write_tiny(models_dir)`` writes, with the REAL Llama-3 and CLIP tokenizers ComfyUI ships:

* ``LLM/hyvid_tiny_llama/``       HF folder (Tencent's text-encoder split layout)
* ``LLM/hyvid_tiny_llava/``       full LLaVA layout: 3 shards + index (the last holds only the vision tower and projector)
* ``text_encoders/hyvid_tiny_llava_llama3_fp16.safetensors``  ComfyUI single file (``model.*``)
* ``text_encoders/hyvid_tiny_clip_l.safetensors``             ComfyUI single file (``text_model.*``)
* ``clip/hyvid_tiny_clip_l/``     HF CLIPTextModel folder
* ``clip_vision/hyvid_tiny_llava_llama3_vision.safetensors``  ComfyUI's split LLaVA vision tower + projector
  (``vision_model.*``, ``multi_modal_projector.*``), the same values as the LLaVA folder's

Widths: LLM hidden 32 (4 layers, so hidden_state_skip_layer=2 is meaningful) and CLIP hidden 32,
matching the tiny DiT's default text_states_dim / text_states_dim_2; vision tower hidden 16 on
56-pixel images (4 x 4 = 16 image tokens, so interleave 2 and 4 differ). The vocabularies stay real
(LLaVA's 128320 rows: the tokenizer's pad id 128258 must exist; CLIP's 49408). All tensors are
fp16 on disk, so every layout holds bit-identical values.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .layouts import Shapes, clip_encoder_layout, clip_text_layout, config_json, llama_layout
from .loader import CLIP_L, LLAVA_LLAMA3_8B
from .vision import CLIP_MEAN, CLIP_STD

LLAMA_DIR, LLAVA_DIR, CLIP_DIR = "hyvid_tiny_llama", "hyvid_tiny_llava", "hyvid_tiny_clip_l"
LLAMA_FILE, CLIP_FILE = "hyvid_tiny_llava_llama3_fp16.safetensors", "hyvid_tiny_clip_l.safetensors"
VISION_FILE = "hyvid_tiny_llava_llama3_vision.safetensors"
TINY_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, projection_dim=32)
TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                   image_size=56, patch_size=14, projection_dim=16)


# The tokenizers the tiny encoders use are the ones a ComfyUI tree ships; its root is the caller's
# setting (scripts and tests pass theirs), never a path of this library's.
def llama_tokenizer_dir(comfyui: Path) -> Path:
    """The Llama-3 tokenizer folder of the ComfyUI tree at ``comfyui``."""
    return Path(comfyui) / "comfy" / "text_encoders" / "llama_tokenizer"


def clip_tokenizer_dir(comfyui: Path) -> Path:
    """The CLIP-L tokenizer folder of the ComfyUI tree at ``comfyui``."""
    return Path(comfyui) / "comfy" / "sd1_tokenizer"


def _randomize(shapes: Shapes, seed: int) -> dict[str, torch.Tensor]:
    """fp16 values: norm weights near 1, everything else N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        is_norm = "norm" in name and name.endswith("weight")
        out[name] = (1.0 + 0.1 * noise if is_norm else 0.1 * noise).to(torch.float16).contiguous()
    return out


def tiny_llama_config() -> dict:
    """The tiny LLM's config.json fields (the real file's names: ``rope_theta``, ``head_dim``...)."""
    return {**LLAVA_LLAMA3_8B, **TINY_LLAMA, "max_position_embeddings": 1024}


def tiny_clip_config() -> dict:
    return {**CLIP_L, **TINY_CLIP}


def llama_shapes(config: dict) -> Shapes:
    """Bare language-model names and shapes for a config.json's fields."""
    return llama_layout(vocab=config["vocab_size"], hidden=config["hidden_size"],
                        intermediate=config["intermediate_size"], layers=config["num_hidden_layers"],
                        heads=config["num_attention_heads"], kv_heads=config["num_key_value_heads"],
                        head_dim=config["head_dim"])


def tiny_llama_weights(seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """LlamaForCausalLM-layout fp16 weights (``model.*`` + ``lm_head.weight``), as HF folders hold them."""
    config = tiny_llama_config()
    shapes = {"model." + k: v for k, v in llama_shapes(config).items()}
    shapes["lm_head.weight"] = (config["vocab_size"], config["hidden_size"])
    return config, _randomize(shapes, seed)


def tiny_clip_weights(seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """CLIP text-model fp16 weights (``text_model.*``), as clip_l.safetensors holds them."""
    config = tiny_clip_config()
    shapes = clip_text_layout(vocab=config["vocab_size"], hidden=config["hidden_size"],
                              intermediate=config["intermediate_size"], layers=config["num_hidden_layers"],
                              positions=config["max_position_embeddings"])
    return config, _randomize(shapes, seed + 1)


def llava_vision_shapes(vision: dict, text_hidden: int) -> Shapes:
    """xtuner's LLaVA vision tower (a CLIP vision model) and projector, under their on-disk names."""
    hidden, patch = vision["hidden_size"], vision["patch_size"]
    v = "vision_tower.vision_model."
    out: Shapes = {v + "embeddings.class_embedding": (hidden,),
                   v + "embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
                   v + "embeddings.position_embedding.weight": ((vision["image_size"] // patch) ** 2 + 1, hidden),
                   v + "pre_layrnorm.weight": (hidden,), v + "pre_layrnorm.bias": (hidden,)}
    out.update(clip_encoder_layout(v + "encoder.", hidden=hidden, intermediate=vision["intermediate_size"],
                                   layers=vision["num_hidden_layers"]))
    out.update({v + "post_layernorm.weight": (hidden,), v + "post_layernorm.bias": (hidden,),
                "multi_modal_projector.linear_1.weight": (text_hidden, hidden),
                "multi_modal_projector.linear_1.bias": (text_hidden,),
                "multi_modal_projector.linear_2.weight": (text_hidden, text_hidden),
                "multi_modal_projector.linear_2.bias": (text_hidden,)})
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for file in sorted(src.iterdir()):
        if file.is_file():
            shutil.copyfile(file, dst / file.name)


def preprocessor_config(size: int) -> dict:
    """``preprocessor_config.json`` as LLaVA folders hold it (CLIPImageProcessor, bicubic = 3)."""
    return {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
            "image_processor_type": "CLIPImageProcessor", "image_std": list(CLIP_STD),
            "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"shortest_edge": size}}


def _write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def write_tiny_llama_folder(folder: Path, config: dict, sd: dict, comfyui: Path) -> Path:
    _write_config(folder, config_json("llama", "LlamaForCausalLM", config))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _copy_tokenizer(llama_tokenizer_dir(comfyui), folder)
    return folder


def write_tiny_llava_folder(folder: Path, config: dict, sd: dict, seed: int, comfyui: Path) -> Path:
    """xtuner's on-disk LLaVA layout: ``language_model.model.*`` in 2 shards, vision tower + projector in a 3rd."""
    vision = {**TINY_VISION, "hidden_act": "quick_gelu"}
    llava = config_json("llava", "LlavaForConditionalGeneration", {
        "text_config": config_json("llama", None, config),
        "vision_config": config_json("clip_vision_model", None, vision),
        "image_token_index": 128257, "pad_token_id": config["pad_token_id"], "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    })
    _write_config(folder, llava)
    extra = _randomize(llava_vision_shapes(vision, config["hidden_size"]), seed + 2)
    renamed = {("language_model." + k): v for k, v in sd.items()}
    renamed.update(extra)
    half = config["num_hidden_layers"] // 2
    first_prefixes = ("language_model.model.embed_tokens.",) + tuple(
        f"language_model.model.layers.{i}." for i in range(half))
    first = {k: v for k, v in renamed.items() if k.startswith(first_prefixes)}
    vision = {k: v for k, v in renamed.items() if not k.startswith("language_model.")}
    second = {k: v for k, v in renamed.items() if k not in first and k not in vision}
    shards = {f"model-0000{i + 1}-of-00003.safetensors": part for i, part in enumerate((first, second, vision))}
    for name, part in shards.items():
        save_file(part, str(folder / name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in renamed.values())},
             "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    _copy_tokenizer(llama_tokenizer_dir(comfyui), folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(TINY_VISION["image_size"]), indent=2))
    return folder


def write_tiny_vision_file(path: Path, llava_folder: Path, seed: int) -> Path:
    """ComfyUI's split vision file, cut from the tiny LLaVA folder's last shard (same values)."""
    shard = llava_folder / "model-00003-of-00003.safetensors"
    sd = {k.removeprefix("vision_tower."): v for k, v in load_file(str(shard)).items()}
    hidden = TINY_VISION["hidden_size"]
    gen = torch.Generator().manual_seed(seed + 4)
    sd["visual_projection.weight"] = (0.1 * torch.randn(TINY_VISION["projection_dim"], hidden, generator=gen)).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def write_tiny(models_dir: Path, seed: int = 0, *, comfyui: Path) -> list[Path]:
    """Write every tiny text-encoder layout under ``models_dir``, with the tokenizers of the ComfyUI
    tree at ``comfyui``; returns the written paths."""
    models_dir = Path(models_dir)
    config, llama = tiny_llama_weights(seed)
    clip_config, clip = tiny_clip_weights(seed)
    written = [
        write_tiny_llama_folder(models_dir / "LLM" / LLAMA_DIR, config, llama, comfyui),
        write_tiny_llava_folder(models_dir / "LLM" / LLAVA_DIR, config, llama, seed, comfyui),
    ]
    written.append(write_tiny_vision_file(models_dir / "clip_vision" / VISION_FILE, written[-1], seed))
    te_dir = models_dir / "text_encoders"
    te_dir.mkdir(parents=True, exist_ok=True)
    single = {k: v for k, v in llama.items() if not k.startswith("lm_head.")}
    save_file(single, str(te_dir / LLAMA_FILE))
    gen = torch.Generator().manual_seed(seed + 3)
    projection = (0.1 * torch.randn(TINY_CLIP["projection_dim"], TINY_CLIP["hidden_size"], generator=gen)).half()
    save_file({**clip, "text_projection.weight": projection}, str(te_dir / CLIP_FILE))
    written += [te_dir / LLAMA_FILE, te_dir / CLIP_FILE]
    clip_folder = models_dir / "clip" / CLIP_DIR
    _write_config(clip_folder, config_json("clip_text_model", "CLIPTextModel", clip_config))
    save_file(clip, str(clip_folder / "model.safetensors"), metadata={"format": "pt"})
    _copy_tokenizer(clip_tokenizer_dir(comfyui), clip_folder)
    written.append(clip_folder)
    return written
