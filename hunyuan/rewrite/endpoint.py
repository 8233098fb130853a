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

import functools
import http.client
import json
import logging
import os
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
MAX_REPLY_BYTES = 4 * 2**20


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913 (urllib's signature)
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)


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
        if not key:
            where = f" by {self.key_source}" if self.key_source else ""
            raise ValueError(
                f"the key for {self.url} is configured{where} as environment variable {self.api_key_env}, "
                "which is not set in the ComfyUI process; set it before starting ComfyUI"
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
            if progress is not None:
                progress(attempt, attempts)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                reply = self._post(body, headers, deadline, key, functools.partial(progress or _nothing, attempt, attempts))
                return redact_text(parse_reply(self.url, _redact(reply, key)), key)  # decoded escapes too
            except _Retryable as exc:
                failures.append(redact_text(str(exc), key))  # e.g. a status line that repeats the header
                log.warning("rewrite endpoint %s attempt %d/%d failed: %s", self.url, attempt + 1, attempts,
                            failures[-1])
            pause = min(0.25 * 2**attempt, deadline - time.monotonic())
            if attempt + 1 < attempts and pause > 0:
                time.sleep(pause)
        tried = f"{len(failures)} attempt(s) within timeout_s={self.timeout_s:g}"
        last = failures[-1] if failures else "no time left for an attempt"
        raise RuntimeError(f"rewrite endpoint {self.url} failed after {tried}: {last}; expected {_EXPECTED}")

    def _post(self, body: bytes, headers: dict[str, str], deadline: float, key: str, between_reads) -> bytes:
        """The response body, read by the ``deadline`` (``time.monotonic()``) and at most
        MAX_REPLY_BYTES long; every message built from the response has ``key`` blanked out.
        ``between_reads`` runs after each piece of the body (the node checks for an interrupt)."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        timeout = deadline - time.monotonic()
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return self._read_body(response, deadline, between_reads)
        except urllib.error.HTTPError as exc:
            detail = _short(_redact(exc.read(), key))
            reason = _redact(str(exc.reason).encode(), key).decode(errors="replace")
            if exc.code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {exc.code} {reason}: {detail}") from None
            raise RuntimeError(
                f"rewrite endpoint {self.url} answered HTTP {exc.code} {reason}{_hint(exc.code)}: {detail}; "
                f"expected {_EXPECTED}"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ConnectionRefusedError):
                raise _Retryable("connection refused (is the server running?)") from exc
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"no answer within {timeout:.1f} s (timed out)") from exc
            raise _Retryable(f"cannot connect: {reason}") from exc
        except TimeoutError as exc:
            raise _Retryable(f"no answer within {timeout:.1f} s (timed out)") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection failed: {exc.__class__.__name__}: {exc}") from exc

    def _read_body(self, response, deadline: float, between_reads) -> bytes:
        """A socket timeout bounds one read, not the whole body: a server that sends a byte now and
        then would hold the queue for as long as it liked. So each piece is read with what is left
        of the deadline as its timeout, and the size is capped (a chat reply is a few KB)."""
        pieces, size = [], 0
        while True:
            left = deadline - time.monotonic()
            late = _Retryable(f"the reply was still arriving after {size} bytes (timed out)")
            if left <= 0:
                raise late
            sock = getattr(getattr(response.fp, "raw", None), "_sock", None)  # the connection's socket
            if sock is not None:
                sock.settimeout(left)
            try:
                piece = response.read1(65536)
            except TimeoutError:
                raise late from None
            if not piece:
                return b"".join(pieces)
            size += len(piece)
            if size > MAX_REPLY_BYTES:
                raise RuntimeError(f"rewrite endpoint {self.url} sent a reply of more than {MAX_REPLY_BYTES} bytes; "
                                   f"expected a chat completion of a few KB from {_EXPECTED}")
            pieces.append(piece)
            between_reads()


def _nothing(*args) -> None:
    pass


def _hint(code: int) -> str:
    if 300 <= code < 400:
        return " (redirects are not followed: allow and name the URL the endpoint redirects to)"
    if code in (401, 403):
        return " (check the key the server's owner configured for this endpoint)"
    return " (check the URL and model name)" if code == 404 else ""


def _redact(data: bytes, key: str) -> bytes:
    """``data`` with every occurrence of ``key`` (raw, or as JSON escapes it) replaced. Other
    escaped spellings (``\\u0073k-...``, ``\\/``) decode to the key only after parsing:
    :func:`redact_text` blanks the parsed text too."""
    if not key:
        return data
    for form in {key, json.dumps(key)[1:-1]}:
        data = data.replace(form.encode("utf-8"), REDACTED.encode())
    return data


def redact_text(text: str, key: str) -> str:
    """``text`` with every occurrence of ``key`` replaced."""
    return text.replace(key, REDACTED) if key else text


class _Retryable(Exception):
    """A failure worth another attempt while the deadline allows."""


def _short(data: bytes, limit: int = 300) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def parse_reply(url: str, data: bytes) -> str:
    """The first choice's message content from a chat-completions JSON response."""
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RuntimeError(
            f"rewrite endpoint {url} returned malformed JSON ({exc.__class__.__name__}: {exc}): "
            f"{_short(data, 200)!r}; expected {_EXPECTED}"
        ) from exc
    try:
        message = payload["choices"][0]["message"]
        content = message.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise RuntimeError(
            f"rewrite endpoint {url} returned JSON without choices[0].message: {_short(data, 200)!r}; "
            f"expected {_EXPECTED}"
        ) from exc
    if not isinstance(content, str):
        raise RuntimeError(f"rewrite endpoint {url} returned non-text content {content!r}; expected a string")
    return content
