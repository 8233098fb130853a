"""Queue one workflow many times with different prompts (and seeds) on one ComfyUI server.

    python scripts/queue_prompts.py workflows/t2v_basic_api.json prompts.txt \
        [--url http://127.0.0.1:8188] [--prompt-node 2] [--seed-node 6] [--seed 1000] [--wait]

prompts.txt holds one prompt per line (blank lines and lines starting with # are skipped).
Each job gets the prompt in ``inputs.prompt`` of --prompt-node (``inputs.text`` when that node is a
native CLIPTextEncode, as in t2v_native_text_api.json), seed --seed + line number in
``inputs.seed`` of --seed-node, and its own SaveVideo filename prefix. Only the standard library
is used, so it runs from any Python.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import urllib.request
from pathlib import Path


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


PROMPT_INPUTS = ("prompt", "text")  # our Text Encode, native CLIPTextEncode


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


def wait_all(url: str, prompt_ids: list[str], timeout: float) -> dict[str, str]:
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline and len(status) < len(prompt_ids):
        for pid in prompt_ids:
            if pid in status:
                continue
            with urllib.request.urlopen(f"{url}/history/{pid}", timeout=30) as resp:
                entry = json.loads(resp.read()).get(pid)
            if entry and entry["status"].get("completed") is not None:
                status[pid] = entry["status"]["status_str"]
        time.sleep(0.5)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="an API-format workflow (e.g. workflows/t2v_basic_api.json)")
    parser.add_argument("prompts", type=Path, help="a text file, one prompt per line")
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--prompt-node", default="2", help="node id whose 'prompt' (Text Encode) or 'text' (CLIPTextEncode) input is set")
    parser.add_argument("--seed-node", default="6", help="node id whose 'seed' input is set (Sampler)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first job; each next job adds 1")
    parser.add_argument("--wait", action="store_true", help="wait until every job has finished")
    parser.add_argument("--timeout", type=float, default=24 * 3600)
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    for node, name in ((args.prompt_node, "--prompt-node"), (args.seed_node, "--seed-node")):
        if node not in workflow:
            parser.error(f"{name}={node} is not a node id of {args.workflow} (ids: {', '.join(workflow)})")
    if prompt_input(workflow[args.prompt_node]) is None:
        parser.error(f"--prompt-node={args.prompt_node} ({workflow[args.prompt_node]['class_type']}) has no "
                     f"'prompt' or 'text' input; pass the id of the Text Encode or CLIPTextEncode node")
    prompts = [line.strip() for line in args.prompts.read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    ids = []
    for job in jobs(workflow, prompts, args.prompt_node, args.seed_node, args.seed):
        answer = post(f"{args.url}/prompt", {"prompt": job})
        ids.append(answer["prompt_id"])
        print(answer["prompt_id"])
    if args.wait:
        status = wait_all(args.url, ids, args.timeout)
        failed = [pid for pid in ids if status.get(pid) != "success"]
        print(f"{len(ids) - len(failed)} of {len(ids)} jobs succeeded", file=sys.stderr)
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
