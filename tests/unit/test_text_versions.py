"""One set of text-encoder files, in the real key layouts, loads to the same weights under
transformers 4.5x and 5.x, and the tiny-weights generator writes the same bytes under both.

The two locked environments that ``bash scripts/bootstrap.sh --oldest`` builds (``.venv``: the
current releases, ``.venv-oldest``: the oldest supported ones) each run a child process on files
this test writes once. transformers 5 names CLIP's parameters without the files' ``text_model.``
level; every weight must still be the file's own tensor.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan.text.layouts import clip_text_layout, llama_layout
from hunyuan.text.tiny import tiny_clip_config, tiny_clip_weights, tiny_llama_config, tiny_llama_weights
from scripts.comfy_server import ROOT
from tests.conftest import COMFYUI_DIR
from tests.unit.test_make_tiny_models import digest

ENVIRONMENTS = {"current": ROOT / ".venv" / "bin" / "python", "oldest": ROOT / ".venv-oldest" / "bin" / "python"}
PROMPT = "A panda eats bamboo in the rain."

# Loads both files with the pack's loaders in the child's transformers; saves each model's state
# dict under ITS OWN parameter names, and the outputs for one prompt.
CHILD = r"""
import json, sys, torch, transformers
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[1])
from hunyuan.text import load_clip, load_clip_tokenizer, load_llm, load_llm_tokenizer, parse_dtype
from hunyuan.text.tiny import clip_tokenizer_dir, llama_tokenizer_dir
clip_file, llm_file, out, prompt, COMFYUI_DIR = sys.argv[2:7]
fp32 = parse_dtype("fp32")
clip, llm = load_clip(clip_file, fp32), load_llm(llm_file, fp32)
clip_ids = load_clip_tokenizer(clip_tokenizer_dir(COMFYUI_DIR))([prompt], return_tensors="pt")["input_ids"]
llm_ids = load_llm_tokenizer(llama_tokenizer_dir(COMFYUI_DIR))([prompt], return_tensors="pt")["input_ids"]
with torch.no_grad():
    pooled = clip(input_ids=clip_ids).pooler_output
    hidden = llm(input_ids=llm_ids, output_hidden_states=True).hidden_states[-3]
save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, out + "/clip.safetensors")
save_file({k: v.contiguous() for k, v in llm.state_dict().items()}, out + "/llm.safetensors")
save_file({"pooled": pooled, "hidden": hidden}, out + "/outputs.safetensors")
json.dump({"transformers": transformers.__version__}, open(out + "/version.json", "w"))
"""


def environments() -> dict[str, str]:
    missing = [str(p) for p in ENVIRONMENTS.values() if not p.is_file()]
    assert not missing, f"{missing} missing: run `bash scripts/bootstrap.sh --oldest` (builds both locked environments)"
    return {name: str(p) for name, p in ENVIRONMENTS.items()}


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    """clip_l.safetensors (``text_model.*``) and ComfyUI's LLM single file (``model.*``), written once
    from the pack's own layouts (no transformers module is built to name them)."""
    root = tmp_path_factory.mktemp("real_layout")
    llama_cfg, llama = tiny_llama_weights(seed=5)
    clip_cfg, clip = tiny_clip_weights(seed=5)
    clip_file, llm_file = root / "clip_l.safetensors", root / "llava_llama3_fp16.safetensors"
    save_file(clip, str(clip_file))
    save_file({k: v for k, v in llama.items() if k.startswith("model.")}, str(llm_file))
    return clip_file, llm_file


def run_child(python: str, files, out) -> dict:
    out.mkdir()
    proc = subprocess.run([python, "-c", CHILD, str(ROOT), *map(str, files), str(out), PROMPT, str(COMFYUI_DIR)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "version.json").read_text())


def test_files_hold_the_real_layouts(real_files):
    clip_file, llm_file = real_files
    c, ll = tiny_clip_config(), tiny_llama_config()
    clip_keys = clip_text_layout(vocab=c["vocab_size"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
                                 layers=c["num_hidden_layers"], positions=c["max_position_embeddings"])
    llm_keys = llama_layout(vocab=ll["vocab_size"], hidden=ll["hidden_size"], intermediate=ll["intermediate_size"],
                            layers=ll["num_hidden_layers"], heads=ll["num_attention_heads"],
                            kv_heads=ll["num_key_value_heads"], head_dim=ll["head_dim"])
    clip, llm = load_file(clip_file), load_file(llm_file)
    assert {k: tuple(v.shape) for k, v in clip.items()} == clip_keys
    assert {k: tuple(v.shape) for k, v in llm.items()} == {"model." + k: v for k, v in llm_keys.items()}
    assert "text_model.embeddings.token_embedding.weight" in clip and "model.embed_tokens.weight" in llm


def test_same_weights_and_outputs_under_both_majors(real_files, tmp_path):
    versions = {name: run_child(python, real_files, tmp_path / name)["transformers"]
                for name, python in environments().items()}
    assert {v.split(".")[0] for v in versions.values()} == {"4", "5"}, versions
    clip_file, llm_file = real_files
    clip_ref = {k.removeprefix("text_model."): v.float() for k, v in load_file(clip_file).items()}
    llm_ref = {k.removeprefix("model."): v.float() for k, v in load_file(llm_file).items()}
    outputs = {}
    for name, version in versions.items():
        clip = load_file(tmp_path / name / "clip.safetensors")
        # 4.x keeps the file's text_model. level, 5.x drops it: compare below that level.
        prefixes = {k.split(".")[0] for k in clip}
        assert prefixes == ({"text_model"} if version.startswith("4.") else {"embeddings", "encoder", "final_layer_norm"})
        clip = {k.removeprefix("text_model."): v for k, v in clip.items()}
        llm = load_file(tmp_path / name / "llm.safetensors")
        for got, want in ((clip, clip_ref), (llm, llm_ref)):
            assert got.keys() == want.keys(), (version, sorted(got.keys() ^ want.keys())[:5])
            assert all(torch.equal(got[k], want[k]) for k in want), version
        outputs[name] = load_file(tmp_path / name / "outputs.safetensors")
    for key in ("pooled", "hidden"):
        a, b = outputs["current"][key], outputs["oldest"][key]
        # fp32, same weights and ids; the two versions' kernels may sum in another order.
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5, key


def test_tiny_generator_writes_the_same_files_under_both_majors(tmp_path):
    for name, python in environments().items():
        proc = subprocess.run([python, "-m", "hunyuan.tools.make_tiny_models", "--comfyui", str(COMFYUI_DIR), "--out", str(tmp_path / name),
                               "--seed", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    current, oldest = digest(tmp_path / "current"), digest(tmp_path / "oldest")
    assert current == oldest
    assert any(k.startswith("text_encoders/") for k in current) and any(k.startswith("LLM/") for k in current)

