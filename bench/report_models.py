"""RESULTS.md sections for the model stages: DiT step, token refiner, VAE decode, text encoders.

Targets are the stage issues': 3 (DiT), 4 (text encoders), 5 (VAE). See bench/report_fmt.py for
the builder contract.
"""

from __future__ import annotations

import json

from bench.report_fmt import INFO, MB, MISSED, group_data, met, rng, table, verdict
from bench.report_vae import (
    ROOT,
    SPEED_RUNS,
    _estimate_mb,
    _norm_mode,
    issue16_verdicts,
    real_size_table,
    speed_runs_table,
)

# -- DiT step --------------------------------------------------------------------------------------

def _profile_text(top: list[dict], rows: int = 6) -> str:
    return ", ".join(f"{p['op'].replace('aten::', '')} {p['pct']:.0f}%" for p in top[:rows])


def dit_section(data: dict, results: dict) -> tuple[list[dict], str]:
    cfg, targets = data["config"], data.get("targets", {})
    speed_target, share_target = targets.get("speedup_vs_faster_peer", 1.25), targets.get("share_of_bf16_gemm", 0.85)
    flops = data["step_matmul_tflop"] * 1e12
    verdicts, rows = [], []
    for name, r in data["results"].items():
        gemm = data.get("gemm_gflops") or r["gemm_gflops"]  # the machine's best rates over the whole run
        same = gemm.get(f"gemm_{name}", gemm["gemm_bf16"])
        shares = {}
        for impl, s in r["seconds"].items():
            achieved = flops / s["median"] / 1e9
            shares[impl] = achieved / same
            faster = "1 (reference)" if impl == "ours" else rng(r["speedup"][impl])
            err = "-" if impl == "ours" else f"{r['max_rel_err_vs_ours'][impl]:.1e}"
            rows.append([name, impl, rng(s, "{:.2f}", " s"), faster, f"{achieved:.0f}",
                         f"{achieved / gemm['gemm_bf16']:.0%}", f"{shares[impl]:.0%}", err])
        f = r["speedup_vs_faster_peer"]
        ok = f["median"] >= speed_target or shares["ours"] >= share_target
        note = ""
        if not ok:
            ours_s = r["seconds"]["ours"]["median"]
            peers = [p for p in shares if not p.startswith("ours")]  # not ours_default_ops either
            best_peer = max(peers, key=shares.get)
            note = (f"the {name} step is GEMM-bound: its matmul FLOPs at this machine's {name} GEMM rate "
                    f"({same:.0f} GFLOP/s) take {flops / same / 1e9:.1f} s of our {ours_s:.1f} s, i.e. ours runs at "
                    f"{shares['ours']:.0%} of the GEMM rate and the peers, running the same GEMMs, at "
                    + ", ".join(f"{shares[p]:.0%} ({p})" for p in peers)
                    + f". Being {speed_target}x faster than {best_peer} would need {speed_target * shares[best_peer]:.0%}; "
                    f"the other {1 - shares['ours']:.0%} of our step is time beyond the matmuls at GEMM speed "
                    "(attention below GEMM speed, copies, GELU, norms).")
            if r.get("profile_top"):
                note += f" Profile of our step: {_profile_text(r['profile_top'])}."
            elif data["results"].get("bf16", {}).get("profile_top"):
                note += (f" Our bf16 profile in this run: {_profile_text(data['results']['bf16']['profile_top'])}; "
                         "in fp32 matmuls were 77% of the step (issue 3's closing note).")
        verdicts.append(verdict(
            f"DiT step {name}: ours vs the faster peer", f">= {speed_target}x, or >= {share_target:.0%} of the GEMM rate",
            f"{rng(f, unit='x')}; {shares['ours']:.0%} of the {name} GEMM rate", met(ok), note))
    bf16 = data["results"].get("bf16")
    if bf16:
        share = bf16["summary"]["share_of_bf16_gemm"]
        verdicts.append(verdict("Share of this machine's bf16 GEMM throughput (our bf16 step)", "report",
                                f"{share:.0%} ({bf16['summary']['achieved_gflops_ours']:.0f} of "
                                f"{(data.get('gemm_gflops') or bf16['gemm_gflops'])['gemm_bf16']:.0f} GFLOP/s)", INFO))
    reps = data.get("repeats")
    reps = ", ".join(f"{n} ({d})" for d, n in reps.items()) if isinstance(reps, dict) else reps
    body = (f"Real width ({cfg['hidden']} wide, {cfg['heads']} heads), **{cfg['double']} double + {cfg['single']} single "
            f"block(s)** (the issue allows 1-2 of each; every block does the same work, so the ratios carry over) plus "
            f"the real {cfg['refiner']}-block token refiner inside the step as in both peers, {cfg['video_tokens']} video + "
            f"{cfg['text_tokens']} text tokens, {data['step_matmul_tflop']:.2f} TFLOP of matmuls per step, on "
            f"{data['machine']['threads']} CPU threads (torch {data['machine']['torch']}). Same weights in every "
            f"implementation. Repeats: {reps}. \"ours faster by\" = peer time / our time, per repeat. GEMM shares: the "
            "median step's matmul FLOP rate over this machine's GEMM rate, the best turn of a plain GEMM of the MLP's "
            "shape timed between the steps (a lower bound on the share).\n\n")
    body += table(["dtype", "implementation", "seconds per step", "ours faster by", "GFLOP/s", "of bf16 GEMM",
                   "of same-dtype GEMM", "max rel. err vs ours"], rows)
    for name, r in data["results"].items():
        if r.get("profile_top"):
            body += f"\nProfile of our {name} step (self CPU time): {_profile_text(r['profile_top'], 10)}.\n"
    return verdicts, body


