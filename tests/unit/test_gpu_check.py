"""The prepared GPU check (scripts/gpu_check.sh) in its --dry-run mode: the same stages on the CPU at
the smallest sizes, so the script that a GPU-lent session runs once cannot rot between sessions."""

import json
import os
import subprocess
import sys

import pytest

from scripts import gpu_check
from scripts.gpu_common import CheckFailed, Skipped
from tests.conftest import ROOT


def test_dry_run_passes_every_stage(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu" and report["failures"] == []
    statuses = {name: row["status"] for name, row in report["stages"].items()}
    assert statuses == {name: "ok" for name in gpu_check.STAGES}, report["stages"]
    stages = report["stages"]
    assert stages["payload"]["total_mib"] <= 64
    assert stages["blockswap"]["swap_bit_equal"] and stages["blockswap"]["swap"]["fetches"] > 0
    assert stages["pipeline"]["video"]["rel_err"] <= stages["pipeline"]["video"]["tolerance"]
    for size in ("small", "partial"):  # batched vs two-forward true CFG, timed at both sizes
        cfg = stages["cfg"][size]
        assert cfg["batched_speedup"] > 0 and cfg["bf16_diff"]["rel_err"] <= cfg["bf16_diff"]["tolerance"]
    cases = [v for k, v in stages["real_13b"].items() if k.startswith(("cap", "no cap"))]
    assert cases and all(c["fits"] for c in cases)
    assert any(c["double"] + c["single"] > 0 for c in cases)  # auto mode swapped under the dry run's cap
    summary = (tmp_path / "gpu.md").read_text()
    assert all(f"| {name} | ok |" in summary for name in gpu_check.STAGES)


@pytest.mark.parametrize("raised, status, code", [(CheckFailed("swap differs"), "fail", 1),
                                                  (RuntimeError("device lost"), "error", 1),
                                                  (Skipped("no sageattention"), "skipped", 0)])
def test_a_failing_stage_fails_the_run_and_a_skipped_one_does_not(tmp_path, monkeypatch, raised, status, code):
    def stage(ctx):
        raise raised

    monkeypatch.setitem(gpu_check.STAGES, "pack_imports", stage)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--stages", "pack_imports,tiny_dit"]) == code
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["stages"]["pack_imports"]["status"] == status
    assert str(raised) in report["stages"]["pack_imports"]["reason"]
    assert report["stages"]["tiny_dit"]["status"] == "skipped"  # its tiny models were never written
    assert len(report["failures"]) == code


def test_without_cuda_and_without_dry_run_it_says_so(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
