"""One PNG per figure group of bench/RESULTS.md (matplotlib, Agg backend).

``make_plots(results, out_dir)`` draws every group that has data and returns {group: png path};
a group that was not measured gets no picture (its section says why).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)

MB = 2**20
OURS, PEER, OTHER = "#1f77b4", "#ff7f0e", "#2ca02c"


def _bars(ax, labels, values, lows=None, highs=None, colors=None, fmt="{:.2f}"):
    err = None
    if lows is not None:
        err = [[v - lo for v, lo in zip(values, lows)], [hi - v for v, hi in zip(values, highs)]]
    bars = ax.bar(labels, values, yerr=err, capsize=4, color=colors)
    for bar, v in zip(bars, values):
        ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.tick_params(axis="x", labelsize=8)


def _color(name: str) -> str:
    return OURS if name.startswith("ours") or name in ("in_process",) else PEER if "diff" in name else OTHER


def plot_dit(data: dict, fig) -> None:
    results = data["results"]
    axes = fig.subplots(1, len(results) + 1)
    flops = data["step_matmul_tflop"] * 1e12
    for ax, (name, r) in zip(axes, results.items()):
        labels = list(r["seconds"])
        s = [r["seconds"][k] for k in labels]
        _bars(ax, labels, [x["median"] for x in s], [x["min"] for x in s], [x["max"] for x in s],
              [_color(k) for k in labels])
        ax.set_title(f"{name}: seconds per step (lower is better)", fontsize=9)
    ax = axes[-1]
    labels, shares = [], []
    for name, r in results.items():
        for impl, s in r["seconds"].items():
            labels.append(f"{impl}\n{name}")
            gemm = data.get("gemm_gflops") or r["gemm_gflops"]
            shares.append(100 * flops / s["median"] / 1e9 / gemm["gemm_bf16"])
    _bars(ax, labels, shares, colors=[_color(lbl) for lbl in labels], fmt="{:.0f}%")
    ax.axhline(85, color="red", linestyle="--", linewidth=1, label="85% target")
    ax.set_title("share of the bf16 GEMM rate", fontsize=9)
    ax.legend(fontsize=7)


def plot_refiner(data: dict, fig) -> None:
    left, right = fig.subplots(1, 2)
    secs = data["seconds"]
    labels = ["inside", "refine", "prepare"]
    _bars(left, labels, [secs[k]["median"] for k in labels], [secs[k]["min"] for k in labels],
          [secs[k]["max"] for k in labels], [PEER, OURS, OURS], fmt="{:.3f}")
    left.set_title("txt_in seconds per call (bf16, 256 tokens)", fontsize=9)
    mem = data["memory"]
    _bars(right, ["refiner weights\n(13B, exact)", "measured\nRSS saved", "issue 3\nexpected"],
          [mem["refiner_bytes_bf16"] / MB, mem["measured_rss_saved"] / MB, mem.get("expected_mib", 590)],
          colors=[OURS, OURS, "grey"], fmt="{:.0f}")
    right.set_title("MiB not resident during sampling", fontsize=9)


def plot_vae(data: dict, fig) -> None:
    rows = data["rows"]
    names = list(rows)
    a, b, c = fig.subplots(1, 3)
    load = [rows[n]["load_rss_mb"] for n in names]
    work = [rows[n]["decode_peak_mb"] - rows[n]["load_rss_mb"] for n in names]
    a.bar(names, load, color="lightgrey", label="after load")
    a.bar(names, work, bottom=load, color=[_color(n) for n in names], label="decode working set")
    a.set_title("decode peak RSS (MB)", fontsize=9)
    a.legend(fontsize=7)
    _bars(b, names, [rows[n]["seconds"] for n in names], colors=[_color(n) for n in names], fmt="{:.0f}")
    b.set_title("decode seconds", fontsize=9)
    tiled = [n for n in names if rows[n].get("psnr_vs_untiled") is not None]
    _bars(c, tiled, [rows[n]["psnr_vs_untiled"] for n in tiled], colors=[_color(n) for n in tiled])
    c.set_title("seam PSNR vs untiled (dB, higher is better)", fontsize=9)
    for ax in (a, b, c):
        ax.tick_params(axis="x", rotation=30)


def plot_text(data: dict, fig) -> None:
    ax = fig.subplots()
    rows = data["rows"]
    names = [r["case"].replace("load ", "load\n") for r in rows]
    _bars(ax, names, [r["ratio"] for r in rows], colors=[_color(r["case"].split()[-1]) for r in rows])
    for case, limit in data.get("targets", {}).items():
        idx = [r["case"] for r in rows].index(case) if case in [r["case"] for r in rows] else None
        if idx is not None:
            ax.plot([idx - 0.4, idx + 0.4], [limit, limit], color="red", linestyle="--")
    ax.set_title("peak RSS / reference bytes (weights, or largest shard for the split); red: target", fontsize=9)


def plot_blockswap(data: dict, fig) -> None:
    ax = fig.subplots()
    labels, values = [], []
    for case in data["cases"]:
        for r in case["rows"]:
            p = r.get("paired_overhead_pct")
            if r["variant"] == "off" or not p:
                continue
            labels.append(f"{case['case']}\n{r['variant']}")
            values.append(p)
    _bars(ax, labels, [p["median"] for p in values], [p["q1"] for p in values], [p["q3"] for p in values],
          colors=OURS, fmt="{:+.1f}%")
    ax.axhline(data.get("target_pct", 3.0), color="red", linestyle="--", label="target")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("CPU-time overhead of swap on vs off (paired median, IQR)", fontsize=9)
    ax.legend(fontsize=7)


def plot_planner(data: dict, fig) -> None:
    a, b = fig.subplots(1, 2)
    cpu = data["cpu"]
    meas, pred = [r["measured_mib"] for r in cpu], [r["predicted_mib"] for r in cpu]
    top = max(meas + pred) * 1.1
    a.plot([0, top], [0, top], color="black", linewidth=0.5)
    a.fill_between([0, top], [0, top * 0.8], [0, top * 1.2], color="green", alpha=0.1, label="+-20%")
    a.scatter(meas, pred, color=OURS)
    for r in cpu:
        a.annotate(r["case"], (r["measured_mib"], r["predicted_mib"]), fontsize=7)
    a.set_xlabel("measured MiB")
    a.set_ylabel("predicted MiB")
    a.set_title("planner vs CPU measurement", fontsize=9)
    a.legend(fontsize=7)
    pub = data["published_13b"]
    x = range(len(pub))
    b.bar([i - 0.2 for i in x], [r["predicted_gb"] for r in pub], width=0.4, color=OURS, label="planner")
    b.bar([i + 0.2 for i in x], [r["published_gb"] for r in pub], width=0.4, color="grey", label="published")
    b.set_xticks(list(x), [r["size"] for r in pub], fontsize=8)
    b.set_title("13B peak GB, no offload", fontsize=9)
    b.legend(fontsize=7)


def plot_pipeline(data: dict, fig) -> None:
    a, b = fig.subplots(1, 2)
    raw = data["raw_seconds"]
    for i, side in enumerate(("in_process", "api")):
        a.scatter([i] * len(raw[side]), raw[side], color=_color(side) if side != "api" else PEER)
        a.hlines(data["seconds"][side]["median"], i - 0.2, i + 0.2, color="black")
    a.set_xticks([0, 1], ["in-process", "API"])
    a.set_ylabel("seconds per warm run")
    a.set_title("tiny demo, every repeat", fontsize=9)
    ratios = [x / y for x, y in zip(raw["api"], raw["in_process"])]
    b.plot(range(1, len(ratios) + 1), ratios, marker="o", color=PEER)
    b.axhline(1, color="black", linewidth=0.5)
    b.set_xlabel("repeat")
    b.set_title("API / in-process per repeat", fontsize=9)


def plot_step_cache(data: dict, fig) -> None:
    a, b = fig.subplots(1, 2)
    rows = data["results"]
    labels = list(rows)
    _bars(a, labels, [rows[k]["seconds"]["median"] for k in labels], colors=OURS)
    a.set_ylabel("seconds per video")
    a.set_title(f"{data['config']['steps']} steps, real width, random weights", fontsize=9)
    cached = [k for k in labels if k != "none"]
    _bars(b, cached, [rows[k]["skipped"] for k in cached], colors=OURS)
    b.set_ylabel("steps skipped")
    b.set_title("skipped steps per cache", fontsize=9)


def plot_compile_cfg(data: dict, fig) -> None:
    a = fig.subplots(1, 1)
    pairs = [("two forwards", data["batched_cfg"]["seconds"]["two_forwards"]),
             ("batched CFG", data["batched_cfg"]["seconds"]["batched"])]
    if "seconds" in data["compile"]:
        pairs += [("eager", data["compile"]["seconds"]["eager"]), ("compiled", data["compile"]["seconds"]["compiled"])]
    _bars(a, [p[0] for p in pairs], [p[1]["median"] for p in pairs], colors=OURS)
    a.set_ylabel("seconds per step")
    a.set_title("one step, real width, bf16, CPU", fontsize=9)


def plot_native_cache(data: dict, fig) -> None:
    a, b = fig.subplots(1, 2)
    rows = data["variants"]
    labels = list(rows)
    colors = [OURS if k.startswith("ours") else PEER for k in labels]
    _bars(a, labels, [rows[k]["seconds"]["median"] for k in labels], colors=colors)
    a.set_ylabel("CPU seconds per video")
    a.set_title(f"{data['config']['steps']} steps, real width, random weights", fontsize=9)
    _bars(b, labels, [rows[k]["skipped"] for k in labels], colors=colors)
    b.set_ylabel("steps skipped")
    b.set_title("ours vs ComfyUI KSampler + EasyCache", fontsize=9)
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=40)


def plot_gpu(data: dict, fig) -> None:
    a, b = fig.subplots(1, 2)
    rows = [r for r in data.get("rows", []) if not r.get("oom")]
    labels = [f"{r['double']}+{r['single']}" for r in rows]
    _bars(a, labels, [r["median_s"] for r in rows], colors=OURS)
    a.set_title("step seconds by swapped blocks", fontsize=9)
    _bars(b, labels, [r["peak_gib"] for r in rows], colors=OURS)
    b.set_title("peak VRAM GiB", fontsize=9)


PLOTS = {"dit_step": (plot_dit, (13, 4)), "refiner": (plot_refiner, (10, 4)), "vae_decode": (plot_vae, (14, 4.5)),
         "text_memory": (plot_text, (8, 4)), "blockswap": (plot_blockswap, (8, 4)), "planner": (plot_planner, (11, 4.5)),
         "pipeline": (plot_pipeline, (10, 4)), "step_cache": (plot_step_cache, (10, 4)),
         "compile_cfg": (plot_compile_cfg, (7, 4)), "native_cache": (plot_native_cache, (12, 4.5)),
         "gpu": (plot_gpu, (10, 4))}


def make_plots(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for key, (draw, size) in PLOTS.items():
        bench = results["benches"].get(key, {})
        if bench.get("status") not in ("ok", "reused") or not bench.get("data"):
            continue
        fig = plt.figure(figsize=size)
        try:
            draw(bench["data"], fig)
            fig.tight_layout()
            path = out_dir / f"{key}.png"
            fig.savefig(path, dpi=90)
            made[key] = path
        finally:
            plt.close(fig)
    return made