# -- token refiner ---------------------------------------------------------------------------------

def refiner_section(data: dict, results: dict) -> tuple[list[dict], str]:
    mem, secs, steps = data["memory"], data["seconds"], data["steps"]
    exact, measured = mem["refiner_bytes_bf16"] / MB, mem["measured_rss_saved"] / MB
    expected = mem.get("expected_mib", 590)
    ok = abs(exact - expected) <= 0.05 * expected and abs(measured - exact) <= 0.1 * exact
    inside = secs["inside"]["median"]
    share = ""
    dit = group_data(results, "dit_step")
    if dit and "bf16" in dit["results"]:
        share = f" = {inside / dit['results']['bf16']['seconds']['ours']['median']:.0%} of our 1+1-block bf16 step"
    verdicts = [
        verdict("txt_in weights not resident during sampling (13B, bf16)", f"about {expected} MiB (issue 3)",
                f"{exact:.0f} MiB exact ({mem['share_of_dit']:.1%} of the DiT); {measured:.0f} MiB measured", met(ok),
                "" if ok else "the measured resident difference does not match the refiner's weight bytes"),
        verdict("txt_in time taken out of every sampling step (bf16, 256 text tokens)", "report",
                f"{rng(secs['inside'], '{:.2f}', ' s')}{share}", INFO),
        verdict(f"txt_in over a {steps}-step schedule", "report",
                f"{data['loop_total_inside_s']:.1f} s inside the loop vs {data['precompute_total_s']:.1f} s "
                f"precomputed before it", INFO),
    ]
    body = (f"The refiner's output depends only on (text, timestep), so our Token Refiner node runs it for every "
            f"step *before* sampling: the DiT step no longer runs it ({inside:.2f} s per step here) and the sampler's "
            f"device never holds its weights. The per-step work moves rather than vanishes: precompute still runs the "
            f"timestep-dependent part once per step ({secs['refine']['median']:.2f} s) and the timestep-independent "
            f"projection once ({secs['prepare']['median']:.2f} s), so over {steps} steps it saves "
            f"{data['total_saved_s']:.1f} s of compute in total, and all {steps} x {inside:.2f} s leave the "
            "sampling loop (where a GPU is busiest and memory tightest). With true CFG both counts double.\n\n")
    body += table(["call", "what runs it", "seconds (median, range)"], [
        ["inside", "every DiT step of diffusers/ComfyUI (txt_in in the step)", rng(secs["inside"], "{:.3f}")],
        ["refine", "precompute, once per step, before sampling", rng(secs["refine"], "{:.3f}")],
        ["prepare", "precompute, once", rng(secs["prepare"], "{:.3f}")]])
    body += (f"\nMemory: {mem['refiner_params'] / 1e6:.0f}M parameters of the 13B model's "
             f"{mem['dit_params'] / 1e9:.2f}B. Measured: a real-width 1+1-block DiT in bf16 holds "
             f"{mem['measured_rss_with_refiner'] / MB:.0f} MiB with txt_in and "
             f"{mem['measured_rss_without_refiner'] / MB:.0f} MiB after it is detached and dropped (fresh processes).\n")
    return verdicts, body


# -- VAE decode ------------------------------------------------------------------------------------

