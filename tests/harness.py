"""A real ComfyUI server for the server and browser tests: one process per test session.

The server gets a fresh ``--base-directory`` with the pack linked into ``custom_nodes/`` and every
stage's tiny weights in ``models/``. The test-only custom nodes in ``tests/comfy_shims/`` are linked
next to the pack (they never ship; see their docstrings). After each test, the part of the server
log written during that test must not hold a traceback from this pack, except while a test
deliberately queued a job that must fail (``comfy.run_expect_error``).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hunyuan.rewrite.access import ENDPOINT_FILE
from hunyuan.tools.make_tiny_models import write_all
from scripts.comfy_server import PACK_NAME, ROOT, ComfyServer, JobFailed, default_comfyui_dir
from scripts.smoke_size import I2V_INPUT, V2V_INPUT, write_smoke_input_image, write_smoke_input_video

ARTIFACTS = ROOT / "artifacts"
TEST_SHIMS = ROOT / "tests" / "comfy_shims"

# Secrets in the server's environment, as a cloud machine has them (tests/server/test_security.py):
# one no workflow may reach, and one the server's owner binds to an endpoint in the endpoint file.
SERVER_SECRETS = {"HYVID_TEST_CLOUD_SECRET": "cloud-" + secrets.token_hex(16),
                  "HYVID_TEST_OWNER_KEY": "sk-owner-" + secrets.token_hex(16)}


class TestServer(ComfyServer):
    """ComfyServer that remembers which log spans may contain our tracebacks."""

    __test__ = False  # not a test class

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.allowed_spans: list[tuple[int, int]] = []

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def run_expect_error(self, prompt: dict, timeout: float = 300.0) -> str:
        start = self.log_size()
        try:
            return super().run_expect_error(prompt, timeout)
        finally:
            self.allowed_spans.append((start, self.log_size()))

    def expect_failure(self, fn, *args, **kwargs) -> JobFailed:
        """Call ``fn`` (e.g. ``self.run_cli``), which must raise JobFailed; allow its tracebacks."""
        start = self.log_size()
        try:
            fn(*args, **kwargs)
        except JobFailed as failure:
            return failure
        finally:
            self.allowed_spans.append((start, self.log_size()))
        raise AssertionError(f"{getattr(fn, '__name__', fn)} was expected to fail but succeeded")


# A frame in this pack: under custom_nodes/<pack>/ or the repository, but not the ComfyUI or the
# virtual environments that bootstrap.sh puts inside the repository (their tracebacks are not ours).
_PACK_FRAME = re.compile(rf"File \"[^\"]*(custom_nodes/{re.escape(PACK_NAME)}|{re.escape(str(ROOT))})/(?!\.comfyui/|\.venv)")


def pack_tracebacks(text: str) -> list[str]:
    """Traceback blocks in ``text`` with at least one frame inside this pack."""
    blocks = re.split(r"(?=Traceback \(most recent call last\):)", text)
    return [b[:3000] for b in blocks[1:] if _PACK_FRAME.search(b.split("\n\n")[0])]


def _log_outside(server: TestServer, start: int, end: int) -> str:
    raw = server.log_path.read_bytes()[start:end]
    for a, b in sorted(server.allowed_spans, reverse=True):
        lo, hi = max(a, start) - start, min(b, end) - start
        if lo < hi:
            raw = raw[:lo] + raw[hi:]
    return raw.decode(errors="replace")


def link_test_shims(custom_nodes: Path) -> list[str]:
    """Link every test-only custom node of tests/comfy_shims/ into a server's custom_nodes/."""
    custom_nodes.mkdir(parents=True, exist_ok=True)
    names = []
    for shim in sorted(p for p in TEST_SHIMS.iterdir() if (p / "__init__.py").is_file()):
        (custom_nodes / shim.name).symlink_to(shim, target_is_directory=True)
        names.append(shim.name)
    return names


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> TestServer:
    base = tmp_path_factory.mktemp("comfyui-base")
    write_all(base / "models", seed=0, comfyui=default_comfyui_dir(), real_names=True)
    (base / "input").mkdir(exist_ok=True)
    write_smoke_input_video(base / "input" / V2V_INPUT)
    write_smoke_input_image(base / "input" / I2V_INPUT)
    link_test_shims(base / "custom_nodes")
    server = TestServer(base, python=sys.executable, env=SERVER_SECRETS)
    server.start()
    try:
        log = server.log_text()
        assert f"IMPORT FAILED: {PACK_NAME}" not in log and "Cannot import" not in _pack_lines(log), server.log_tail()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def owner_endpoints(server: TestServer, endpoints: list[dict], allow_unlisted_urls: bool = False) -> Iterator[Path]:
    """The server owner's rewrite endpoint file, for the duration of the block (read on every job)."""
    path = server.base_dir.joinpath("user", *ENDPOINT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"endpoints": endpoints, "allow_unlisted_urls": allow_unlisted_urls}))
    try:
        yield path
    finally:
        path.unlink()


def size_graph(image: str, resolution: str = "360p") -> dict:
    """LoadImage (``image`` in the server's input/) -> I2V Size -> the two sizes shown by native
    Preview as Text nodes (ids 83: width, 84: height). The I2V Size node is in no shipped workflow."""
    return {
        "81": {"class_type": "LoadImage", "inputs": {"image": image}},
        "82": {"class_type": "HunyuanVideoI2VSize", "inputs": {"image": ["81", 0], "resolution": resolution}},
        "83": {"class_type": "PreviewAny", "inputs": {"source": ["82", 0]}},
        "84": {"class_type": "PreviewAny", "inputs": {"source": ["82", 1]}},
    }


def _pack_lines(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if PACK_NAME in line)


@pytest.fixture(autouse=True)
def no_pack_tracebacks(comfy: TestServer):
    start = comfy.log_size()
    yield
    text = _log_outside(comfy, start, comfy.log_size())
    found = pack_tracebacks(text)
    assert not found, "the server log shows a traceback from this pack:\n" + "\n---\n".join(found)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
