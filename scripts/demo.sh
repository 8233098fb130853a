#!/usr/bin/env bash
# The README's first command: set everything up, start ComfyUI with the pack, queue the demo
# workflow through comfy-cli, write a video and print where it is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