def _vae_memory_verdict(rows: dict, summary: dict) -> dict | None:
    """Issue 5: our tiled peak <= 0.6x diffusers' at equal or better seam PSNR.

    Ours may use any tiling (the benchmark's summary picks our lowest peak among the variants whose
    PSNR is at least diffusers'); older results have only ``ours_tiled`` at diffusers' tiles.
    """
    diff = rows.get("diffusers_tiled")
    if not diff:
        return None
    best = summary.get("best_at_equal_or_better_psnr")
    if best is None and "same_tiles" not in summary:  # an older benchmark without that summary
        ours = rows.get("ours_tiled")
        if not ours:
            return None
        best = {"variant": "ours_tiled", "psnr": ours["psnr_vs_untiled"],
                "peak_ratio": ours["decode_peak_mb"] / diff["decode_peak_mb"]}
        if best["psnr"] < diff["psnr_vs_untiled"] - 0.1:
            best = None
    target = "<= 0.6x at equal or better seam PSNR (issue 5)"
    figure = "VAE tiled decode peak vs diffusers'"
    if best is None:
        return verdict(figure, target, "no tiling of ours reached diffusers' PSNR", MISSED,
                       "every tiled variant of ours seams more than diffusers' at its tiles")
    ours = rows[best["variant"]]
    ok = best["peak_ratio"] <= 0.6
    o_work, d_work = ours["decode_peak_mb"] - ours["load_rss_mb"], diff["decode_peak_mb"] - diff["load_rss_mb"]
    note = "" if ok else (
        f"{best['variant']} peaks at {ours['decode_peak_mb']} MB = {ours['load_rss_mb']} MB after loading + {o_work} MB "
        f"decode working set; diffusers' at {diff['decode_peak_mb']} MB = {diff['load_rss_mb']} + {d_work} MB. The "
        f"working set, not the weights, is most of both peaks, and ours is {o_work / max(1, d_work):.2f}x diffusers'.")
    return verdict(figure, target, f"{best['peak_ratio']:.2f}x with {best['variant']} ({ours['decode_peak_mb']} vs "
                   f"{diff['decode_peak_mb']} MB; PSNR {best['psnr']:.2f} vs {diff['psnr_vs_untiled']:.2f} dB)", met(ok), note)


def _tiles(r: dict, data: dict) -> str:
    tile, overlap = r.get("tile_px", data.get("tile_px")), r.get("overlap_px", data.get("overlap_px"))
    if "tile_px" in r and not r["tile_px"]:
        return "whole frames" if r.get("impl") == "ours" and r.get("chunk") else "untiled"
    return f"{tile}/{overlap}" if tile else "-"


