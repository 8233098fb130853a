"""Server tests share one real ComfyUI process (see tests/harness.py)."""

from tests.harness import no_pack_tracebacks  # noqa: F401  (autouse fixture)
