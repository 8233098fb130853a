"""Draw the soak curve written by tests/server/test_reliability_soak.py.

    python bench/soak_plot.py [--data bench/results/soak.json] [--out bench/soak.png]

Top: resident memory of the ComfyUI server after each run, with the warm-up shaded and the 2%
budget above the post-warm-up baseline. Bottom: open file descriptors after each run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)

HERE = Path(__file__).resolve().parent


def plot(data: dict, out: Path) -> None:
    rss = [r / 2**20 for r in data["rss_bytes"]]
    fds = data["num_fds"]
    warmup = data["warmup"]
    runs = list(range(1, len(rss) + 1))
    base = rss[warmup - 1]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.plot(runs, rss, marker=".", label="RSS after run")
    top.axhline(base * 1.02, color="red", linestyle="--", label="baseline + 2%")
    top.set_ylabel("RSS (MiB)")
    top.set_title(f"ComfyUI server over {len(rss)} demo runs "
                  f"(growth after warm-up: {data['rss_growth_after_warmup']:.2%})")
    bottom.step(runs, fds, where="mid", color="green", label="open fds after run")
    bottom.set_ylabel("open fds")
    bottom.set_xlabel("run")
    bottom.set_ylim(0, max(fds) + 4)
    for ax in (top, bottom):
        ax.axvspan(0.5, warmup + 0.5, color="grey", alpha=0.2)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "results" / "soak.json", help="soak curve (JSON)")
    parser.add_argument("--out", type=Path, default=HERE / "soak.png", help="image to write")
    args = parser.parse_args(argv)
    plot(json.loads(args.data.read_text()), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