def vae_section(data: dict, results: dict) -> tuple[list[dict], str]:
    rows, summary = data["rows"], data.get("summary") or {}
    table_rows = []
    for name, r in rows.items():
        work = r.get("working_set_mb", r["decode_peak_mb"] - r["load_rss_mb"])
        psnr = "-" if r.get("psnr_vs_untiled") is None else f"{r['psnr_vs_untiled']:.2f}"
        tiny = "-" if r.get("tiny_psnr_vs_untiled") is None else f"{r['tiny_psnr_vs_untiled']:.2f}"
        table_rows.append([name, _tiles(r, data), _norm_mode(r), f"{r['seconds']:.1f}", r["load_rss_mb"],
                           r["decode_peak_mb"], work, _estimate_mb(r, data), psnr, tiny, r.get("psnr_reference") or "-"])
    ours, diff, comfy = rows.get("ours_tiled"), rows.get("diffusers_tiled"), rows.get("comfy_tiled")
    memory = _vae_memory_verdict(rows, summary)
    verdicts = [memory] if memory else [verdict("VAE tiled decode peak vs diffusers'", "<= 0.6x (issue 5)",
                                                "diffusers_tiled missing", MISSED, "the benchmark gave no diffusers row")]
    if ours and diff:
        psnr_ok = ours["psnr_vs_untiled"] >= diff["psnr_vs_untiled"] - 0.1
        verdicts.append(verdict("VAE seam PSNR at diffusers' tiles (tiled vs untiled)", ">= diffusers' (0.1 dB tolerance)",
                                f"{ours['psnr_vs_untiled']:.2f} vs {diff['psnr_vs_untiled']:.2f} dB", met(psnr_ok),
                                "" if psnr_ok else "ours blends tiles less smoothly than diffusers' at these tile sizes"))
        verdicts.append(verdict("VAE tiled decode at diffusers' tiles: peak and time vs diffusers'", "report",
                                f"peak {ours['decode_peak_mb'] / diff['decode_peak_mb']:.2f}x, time "
                                f"{ours['seconds'] / diff['seconds']:.2f}x ({ours['seconds']:.0f} vs {diff['seconds']:.0f} s)",
                                INFO))
    best = (summary.get("best_at_equal_or_better_psnr") or {}).get("variant")
    mine = ours or rows.get(best)
    if mine and comfy:
        label = "same tiles" if mine is ours else f"ours as {best}"
        verdicts.append(verdict(f"VAE tiled decode vs ComfyUI native tiled ({label})", "report",
                                f"peak {mine['decode_peak_mb'] / comfy['decode_peak_mb']:.2f}x, time "
                                f"{mine['seconds'] / comfy['seconds']:.2f}x, PSNR {mine['psnr_vs_untiled']:.2f} vs "
                                f"{comfy['psnr_vs_untiled']:.2f} dB", INFO))
    verdicts += issue16_verdicts(rows)
    body = (f"Real channel widths with random weights, latent {data.get('latent')} in {data.get('dtype')}. Each variant "
            "runs once in its own fresh process (bench/bench_vae_decode.py); peak = `VmHWM` during the decode, working "
            "set = peak minus the RSS after loading; PSNR of each tiled decode against the same implementation's "
            "untiled decode. These are single runs per variant, not interleaved repeats.\n\n")
    body += ("Norm: *shared xN* = GroupNorm statistics from N statistics passes (19 = one per norm past the stem: exact with whole "
             "frames); *per piece* = each tile or chunk its own statistics. Estimate: our planner's decode peak "
             "(`estimate_peak`) for the row, against the measured working set. Tiny PSNR: the same mode on the tiny "
             "VAE (fp32; ComfyUI builds only the real widths).\n\n")
    body += table(["variant", "tile/overlap px", "norm", "seconds", "RSS after load (MB)", "decode peak (MB)",
                   "working set (MB)", "estimate (MB)", "PSNR vs untiled (dB)", "tiny PSNR (dB)", "PSNR reference"],
                  table_rows)
    body += speed_runs_table(sorted((ROOT / "bench" / "results").glob(SPEED_RUNS)))
    body += real_size_table()
    if summary:
        body += f"\nSummary from the benchmark: `{json.dumps(summary)}`\n"
    return verdicts, body


# -- text encoders ---------------------------------------------------------------------------------

def text_section(data: dict, results: dict) -> tuple[list[dict], str]:
    rows = {r["case"]: r for r in data["rows"]}
    targets = data.get("targets", {"load ours_auto": 1.1, "split_llava": 1.2})
    verdicts = []
    labels = {"load ours_auto": "LLM load peak / weight bytes (ours, dtype auto)",
              "split_llava": "Split tool peak / largest shard"}
    for case, limit in targets.items():
        r = rows.get(case)
        if r is None:
            verdicts.append(verdict(labels.get(case, case), f"<= {limit}x", "not in the results", MISSED,
                                    "the benchmark did not produce this row"))
            continue
        ok = r["ratio"] <= limit
        note = "" if ok else (f"peak {r['peak'] / MB:.0f} MB vs {r['reference_bytes'] / MB:.0f} MB: more than one copy of "
                              "the weights is resident at once")
        verdicts.append(verdict(labels.get(case, case), f"<= {limit}x (issue 4)",
                                f"{r['ratio']:.2f}x ({r['peak'] / MB:.0f} / {r['reference_bytes'] / MB:.0f} MB)", met(ok), note))
    hf = rows.get("load hf_from_pretrained")
    if hf:
        verdicts.append(verdict("transformers from_pretrained, same files (peer)", "report", f"{hf['ratio']:.2f}x", INFO))
    body = (f"Synthetic checkpoints: a Llama of {data['llama_weight_bytes'] / MB:.0f} MB in 2 safetensors shards, and a "
            f"full LLaVA of {data['llava_total_bytes'] / MB:.0f} MB in 4 shards (largest {data['llava_largest_shard'] / MB:.0f} "
            "MB, vision tower in its own shard). Each case runs in a fresh process; peak = `VmHWM` reset after the "
            "imports, minus the RSS after the imports; loaded weights are then read once so their pages count.\n\n")
    body += table(["case", "reference (MB)", "peak (MB)", "ratio", "target", "seconds"],
                  [[r["case"], f"{r['reference_bytes'] / MB:.0f}", f"{r['peak'] / MB:.0f}", f"{r['ratio']:.2f}",
                    targets.get(r["case"], "-"), f"{r['seconds']:.1f}"] for r in data["rows"]])
    return verdicts, body
