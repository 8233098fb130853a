"""A real HTTP server that speaks (a little) OpenAI chat-completions, for tests.

It listens on 127.0.0.1 on a free port, in a daemon thread, and answers
``POST /v1/chat/completions`` according to its ``mode``, which a test may change at any time:

- ``"normal"``: 200 with ``reply`` as the assistant content (``"{prompt}"`` in ``reply`` is
  replaced by the last user message, so tests can see what was sent);
- ``"error500"``: 500 with a JSON error body;
- ``"hang"``: sleeps ``hang_s`` seconds before answering (longer than any test timeout);
- ``"garbage"``: 200 with a body that is not JSON;
- ``"empty"``: 200 with empty assistant content;
- ``"flaky"``: 500 for the first ``flaky_failures`` requests, then like ``"normal"``;
- ``"echo_auth"``: 200 whose content repeats the request's Authorization header (a careless or
  hostile server: nothing it sends back may carry the key into an output, error or log);
- ``"echo_auth_401"``: 401 whose error body and reason phrase repeat that header;
- ``"redirect"``: 302 to ``redirect_to`` (a client must not follow it with the key);
- ``"echo_auth_escaped"``: like ``"echo_auth"``, with every character of the header written as a
  JSON ``\\uXXXX`` escape (valid JSON that decodes to the key);
- ``"echo_auth_status"``: the header itself sent back as the HTTP status line (a protocol error
  whose text is that line);
- ``"drip"``: 200 announcing 100 kB, then one byte every 0.2 s (each read returns quickly, the
  body never ends);
- ``"huge"``: 200 streaming 64 KiB pieces of a 1 GiB body as fast as the client reads;
- ``"error_drip"`` / ``"error_huge"``: the same two bodies with status 500 / 400;
- ``"head_drip"``: the status line, then one header byte every 0.2 s (the head never ends);
- ``"list_content_escaped"``, ``"no_choices_escaped"``, ``"echo_auth_401_escaped"``: the header
  in ``\\uXXXX`` escapes as a non-text content, in a 200 without choices, in a 401 body;
- ``"echo_auth_list"``: the header as a JSON list content (escaped as JSON escapes it);
- ``"error_surrogate"``: a 503 whose JSON body holds a lone surrogate escape.

Every request is recorded (path, headers, parsed JSON body) in ``requests``. ``closed_port()``
gives a URL where nothing listens, for connection-refused tests.

    with FakeOpenAIServer() as server:
        server.mode = "hang"
        url = server.url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("normal", "error500", "hang", "garbage", "empty", "flaky", "echo_auth", "echo_auth_401", "redirect",
         "echo_auth_escaped", "echo_auth_status", "drip", "huge", "error_drip", "error_huge", "head_drip",
         "list_content_escaped", "no_choices_escaped", "echo_auth_401_escaped", "echo_auth_list", "error_surrogate")


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict | None
    raw: bytes = b""
    time: float = field(default_factory=time.monotonic)


class FakeOpenAIServer:
    def __init__(self, mode: str = "normal", reply: str = "A rewritten prompt about {prompt}.",
                 hang_s: float = 30.0, flaky_failures: int = 1) -> None:
        self.mode = mode
        self.reply = reply
        self.hang_s = hang_s
        self.flaky_failures = flaky_failures
        self.redirect_to = ""
        self.sent = 0
        self.streams_ended = 0  # long bodies whose sending stopped (done, or the client closed)
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL a client is configured with (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes "hang" handlers so the process does not linger
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self, request: RecordedRequest) -> int:
        with self._lock:
            self.requests.append(request)
            return len(self.requests)

    def reset(self, mode: str = "normal") -> None:
        with self._lock:
            self.requests.clear()
        self.mode = mode


def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port was just free and is closed: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _completion(content: str, model: str) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: bytes, content_type: str = "application/json",
                  reason: str | None = None, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status, reason)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                self.close_connection = True

        def _stream(self, mode: str) -> None:
            """``drip``/``huge`` (200) and ``error_drip``/``error_huge`` (500/400): a long body sent
            slowly or fast; ``head_drip``: the status line, then a header one byte at a time.
            ``server.sent`` counts the body bytes that got out; ``server.streams_ended`` counts
            the streams that stopped."""
            server.sent = 0
            slow = mode in ("drip", "error_drip", "head_drip")
            size, piece, pause = (100_000, b" ", 0.2) if slow else (2**30, b" " * 65536, 0.0)
            status = {"error_drip": 500, "error_huge": 400}.get(mode, 200)
            try:
                if mode == "head_drip":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                else:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                for _ in range(size // len(piece)):
                    if server._stop.wait(pause):
                        break
                    self.wfile.write(piece)
                    self.wfile.flush()
                    server.sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                pass
            server.streams_ended += 1
            self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            count = server.record(RecordedRequest(self.path, dict(self.headers.items()), body, raw))
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "unknown path"}}')
                return
            mode = server.mode
            if mode == "flaky":
                mode = "error500" if count <= server.flaky_failures else "normal"
            if mode == "hang":
                server._stop.wait(server.hang_s)
                mode = "normal"
            if mode == "error500":
                self._send(500, b'{"error": {"message": "fake internal error"}}')
            elif mode == "garbage":
                self._send(200, b"<html>this is not json", "text/html")
            elif mode == "echo_auth":
                auth = self.headers.get("Authorization", "")
                self._send(200, json.dumps(_completion(f"A rewritten prompt; you sent {auth}", "m")).encode())
            elif mode == "echo_auth_401":
                auth = self.headers.get("Authorization", "")
                self._send(401, json.dumps({"error": {"message": f"bad key {auth}"}}).encode(), reason=f"no {auth}")
            elif mode == "echo_auth_escaped":
                auth = "".join(f"\\u{ord(c):04x}" for c in self.headers.get("Authorization", ""))
                head = '{"choices": [{"message": {"role": "assistant", "content": "you sent '
                self._send(200, (head + auth + '"}}]}').encode())
            elif mode == "echo_auth_status":
                self.wfile.write(self.headers.get("Authorization", "").encode() + b"\r\n\r\n")
                self.close_connection = True
            elif mode in ("drip", "huge", "error_drip", "error_huge", "head_drip"):
                self._stream(mode)
            elif mode == "echo_auth_list":
                auth = self.headers.get("Authorization", "")
                self._send(200, json.dumps({"choices": [{"message": {"content": [auth]}}]}).encode())
            elif mode == "error_surrogate":
                self._send(503, b'{"error": "overloaded \\ud800"}')
            elif mode in ("list_content_escaped", "no_choices_escaped", "echo_auth_401_escaped"):
                auth = "".join(f"\\u{ord(c):04x}" for c in self.headers.get("Authorization", ""))
                if mode == "list_content_escaped":
                    body = '{"choices": [{"message": {"role": "assistant", "content": ["' + auth + '"]}}]}'
                else:
                    body = '{"error": {"message": "bad key ' + auth + '"}}'
                self._send(401 if mode == "echo_auth_401_escaped" else 200, body.encode())
            elif mode == "redirect":
                self._send(302, b"", headers={"Location": server.redirect_to})
            elif mode == "empty":
                self._send(200, json.dumps(_completion("", "fake-model")).encode())
            else:
                prompt = ""
                if body and body.get("messages"):
                    prompt = body["messages"][-1].get("content", "")
                content = server.reply.replace("{prompt}", prompt)
                self._send(200, json.dumps(_completion(content, (body or {}).get("model", "?"))).encode())

    return Handler
