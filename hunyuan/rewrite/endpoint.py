"""An OpenAI-compatible chat-completions endpoint as a rewrite backend (stdlib urllib only).

``timeout_s`` is a total deadline: every attempt, retry and back-off pause fits inside it, so
a dead or hanging server costs at most ``timeout_s`` seconds. Which URL may be used and which
environment variable holds its key is the server owner's choice (:mod:`.access`); this class
only carries it out. The key is read at call time, never stored, logged or part of the cache
key, and is blanked out of anything the endpoint sends back before that text reaches an error,
the log or the output. Redirects are not followed: a redirect could lead the request, and its
key, to a host nobody allowed.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from .core import ProgressFn, SamplingParams

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_EXPECTED = "an OpenAI-compatible POST /v1/chat/completions endpoint"
REDACTED = "[redacted]"
MAX_REPLY_BYTES = 4 * 2**20  # a chat reply is a few KB
ERROR_DETAIL_BYTES = 64 * 2**10  # of an error reply's body: enough to quote its start
POLL_S = 0.25  # how often the interrupt check runs while a request is out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913 (urllib's signature)
        return None  # urllib then raises HTTPError with the 3xx status


def chat_completions_url(url: str) -> str:
    """Accept a base URL (``http://host:8000`` or ``.../v1``) or the full completions URL."""
    url = (url or "").strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"endpoint_url={url!r} is not an http(s) URL; expected e.g. http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = f"{path}/chat/completions" if path.endswith("/v1") or path else "/v1/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@dataclass(frozen=True)
class EndpointBackend:
    """Where and how to ask. ``api_key_env`` names the variable holding the key ("" = no key);
    the node layer takes it from the owner's endpoint file (``key_source``), never a workflow."""

    url: str
    model: str
    api_key_env: str = ""
    timeout_s: float = 60.0
    max_retries: int = 2
    key_source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", chat_completions_url(self.url))
        if not self.model.strip():
            raise ValueError("model='' is empty; expected the model name the endpoint serves")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s} must be > 0 seconds")
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries} must be >= 0")

    def identity(self) -> tuple:
        return ("endpoint", self.url, self.model, self.api_key_env)

    def _key(self) -> str:
        if not self.api_key_env:
            return ""
        key = os.environ.get(self.api_key_env, "").strip()
        where = f" by {self.key_source}" if self.key_source else ""
        if not key:
            raise ValueError(
                f"the key for {self.url} is configured{where} as environment variable {self.api_key_env}, "
                "which is not set in the ComfyUI process; set it before starting ComfyUI"
            )
        if not (key.isascii() and key.isprintable()):  # the header would refuse it, quoting the key
            raise ValueError(
                f"the key for {self.url}, configured{where} as environment variable {self.api_key_env}, holds a "
                "character that is not printable ASCII (a line break or a non-ASCII letter?); expected the key alone"
            )
        return key

    def _headers(self, key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def request_body(self, messages: list[dict[str, str]], params: SamplingParams) -> dict:
        return {
            "model": self.model,
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": params.seed,
            "stream": False,
        }

    def complete(
        self, messages: list[dict[str, str]], params: SamplingParams, progress: ProgressFn | None = None
    ) -> str:
        """POST the chat and return the assistant's content; RuntimeError when it cannot."""
        key = self._key()
        headers = self._headers(key)
        body = json.dumps(self.request_body(messages, params)).encode("utf-8")
        deadline = time.monotonic() + self.timeout_s
        attempts = self.max_retries + 1
        failures: list[str] = []
        for attempt in range(attempts):
            check = functools.partial(progress or _nothing, attempt, attempts)  # the node's interrupt check
            check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return parse_reply(self.url, self._post(body, headers, deadline, key, check), key)
            except _Retryable as exc:
                failures.append(str(exc))
                log.warning("rewrite endpoint %s attempt %d/%d failed: %s", self.url, attempt + 1, attempts,
                            failures[-1])
            if attempt + 1 < attempts:  # back off, still answering an interrupt
                resume = min(time.monotonic() + 0.25 * 2**attempt, deadline)
                while (left := resume - time.monotonic()) > 0:
                    time.sleep(min(POLL_S, left))
                    check()
        tried = f"{len(failures)} attempt(s) within timeout_s={self.timeout_s:g}"
        last = failures[-1] if failures else "no time left for an attempt"
        raise RuntimeError(f"rewrite endpoint {self.url} failed after {tried}: {last}; expected {_EXPECTED}")

    def _post(self, body: bytes, headers: dict[str, str], deadline: float, key: str, check) -> bytes:
        """The response body, complete by the ``deadline`` (``time.monotonic()``) and at most
        MAX_REPLY_BYTES long; every message quoting the response has ``key`` blanked out.

        The exchange runs on a thread of its own while this one waits for it, calling ``check``
        (the node's interrupt check) every POLL_S. A socket timeout bounds each read, not the
        whole answer: a server sending a byte now and then (in the status line, the headers, the
        body, a TLS handshake) would otherwise hold the queue as long as it liked. At the deadline
        or an interrupt the connection is shut (:class:`_Watchdog`) and this thread goes on; the
        exchange's thread ends with its socket."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        timeout = deadline - time.monotonic()
        watchdog = _Watchdog(deadline)
        opener = urllib.request.build_opener(_NoRedirect, _HTTPHandler(watchdog), _HTTPSHandler(watchdog))
        outcome: dict = {}

        def exchange() -> None:
            try:
                outcome["data"] = self._exchange(opener, request, timeout, watchdog, key)
            except (_Retryable, RuntimeError) as exc:  # ours: what it replaced (may quote the key) is dropped
                exc.__context__ = None
                outcome["error"] = exc
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting thread as it is)
                outcome["error"] = exc
            finally:
                watchdog.close()

        worker = threading.Thread(target=exchange, name="hyvid-rewrite-endpoint", daemon=True)
        worker.start()
        try:
            while worker.is_alive() and time.monotonic() < deadline:
                worker.join(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
                check()
        finally:
            if worker.is_alive():  # out of time, or interrupted
                watchdog.fire()
        if "error" in outcome:
            raise outcome["error"]
        if "data" not in outcome:
            raise _Retryable(f"no complete answer within {timeout:.1f} s (timed out)")
        return outcome["data"]

    def _exchange(self, opener, request, timeout: float, watchdog: _Watchdog, key: str) -> bytes:
        try:
            with opener.open(request, timeout=timeout) as response:
                data, complete = _read_body(response, MAX_REPLY_BYTES)
                if not complete:
                    raise RuntimeError(f"rewrite endpoint {self.url} sent a reply of more than {MAX_REPLY_BYTES} "
                                       f"bytes; expected a chat completion of a few KB from {_EXPECTED}")
                if watchdog.fired:  # the body was cut off at the deadline
                    raise TimeoutError
                return data
        except urllib.error.HTTPError as exc:
            try:
                detail = _display(_read_body(exc, ERROR_DETAIL_BYTES)[0], key)
            except (OSError, http.client.HTTPException):  # cut off at the deadline, or the server left
                detail = ""
            finally:
                exc.close()  # the connection, now: the error raised below would keep it until a GC cycle
            if watchdog.fired:
                detail = f"{detail} (the rest of the error body did not arrive in time: timed out)".strip()
            reason = _display(str(exc.reason), key)
            if exc.code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {exc.code} {reason}: {detail}") from None
            raise RuntimeError(
                f"rewrite endpoint {self.url} answered HTTP {exc.code} {reason}{_hint(exc.code)}: {detail}; "
                f"expected {_EXPECTED}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            if watchdog.fired or isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
                raise _Retryable(f"no complete answer within {timeout:.1f} s (timed out)") from None
            reason = getattr(exc, "reason", None)
            if isinstance(reason, ConnectionRefusedError):
                raise _Retryable("connection refused (is the server running?)") from None
            if isinstance(exc, urllib.error.URLError):
                raise _Retryable(f"cannot connect: {_display(str(reason), key)}") from None
            raise _Retryable(f"connection failed: {exc.__class__.__name__}: {_display(str(exc), key)}") from None


class _Watchdog:
    """Keeps a duplicate of each socket one request connects (taken as soon as TCP connects:
    the TLS wrapper and urllib each let go of their own reference along the way), so that
    :meth:`fire` can shut the connection down, which ends any read or write blocked on it (a
    proxy's CONNECT reply and the TLS handshake included); ``fired`` says whether it did.
    Connecting tries each address only for the time left before ``deadline``."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def connection(self, cls):
        """``cls`` (an HTTP(S)Connection class) connecting through :meth:`_connect`."""

        def make(*args, **kwargs):
            conn = cls(*args, **kwargs)
            conn._create_connection = self._connect
            return conn

        return make

    def _connect(self, address, timeout, source_address=None) -> socket.socket:
        host, port = address
        failure: OSError = TimeoutError("no time left to connect")
        found = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        for n, (family, kind, proto, _, sockaddr) in enumerate(found):
            left = self.deadline - time.monotonic()
            if left <= 0 or self.fired:
                break
            if n + 1 < len(found):  # one black-holed address may not take the time of those after it
                left /= 2
            sock = None
            try:
                sock = socket.socket(family, kind, proto)
                self._keep(sock)  # before connecting: shutting the duplicate down ends a pending connect too
                sock.settimeout(min(timeout, left) if timeout is not None else left)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                failure = exc
                continue
            sock.settimeout(timeout)
            return sock
        raise failure

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed or self.fired:
                raise OSError("the request is over (timed out or interrupted); not connecting")
            self._sockets.append(sock.dup())

    def fire(self) -> None:
        self.fired = True
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """The exchange is over: let the duplicates go."""
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req):
        return self.do_open(self._watchdog.connection(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def https_open(self, req):
        return self.do_open(self._watchdog.connection(http.client.HTTPSConnection), req, context=self._context)


def _read_body(stream, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of ``stream``, and whether that was all of it."""
    read = getattr(stream, "read1", None) or stream.read
    pieces, size = [], 0
    while size <= limit:
        piece = read(65536)
        if not piece:
            return b"".join(pieces), True
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)[:limit], False


def _nothing(*args) -> None:
    pass


def _hint(code: int) -> str:
    if 300 <= code < 400:
        return " (redirects are not followed: allow and name the URL the endpoint redirects to)"
    if code in (401, 403):
        return " (check the key the server's owner configured for this endpoint)"
    return " (check the URL and model name)" if code == 404 else ""


def redact_text(text: str, key: str) -> str:
    """``text`` with every occurrence of ``key``, as it is or JSON-escaped, replaced."""
    if not key:
        return text
    for form in {key, json.dumps(key)[1:-1], json.dumps(key, ensure_ascii=False)[1:-1]}:
        text = text.replace(form, REDACTED)
    return text


_ESCAPES = re.compile(r'(?:\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt]))+')


def _unescape(match: re.Match) -> str:
    try:
        text = json.loads(f'"{match.group(0)}"')
    except ValueError:
        return match.group(0)
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # a lone surrogate: U+FFFD


def _display(data: bytes | str, key: str, limit: int = 300) -> str:
    """What an error or log line may quote of something the endpoint sent: JSON escape sequences
    decoded (``\\u0073k-...``, ``\\/`` or ``\\"`` would otherwise spell the key past a
    literal search), the key blanked, then shortened."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = redact_text(_ESCAPES.sub(_unescape, text), key).strip()
    return text if len(text) <= limit else text[:limit] + "..."


class _Retryable(Exception):
    """A failure worth another attempt while the deadline allows."""


def parse_reply(url: str, data: bytes, key: str = "") -> str:
    """The first choice's message content from a chat-completions JSON response; ``key`` is
    blanked out of the content and of every error quoting the response."""
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RuntimeError(
            f"rewrite endpoint {url} returned malformed JSON ({exc.__class__.__name__}: {exc}): "
            f"{_display(data, key, 200)!r}; expected {_EXPECTED}"
        ) from None
    try:
        message = payload["choices"][0]["message"]
        content = message.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RuntimeError(
            f"rewrite endpoint {url} returned JSON without choices[0].message: {_display(data, key, 200)!r}; "
            f"expected {_EXPECTED}"
        ) from None
    if not isinstance(content, str):
        shown = _display(json.dumps(content, ensure_ascii=False), key, 200)  # its strings unescaped, then blanked
        raise RuntimeError(f"rewrite endpoint {url} returned non-text content {shown}; expected a string")
    return redact_text(content, key)
