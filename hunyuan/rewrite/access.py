"""Which rewrite endpoints the server's owner allows, and which key (if any) each one gets.

A workflow is untrusted (people load them from strangers), so it may only *name* an endpoint
URL. Whether the server may post to that URL, and which secret goes with it, is decided by the
owner in a JSON file on the server, ``ENDPOINT_FILE`` under ComfyUI's user folder:

    {
      "endpoints": [
        {"url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
        {"url": "http://127.0.0.1:11434/v1"}
      ],
      "allow_unlisted_urls": false
    }

- A listed URL gets the key held by the environment variable its entry names (no entry, no key).
- An unlisted URL is refused, unless the owner sets ``allow_unlisted_urls``; then it is posted
  to *without* a key. No file means nothing is allowed.
- URLs match after normalisation (:func:`endpoint_key`): scheme and host lower-cased, default
  port dropped, ``.../v1`` and ``.../v1/chat/completions`` the same endpoint. Hosts are compared
  as written: ``localhost`` and ``127.0.0.1`` are two entries.

The file is read on every use, so an edit takes effect with the next job, without a restart.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .endpoint import EndpointBackend, chat_completions_url

ENDPOINT_FILE = ("hunyuanvideo", "rewrite_endpoints.json")  # relative to ComfyUI's user folder
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_ENTRY_FIELDS = {"url", "api_key_env"}
_FILE_FIELDS = {"endpoints", "allow_unlisted_urls"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EndpointNotAllowed(ValueError):
    """The workflow named an endpoint the server's owner did not allow."""


def endpoint_key(url: str) -> str:
    """The form two URLs of the same endpoint share (raises ValueError for a non-http(s) URL)."""
    full = chat_completions_url(url)
    parts = urllib.parse.urlsplit(full)
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint_url contains credentials (user:password@); expected a URL without them "
                         "(keys are configured on the server, see the README's Security section)")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"endpoint_url={url!r} has an invalid port; expected e.g. http://127.0.0.1:8000/v1") from exc
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[parts.scheme]) else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@dataclass(frozen=True)
class AllowedEndpoint:
    url: str  # as endpoint_key() writes it
    api_key_env: str = ""  # "" = no Authorization header


@dataclass(frozen=True)
class EndpointPolicy:
    """The owner's decisions, as read from ``source`` (empty: no file, nothing allowed)."""

    endpoints: tuple[AllowedEndpoint, ...] = ()
    allow_unlisted_urls: bool = False
    source: str = ""

    def lookup(self, url: str) -> AllowedEndpoint:
        """The entry for ``url``; a key-less one if unlisted URLs are allowed; else EndpointNotAllowed."""
        wanted = endpoint_key(url)
        for entry in self.endpoints:
            if entry.url == wanted:
                return entry
        if self.allow_unlisted_urls:
            return AllowedEndpoint(wanted)
        where = f"in {self.source}" if self.source else "(no endpoint file)"
        # The allowed URLs are not listed: anyone who can queue a job sees this, and an owner may
        # have put an internal host, or a key in a query string, in the file.
        raise EndpointNotAllowed(
            f"endpoint_url={url!r} is not an endpoint this server's owner allows {where} "
            f"({len(self.endpoints)} listed). "
            "Workflows may only name endpoints; the server's owner lists them, and the key each one gets, "
            "in that file (README, Security)"
        )

    def backend(self, url: str, model: str, timeout_s: float, max_retries: int) -> EndpointBackend:
        entry = self.lookup(url)
        return EndpointBackend(entry.url, model, entry.api_key_env, timeout_s, max_retries, key_source=self.source)


def load_policy(path: str | Path) -> EndpointPolicy:
    """Read the owner's endpoint file; a missing file allows nothing. Bad content: ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        return EndpointPolicy(source=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"endpoint file {str(path)!r} cannot be read as JSON ({exc}); expected {_SHAPE}") from exc
    if not isinstance(data, dict) or set(data) - _FILE_FIELDS:
        extra = sorted(set(data) - _FILE_FIELDS) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"endpoint file {str(path)!r} has unexpected content {extra}; expected {_SHAPE}")
    allow = data.get("allow_unlisted_urls", False)
    if not isinstance(allow, bool):
        raise ValueError(f"endpoint file {str(path)!r}: allow_unlisted_urls={allow!r}; expected true or false")
    entries = data.get("endpoints", [])
    if not isinstance(entries, list):
        raise ValueError(f"endpoint file {str(path)!r}: 'endpoints' is a {type(entries).__name__}; expected a list")
    return EndpointPolicy(tuple(_entry(path, i, e) for i, e in enumerate(entries)), allow, str(path))


_SHAPE = ('{"endpoints": [{"url": "http://host:8000/v1", "api_key_env": "VARIABLE_NAME"}], '
          '"allow_unlisted_urls": false}')


def _entry(path: Path, index: int, entry: object) -> AllowedEndpoint:
    where = f"endpoint file {str(path)!r}, endpoints[{index}]"
    if not isinstance(entry, dict) or "url" not in entry:
        raise ValueError(f"{where} is {type(entry).__name__} without 'url'; expected {_SHAPE}")
    extra = sorted(set(entry) - _ENTRY_FIELDS)
    if extra:
        # Never echo values here: a field such as "api_key" would hold the secret itself.
        raise ValueError(f"{where} has unknown field(s) {extra}; expected only 'url' and 'api_key_env' (the NAME "
                         "of an environment variable holding the key; the key itself is not put in this file)")
    name = entry.get("api_key_env", "") or ""
    if not isinstance(name, str) or (name and not _ENV_NAME.fullmatch(name)):
        raise ValueError(f"{where}: api_key_env is not an environment variable name; expected e.g. OPENAI_API_KEY")
    try:
        url = endpoint_key(str(entry["url"]))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return AllowedEndpoint(url, name)
