"""The rewrite call: messages -> backend -> cleaned text, with fallback and an LRU cache."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from .cleaning import clean_output
from .templates import build_messages, check_mode

log = logging.getLogger(__name__)

# Called with (tokens or attempts done, total) while a backend works; may raise to abort.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SamplingParams:
    """How the LM picks tokens. ``temperature == 0`` means greedy (the seed is then unused)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature={self.temperature} is out of range; expected 0 (greedy) to 5")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} is out of range; expected a value in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class RewriteBackend(Protocol):
    """Anything that can answer a chat: a local LM or an HTTP endpoint."""

    def identity(self) -> Hashable:
        """Everything about the backend that changes its answers (never a secret)."""

    def complete(
        self, messages: list[dict[str, str]], params: SamplingParams, progress: ProgressFn | None = None
    ) -> str:
        """The raw assistant reply to ``messages``."""


@dataclass(frozen=True)
class RewriteResult:
    """``text`` is what goes to the text encoder; ``raw`` is the backend's reply as received."""

    text: str
    raw: str
    fell_back: bool = False
    cached: bool = False

    def ui_text(self) -> str:
        """What the node shows: the text, with a visible note when it fell back."""
        if self.fell_back:
            return f"[rewrite fell back to the original prompt: the model returned no usable text]\n{self.text}"
        return self.text


class RewriteCache:
    """A small thread-safe LRU of results keyed on every input of a rewrite."""

    def __init__(self, maxsize: int = 128) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize={maxsize} must be at least 1")
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, RewriteResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> RewriteResult | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: Hashable, result: RewriteResult) -> None:
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


DEFAULT_CACHE = RewriteCache()


def cache_key(backend: RewriteBackend, prompt: str, mode: str, params: SamplingParams) -> Hashable:
    """The LRU key: backend identity, the exact prompt, the mode and all sampling settings."""
    return (backend.identity(), prompt, mode, params)


def rewrite(
    prompt: str,
    mode: str,
    backend: RewriteBackend,
    params: SamplingParams,
    *,
    cache: RewriteCache | None = DEFAULT_CACHE,
    progress: ProgressFn | None = None,
) -> RewriteResult:
    """Rewrite ``prompt`` in ``mode`` ("Normal"/"Master").

    An empty cleaned reply falls back to the original prompt (with a logged warning). Backend
    errors propagate; neither they nor fallbacks are cached, so a retry asks again.
    """
    check_mode(mode)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty; expected the text to rewrite")
    key = cache_key(backend, prompt, mode, params)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            log.info("prompt rewrite: cache hit")
            return RewriteResult(hit.text, hit.raw, hit.fell_back, cached=True)
    raw = backend.complete(build_messages(prompt, mode), params, progress)
    text = clean_output(raw)
    if not text:
        log.warning("prompt rewrite returned no usable text (raw reply %r); using the original prompt", raw[:200])
        return RewriteResult(prompt.strip(), raw, fell_back=True)
    result = RewriteResult(text, raw)
    if cache is not None:
        cache.put(key, result)
    return result
