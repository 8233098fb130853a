"""A tiny random-weight chat LM in the real Hugging Face folder layout, for tests and demos.

``models_dir/LLM/hyvid_tiny_rewrite_lm/`` gets config.json, generation_config.json,
model.safetensors, and the real Llama-3 tokenizer that ComfyUI ships, with a Llama-3-style
chat template stored in tokenizer_config.json. Its replies are gibberish; what it proves is
the plumbing: loading, the chat template, seeded sampling, model management.

The files are written from the pack's own layout (:func:`hunyuan.text.layouts.llama_layout`), not
with transformers' ``save_pretrained``, so they are the same whichever transformers is installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..text.layouts import config_json, llama_layout
from ..text.tiny import llama_tokenizer_dir

TINY_NAME = "hyvid_tiny_rewrite_lm"

# Llama-3 chat format, written here as data: a header per turn, <|eot_id|> after each turn.
LLAMA3_STYLE_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

_BOS, _EOS, _EOT = 128000, 128001, 128009


def _write_tokenizer(source: Path, target: Path) -> None:
    shutil.copyfile(source / "tokenizer.json", target / "tokenizer.json")
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("processor_class", None)  # a LLaVA leftover; this folder is a plain LM
    config.update(
        tokenizer_class="PreTrainedTokenizerFast",
        chat_template=LLAMA3_STYLE_CHAT_TEMPLATE,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        add_bos_token=False,
        model_max_length=4096,
    )
    config.pop("unk_token", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


CONFIG = dict(
    vocab_size=128256, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=8, max_position_embeddings=4096, rms_norm_eps=1e-6, hidden_act="silu",
    rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=_BOS, eos_token_id=[_EOS, _EOT],
)


def tiny_weights(seed: int) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM-layout fp32 weights: N(0, 0.02) like a fresh HF model, norms at 1, and an
    lm_head with std 1.5, so logits have a std of ~6: peaked like a trained LM's (greedy is no tie
    between near-equal logits, top-p stays small) yet seeded sampling still varies."""
    c = CONFIG
    shapes = {"model." + k: v for k, v in llama_layout(
        vocab=c["vocab_size"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
        layers=c["num_hidden_layers"], heads=c["num_attention_heads"], kv_heads=c["num_key_value_heads"],
        head_dim=c["head_dim"]).items()}
    shapes["lm_head.weight"] = (c["vocab_size"], c["hidden_size"])
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = torch.ones(shape)
        else:
            out[name] = torch.randn(shape, generator=gen) * (1.5 if name == "lm_head.weight" else 0.02)
    return out


def write_tiny(models_dir: Path, seed: int = 0, *, comfyui: Path) -> list[Path]:
    """Write the tiny LM folder under ``models_dir/LLM`` (with the Llama-3 tokenizer of the ComfyUI
    tree at ``comfyui``) and return the files written."""
    target = Path(models_dir) / "LLM" / TINY_NAME
    target.mkdir(parents=True, exist_ok=True)
    config = config_json("llama", "LlamaForCausalLM", CONFIG, "float32")
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = {"bos_token_id": _BOS, "eos_token_id": [_EOS, _EOT]}
    (target / "generation_config.json").write_text(json.dumps(generation, indent=2))
    save_file(tiny_weights(seed), str(target / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(llama_tokenizer_dir(comfyui), target)
    return sorted(p for p in target.iterdir() if p.is_file())
