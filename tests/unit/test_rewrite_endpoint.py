"""The endpoint backend against a real local HTTP server (tests/fake_openai_server.py)."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import pytest

from hunyuan.rewrite import RewriteCache, SamplingParams, build_messages, rewrite
from hunyuan.rewrite.endpoint import MAX_REPLY_BYTES, REDACTED, EndpointBackend, chat_completions_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai_server import FakeOpenAIServer, closed_port_url  # noqa: E402

KEY_ENV = "HYVID_TEST_REWRITE_KEY"
TIMEOUT = 1.5
SLACK = 1.0  # scheduling noise on a shared 2-core machine; a hang would take hang_s=30 s


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(hang_s=30.0) as srv:
        yield srv


@pytest.fixture
def fake(server, monkeypatch):
    server.reset("normal")
    server.reply = "Sure! Here is the rewritten prompt: A cinematic shot of {prompt}."
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    return server


def backend(url: str, **kw) -> EndpointBackend:
    kw.setdefault("api_key_env", KEY_ENV)
    kw.setdefault("timeout_s", TIMEOUT)
    kw.setdefault("max_retries", 2)
    return EndpointBackend(url, "fake-model", **kw)


def timed_error(call, error=RuntimeError):
    start = time.monotonic()
    with pytest.raises(error) as info:
        call()
    return str(info.value), time.monotonic() - start


def test_normal_reply_and_request_contents(fake):
    params = SamplingParams(temperature=0.2, top_p=0.95, max_new_tokens=77, seed=1234)
    result = rewrite("a red fox", "Master", backend(fake.url), params, cache=None)
    assert result.text == "A cinematic shot of a red fox."
    (request,) = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test-123"
    assert request.headers["Content-Type"] == "application/json"
    body = request.body
    assert body["model"] == "fake-model"
    assert body["messages"] == build_messages("a red fox", "Master")
    assert (body["seed"], body["temperature"], body["top_p"], body["max_tokens"]) == (1234, 0.2, 0.95, 77)
    assert body["stream"] is False


def test_key_comes_from_the_named_env_var_only(fake, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-other")
    b = backend(fake.url)
    b.complete(build_messages("x", "Normal"), SamplingParams())
    assert fake.requests[-1].headers["Authorization"] == "Bearer sk-other"
    assert "sk-other" not in repr(b.identity()) and "sk-other" not in repr(b)


def test_no_key_env_sends_no_authorization(fake):
    backend(fake.url, api_key_env="").complete(build_messages("x", "Normal"), SamplingParams())
    assert "Authorization" not in fake.requests[-1].headers


def test_the_default_is_no_key(fake):
    EndpointBackend(fake.url, "m", timeout_s=TIMEOUT).complete(build_messages("x", "Normal"), SamplingParams())
    assert "Authorization" not in fake.requests[-1].headers


def test_missing_env_var_is_a_clear_error_without_a_request(fake, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    message, _ = timed_error(lambda: backend(fake.url, key_source="/srv/endpoints.json").complete(
        build_messages("x", "Normal"), SamplingParams()), ValueError)
    assert KEY_ENV in message and "not set" in message and fake.url in message and "/srv/endpoints.json" in message
    assert fake.requests == []


def test_a_reply_echoing_the_key_never_carries_it(fake):
    fake.mode = "echo_auth"
    text = backend(fake.url).complete(build_messages("x", "Normal"), SamplingParams())
    assert fake.requests[-1].headers["Authorization"] == "Bearer sk-test-123"  # the key was sent...
    assert "sk-test-123" not in text and REDACTED in text  # ...and is blanked out of what came back


def test_an_error_echoing_the_key_never_carries_it(fake):
    fake.mode = "echo_auth_401"
    with pytest.raises(RuntimeError) as info:
        backend(fake.url).complete(build_messages("x", "Normal"), SamplingParams())
    shown = "".join(traceback.format_exception(info.value))  # what ComfyUI would log
    assert "HTTP 401" in shown and REDACTED in shown and "configured for this endpoint" in shown
    assert "sk-test-123" not in shown


def test_a_reply_spelling_the_key_in_json_escapes_never_carries_it(fake):
    """Blanking the raw bytes misses ``\\u0073k-...``: the parsed text is blanked as well."""
    fake.mode = "echo_auth_escaped"
    text = backend(fake.url).complete(build_messages("x", "Normal"), SamplingParams())
    assert "sk-test-123" not in text and text == f"you sent Bearer {REDACTED}"


def test_a_status_line_repeating_the_key_never_carries_it(fake, caplog):
    """http.client's protocol errors quote the line the server sent: the key is blanked there too."""
    fake.mode = "echo_auth_status"
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError) as info:
        backend(fake.url, max_retries=1).complete(build_messages("x", "Normal"), SamplingParams())
    shown = "".join(traceback.format_exception(info.value)) + caplog.text
    assert "BadStatusLine" in shown and REDACTED in shown and "sk-test-123" not in shown


