"""The LLaVA -> text-encoder split tool (python -m hunyuan.tools.split_llava)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

from hunyuan.checkpoint_io import CheckpointError
from hunyuan.text.tiny import LLAMA_DIR, LLAVA_DIR, write_tiny
from hunyuan.tools.split_llava import language_model_name, main, split_llava, write_safetensors
from tests.conftest import COMFYUI_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny(root, comfyui=COMFYUI_DIR)
    return root


def test_cli_writes_a_text_encoder_folder(models, tmp_path):
    dst = tmp_path / "te"
    proc = subprocess.run([sys.executable, "-m", "hunyuan.tools.split_llava", str(models / "LLM" / LLAVA_DIR), str(dst)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in dst.iterdir()}
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 4 and config["vocab_size"] == 128320
    keys = set()
    for shard in dst.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            keys |= set(f.keys())
    assert keys == set(json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"])
    assert not any("vision" in k or "projector" in k for k in keys)
    assert "lm_head.weight" in keys and "model.norm.weight" in keys

    # transformers reads it like Tencent's split, and it equals the tiny HF folder.
    ours = LlamaForCausalLM.from_pretrained(dst).state_dict()
    ref = LlamaForCausalLM.from_pretrained(models / "LLM" / LLAMA_DIR).state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_rejects_a_plain_llama_folder(models, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="is not a LLaVA config"):
        split_llava(models / "LLM" / LLAMA_DIR, tmp_path / "out")
    assert main([str(models / "LLM" / LLAMA_DIR), str(tmp_path / "out")]) == 2
    assert "not a LLaVA config" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "name"), [
    ("language_model.model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
    ("model.language_model.norm.weight", "model.norm.weight"),
    ("language_model.lm_head.weight", "lm_head.weight"),
    ("vision_tower.vision_model.post_layernorm.bias", None),
    ("model.multi_modal_projector.linear_1.weight", None),
])
def test_key_names(key, name):
    assert language_model_name(key) == name


def test_streamed_safetensors_round_trip(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7), "c": torch.randn(2, 2).to(torch.float8_e4m3fn)}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, {"format": "pt"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for key, value in tensors.items():
            assert torch.equal(f.get_tensor(key).view(torch.uint8), value.view(torch.uint8))
