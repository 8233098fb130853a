"""Prompt rewrite through a real ComfyUI server: the tiny local LM, and an endpoint served by
tests/fake_openai_server.py in this test process (the ComfyUI process reaches it on 127.0.0.1)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai_server import FakeOpenAIServer, closed_port_url  # noqa: E402

from hunyuan.rewrite import build_messages  # noqa: E402
from hunyuan.rewrite.tiny import TINY_NAME  # noqa: E402
from tests.harness import SERVER_SECRETS, owner_endpoints  # noqa: E402

pytestmark = pytest.mark.server

TIMEOUT_S = 2.0
SLACK_S = 3.0  # queueing, history polling and a loaded 2-core machine; a hang would take 60 s


def rewrite_node(source: list, prompt: str, seed: int = 0, temperature: float = 1.0, tokens: int = 8,
                 mode: str = "Normal") -> dict:
    return {"class_type": "HunyuanVideoPromptRewrite",
            "inputs": {"rewrite_model": source, "prompt": prompt, "mode": mode, "temperature": temperature,
                       "top_p": 0.9, "max_new_tokens": tokens, "seed": seed}}


def local_graph(prompt: str, **kw) -> dict:
    return {"1": {"class_type": "HunyuanVideoRewriteModelLoader",
                  "inputs": {"model_name": TINY_NAME, "dtype": "fp32"}},
            "2": rewrite_node(["1", 0], prompt, **kw)}


def endpoint_graph(url: str, prompt: str, retries: int = 1, **kw) -> dict:
    return {"1": {"class_type": "HunyuanVideoRewriteEndpoint",
                  "inputs": {"endpoint_url": url, "model": "fake-model", "timeout_s": TIMEOUT_S,
                             "max_retries": retries}},
            "2": rewrite_node(["1", 0], prompt, **kw)}


def shown_text(entry: dict) -> str:
    (text,) = entry["outputs"]["2"]["text"]
    return text


def combo_options(spec: list) -> list:
    """Combo choices in either object_info form: [[...], {...}] or ["COMBO", {"options": [...]}]."""
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def unique(prompt: str) -> str:
    """A prompt ComfyUI has never cached (its cache would skip the node)."""
    return f"{prompt} {uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer(hang_s=60.0) as server:
        yield server


def test_nodes_and_sockets(comfy):
    info = comfy.object_info()
    loader = info["HunyuanVideoRewriteModelLoader"]
    assert TINY_NAME in combo_options(loader["input"]["required"]["model_name"])
    assert loader["output"] == ["HYVID_REWRITE_MODEL"]
    assert info["HunyuanVideoRewriteEndpoint"]["output"] == ["HYVID_REWRITE_MODEL"]
    node = info["HunyuanVideoPromptRewrite"]
    assert node["output"] == ["STRING"] and node["output_node"] is True
    assert combo_options(node["input"]["required"]["mode"]) == ["Normal", "Master"]


def test_local_backend_is_deterministic_and_seed_reruns(comfy):
    prompt = unique("a cat playing piano")
    first = shown_text(comfy.run(local_graph(prompt, seed=1)))
    mark = comfy.log_size()
    other = shown_text(comfy.run(local_graph(prompt, seed=2)))  # a new seed re-executes the node
    # The first run offloaded the LM (ModelPatcher.detach), so this run had to load it again.
    # Had it stayed loaded, ModelPatcher.partially_load would return early without this line.
    assert "loaded completely" in comfy.log_path.read_bytes()[mark:].decode(errors="replace")
    again = shown_text(comfy.run(local_graph(prompt, seed=1)))
    assert first and other and first == again
    assert other != first
    greedy = {shown_text(comfy.run(local_graph(prompt, seed=s, temperature=0.0))) for s in (3, 4)}
    assert len(greedy) == 1  # temperature 0: greedy, the seed does not matter
    assert comfy.alive()


def test_endpoint_normal_reply_reaches_output(comfy, fake):
    fake.reset("normal")
    fake.reply = "Sure! Here is the rewritten prompt: A cinematic shot of {prompt}."
    prompt = unique("a red fox")
    with owner_endpoints(comfy, [{"url": fake.url, "api_key_env": "HYVID_TEST_OWNER_KEY"}]):
        entry = comfy.run(endpoint_graph(fake.url, prompt, seed=77, mode="Master"))
    assert shown_text(entry) == f"A cinematic shot of {prompt}."
    (request,) = fake.requests
    # The key comes from the variable the owner's endpoint file names for this URL.
    assert request.headers["Authorization"] == f"Bearer {SERVER_SECRETS['HYVID_TEST_OWNER_KEY']}"
    assert request.body["seed"] == 77 and request.body["max_tokens"] == 8
    assert request.body["messages"] == build_messages(prompt, "Master")


def test_endpoint_empty_reply_falls_back_visibly(comfy, fake):
    fake.reset("empty")
    prompt = unique("a lighthouse")
    with owner_endpoints(comfy, [{"url": fake.url}]):
        entry = comfy.run(endpoint_graph(fake.url, prompt))
    assert "fell back" in shown_text(entry) and shown_text(entry).endswith(prompt)
    assert "no usable text" in comfy.log_text()


def test_missing_key_variable_is_a_clear_error(comfy, fake):
    fake.reset("normal")
    with owner_endpoints(comfy, [{"url": fake.url, "api_key_env": "HYVID_UNSET_KEY_VAR_123"}]) as path:
        message = comfy.run_expect_error(endpoint_graph(fake.url, unique("x")))
    assert "HYVID_UNSET_KEY_VAR_123" in message and "not set" in message and str(path) in message
    assert fake.requests == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("error500", "HTTP 500"), ("hang", "timed out"), ("garbage", "malformed JSON"), ("refused", "connection refused")],
)
def test_endpoint_failures_are_clear_and_bounded(comfy, fake, mode, expected):
    fake.reset("normal" if mode == "refused" else mode)
    url = closed_port_url() if mode == "refused" else fake.url
    with owner_endpoints(comfy, [{"url": url}]):
        start = time.monotonic()
        message = comfy.run_expect_error(endpoint_graph(url, unique("a storm at sea"), retries=2), timeout=60)
        elapsed = time.monotonic() - start
    assert "HunyuanVideoPromptRewrite" in message and "RuntimeError" in message
    assert expected in message and url in message, message
    assert elapsed < TIMEOUT_S + SLACK_S, f"{mode}: {elapsed:.1f}s"
    assert comfy.get("/system_stats")["system"]  # the server is still up
