"""Prompt rewrite without a model: templates, output cleaning, fallback and the LRU cache."""

from __future__ import annotations

import logging

import pytest

from hunyuan.rewrite import (
    MODES,
    RewriteCache,
    SamplingParams,
    build_messages,
    clean_output,
    rewrite,
    system_prompt,
)
from hunyuan.rewrite.core import cache_key
from hunyuan.rewrite.templates import fold_system


class ScriptedBackend:
    """Answers every chat with ``reply`` and remembers what it was asked."""

    def __init__(self, reply: str, name: str = "scripted") -> None:
        self.reply = reply
        self.name = name
        self.calls: list[tuple[list[dict], SamplingParams]] = []

    def identity(self):
        return ("scripted", self.name)

    def complete(self, messages, params, progress=None):
        self.calls.append((messages, params))
        return self.reply


# --- templates -------------------------------------------------------------------------------

def test_modes_and_shared_rules():
    assert MODES == ("Normal", "Master")
    normal, master = system_prompt("Normal"), system_prompt("Master")
    for text in (normal, master):
        lowered = text.lower()
        assert "keep all of the user's information" in lowered
        assert "style word" in lowered
        assert "translate it into english" in lowered
        assert "one or two words" in lowered
        assert "lighting" in lowered and "atmosphere" in lowered
        assert "nothing else" in lowered
    assert master.startswith(normal.split("Length:")[0].strip())  # same rules first
    for detail in ("composition", "camera movement", "direction"):
        assert detail in master.lower()
        assert detail not in normal.lower()


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match=r"mode='Pro'.*Normal, Master"):
        system_prompt("Pro")


def test_build_messages_and_fold_system():
    messages = build_messages("  一只猫在弹钢琴  ", "Master")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == system_prompt("Master")
    assert messages[1]["content"] == "一只猫在弹钢琴"
    folded = fold_system(messages)
    assert [m["role"] for m in folded] == ["user"]
    assert folded[0]["content"].startswith(system_prompt("Master"))
    assert folded[0]["content"].endswith("一只猫在弹钢琴")
    assert messages[1]["content"] == "一只猫在弹钢琴"  # the input list is not modified


# --- cleaning --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A cat plays the piano in a sunlit room.", "A cat plays the piano in a sunlit room."),
        ("Sure! Here is the rewritten prompt: A cat sits.", "A cat sits."),
        ("Certainly. Here's an enhanced version of your prompt:\n\nA tiger walks.", "A tiger walks."),
        ("Rewritten prompt: A dog runs.", "A dog runs."),
        ("**Enhanced Prompt:** A dog runs.", "A dog runs."),
        ('"A red fox runs through snow."', "A red fox runs through snow."),
        ("\u201cA red fox.\u201d", "A red fox."),
        ("```\nA boat at dawn.\n```", "A boat at dawn."),
        ("<think>The user wants a fox.</think>\n\nA fox.", "A fox."),
        ("reasoning that the template opened</think>A fox.", "A fox."),
        ("<|start_header_id|>assistant<|end_header_id|>\n\nA dog.<|eot_id|>", "A dog."),
        ("<|assistant|>A dog.", "A dog."),
        ("assistant: A dog.", "A dog."),
        ("Assistant:\nRewritten prompt: \"A dog.\"\n\nLet me know if you want changes!", "A dog."),
        ('A sign that reads "OPEN" and "CLOSED".', 'A sign that reads "OPEN" and "CLOSED".'),
        ("'The cat's toy rolls away.'", "The cat's toy rolls away."),
        ("Great white shark, swimming slowly.", "Great white shark, swimming slowly."),
        ("Okay, so the sky is green.", "so the sky is green."),  # an opener word is still dropped
    ],
)
def test_clean_output(raw, expected):
    assert clean_output(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "Sure! Here is the rewritten prompt:", "<think>still thinking when tokens ran out",
     '""', "<|eot_id|>", "assistant:"],
)
def test_clean_output_empty(raw):
    assert clean_output(raw) == ""


# --- rewrite(): fallback and cache -----------------------------------------------------------

