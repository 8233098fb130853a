"""Installing the pack into an environment that already has ComfyUI's libraries changes no installed
version: requirements.txt and pyproject.toml carry no upper bound that would downgrade a shared
library (transformers 5.x included)."""

from __future__ import annotations

import json
import subprocess

import pytest
import tomllib

from scripts.comfy_server import ROOT
from tests.unit.test_text_versions import environments


def pyproject_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def dry_run(python: str, requirements: list[str], tmp_path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``pip install --dry-run`` and what it would install or change. ``--isolated --no-index``: no
    pip configuration, no index, no find-links; a requirement the environment does not already
    satisfy cannot be met and fails the run."""
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    proc = subprocess.run([python, "-m", "pip", "install", "--isolated", "--dry-run", "--no-index",
                           "--disable-pip-version-check", "--report", str(report), *requirements],
                          capture_output=True, text=True, timeout=300)
    items = json.loads(report.read_text())["install"] if report.is_file() else []
    return proc, [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items]


def would_install(python: str, requirements: list[str], tmp_path) -> list[str]:
    proc, items = dry_run(python, requirements, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return items


def installed(python: str, name: str) -> str:
    return subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()


@pytest.mark.parametrize("set_name", ["current", "oldest"])
def test_requirements_change_no_installed_version(set_name, tmp_path):
    python = environments()[set_name]
    major = installed(python, "transformers").split(".")[0]
    assert major == ("5" if set_name == "current" else "4")
    assert would_install(python, ["-r", str(ROOT / "requirements.txt")], tmp_path) == []
    assert would_install(python, pyproject_dependencies(), tmp_path) == []


def test_the_check_sees_a_downgrade(tmp_path):
    """The same check refuses the old ``transformers>=4.50.3,<5`` against transformers 5."""
    proc, items = dry_run(environments()["current"], ["transformers>=4.50.3,<5"], tmp_path)
    assert proc.returncode != 0 and "transformers" in proc.stderr, (proc.returncode, items)
