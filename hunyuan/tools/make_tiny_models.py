"""Write deterministic tiny random-weight models in the real on-disk layouts.

    python -m hunyuan.tools.make_tiny_models --out MODELS_DIR [--seed N]

MODELS_DIR is a ComfyUI ``models/`` folder: every stage writes into the sub-folder a user would
put the real file in (``diffusion_models/``, ``vae/``, ``LLM/``, ``text_encoders/``, ``clip/``).
The weights are random: the demo's output is noise. They exist so that the whole graph, and every
loader's real layout, runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Each stage package that ships tiny weights has a ``tiny`` module with
# ``write_tiny(models_dir: Path, seed: int) -> list[Path]``.
STAGES = ("text", "dit", "vae", "rewrite")


def write_all(models_dir: Path, seed: int = 0) -> list[Path]:
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    package = __package__.rsplit(".", 1)[0]  # "hunyuan", or "<pack>.hunyuan" inside ComfyUI
    for stage in STAGES:
        try:
            tiny = importlib.import_module(f"{package}.{stage}.tiny")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"{package}.{stage}", f"{package}.{stage}.tiny"):
                raise
            log.info("stage %s has no tiny weights yet", stage)
            continue
        written.extend(tiny.write_tiny(models_dir, seed))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="a ComfyUI models/ folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_all(args.out, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
