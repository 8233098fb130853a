"""Every on-disk layout of the LLM and CLIP-L loads to the same weights; bad inputs name the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hunyuan.checkpoint_io import CheckpointError
from hunyuan.ops import Linear
from hunyuan.text import load_clip, load_clip_tokenizer, load_llm, load_llm_tokenizer, parse_dtype
from hunyuan.text.dtypes import FP8
from hunyuan.text.tiny import (
    CLIP_DIR,
    CLIP_FILE,
    LLAMA_DIR,
    LLAMA_FILE,
    LLAVA_DIR,
    llama_tokenizer_dir,
    write_tiny,
)
from hunyuan.tools.split_llava import split_llava
from tests.conftest import COMFYUI_DIR

FP32 = parse_dtype("fp32")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny(root, comfyui=COMFYUI_DIR)
    return root


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def new_style_llava(models, tmp_path):
    """The LLaVA folder re-saved with transformers >= 4.52 key names (model.language_model.*)."""
    src, dst = models / "LLM" / LLAVA_DIR, tmp_path / "llava_new"
    shutil.copytree(src, dst)
    renames = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
               ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."))
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    new_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd = load_file(dst / shard)
        out = {}
        for key, value in sd.items():
            new = next(n + key[len(o):] for o, n in renames if key.startswith(o))
            out[new] = value
            new_map[new] = shard
        save_file(out, dst / shard)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": new_map}))
    return dst


def test_all_llm_layouts_load_the_same_weights(models, tmp_path):
    reference = load_llm(models / "LLM" / LLAMA_DIR, FP32)
    assert reference.config.num_hidden_layers == 4 and reference.config.hidden_size == 32
    assert reference.embed_tokens.weight.shape == (128320, 32)
    split = split_llava(models / "LLM" / LLAVA_DIR, tmp_path / "split")
    for source in (models / "LLM" / LLAVA_DIR, models / "text_encoders" / LLAMA_FILE, split,
                   new_style_llava(models, tmp_path)):
        model = load_llm(source, FP32)
        same_weights(reference, model)
        assert model.config.num_key_value_heads == 2 and model.config.head_dim == 8


def test_clip_layouts_load_the_same_weights(models):
    folder = load_clip(models / "clip" / CLIP_DIR, FP32)
    single = load_clip(models / "text_encoders" / CLIP_FILE, FP32)
    same_weights(folder, single)
    assert folder.config.hidden_size == 32 and folder.config.hidden_act == "quick_gelu"


def test_full_llava_never_needs_the_vision_shard(models, tmp_path):
    dst = tmp_path / "llava"
    shutil.copytree(models / "LLM" / LLAVA_DIR, dst)
    (dst / "model-00003-of-00003.safetensors").unlink()  # vision tower + projector only
    same_weights(load_llm(models / "LLM" / LLAMA_DIR, FP32), load_llm(dst, FP32))


def _file_mappings(path) -> list[tuple[int, int]]:
    """Address ranges where this process maps ``path`` (from /proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].rstrip("\n") == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def test_same_dtype_load_is_zero_copy(models):
    """Default dtype keeps the file's fp16: the parameters are views of the memory-mapped file (each
    tensor read through its own map, so a kept tensor holds only its own pages); a dtype change
    gives parameters of their own."""
    path = models / "text_encoders" / LLAMA_FILE
    model = load_llm(path, parse_dtype("auto"))
    assert model.embed_tokens.weight.dtype == torch.float16

    def in_file(t: torch.Tensor) -> bool:
        return any(start <= t.data_ptr() < end for start, end in _file_mappings(path))

    assert all(in_file(p) for p in model.parameters())  # the parameters ARE the mapped file bytes
    converted = load_llm(path, parse_dtype("bf16"))
    assert not any(in_file(p) for p in converted.parameters())
    assert not any(p.device.type == "meta" for p in model.parameters())
    assert model.rotary_emb.inv_freq.device.type == "cpu"


