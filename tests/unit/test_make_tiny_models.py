"""The tiny-weights generator: every stage, real folders, same seed gives the same bytes."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from scripts.comfy_server import ROOT


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def generate(out, seed):
    proc = subprocess.run([sys.executable, "-m", "hunyuan.tools.make_tiny_models", "--out", str(out), "--seed", str(seed)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_writes_every_stage_deterministically(tmp_path):
    proc = generate(tmp_path / "a", 3)
    assert "has no tiny weights" not in proc.stderr
    for sub in ("diffusion_models", "vae", "LLM", "text_encoders", "clip"):
        assert any((tmp_path / "a" / sub).iterdir()), f"nothing written to {sub}/"
    generate(tmp_path / "b", 3)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    dit = "diffusion_models/hyvid_tiny_dit.safetensors"
    generate(tmp_path / "c", 4)
    assert digest(tmp_path / "c")[dit] != digest(tmp_path / "a")[dit]
