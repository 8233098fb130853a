"""What a shared workflow can make this pack do, tried through a real ComfyUI server.

The server runs with two secrets in its environment (tests/harness.py, ``SERVER_SECRETS``): a
cloud credential no workflow may reach, and the key its owner binds to one endpoint in the
endpoint file. The listeners are tests/fake_openai_server.py on 127.0.0.1, which record every
request byte. README, "Security", lists each bound with the test here that shows it.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

from hunyuan.rewrite.access import ENDPOINT_FILE  # noqa: E402
from hunyuan.rewrite.endpoint import REDACTED  # noqa: E402
from scripts.comfy_server import ROOT  # noqa: E402
from tests.harness import SERVER_SECRETS, owner_endpoints  # noqa: E402

pytestmark = pytest.mark.server

CLOUD = SERVER_SECRETS["HYVID_TEST_CLOUD_SECRET"]
OWNER = SERVER_SECRETS["HYVID_TEST_OWNER_KEY"]


def stolen_key_graph(url: str, env_name: str = "HYVID_TEST_CLOUD_SECRET") -> dict:
    """The exploit of issue 22: a workflow that names a listener and a variable of the server."""
    return {"1": {"class_type": "HunyuanVideoRewriteEndpoint",
                  "inputs": {"endpoint_url": url, "model": "m", "api_key_env": env_name,
                             "timeout_s": 5.0, "max_retries": 0}},
            "2": {"class_type": "HunyuanVideoPromptRewrite",
                  "inputs": {"rewrite_model": ["1", 0], "prompt": f"a fox {uuid.uuid4().hex[:6]}", "mode": "Normal",
                             "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 0}}}


def received(server: FakeOpenAIServer) -> str:
    """Everything a listener was sent: paths, header names and values, raw bodies."""
    return "\n".join(f"{r.path}\n{json.dumps(r.headers)}\n{r.raw.decode(errors='replace')}" for r in server.requests)


def assert_no_secret_in(text: str) -> None:
    for secret in SERVER_SECRETS.values():
        assert secret not in text
        assert secret[-12:] not in text  # nor a recognisable part of it


@pytest.fixture
def listener():
    with FakeOpenAIServer() as server:
        yield server


def test_the_exploit_is_refused_before_anything_is_sent(comfy, listener):
    message = comfy.run_expect_error(stolen_key_graph(listener.url))
    assert listener.requests == []
    assert "not an endpoint this server's owner allows" in message and listener.url in message
    assert str(Path(*ENDPOINT_FILE)) in message  # says where endpoints and keys are configured
    assert_no_secret_in(message)


def test_with_free_urls_allowed_the_listener_gets_no_key(comfy, listener):
    with owner_endpoints(comfy, [], allow_unlisted_urls=True):
        mark = comfy.log_size()
        comfy.run(stolen_key_graph(listener.url))
    assert len(listener.requests) == 1
    assert "Authorization" not in listener.requests[0].headers
    assert_no_secret_in(received(listener))
    assert "api_key_env input is ignored" in comfy.log_path.read_bytes()[mark:].decode(errors="replace")


def test_a_workflow_cannot_swap_the_owners_key_for_another_variable(comfy, listener):
    with owner_endpoints(comfy, [{"url": listener.url, "api_key_env": "HYVID_TEST_OWNER_KEY"}]):
        comfy.run(stolen_key_graph(listener.url, env_name="HYVID_TEST_CLOUD_SECRET"))
    (request,) = listener.requests
    assert request.headers["Authorization"] == f"Bearer {OWNER}"  # the owner's binding, not the workflow's
    assert CLOUD not in received(listener)


def test_the_owners_key_reaches_only_its_endpoint_and_never_the_log_history_or_ui(comfy, listener):
    with FakeOpenAIServer() as elsewhere, owner_endpoints(
            comfy, [{"url": listener.url, "api_key_env": "HYVID_TEST_OWNER_KEY"}, {"url": elsewhere.url}]):
        listener.mode = "echo_auth"  # a server that sends the key back: it must not reach the output
        entry = comfy.run(stolen_key_graph(listener.url, env_name=""))
        (text,) = entry["outputs"]["2"]["text"]
        assert REDACTED in text
        listener.mode = "echo_auth_401"  # ...nor an error message
        refused = comfy.run_expect_error(stolen_key_graph(listener.url, env_name=""))
        assert "HTTP 401" in refused and REDACTED in refused
        listener.mode = "redirect"  # ...nor a host it redirects to, even an allowed one
        listener.redirect_to = elsewhere.url + "/chat/completions"
        redirected = comfy.run_expect_error(stolen_key_graph(listener.url, env_name=""))
        assert "redirects are not followed" in redirected and elsewhere.requests == []
        comfy.run(stolen_key_graph(elsewhere.url, env_name=""))  # listed without a key: none sent
    assert all(r.headers["Authorization"] == f"Bearer {OWNER}" for r in listener.requests)
    assert len(listener.requests) == 3 and "Authorization" not in elsewhere.requests[0].headers
    assert_no_secret_in(text + refused + redirected)
    assert_no_secret_in(json.dumps(comfy.get("/history")))
    assert_no_secret_in(comfy.log_text())


def test_the_endpoint_file_is_not_served_over_http(comfy):
    with owner_endpoints(comfy, [{"url": "http://127.0.0.1:9/v1", "api_key_env": "HYVID_TEST_OWNER_KEY"}]):
        for path in ("/userdata/..%2Fhunyuanvideo%2Frewrite_endpoints.json",
                     "/userdata/hunyuanvideo%2Frewrite_endpoints.json",
                     "/api/userdata/..%2Fhunyuanvideo%2Frewrite_endpoints.json"):
            status, body = comfy.request("GET", path)
            assert status in (400, 403, 404), (path, status)
            assert "HYVID_TEST_OWNER_KEY" not in json.dumps(body)


def _graph(node: str, name: str, value: str) -> dict:
    graph = json.loads((ROOT / "workflows" / "t2v_basic_api.json").read_text())
    graph[node]["inputs"][name] = value
    return graph


def _rewrite_graph(value: str) -> dict:
    return {"1": {"class_type": "HunyuanVideoRewriteModelLoader", "inputs": {"model_name": value, "dtype": "fp32"}},
            "2": stolen_key_graph("http://x")["2"]}


FILE_INPUTS = {
    "dit_name": lambda v: _graph("3", "dit_name", v),
    "vae_name": lambda v: _graph("7", "vae_name", v),
    "llm": lambda v: _graph("1", "llm", v),
    "clip": lambda v: _graph("1", "clip", v),
    "rewrite model_name": _rewrite_graph,
}
OUTSIDE = ["../../../../etc/passwd", "/etc/passwd", "..", "../user/comfyui.db"]


@pytest.mark.parametrize("value", OUTSIDE)
@pytest.mark.parametrize("name", FILE_INPUTS)
def test_file_inputs_reach_only_listed_files(comfy, name, value):
    """Every input that names a file or folder is a list the server builds from its own model
    folders. ComfyUI 0.3.75 does not check a V3 node's list input, so each loader does: any
    other value is refused when the job is queued, before a node runs."""
    status, body = comfy.submit(FILE_INPUTS[name](value))
    assert status == 400, body
    text = json.dumps(body)
    assert "is not one of the choices in models/" in text and json.dumps(value)[1:-1] in text
