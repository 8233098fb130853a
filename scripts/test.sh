#!/usr/bin/env bash
# The README's test command: set everything up, lint, run the whole test suite once per locked
# library set (README, "Tested versions"):
#   current  .venv         requirements/lock.txt         (transformers 5.x, diffusers 0.42)
#   oldest   .venv-oldest  requirements/lock-oldest.txt  (transformers 4.50.3, diffusers 0.38)
#
#   bash scripts/test.sh [extra pytest args]          both sets
#   SETS=current bash scripts/test.sh tests/unit      one set only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SETS="${SETS:-current oldest}"
bash scripts/bootstrap.sh --browser --oldest
.venv/bin/ruff check .

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=0
for set in $SETS; do
  case "$set" in
    current) python=.venv/bin/python ;;
    oldest) python=.venv-oldest/bin/python ;;
    *) echo "test.sh: SETS has '$set'; expected current and/or oldest" >&2; exit 2 ;;
  esac
  versions="$("$python" -c 'import diffusers, huggingface_hub, tokenizers, torch, transformers as t
print(f"transformers {t.__version__}, tokenizers {tokenizers.__version__}, huggingface-hub {huggingface_hub.__version__}, diffusers {diffusers.__version__}, torch {torch.__version__}")')"
  echo "=== test.sh: $set set: $versions"
  start=$SECONDS
  set +e
  "$python" -m pytest "$@" 2>&1 | tee "$logs/$set.log"
  status=${PIPESTATUS[0]}
  set -e
  echo "=== test.sh: $set set: pytest exit $status after $((SECONDS - start)) s"
  if [ "$status" = 5 ]; then
    echo "test.sh: pytest collected no tests in the $set set; that is a failure" >&2
    failed=1
  elif [ "$status" != 0 ]; then
    failed=1
  fi
done

# One closing line over both runs (each pytest run printed its own above).
.venv/bin/python - "$logs" $SETS <<'PY'
import pathlib, re, sys
totals = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
for name in sys.argv[2:]:
    text = (pathlib.Path(sys.argv[1]) / f"{name}.log").read_text(errors="replace")
    summary = [line for line in text.splitlines() if re.search(r"\bin [\d.]+s\b", line) and "=" in line]
    for count, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary[-1] if summary else ""):
        totals[kind.rstrip("s") if kind.startswith("error") else kind] += int(count)
print(f"all-sets: {totals['passed']} passed, {totals['failed'] + totals['error']} failed, {totals['skipped']} skipped")
PY
exit "$failed"
