"""The owner's endpoint file: which URLs a workflow may name, and which key each one gets."""

from __future__ import annotations

import json

import pytest

from hunyuan.rewrite.access import EndpointNotAllowed, EndpointPolicy, endpoint_key, load_policy


def write(tmp_path, data) -> str:
    path = tmp_path / "rewrite_endpoints.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/chat/completions"),
        ("HTTP://Example.COM/v1", "http://example.com/v1/"),
        ("https://api.example.com:443/v1", "https://api.example.com/v1"),
        ("http://host:80", "http://host/v1/chat/completions"),
        ("http://[::1]:8000/v1", "http://[::1]:8000/v1/"),
    ],
)
def test_forms_of_one_endpoint_share_a_key(a, b):
    assert endpoint_key(a) == endpoint_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1"),  # hosts as written
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"),
        ("http://h/v1", "https://h/v1"),
        ("http://h/a/v1", "http://h/b/v1"),
        ("http://h/v1", "http://h/v1?x=1"),
    ],
)
def test_other_endpoints_differ(a, b):
    assert endpoint_key(a) != endpoint_key(b)


def test_credentials_in_a_url_are_refused_without_echoing_them():
    with pytest.raises(ValueError, match="credentials") as info:
        endpoint_key("http://user:hunter2@h/v1")
    assert "hunter2" not in str(info.value)


def test_no_file_allows_nothing(tmp_path):
    policy = load_policy(tmp_path / "absent.json")
    with pytest.raises(EndpointNotAllowed, match="absent.json") as info:
        policy.lookup("http://127.0.0.1:8000/v1")
    assert "(0 listed)" in str(info.value) and "endpoint_url='http://127.0.0.1:8000/v1'" in str(info.value)


def test_listed_urls_get_their_own_key_only(tmp_path):
    policy = load_policy(write(tmp_path, {"endpoints": [
        {"url": "https://api.example.com/v1", "api_key_env": "EXAMPLE_KEY"},
        {"url": "http://127.0.0.1:11434/v1"},
    ]}))
    assert policy.lookup("https://API.example.com/v1/chat/completions").api_key_env == "EXAMPLE_KEY"
    assert policy.lookup("http://127.0.0.1:11434").api_key_env == ""
    with pytest.raises(EndpointNotAllowed, match=r"\(2 listed\)") as info:
        policy.lookup("https://evil.example.net/v1")
    assert "api.example.com" not in str(info.value)  # whoever queues a job does not learn the owner's hosts
    backend = policy.backend("https://api.example.com/v1", "m", 5.0, 0)
    assert backend.api_key_env == "EXAMPLE_KEY" and backend.key_source.endswith("rewrite_endpoints.json")


def test_unlisted_urls_when_allowed_get_no_key(tmp_path):
    policy = load_policy(write(tmp_path, {"endpoints": [{"url": "http://a/v1", "api_key_env": "A_KEY"}],
                                          "allow_unlisted_urls": True}))
    assert policy.lookup("http://b/v1").api_key_env == ""
    assert policy.lookup("http://a/v1").api_key_env == "A_KEY"


def test_empty_policy_is_closed():
    with pytest.raises(EndpointNotAllowed, match="no endpoint file"):
        EndpointPolicy().lookup("http://127.0.0.1:1/v1")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "cannot be read as JSON"),
        ([], "unexpected content"),
        ({"endpoint": []}, "unexpected content ['endpoint']"),
        ({"allow_unlisted_urls": "yes"}, "expected true or false"),
        ({"endpoints": {"url": "http://h"}}, "expected a list"),
        ({"endpoints": [{"api_key_env": "K"}]}, "without 'url'"),
        ({"endpoints": [{"url": "ftp://h"}]}, "not an http(s) URL"),
        ({"endpoints": [{"url": "http://h", "api_key_env": "sk-1234"}]}, "not an environment variable name"),
    ],
)
def test_bad_files_are_clear_errors_naming_the_file(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(ValueError) as info:
        load_policy(path)
    assert expected in str(info.value) and path in str(info.value)


def test_a_key_pasted_into_the_file_is_refused_and_not_echoed(tmp_path):
    path = write(tmp_path, {"endpoints": [{"url": "http://h/v1", "api_key": "sk-live-secret"}]})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['api_key'\]") as info:
        load_policy(path)
    assert "sk-live-secret" not in str(info.value)
