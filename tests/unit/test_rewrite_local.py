"""The local backend with the tiny random-weight Llama (real Llama-3 tokenizer and chat format)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest
import torch

from hunyuan.checkpoint_io import CheckpointError
from hunyuan.rewrite import SamplingParams, build_messages, rewrite
from hunyuan.rewrite.local import (
    LocalBackend,
    check_context,
    encode_chat,
    generate,
    load_local_lm,
    memory_estimate,
    pick_token,
    stop_token_ids,
)
from hunyuan.rewrite.tiny import TINY_NAME, write_tiny
from tests.conftest import COMFYUI_DIR

TOKENS = 8  # enough to tell seeds apart, small enough for ~1 s per rewrite on a busy CPU


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_tiny(models, seed=0, comfyui=COMFYUI_DIR)
    return models / "LLM" / TINY_NAME


@pytest.fixture(scope="module")
def local(tiny_dir):
    return load_local_lm(tiny_dir, torch.float32)


@pytest.fixture(scope="module")
def messages():
    return build_messages("a cat playing piano", "Normal")


def run(local, messages, **kw):
    params = SamplingParams(max_new_tokens=kw.pop("max_new_tokens", TOKENS), **kw)
    return generate(local, encode_chat(local, messages), params, torch.device("cpu"))


def test_tiny_layout(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 128256
    assert "<|start_header_id|>" in json.loads((tiny_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert (tiny_dir / "model.safetensors").stat().st_size < 20_000_000


def test_write_tiny_is_deterministic(tmp_path, tiny_dir):
    write_tiny(tmp_path, seed=0, comfyui=COMFYUI_DIR)
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
              for d in (tmp_path / "LLM" / TINY_NAME, tiny_dir)]
    assert digest[0] == digest[1]


def test_chat_template_is_applied(local, messages):
    ids = encode_chat(local, messages)
    text = local.tokenizer.decode(ids[0])
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert text.count("<|begin_of_text|>") == 1
    assert "<|start_header_id|>user<|end_header_id|>\n\na cat playing piano<|eot_id|>" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert stop_token_ids(local) >= {128001, 128009}


def test_template_without_system_role_gets_folded(local, messages):
    original = local.tokenizer.chat_template
    local.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    )
    try:
        text = local.tokenizer.decode(encode_chat(local, messages)[0])
    finally:
        local.tokenizer.chat_template = original
    assert text.startswith("<user>You turn a user's idea") and text.endswith("a cat playing piano<assistant>")


def test_template_reasoning_switch_is_off(local, messages):
    original = local.tokenizer.chat_template
    local.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
        "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
    )
    try:
        text = local.tokenizer.decode(encode_chat(local, messages)[0])
    finally:
        local.tokenizer.chat_template = original
    assert text.endswith("<assistant><think></think>")


def test_same_seed_same_tokens(local, messages):
    first = run(local, messages, temperature=1.0, seed=11)
    assert len(first) == TOKENS
    assert run(local, messages, temperature=1.0, seed=11) == first


def test_different_seeds_differ(local, messages):
    outputs = {tuple(run(local, messages, temperature=1.0, seed=s)) for s in range(3)}
    assert len(outputs) > 1


def test_temperature_zero_is_greedy_and_ignores_seed(local, messages):
    greedy = run(local, messages, temperature=0.0, seed=1)
    assert run(local, messages, temperature=0.0, seed=99) == greedy
    # Oracle: Hugging Face's own greedy decoding with the same model (no stop tokens hit).
    ids = encode_chat(local, messages)
    with torch.inference_mode():
        reference = local.lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS,
                                      do_sample=False, eos_token_id=None, pad_token_id=0)
    assert reference[0, ids.shape[1]:].tolist()[: len(greedy)] == greedy


def test_global_rng_untouched(local, messages):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    run(local, messages, temperature=1.0, seed=5, max_new_tokens=4)
    assert torch.equal(torch.rand(3), expected)


def test_pick_token_top_p():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    gen = torch.Generator().manual_seed(0)
    narrow = SamplingParams(temperature=1.0, top_p=0.5)
    assert {pick_token(logits, narrow, gen) for _ in range(50)} == {0}
    middle = SamplingParams(temperature=1.0, top_p=0.8)
    assert {pick_token(logits, middle, gen) for _ in range(200)} == {0, 1}
    full = SamplingParams(temperature=1.0, top_p=1.0)
    assert {pick_token(logits, full, gen) for _ in range(400)} == {0, 1, 2}
    assert pick_token(logits, SamplingParams(temperature=0.0), gen) == 0


def test_rewrite_through_backend_with_session(local):
    entered = []

    from contextlib import contextmanager

    @contextmanager
    def session(memory_required):
        entered.append(memory_required)
        yield torch.device("cpu")

    backend = LocalBackend(local, ("tiny",), session=session)
    start = time.monotonic()
    params = SamplingParams(temperature=0.7, max_new_tokens=TOKENS, seed=4)
    result = rewrite("a lighthouse in a storm", "Master", backend, params, cache=None)
    elapsed = time.monotonic() - start
    again = rewrite("a lighthouse in a storm", "Master", backend, params, cache=None)
    assert result.text == again.text and result.text
    assert len(entered) == 2 and entered[0] == memory_estimate(local, entered_tokens(local) + TOKENS)
    assert elapsed < 20  # ~1 s alone; generous for a shared 2-core machine


def test_a_prompt_past_the_models_context_names_the_input(local):
    backend = LocalBackend(local, ("tiny",))
    params = SamplingParams(temperature=0.0, max_new_tokens=TOKENS)
    with pytest.raises(ValueError, match=r"^prompt: the rewrite request is \d+ tokens .* at most 4096 positions"):
        rewrite("cat " * 5000, "Normal", backend, params, cache=None)
    check_context(local, 4096 - TOKENS, TOKENS)  # exactly the model's positions: served
    with pytest.raises(ValueError, match="at most 4096 positions"):
        check_context(local, 4097 - TOKENS, TOKENS)


def entered_tokens(local):
    return encode_chat(local, build_messages("a lighthouse in a storm", "Master")).shape[1]


def test_missing_chat_template_is_a_clear_error(tmp_path, tiny_dir):
    copy = tmp_path / "no_template"
    shutil.copytree(tiny_dir, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat template"):
        load_local_lm(copy)


@pytest.mark.parametrize(("removed", "message"), [
    ("tokenizer.json", "has no tokenizer file; expected one of tokenizer.json"),
    ("model.safetensors", "has no weights"),
])
def test_missing_file_is_a_clear_error(tmp_path, tiny_dir, removed, message):
    copy = tmp_path / "incomplete"
    shutil.copytree(tiny_dir, copy)
    (copy / removed).unlink()
    with pytest.raises(CheckpointError, match=message):
        load_local_lm(copy)


def test_non_causal_lm_is_a_clear_error(tmp_path, tiny_dir):
    copy = tmp_path / "not_an_lm"
    shutil.copytree(tiny_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(model_type="clip_vision_model", architectures=["CLIPVisionModel"])
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a causal LM"):
        load_local_lm(copy)


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_local_lm(tmp_path)


def test_loads_in_bf16(tiny_dir, messages):
    local16 = load_local_lm(tiny_dir, torch.bfloat16)
    assert local16.weight_dtype == torch.bfloat16
    assert len(run(local16, messages, temperature=0.0, max_new_tokens=3)) <= 3