def test_rewrite_cleans_and_passes_messages_and_params():
    backend = ScriptedBackend("Sure! Here is the rewritten prompt: A cat plays jazz piano at night.")
    params = SamplingParams(temperature=0.3, top_p=0.8, max_new_tokens=64, seed=7)
    result = rewrite("cat piano", "Normal", backend, params, cache=RewriteCache())
    assert result.text == "A cat plays jazz piano at night."
    assert not result.fell_back and not result.cached
    assert result.ui_text() == result.text
    (messages, sent), = backend.calls
    assert messages == build_messages("cat piano", "Normal")
    assert sent == params


def test_empty_reply_falls_back_with_warning(caplog):
    backend = ScriptedBackend("Sure! Here is the rewritten prompt:")
    with caplog.at_level(logging.WARNING, logger="hunyuan.rewrite.core"):
        result = rewrite(" a lone tree ", "Master", backend, SamplingParams(), cache=RewriteCache())
    assert result.fell_back
    assert result.text == "a lone tree"
    assert "fell back" in result.ui_text() and result.ui_text().endswith("a lone tree")
    assert any("no usable text" in r.getMessage() for r in caplog.records)


def test_fallback_is_not_cached():
    cache = RewriteCache()
    backend = ScriptedBackend("")
    rewrite("x", "Normal", backend, SamplingParams(), cache=cache)
    rewrite("x", "Normal", backend, SamplingParams(), cache=cache)
    assert len(backend.calls) == 2 and len(cache) == 0


def test_cache_hit_for_identical_inputs_only():
    cache = RewriteCache()
    backend = ScriptedBackend("A detailed scene.")
    base = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=100, seed=1)
    first = rewrite("a cat", "Normal", backend, base, cache=cache)
    again = rewrite("a cat", "Normal", backend, base, cache=cache)
    assert again.cached and again.text == first.text and len(backend.calls) == 1
    variants = [
        ("a cat ", "Normal", base),
        ("a cat", "Master", base),
        ("a cat", "Normal", SamplingParams(0.7, 0.9, 100, 2)),
        ("a cat", "Normal", SamplingParams(0.0, 0.9, 100, 1)),
        ("a cat", "Normal", SamplingParams(0.7, 0.8, 100, 1)),
        ("a cat", "Normal", SamplingParams(0.7, 0.9, 101, 1)),
    ]
    for prompt, mode, params in variants:
        assert not rewrite(prompt, mode, backend, params, cache=cache).cached
    assert len(backend.calls) == 1 + len(variants)
    other = ScriptedBackend("A detailed scene.", name="other model")
    assert not rewrite("a cat", "Normal", other, base, cache=cache).cached


def test_cache_key_covers_every_input():
    backend = ScriptedBackend("x")
    keys = {
        cache_key(backend, "p", "Normal", SamplingParams(0.7, 0.9, 10, 0)),
        cache_key(backend, "q", "Normal", SamplingParams(0.7, 0.9, 10, 0)),
        cache_key(backend, "p", "Master", SamplingParams(0.7, 0.9, 10, 0)),
        cache_key(backend, "p", "Normal", SamplingParams(0.6, 0.9, 10, 0)),
        cache_key(backend, "p", "Normal", SamplingParams(0.7, 0.8, 10, 0)),
        cache_key(backend, "p", "Normal", SamplingParams(0.7, 0.9, 11, 0)),
        cache_key(backend, "p", "Normal", SamplingParams(0.7, 0.9, 10, 1)),
        cache_key(ScriptedBackend("x", "b"), "p", "Normal", SamplingParams(0.7, 0.9, 10, 0)),
    }
    assert len(keys) == 8
    assert cache_key(backend, "p", "Normal", SamplingParams(0.7, 0.9, 10, 0)) in keys


def test_lru_evicts_least_recently_used():
    cache = RewriteCache(maxsize=2)
    backend = ScriptedBackend("A scene.")
    for prompt in ("a", "b"):
        rewrite(prompt, "Normal", backend, SamplingParams(), cache=cache)
    assert rewrite("a", "Normal", backend, SamplingParams(), cache=cache).cached  # "a" is now fresh
    rewrite("c", "Normal", backend, SamplingParams(), cache=cache)  # evicts "b"
    assert rewrite("a", "Normal", backend, SamplingParams(), cache=cache).cached
    assert not rewrite("b", "Normal", backend, SamplingParams(), cache=cache).cached


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, "temperature=-0.1"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="prompt is empty"):
        rewrite("   ", "Normal", ScriptedBackend("x"), SamplingParams(), cache=None)
