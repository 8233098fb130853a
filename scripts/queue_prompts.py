"""Queue one workflow many times with different prompts (and seeds) on one or several ComfyUI servers.

    python scripts/queue_prompts.py workflows/t2v_basic_api.json prompts.txt \
        [--url http://127.0.0.1:8188 [--url http://127.0.0.1:8189 ...]] [--record jobs.json] \
        [--prompt-node 2] [--seed-node 6] [--seed 1000] [--wait]

prompts.txt holds one prompt per line (blank lines and lines starting with # are skipped).
Each job gets the prompt in ``inputs.prompt`` of --prompt-node (``inputs.text`` when that node is a
native CLIPTextEncode, as in t2v_native_text_api.json), seed --seed + line number in
``inputs.seed`` of --seed-node, and its own SaveVideo filename prefix (``…_0007`` for line 7).

With one --url and no --wait or --record, every job is queued at once and its prompt id printed.
Otherwise the script dispatches: it keeps at most --in-flight jobs queued on each server, records
every job's state in --record after each change (written atomically; rerun the same command to
resume: finished jobs are skipped, jobs still queued on a server are waited for, not queued
again), and when a server stops answering for --dead-after seconds its unfinished jobs go to the
others. Only the standard library is used, so it runs from any Python.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROMPT_INPUTS = ("prompt", "text")  # our Text Encode, native CLIPTextEncode
UNREACHABLE = (urllib.error.URLError, ConnectionError, TimeoutError, OSError)  # HTTPError is answered


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def prompt_input(node: dict) -> str | None:
    """Name of the text input of a prompt node, or None if it has none of PROMPT_INPUTS."""
    return next((name for name in PROMPT_INPUTS if name in node.get("inputs", {})), None)


def jobs(workflow: dict, prompts: list[str], prompt_node: str, seed_node: str, seed: int):
    key = prompt_input(workflow[prompt_node])
    for i, text in enumerate(prompts):
        job = copy.deepcopy(workflow)
        job[prompt_node]["inputs"][key] = text
        job[seed_node]["inputs"]["seed"] = seed + i
        for node in job.values():
            if node["class_type"] == "SaveVideo":
                node["inputs"]["filename_prefix"] = f"{node['inputs']['filename_prefix']}_{i:04d}"
        yield job


def output_names(entry: dict) -> list[str]:
    """``subfolder/filename`` of every file a finished job reports in its history entry."""
    names = []
    for node_out in entry.get("outputs", {}).values():
        for items in node_out.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    names.append(str(Path(item.get("subfolder", "")) / item["filename"]))
    return names


# -- the record ---------------------------------------------------------------------------------
class Record:
    """Every job's state, in a JSON file rewritten atomically after each change.

    A job is absent (not queued yet), ``queued`` (server + prompt id), ``done`` (also its outputs)
    or ``failed`` (also its status; queued again when the command is rerun).
    """

    def __init__(self, path: Path | None, fingerprint: str, count: int):
        self.path, self.fingerprint, self.count, self.jobs = path, fingerprint, count, {}
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            if data.get("fingerprint") != fingerprint:
                raise SystemExit(f"--record {path} belongs to another workflow or prompt list "
                                 f"(its fingerprint {data.get('fingerprint')!r}, this run's {fingerprint!r}); "
                                 f"pass a new --record path")
            self.jobs = {int(k): v for k, v in data["jobs"].items() if v.get("state") != "failed"}

    def set(self, index: int, **state) -> None:
        self.jobs[index] = state
        self._save()

    def forget(self, index: int) -> None:
        """The job goes back to not queued (its server lost it or stopped answering)."""
        self.jobs.pop(index, None)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "count": self.count,
                                   "jobs": {str(k): v for k, v in sorted(self.jobs.items())}}, indent=1))
        os.replace(tmp, self.path)

    def in_state(self, state: str) -> list[int]:
        return sorted(i for i, job in self.jobs.items() if job["state"] == state)

    def pending(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.jobs]


def fingerprint(job_list: list[dict]) -> str:
    return hashlib.sha256(json.dumps(job_list, sort_keys=True).encode()).hexdigest()[:16]


# -- dispatching --------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    dispatch: bool = True  # False for a server named only by the record: its jobs are waited for
    last_answer: float = field(default_factory=time.monotonic)
    dead: bool = False


class Dispatcher:
    """Keeps up to ``in_flight`` jobs queued on each live server until every job is done or failed."""

    def __init__(self, servers: list[str], job_list: list[dict], record: Record, in_flight: int,
                 dead_after: float, timeout: float = float("inf"), poll_s: float = 0.5, log=None):
        self.servers = {url: Server(url) for url in servers}
        self.job_list, self.record, self.in_flight = job_list, record, in_flight
        self.dead_after, self.poll_s = dead_after, poll_s
        self.deadline = time.monotonic() + timeout
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        for index in record.in_state("queued"):
            url = record.jobs[index]["server"]
            self.servers.setdefault(url, Server(url, dispatch=False))

    def run(self) -> int:
        while True:
            queues: dict[str, dict] = {}  # each server's /queue, asked once per round
            for index in self.record.in_state("queued"):
                self.poll(index, queues)
            self.dispatch()
            queued, pending = self.record.in_state("queued"), self.record.pending()
            if not queued and not pending:
                return 0
            if not queued and not any(s.dispatch and not s.dead for s in self.servers.values()):
                self.log(f"no server answers; jobs {pending} are not done. Rerun the same command "
                         f"(with --record) once a server is back")
                return 3
            if time.monotonic() > self.deadline:
                self.log(f"--timeout reached; jobs {queued + pending} are not done (rerun with --record to resume)")
                return 3
            time.sleep(self.poll_s)

    def _unreachable(self, server: Server, exc: BaseException) -> None:
        if server.dead or time.monotonic() - server.last_answer < self.dead_after:
            return
        server.dead = True
        moved = [i for i in self.record.in_state("queued") if self.record.jobs[i]["server"] == server.url]
        self.log(f"server {server.url} has not answered for {self.dead_after:g} s ({exc}); "
                 f"its unfinished jobs {moved} go to the other servers")
        for index in moved:
            self.record.forget(index)

    def poll(self, index: int, queues: dict[str, dict]) -> None:
        """Ask the job's server about it: record done/failed, or make it pending again if lost."""
        job = self.record.jobs.get(index)
        if job is None or job["state"] != "queued":  # moved off a server found dead earlier in this round
            return
        server, pid = self.servers[job["server"]], job["prompt_id"]
        if server.dead:
            return
        try:  # the queue first: a job that leaves it between the two calls is then in the history
            if server.url not in queues:  # before any history call of this round (see above)
                queues[server.url] = get(f"{server.url}/queue")
            queue = queues[server.url]
            entry = get(f"{server.url}/history/{pid}").get(pid)
        except UNREACHABLE as exc:
            return self._unreachable(server, exc)
        server.last_answer = time.monotonic()
        if entry and entry.get("status", {}).get("completed") is not None:
            status = entry["status"].get("status_str")
            state = "done" if status == "success" else "failed"
            self.record.set(index, state=state, server=server.url, prompt_id=pid, status=status,
                            outputs=output_names(entry))
            self.log(f"job {index} {state} on {server.url} ({pid})")
        elif not entry and pid not in {item[1] for key in ("queue_running", "queue_pending")
                                       for item in queue.get(key, [])}:
            self.log(f"job {index} ({pid}) is no longer known to {server.url} (restarted?); it is queued again")
            self.record.forget(index)

    def dispatch(self) -> None:
        """Queue pending jobs on the live servers with the fewest jobs in flight."""
        for index in self.record.pending():
            load = {url: 0 for url, s in self.servers.items() if s.dispatch and not s.dead}
            for job in self.record.jobs.values():
                if job["state"] == "queued" and job["server"] in load:
                    load[job["server"]] += 1
            free = [url for url, n in sorted(load.items(), key=lambda kv: kv[1]) if n < self.in_flight]
            if not free or not self.submit(index, self.servers[free[0]]):
                return

    def submit(self, index: int, server: Server) -> bool:
        try:
            answer = post(f"{server.url}/prompt", {"prompt": self.job_list[index]})
        except urllib.error.HTTPError as exc:  # the server answered: the job itself is refused
            server.last_answer = time.monotonic()
            self.record.set(index, state="failed", server=server.url, status=f"refused: {exc.read()[:500]!r}")
            self.log(f"job {index} refused by {server.url}: HTTP {exc.code}")
            return True
        except UNREACHABLE as exc:
            self._unreachable(server, exc)
            return False
        server.last_answer = time.monotonic()
        self.record.set(index, state="queued", server=server.url, prompt_id=answer["prompt_id"])
        print(answer["prompt_id"], flush=True)
        return True