def test_fp8_storage_and_comfy_scaled_fp8_file(models, tmp_path):
    sd = load_file(models / "text_encoders" / LLAMA_FILE)
    scaled, scales = {}, {}
    for key, value in sd.items():
        if key.startswith("model.layers.") and key.endswith("_proj.weight"):
            scale = value.float().abs().max() / 448.0
            scaled[key] = (value.float() / scale).to(FP8)
            scaled[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            scales[key] = scale
        else:
            scaled[key] = value
    scaled["scaled_fp8"] = torch.empty(0, dtype=FP8)
    path = tmp_path / "llava_llama3_fp8_scaled.safetensors"
    save_file(scaled, path)

    fp32 = load_llm(path, FP32)  # dequantized on load
    key = "model.layers.1.mlp.up_proj.weight"
    expect = scaled[key].float() * scales[key]
    assert torch.equal(fp32.layers[1].mlp.up_proj.weight, expect)

    kept = load_llm(path, parse_dtype("auto"))  # fp8 storage, bf16 compute, file scale kept
    proj = kept.layers[1].mlp.up_proj
    assert isinstance(proj, Linear) and proj.weight.dtype == FP8
    assert torch.equal(proj.weight_scale, scales[key])
    assert kept.embed_tokens.weight.dtype == torch.bfloat16
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    assert torch.allclose(proj(x).float(), x.float() @ expect.t(), rtol=0.05, atol=0.02)


def test_fp8_choice_on_fp16_file(models):
    model = load_llm(models / "LLM" / LLAMA_DIR, parse_dtype("fp8_e4m3fn (fp16 compute)"))
    proj = model.layers[0].self_attn.q_proj
    assert proj.weight.dtype == FP8
    assert model.norm.weight.dtype == torch.float16
    assert model.embed_tokens.weight.dtype == torch.float16
    # per-tensor scale puts the largest weight at the top of the e4m3 range (448)
    ref = load_llm(models / "LLM" / LLAMA_DIR, FP32).layers[0].self_attn.q_proj.weight
    assert torch.allclose(proj.weight_scale, ref.abs().max() / 448)
    deq = proj.weight.float() * proj.weight_scale
    rel = ((deq - ref).abs().max() / ref.abs().max()).item()
    assert 0 < rel < 0.07  # e4m3 keeps 3 mantissa bits: about 1/16 relative error at most


def test_unknown_dtype():
    with pytest.raises(ValueError, match="dtype='int4'.*expected one of auto"):
        parse_dtype("int4")


# --- bad input -------------------------------------------------------------------------------

def test_missing_tokenizer_file_is_named(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(llama_tokenizer_dir(COMFYUI_DIR), folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json.*is missing.*must contain tokenizer\.json"):
        load_llm_tokenizer(folder)
    with pytest.raises(CheckpointError, match=r"vocab\.json.*is missing.*vocab\.json, merges\.txt"):
        load_clip_tokenizer(folder)


@pytest.mark.parametrize("kind", ["vae", "t5"])
def test_non_llama_checkpoint_is_rejected(tmp_path, kind):
    if kind == "vae":
        sd = {"encoder.conv_in.conv.weight": torch.zeros(8, 3, 3, 3, 3), "decoder.conv_out.conv.bias": torch.zeros(3)}
    else:
        sd = {"shared.weight": torch.zeros(10, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)}
    path = tmp_path / f"{kind}.safetensors"
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=rf"{kind}\.safetensors.*is not a Llama language model.*expected LLaVA-Llama-3"):
        load_llm(path, FP32)
    with pytest.raises(CheckpointError, match=rf"{kind}\.safetensors.*is not a CLIP text model.*expected CLIP-L"):
        load_clip(path, FP32)


def test_llava_folder_with_missing_shard(models, tmp_path):
    dst = tmp_path / "llava"
    shutil.copytree(models / "LLM" / LLAVA_DIR, dst)
    (dst / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors.*is missing.*index"):
        load_llm(dst, FP32)
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors.*is missing"):
        split_llava(dst, tmp_path / "out")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/outside.safetensors", "sub/model.safetensors", ".."])
def test_an_index_naming_a_file_outside_its_folder_is_refused(models, tmp_path, shard):
    """A model folder's index is data from whoever made the folder: it may not point the loader at
    another file (the outside file exists here, so only the name check can stop the read)."""
    dst = tmp_path / "llava"
    shutil.copytree(models / "LLM" / LLAVA_DIR, dst)
    (tmp_path / "outside.safetensors").write_bytes((dst / "model-00001-of-00003.safetensors").read_bytes())
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"is not a file name inside .*expected plain shard file names"):
        load_llm(dst, FP32)


def test_an_index_whose_weight_map_is_not_names_is_a_clear_error(models, tmp_path):
    dst = tmp_path / "llava"
    shutil.copytree(models / "LLM" / LLAVA_DIR, dst)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": ["list"]}}))
    with pytest.raises(CheckpointError, match="has no readable 'weight_map'"):
        load_llm(dst, FP32)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_llm(tmp_path / "empty", FP32)


def test_truncated_llama_is_reported(models, tmp_path):
    sd = load_file(models / "text_encoders" / LLAMA_FILE)
    del sd["model.layers.2.self_attn.o_proj.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors.*missing \['layers\.2\.self_attn\.o_proj\.weight'\]"):
        load_llm(path, FP32)


def test_truncated_clip_is_reported_under_the_files_names(models, tmp_path):
    """Under transformers 5 too, where the model's own name has no text_model. level."""
    sd = load_file(models / "text_encoders" / CLIP_FILE)
    del sd["text_model.encoder.layers.1.mlp.fc2.bias"]
    path = tmp_path / "clip_broken.safetensors"
    save_file(sd, path)
    with pytest.raises(CheckpointError,
                       match=r"clip_broken\.safetensors.*missing \['text_model\.encoder\.layers\.1\.mlp\.fc2\.bias'\]"):
        load_clip(path, FP32)


def test_config_saved_by_transformers_5_keeps_its_rope_theta(models, tmp_path):
    """transformers 5 saves rope_theta inside rope_parameters; 4.x alone would not read it there."""
    folder = tmp_path / "saved_by_5"
    shutil.copytree(models / "LLM" / LLAMA_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("rope_theta") == 500000.0  # LLaVA-Llama-3's, also the loader's default
    theta = 123456.0
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    (folder / "config.json").write_text(json.dumps(config))
    got = load_llm(folder, FP32).rotary_emb.inv_freq
    head_dim = config["head_dim"]
    assert torch.allclose(got, 1.0 / theta ** (torch.arange(0, head_dim, 2) / head_dim), rtol=1e-6, atol=0)
