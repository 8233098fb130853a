"""The main job: a real ComfyUI with this pack, a workflow queued through comfy-cli, a video written.

    .venv/bin/python scripts/demo.py [--workflow FILE] [--keep-running]

Weights are tiny and random (made by ``hunyuan.tools.make_tiny_models``): the video is noise. It
proves the install and the whole graph; see the README for running real weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hunyuan.tools.make_tiny_models import write_all  # noqa: E402
from scripts.comfy_server import ROOT, ComfyServer, default_comfyui_dir  # noqa: E402
from scripts.smoke_size import SMOKE_INPUTS, shrink  # noqa: E402

DEFAULT_WORKFLOW = ROOT / "workflows" / "t2v_basic_api.json"
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov"}


def expected_frames(workflow: dict) -> int | None:
    for node in workflow.values():
        if node.get("class_type") == "HunyuanVideoSampler":
            return int(node["inputs"]["frames"])
    return None


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the tiny demo workflow on a real ComfyUI.")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    parser.add_argument("--base-dir", type=Path, default=ROOT / "out" / "demo")
    parser.add_argument("--keep-running", action="store_true", help="leave the server up afterwards")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    written = write_all(args.base_dir / "models", seed=0, comfyui=default_comfyui_dir(), real_names=True)
    print(f"[demo] tiny weights: {len(written)} files in {args.base_dir / 'models'}")
    server = ComfyServer(args.base_dir)
    server.start()
    print(f"[demo] ComfyUI up at {server.url} (log: {server.log_path})")
    try:
        workflow = shrink(json.loads(args.workflow.read_text()))
        small = args.base_dir / f"{args.workflow.stem}_smoke.json"
        small.write_text(json.dumps(workflow, indent=1))
        print(f"[demo] queueing {args.workflow.name} through comfy-cli at smoke size {SMOKE_INPUTS}")
        before = set((args.base_dir / "output").rglob("*"))
        server.run_cli(small)
        videos = sorted(p for p in set((args.base_dir / "output").rglob("*")) - before
                        if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            print("[demo] the workflow finished but wrote no video", file=sys.stderr)
            return 1
        frames = count_frames(videos[-1])
        want = expected_frames(workflow)
        if want is not None and frames != want:
            print(f"[demo] {videos[-1]} has {frames} frames, expected {want}", file=sys.stderr)
            return 1
        print(f"[demo] video written: {videos[-1]} ({frames} frames) in {time.monotonic() - t0:.1f}s")
        if args.keep_running:
            print(f"[demo] server left running at {server.url}; Ctrl-C to stop")
            server.proc.wait()
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
