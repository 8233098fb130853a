"""Start, drive and stop a real ComfyUI server with this pack installed.

Used by the demo (``scripts/demo.sh``) and by the server tests, so both exercise the same path
a user takes: a ComfyUI process, the pack in its ``custom_nodes/``, jobs queued over HTTP
(``POST /prompt``) or through comfy-cli.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-hunyuanvideo"


def default_comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfyui" / "ComfyUI").resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JobFailed(AssertionError):
    """A queued job was rejected at validation or failed while executing."""

    def __init__(self, message: str, payload: dict):
        super().__init__(message)
        self.payload = payload


class ComfyServer:
    """One ComfyUI process with its own ``--base-directory``."""

    def __init__(self, base_dir: Path, *, comfyui_dir: Path | None = None, port: int | None = None,
                 python: str | None = None, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.base_dir = Path(base_dir).resolve()
        self.comfyui_dir = Path(comfyui_dir or default_comfyui_dir())
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = os.path.abspath(python or sys.executable)
        self.extra_args = extra_args
        self.extra_env = dict(env or {})
        self.log_path = self.base_dir / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    # -- lifecycle ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the base directory and link the pack into its custom_nodes/."""
        for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_NAME
        if link.is_symlink() or link.exists():
            if link.resolve() == ROOT:
                return
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(ROOT, target_is_directory=True)

    def start(self, timeout: float = 180.0) -> ComfyServer:
        if not (self.comfyui_dir / "main.py").is_file():
            raise FileNotFoundError(f"no ComfyUI at {self.comfyui_dir} (run scripts/bootstrap.sh or set COMFYUI_PATH)")
        self.prepare()
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base_dir),
               "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the process lifetime)
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer /system_stats within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def alive(self) -> bool:
        try:
            self.get("/system_stats", timeout=5)
            return True
        except Exception:
            return False

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP -----------------------------------------------------------------------------
    def request(self, method: str, path: str, payload=None, timeout: float = 30.0) -> tuple[int, object]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            body, status = err.read(), err.code
        try:
            return status, json.loads(body) if body else None
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    def get(self, path: str, timeout: float = 30.0):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise urllib.error.HTTPError(self.url + path, status, str(body), None, None)
        return body

    def post(self, path: str, payload) -> tuple[int, object]:
        return self.request("POST", path, payload)

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=60)

    # -- jobs -----------------------------------------------------------------------------
    def submit(self, prompt: dict) -> tuple[int, dict]:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format prompt and wait for it; return its /history entry."""
        status, body = self.submit(prompt)
        if status != 200:
            raise JobFailed(f"prompt rejected ({status}): {json.dumps(body)[:4000]}", body)
        return self.wait(body["prompt_id"], timeout)

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise JobFailed(f"job failed: {execution_error(entry)}", entry)
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"job {prompt_id} did not finish within {timeout:.0f}s")

    def run_expect_error(self, prompt: dict, timeout: float = 300.0) -> str:
        """Queue a prompt that must fail; return the validation or execution error text."""
        try:
            self.run(prompt, timeout)
        except JobFailed as failure:
            return str(failure)
        raise AssertionError("the job was expected to fail but succeeded")

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def run_cli(self, workflow: Path, timeout: float = 600.0) -> dict:
        """Run a workflow file (API or UI format) through comfy-cli; return its JSON envelope."""
        # As a module of this python: .venv-oldest has no `comfy` script of its own (it shares .venv's comfy-cli).
        cmd = [self.python, "-m", "comfy_cli", "--skip-prompt", "--workspace", str(self.comfyui_dir), "run",
               "--workflow", str(workflow), "--host", "127.0.0.1", "--port", str(self.port),
               "--wait", "--json", "--timeout", str(int(timeout))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30,
                              env=dict(os.environ, COMFY_NO_WATCH="1", NO_COLOR="1"))
        events = []
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        result = {"returncode": proc.returncode, "events": events, "stdout": proc.stdout, "stderr": proc.stderr}
        if proc.returncode != 0:
            raise JobFailed(f"comfy run exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", result)
        return result

    # -- outputs and logs -----------------------------------------------------------------
    def output_files(self, entry: dict) -> list[Path]:
        """Files a finished job wrote, from its history entry's UI outputs."""
        files = []
        for node_out in entry.get("outputs", {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        folder = self.base_dir / item.get("type", "output")
                        files.append(folder / item.get("subfolder", "") / item["filename"])
        return files

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def execution_error(entry: dict) -> str:
    """The exception message(s) of a failed /history entry."""
    messages = []
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            messages.append(f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}")
        elif kind == "execution_interrupted":
            messages.append("interrupted")
    return "; ".join(messages) or json.dumps(entry.get("status"))[:2000]
