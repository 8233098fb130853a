"""The tiny-weights generator: every stage, real folders, same seed gives the same bytes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import torch
from safetensors import safe_open

from hunyuan.tools.make_tiny_models import REAL_NAMES
from scripts.comfy_server import ROOT
from tests.conftest import COMFYUI_DIR


def content_hash(path) -> str:
    """Bytes for most files; for safetensors, the tensors and metadata (safetensors writes its
    metadata map in hash order, so equal files can differ in header bytes)."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        h.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too (LoRA alphas)
    return h.hexdigest()


def digest(folder):
    return {p.relative_to(folder).as_posix(): content_hash(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def generate(out, seed, *extra):
    proc = subprocess.run([sys.executable, "-m", "hunyuan.tools.make_tiny_models", "--comfyui", str(COMFYUI_DIR), "--out", str(out), "--seed", str(seed), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_writes_every_stage_deterministically(tmp_path):
    proc = generate(tmp_path / "a", 3)
    assert "has no tiny weights" not in proc.stderr
    for sub in ("diffusion_models", "loras", "vae", "LLM", "text_encoders", "clip"):
        assert any((tmp_path / "a" / sub).iterdir()), f"nothing written to {sub}/"
    generate(tmp_path / "b", 3, "--real-names")
    real = digest(tmp_path / "b")
    for name, target in REAL_NAMES.items():
        assert (tmp_path / "b" / name).resolve() == (tmp_path / "b" / target).resolve(), name
    assert digest(tmp_path / "a") == {k: v for k, v in real.items() if not any(k.startswith(n) for n in REAL_NAMES)}
    dit = "diffusion_models/hyvid_tiny_dit.safetensors"
    generate(tmp_path / "c", 4)
    assert digest(tmp_path / "c")[dit] != digest(tmp_path / "a")[dit]