def test_a_reply_that_keeps_arriving_fails_within_timeout(fake):
    """One byte every 0.2 s never trips a per-read timeout; the deadline covers the body too."""
    fake.mode = "drip"
    message, elapsed = timed_error(
        lambda: backend(fake.url, max_retries=0).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "no complete answer within" in message and "timed out" in message
    assert TIMEOUT - 0.2 < elapsed < TIMEOUT + SLACK


@pytest.mark.parametrize("mode", ["error_drip", "head_drip"])
def test_an_error_body_or_a_head_that_keeps_arriving_fails_within_timeout(fake, mode):
    """The deadline covers the status line and headers, and an error reply's body, too."""
    fake.mode = mode
    message, elapsed = timed_error(
        lambda: backend(fake.url, max_retries=0).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "timed out" in message
    assert TIMEOUT - 0.2 < elapsed < TIMEOUT + SLACK


def test_an_oversized_error_body_is_not_read_whole(fake):
    """The client reads the part it quotes and closes the connection at once (the error it raises
    would otherwise keep it open until a garbage-collection cycle, the server blocked writing)."""
    fake.mode = "error_huge"
    ended = fake.streams_ended
    message, _ = timed_error(
        lambda: backend(fake.url, timeout_s=30.0).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "HTTP 400" in message and len(message) < 1000
    wait_until = time.monotonic() + 5.0
    while fake.streams_ended == ended and time.monotonic() < wait_until:
        time.sleep(0.05)
    assert fake.streams_ended == ended + 1, "the server is still writing: the connection was left open"
    assert fake.sent < 64 * 2**20  # of 1 GiB: the client stopped after the part it quotes (plus socket buffers)


def test_an_interrupt_during_the_back_off_is_answered(fake):
    """Between attempts the client waits (0.25 s, 0.5 s, 1 s, 2 s, ...) and still checks for an
    interrupt: one asked for at 2 s is answered within a poll, not when the 2 s pause ends."""
    fake.mode = "error500"
    asked = time.monotonic() + 2.0

    def interrupt_once_asked(done, total):
        if time.monotonic() >= asked:
            raise KeyboardInterrupt("interrupted")

    with pytest.raises(KeyboardInterrupt):
        backend(fake.url, timeout_s=20.0, max_retries=6).complete(
            build_messages("x", "Normal"), SamplingParams(), progress=interrupt_once_asked)
    assert time.monotonic() - asked < 1.0  # checked only as each attempt starts, it came at 3.75 s


@pytest.mark.parametrize("mode", ["list_content_escaped", "no_choices_escaped", "echo_auth_401_escaped"])
def test_an_error_quoting_the_key_in_json_escapes_never_carries_it(fake, mode):
    fake.mode = mode
    with pytest.raises(RuntimeError) as info:
        backend(fake.url, max_retries=0).complete(build_messages("x", "Normal"), SamplingParams())
    shown = "".join(traceback.format_exception(info.value))
    assert REDACTED in shown and "sk-test-123" not in shown and "\\u0073\\u006b" not in shown


def test_an_oversized_reply_is_refused_without_holding_it(fake):
    fake.mode = "huge"
    message, _ = timed_error(lambda: backend(fake.url, timeout_s=30.0).complete(
        build_messages("x", "Normal"), SamplingParams()))
    assert f"more than {MAX_REPLY_BYTES} bytes" in message and len(fake.requests) == 1  # not retried


@pytest.mark.parametrize("key", ['sk-ab"cd', "sk-ab\\cd", "sk-ab'c/d"])
@pytest.mark.parametrize("mode", ["echo_auth_401", "echo_auth_list"])
def test_a_key_with_characters_json_escapes_is_blanked_too(fake, monkeypatch, key, mode):
    """A key holding ``"`` or ``\\`` is spelled ``\\"`` / ``\\\\`` in a JSON body, and repr() of a
    non-text content escapes it again: neither spelling may carry it into an error."""
    monkeypatch.setenv(KEY_ENV, key)
    fake.mode = mode
    with pytest.raises(RuntimeError) as info:
        backend(fake.url, max_retries=0).complete(build_messages("x", "Normal"), SamplingParams())
    shown = "".join(traceback.format_exception(info.value))
    assert REDACTED in shown and "sk-ab" not in shown


def test_a_lone_surrogate_in_an_error_body_leaves_a_utf8_message(fake):
    fake.mode = "error_surrogate"
    message, _ = timed_error(
        lambda: backend(fake.url, max_retries=0).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "HTTP 503" in message and "overloaded \ufffd" in message
    message.encode("utf-8")  # strict: a log line or the UI can carry it


@pytest.mark.parametrize("key", ["sk-SECRET1\nSECRET2", "sk-SECRET\u00e9"])
def test_a_key_that_cannot_be_a_header_is_refused_without_quoting_it(fake, monkeypatch, key):
    """http.client would refuse the header with a message quoting the whole key."""
    monkeypatch.setenv(KEY_ENV, key)
    with pytest.raises(ValueError) as info:
        backend(fake.url).complete(build_messages("x", "Normal"), SamplingParams())
    assert "not printable ASCII" in str(info.value) and KEY_ENV in str(info.value)
    assert "SECRET" not in str(info.value) and fake.requests == []


def test_an_interrupt_while_waiting_stops_the_request_at_once(fake):
    """The node's interrupt check runs while nothing arrives, and the request's thread ends."""
    fake.mode = "hang"
    import threading

    before = threading.active_count()
    calls = []

    def interrupt_after_two(done, total):
        calls.append(done)
        if len(calls) > 2:
            raise KeyboardInterrupt("interrupted")

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        backend(fake.url, timeout_s=20.0).complete(build_messages("x", "Normal"), SamplingParams(),
                                                   progress=interrupt_after_two)
    assert time.monotonic() - start < 5.0  # not the 20 s deadline, nor the server's 30 s hang
    deadline = time.monotonic() + 5.0
    while threading.active_count() > before + 1 and time.monotonic() < deadline:  # + the server's handler
        time.sleep(0.05)
    assert threading.active_count() <= before + 1


def test_an_address_that_never_answers_leaves_time_for_the_next(fake, monkeypatch):
    """A name with a black-holed first address (broken IPv6, say) still reaches the live one:
    each address but the last gets half the time left, not all of it."""
    import socket

    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue: later SYNs are dropped and connect() waits
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(full.getsockname())
        except BlockingIOError:
            pass
        fillers.append(sock)
    real = socket.getaddrinfo

    def two_addresses(host, port, *args, **kwargs):
        if host != "two.test":
            return real(host, port, *args, **kwargs)
        tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*tcp, full.getsockname()), (*tcp, ("127.0.0.1", fake.port))]

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    try:
        text = backend(f"http://two.test:{fake.port}/v1", timeout_s=2.0, max_retries=0).complete(
            build_messages("a boat", "Normal"), SamplingParams())
    finally:
        for sock in (*fillers, full):
            sock.close()
    assert "a boat" in text


def test_redirects_are_not_followed(fake, server):
    with FakeOpenAIServer() as elsewhere:
        fake.mode = "redirect"
        fake.redirect_to = elsewhere.url + "/chat/completions"
        message, _ = timed_error(lambda: backend(fake.url).complete(build_messages("x", "Normal"), SamplingParams()))
        assert elsewhere.requests == []
    assert "HTTP 302" in message and "redirects are not followed" in message and len(fake.requests) == 1


def test_http_500_retries_then_fails_within_timeout(fake):
    fake.mode = "error500"
    message, elapsed = timed_error(
        lambda: backend(fake.url, max_retries=2).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "HTTP 500" in message and fake.url in message and "chat/completions endpoint" in message
    assert len(fake.requests) == 3
    assert elapsed < TIMEOUT + SLACK


def test_transient_500_is_retried(fake):
    fake.mode = "flaky"
    fake.flaky_failures = 1
    text = backend(fake.url, timeout_s=5.0).complete(build_messages("a boat", "Normal"), SamplingParams())
    assert "a boat" in text and len(fake.requests) == 2


def test_hang_fails_within_timeout(fake):
    fake.mode = "hang"
    message, elapsed = timed_error(
        lambda: backend(fake.url, max_retries=3).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "timed out" in message and fake.url in message and f"timeout_s={TIMEOUT:g}" in message
    assert TIMEOUT - 0.2 < elapsed < TIMEOUT + SLACK  # retries share one deadline


def test_malformed_json_is_a_clear_error_without_retry(fake):
    fake.mode = "garbage"
    message, elapsed = timed_error(
        lambda: backend(fake.url).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "malformed JSON" in message and fake.url in message and "<html>" in message
    assert len(fake.requests) == 1 and elapsed < TIMEOUT


def test_json_without_choices_is_a_clear_error():
    from hunyuan.rewrite.endpoint import parse_reply

    with pytest.raises(RuntimeError, match=r"without choices\[0\]\.message"):
        parse_reply("http://h/v1/chat/completions", json.dumps({"error": "nope"}).encode())


def test_connection_refused_fails_within_timeout(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    url = closed_port_url()
    message, elapsed = timed_error(
        lambda: backend(url, max_retries=2).complete(build_messages("x", "Normal"), SamplingParams()))
    assert "connection refused" in message and url in message
    assert elapsed < TIMEOUT + SLACK


def test_empty_content_falls_back(fake):
    fake.mode = "empty"
    result = rewrite("a lighthouse", "Normal", backend(fake.url), SamplingParams(), cache=RewriteCache())
    assert result.fell_back and result.text == "a lighthouse" and "fell back" in result.ui_text()


def test_cache_avoids_a_second_request(fake):
    cache = RewriteCache()
    b = backend(fake.url)
    params = SamplingParams(seed=5)
    first = rewrite("a kite", "Normal", b, params, cache=cache)
    second = rewrite("a kite", "Normal", b, params, cache=cache)
    assert second.cached and second.text == first.text and len(fake.requests) == 1
    rewrite("a kite", "Normal", b, SamplingParams(seed=6), cache=cache)
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("https://api.example.com/v1/chat/completions", "https://api.example.com/v1/chat/completions"),
        ("http://host/openai/v1", "http://host/openai/v1/chat/completions"),
    ],
)
def test_url_forms(given, expected):
    assert chat_completions_url(given) == expected


@pytest.mark.parametrize("bad", ["", "127.0.0.1:8000", "ftp://host/v1", "http://"])
def test_bad_url_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="endpoint_url="):
        chat_completions_url(bad)
