"""Browser tests drive headless Chromium against the shared real ComfyUI (tests/harness.py)."""

from tests.harness import no_pack_tracebacks  # noqa: F401  (autouse fixture)