# -- command line -------------------------------------------------------------------------------
def _arguments(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="an API-format workflow (e.g. workflows/t2v_basic_api.json)")
    parser.add_argument("prompts", type=Path, help="a text file, one prompt per line")
    parser.add_argument("--url", action="append", help="a ComfyUI server; repeat for several "
                        "(default http://127.0.0.1:8188)")
    parser.add_argument("--prompt-node", default="2", help="node id whose 'prompt' (Text Encode) or 'text' (CLIPTextEncode) input is set")
    parser.add_argument("--seed-node", default="6", help="node id whose 'seed' input is set (Sampler)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first job; each next job adds 1")
    parser.add_argument("--wait", action="store_true", help="wait until every job has finished")
    parser.add_argument("--record", type=Path, help="JSON file of every job's state; rerun to resume")
    parser.add_argument("--in-flight", type=int, default=2, help="most jobs queued on one server at a time")
    parser.add_argument("--dead-after", type=float, default=60.0,
                        help="seconds without an answer after which a server's jobs go to the others")
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for every job to finish")
    return parser, parser.parse_args(argv)


def _job_list(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[dict]:
    workflow = json.loads(args.workflow.read_text())
    for node, name in ((args.prompt_node, "--prompt-node"), (args.seed_node, "--seed-node")):
        if node not in workflow:
            parser.error(f"{name}={node} is not a node id of {args.workflow} (ids: {', '.join(workflow)})")
    if prompt_input(workflow[args.prompt_node]) is None:
        parser.error(f"--prompt-node={args.prompt_node} ({workflow[args.prompt_node]['class_type']}) has no "
                     f"'prompt' or 'text' input; pass the id of the Text Encode or CLIPTextEncode node")
    if args.in_flight < 1:
        parser.error(f"--in-flight={args.in_flight}; expected 1 or more")
    prompts = [line.strip() for line in args.prompts.read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    return list(jobs(workflow, prompts, args.prompt_node, args.seed_node, args.seed))


def main(argv: list[str] | None = None) -> int:
    parser, args = _arguments(argv)
    job_list = _job_list(parser, args)
    urls = [url.rstrip("/") for url in args.url or ["http://127.0.0.1:8188"]]
    if len(urls) == 1 and args.record is None and not args.wait:  # fire and forget
        for job in job_list:
            print(post(f"{urls[0]}/prompt", {"prompt": job})["prompt_id"])
        return 0
    record = Record(args.record, fingerprint(job_list), len(job_list))
    code = Dispatcher(urls, job_list, record, args.in_flight, args.dead_after, args.timeout).run()
    done, failed = record.in_state("done"), record.in_state("failed")
    print(f"{len(done)} of {len(job_list)} jobs succeeded" + (f"; failed: {failed}" if failed else ""),
          file=sys.stderr)
    return code or (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
