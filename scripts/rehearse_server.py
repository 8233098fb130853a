"""``make rehearse``, second part: the shipped ``t2v_basic`` and ``t2v_low_vram`` workflows through a
real ComfyUI on this machine, on the real-width files ``scripts/rehearse.py`` wrote.

The graphs run as users queue them, with three changes: the small video size and step count of
the rehearsal, the LLM file ``llava_llama3_fp8_scaled.safetensors`` (the rehearsal writes that one
of ComfyUI's two), and the bf16 DiT loaded as fp8 storage in both. For every node it records the
time and the server process's peak RSS while the node ran (``VmHWM``, reset through
``/proc/PID/clear_refs`` as each node starts, nodes told apart by ComfyUI's websocket ``executing``
messages) and its peak anonymous memory (``RssAnon`` sampled every 0.1 s: VmHWM also counts the
pages of memory-mapped weight files, which the kernel can drop under pressure), and for each graph the log lines in which ComfyUI's model management loads and unloads
models. Results: ``bench/results/rehearse_server.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import reset_peak, rss_anon, rss_peak  # noqa: E402
from scripts.comfy_server import ComfyServer  # noqa: E402
from scripts.rehearse import FILES  # noqa: E402

WORKFLOWS = ("t2v_basic", "t2v_low_vram")
MODEL_MANAGEMENT = re.compile(r"Requested to load|loaded (completely|partially)|[Uu]nload|block swap|Model .* prepared")


class NodeMeter:
    """Per node of the running prompt: seconds, the server's peak RSS and its peak anonymous memory
    (nodes from its websocket)."""

    def __init__(self, server: ComfyServer):
        self.server, self.pid = server, server.proc.pid
        self.rows: list[dict] = []
        self._anon = rss_anon(self.pid)  # the largest RssAnon seen since the current node started
        self._lock = threading.Lock()
        threading.Thread(target=self._sample_anon, daemon=True).start()
        self._current: tuple[str, float] | None = None
        self.idle = threading.Event()  # set by the "executing: None" that ends a prompt
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._loop.run_until_complete, args=(self._listen(),), daemon=True).start()
        if not self._ready.wait(30):
            raise RuntimeError("no websocket connection to the server")

    async def _listen(self) -> None:
        import aiohttp

        url = f"ws://127.0.0.1:{self.server.port}/ws?clientId={self.server.client_id}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
            self._ready.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    if event.get("type") == "executing":
                        self._switch(event["data"].get("node"))

    def _sample_anon(self) -> None:
        while self.server.proc.poll() is None:
            try:
                now = rss_anon(self.pid)
            except (OSError, RuntimeError):  # the server is gone
                return
            with self._lock:
                self._anon = max(self._anon, now)
            time.sleep(0.1)

    def _switch(self, node: str | None) -> None:
        now = time.perf_counter()
        now_anon = rss_anon(self.pid)
        with self._lock:
            anon, self._anon = max(self._anon, now_anon), now_anon
        if self._current is not None:
            name, start = self._current
            self.rows.append({"node": name, "seconds": now - start, "peak_rss_bytes": rss_peak(self.pid),
                              "peak_anon_bytes": anon})
        reset_peak(self.pid)  # the next node's peak starts from now
        self._current = None if node is None else (node, now)
        if node is None:
            self.idle.set()

    def take(self, timeout: float = 30.0) -> list[dict]:
        """The rows of the prompt that just ended (after its closing "executing: None")."""
        if not self.idle.wait(timeout) or not self.rows:
            raise RuntimeError("the server's websocket did not report the prompt's nodes")
        rows, self.rows = self.rows, []
        self.idle.clear()
        return rows


def _graph(name: str, args) -> dict:
    graph = json.loads((ROOT / "workflows" / f"{name}_api.json").read_text())
    for node in graph.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "HunyuanVideoTextEncoderLoader":
            inputs["llm"] = Path(FILES["llm"]).name
        elif kind == "HunyuanVideoDiTLoader":
            inputs["weight_dtype"] = "fp8_e4m3fn"
        elif kind == "HunyuanVideoSampler":
            inputs.update(width=args.width, height=args.height, frames=args.frames)
        elif kind == "HunyuanVideoScheduler":
            inputs["steps"] = args.steps
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = f"rehearse/{name}"
    return graph


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "rehearse",
                        help="scripts/rehearse.py's --work (its models/ folder is used as written)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rehearse_server.json")
    args = parser.parse_args(argv)
    models = args.work / "models"
    missing = [f for f in FILES.values() if not (models / f).is_file()]
    if missing:
        raise SystemExit(f"rehearse_server: {', '.join(missing)} missing under {models}; run scripts/rehearse.py first")
    base = args.work / "server"
    base.mkdir(parents=True, exist_ok=True)
    link = base / "models"
    if link.is_symlink():
        link.unlink()  # re-pointed every run: --work may have moved
    link.symlink_to(models.resolve(), target_is_directory=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "workflows": {}}
    for name in WORKFLOWS:  # a fresh server for each: nothing cached or loaded by the other
        with ComfyServer(base) as server:
            meter = NodeMeter(server)
            log_start = len(server.log_text())
            start = time.perf_counter()
            entry = server.run(_graph(name, args), timeout=3600)
            seconds = time.perf_counter() - start
            graph = _graph(name, args)
            nodes = [dict(row, class_type=graph[row["node"]]["class_type"]) for row in meter.take()]
            log = server.log_text()[log_start:].splitlines()
            report["workflows"][name] = {
                "seconds": seconds, "nodes": nodes, "outputs": [str(p) for p in server.output_files(entry)],
                "model_management": [line for line in log if MODEL_MANAGEMENT.search(line)],
                "server_peak_rss_bytes": max(row["peak_rss_bytes"] for row in nodes),
                "server_peak_anon_bytes": max(row["peak_anon_bytes"] for row in nodes),
            }
            for row in nodes:
                print(f"rehearse_server: {name}: node {row['node']} {row['class_type']}: {row['seconds']:.1f} s, "
                      f"peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB, anonymous "
                      f"{row['peak_anon_bytes'] / 2**30:.2f} GiB", flush=True)
            print(f"rehearse_server: {name}: {seconds:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"rehearse_server: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
