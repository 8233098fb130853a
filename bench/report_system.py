"""RESULTS.md sections for the system-level figures: block swap, memory planner, whole pipeline, GPU.

Targets are issue 6's (block swap <= 3 %, planner within +-20 %). See bench/report_fmt.py for the
builder contract.
"""

from __future__ import annotations

import statistics

from bench.report_fmt import INFO, MB, NOT_RUN, met, rng, table, verdict

PLANNER_BAND = 20.0


# -- block swap ------------------------------------------------------------------------------------

def blockswap_section(data: dict, results: dict) -> tuple[list[dict], str]:
    target = data.get("target_pct", 3.0)
    cases = {c["case"]: c for c in data["cases"]}
    hook_us = data["hook_cost_us_per_block"]
    verdicts, rows = [], []
    for case in data["cases"]:
        for r in case["rows"]:
            p = r.get("paired_overhead_pct")
            paired = f"{p['median']:+.2f} (IQR {p['q1']:+.1f} to {p['q3']:+.1f})" if p and r["variant"] != "off" else "-"
            rows.append([case["case"], r["variant"], f"{r['median_cpu_s']:.3f}", f"{r['overhead_pct']:+.2f}", paired,
                         f"{r['median_wall_s']:.3f}", case["repeats"], case["identical"]])
    machinery = cases.get("machinery")
    if machinery:
        on = next(r for r in machinery["rows"] if r["variant"] != "off")
        off = next(r for r in machinery["rows"] if r["variant"] == "off")
        measured = on.get("paired_overhead_pct", {}).get("median", on["overhead_pct"])
        blocks = sum(machinery["blocks"])
        implied = 100 * hook_us * blocks / 1e6 / off["median_cpu_s"]
        ok = measured <= target
        note = "" if ok else (
            f"the hooks themselves cost {hook_us:.0f} us of CPU per swapped block (timed directly), {blocks} blocks = "
            f"{implied:.2f}% of this {off['median_cpu_s']:.2f} s forward; the rest of the A/B difference is the noise "
            "of this shared 2-core machine (see the IQR).")
        verdicts.append(verdict("Block-swap machinery overhead on the CPU (swap on vs off, same run)",
                                f"<= {target:.0f}% (issue 6)",
                                f"{measured:+.2f}% paired median over {machinery['repeats']} repeats; hooks alone "
                                f"{implied:.2f}%", met(ok), note))
    copies = cases.get("with copies")
    if copies:
        row = next((r for r in copies["rows"] if r["variant"] == "on (copies)"), None)
        if row:
            p = row.get("paired_overhead_pct", {}).get("median", row["overhead_pct"])
            verdicts.append(verdict("Block swap with real CPU copies of every block", "report",
                                    f"{p:+.1f}% (memcpy of {copies['swapped_mib']:.0f} MiB per forward)", INFO))
    verdicts.append(verdict("Machinery per swapped block", "report",
                            f"{hook_us:.1f} us; {hook_us * 60 / 1e3:.2f} ms per forward for the 13B model's 60 blocks",
                            INFO))
    body = ("The same DiT forward with swap off and on, taking turns in one process, torch on one thread, timed as "
            "that thread's CPU time (work done, not waiting for a core). \"hooks only\" hands back the host tensors "
            "(hooks and bookkeeping alone); \"copies\" also copies every block's weights each forward (on a GPU these "
            "copies overlap compute on a side stream; see the GPU section). Paired = the per-repeat ratio on/off.\n\n")
    body += table(["case", "variant", "CPU s (median)", "overhead % (medians)", "paired overhead %", "wall s",
                   "repeats", "identical output"], rows)
    return verdicts, body


# -- memory planner --------------------------------------------------------------------------------

PUBLISHED_NOTE = (
    "Tencent's figures are whole-process peaks of their reference without offload: the 8B text encoder, CLIP-L and "
    "the VAE stay on the GPU next to the DiT, plus the CUDA context and the allocator's reserve "
    "(hunyuan/process_memory.py). The context (0.5 GB) and the reserve (5 % of the working set) are assumptions "
    "until scripts/gpu_check.sh measures them on a GPU.")


def _published_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["size", "published GB", "predicted GB", "ratio", "DiT sampling alone GB"]
    if not all("breakdown_gb" in r for r in rows):  # a result from before the whole-process model
        return head, [[r["size"], f"{r['published_gb']:.0f}", f"{r['predicted_gb']:.1f}", f"{r['ratio']:.2f}", "-"]
                      for r in rows]
    head += ["context", "text encoders", "VAE weights", "DiT weights", "DiT working", "VAE decode working",
             "reserve", "peak in"]
    out = []
    for r in rows:
        b = r["breakdown_gb"]
        out.append([r["size"], f"{r['published_gb']:.0f}", f"{r['predicted_gb']:.1f}", f"{r['ratio']:.2f}",
                    f"{r['dit_sampling_gb']:.1f}", f"{b['cuda_context']:.1f}", f"{b['text_encoders']:.1f}",
                    f"{b['vae_weights']:.1f}", f"{b['dit_weights']:.1f}", f"{b['dit_working']:.1f}",
                    f"{b['vae_decode_working']:.1f}", f"{b['allocator_reserve']:.1f}", r["peak_stage"]])
    return head, out


def planner_section(data: dict, results: dict) -> tuple[list[dict], str]:
    band = data.get("target_pct", PLANNER_BAND)
    worst = max(data["cpu"], key=lambda r: abs(r["error_pct"]))
    ok = abs(worst["error_pct"]) <= band
    verdicts = [verdict("Planner vs measured peak (CPU, fresh processes)", f"within +-{band:.0f}% (issue 6)",
                        f"{min(r['error_pct'] for r in data['cpu']):+.1f}% to {max(r['error_pct'] for r in data['cpu']):+.1f}%"
                        f" over {len(data['cpu'])} cases", met(ok),
                        "" if ok else f"{worst['case']} is off by {worst['error_pct']:+.1f}%")]
    for r in data["published_13b"]:
        within = abs(r["ratio"] - 1) * 100 <= band
        verdicts.append(verdict(f"Planner 13B at {r['size']} vs Tencent's published peak",
                                f"within +-{band:.0f}% (issue 14: the whole process)",
                                f"{r['predicted_gb']:.1f} vs {r['published_gb']:.0f} GB ({r['ratio']:.2f}x)", met(within),
                                PUBLISHED_NOTE))
    body = ("CPU: a fresh process builds the DiT, warms up, and runs one forward; measured = its `VmHWM` minus the RSS "
            "before the forward (glibc serves large allocations with mmap, so freed tensors leave the RSS).\n\n")
    body += table(["case", "measured MiB", "predicted MiB", "error %"],
                  [[r["case"], f"{r['measured_mib']:.1f}", f"{r['predicted_mib']:.1f}", f"{r['error_pct']:+.1f}"]
                   for r in data["cpu"]])
    body += ("\n13B, no offload, one GPU (Tencent's README), against the whole-process estimate of the reference "
             "configuration (fp16 text encoders and VAE, bf16 DiT, decode at its 32-latent tiles; GB = 1e9 bytes):\n\n")
    body += table(*_published_rows(data["published_13b"]))
    return verdicts, body


# -- whole pipeline --------------------------------------------------------------------------------

def pipeline_section(data: dict, results: dict) -> tuple[list[dict], str]:
    s, r = data["seconds"], data["overhead_ratio"]
    server = data.get("server_execution_s")
    iqr = f" (IQR {r['q1']:.2f} to {r['q3']:.2f})" if "q1" in r else ""
    verdicts = [verdict("Tiny demo, warm: API wall time / the same graph in-process", "report (overhead of ComfyUI + pack)",
                        f"{r['median']:.2f}x{iqr}; {data['overhead_s']['median']:+.2f} s per run (median)", INFO)]
    raw_exec = data.get("raw_server_execution_s")
    if raw_exec and all(x is not None for x in raw_exec):
        http = statistics.median(a - e for a, e in zip(data["raw_seconds"]["api"], raw_exec))
        node = statistics.median(e - b for e, b in zip(raw_exec, data["raw_seconds"]["in_process"]))
        verdicts.append(verdict("  of which HTTP, queue and history polling (client wall - server execution, median)",
                                "report", f"{http:+.2f} s", INFO))
        verdicts.append(verdict("  of which ComfyUI's executor and the pack's node layer (server execution - in-process, "
                                "median per pair)", "report", f"{node:+.2f} s", INFO))
    verdicts.append(verdict("Same graph, same output", "identical video", str(data.get("identical_video")),
                            met(bool(data.get("identical_video")))))
    sizes = data.get("sizes", {}).get("HunyuanVideoSampler", {})
    peaks = data.get("peak_rss_bytes", {})
    body = (f"`{data['workflow']}` shrunk to the demo's size ({sizes.get('width')}x{sizes.get('height')}, "
            f"{sizes.get('frames')} frames, {data.get('sizes', {}).get('HunyuanVideoScheduler', {}).get('steps')} steps) "
            "on the tiny random weights of `make_tiny_models --real-names`. API: a real ComfyUI (`scripts/comfy_server.py`), "
            f"`POST /prompt`, `/history` polled every {1000 * data.get('poll_s', 0.01):.0f} ms. In-process: the same files "
            "and loader settings through `hunyuan/` (encode, refine, sample, decode, h264 mp4 via PyAV). Warm: models "
            "loaded; each repeat changes prompt and seed so ComfyUI re-runs every node but the loaders. "
            f"{data['repeats']} repeats, the sides alternating which goes first. Runs this short are at the mercy of "
            "the other processes on this shared 2-core machine (the same in-process run was seen taking 0.9 s and "
            "3.4 s of CPU time minutes apart, alone), hence the per-pair ratio with its quartiles; the range is in "
            "the JSON.\n\n")
    rows = [["API (client wall)", rng(s["api"], "{:.3f}")], ["in-process", rng(s["in_process"], "{:.3f}")]]
    if server:
        rows.insert(1, ["API (server execution_start -> success)", rng(server, "{:.3f}")])
    body += table(["side", "seconds per run"], rows)
    first = data.get("first_run_s", {})
    body += (f"\nFirst run (loads the models): API {first.get('api', 0):.2f} s, in-process "
             f"{first.get('in_process_including_load', 0):.2f} s. ComfyUI start-up: {data.get('server_startup_s', 0):.1f} s. "
             f"Peak RSS: server {(peaks.get('server') or 0) / MB:.0f} MiB, in-process {(peaks.get('in_process') or 0) / MB:.0f} "
             "MiB.\n")
    return verdicts, body


# -- GPU -------------------------------------------------------------------------------------------

def gpu_section(data: dict, results: dict) -> tuple[list[dict], str]:
    rows, attention = data.get("rows", []), data.get("attention", [])
    verdicts = []
    for r in rows:
        label = f"GPU step, swap {r['double']} double + {r['single']} single"
        value = "out of memory" if r.get("oom") else f"{r['median_s']:.3f} s, peak {r['peak_gib']:.2f} GiB " \
                                                     f"(planner {r['predicted_gib']:.2f})"
        verdicts.append(verdict(label, "report", value, INFO))
    for r in attention:
        value = r.get("skipped") or ("out of memory" if r.get("oom") else f"{r['median_s']:.3f} s, {r['peak_gib']:.2f} GiB")
        verdicts.append(verdict(f"GPU attention {r['backend']}", "report", value, INFO))
    body = f"Device: {data.get('device')}; settings: {data.get('args')}.\n"
    return verdicts, body


# -- step caches -------------------------------------------------------------------------------------

def step_cache_section(data: dict, results: dict) -> tuple[list[dict], str]:
    c, rows = data["config"], data["results"]
    verdicts, table_rows = [], [["none", "-", rng(rows["none"]["seconds"], "{:.1f}"), "-", "-", "-"]]
    for label, r in rows.items():
        if label == "none":
            continue
        psnr = "exact" if r["psnr_db"] == float("inf") else f"{r['psnr_db']:.1f} dB"
        setting = f"{r['threshold']:g}" + (f", start {r['start']:g}" if r.get("start") else "")
        verdicts.append(verdict(f"{label} at its published setting ({setting}): video time vs no cache",
                                "report (random weights)", f"{r['speedup']['median']:.2f}x, {r['skipped']}/{c['steps']} "
                                f"steps skipped, final latent {psnr} vs uncached", INFO))
        table_rows.append([label, setting, rng(r["seconds"], "{:.1f}"), rng(r["speedup"], "{:.2f}", "x"),
                           f"{r['computed']} / {r['skipped']}", psnr])
    body = (f"The DiT at real width ({c['hidden']}) with {c['blocks'][0]} double + {c['blocks'][1]} single blocks and "
            f"random weights, {c['dtype']}, {c['video_tokens']} video + {c['text_tokens']} text tokens, {c['steps']} Euler "
            f"steps; the variants run in turn, {c['repeats']} repeats. Random weights do not change from step to step "
            "the way the real model does, so the skip counts and PSNR show the machinery and what a skipped step saves, "
            "not the published speed-ups (TeaCache 1.6-2.1x, First Block Cache 1.62x, EasyCache 2.2x on the real "
            "model). Against ComfyUI's own KSampler + EasyCache: see the whole-video section below.\n\n")
    body += table(["cache", "setting", "seconds per video", "speed-up", "computed / skipped", "final latent vs uncached"],
                  table_rows)
    return verdicts, body


# -- compile and batched CFG -----------------------------------------------------------------------

def compile_cfg_section(data: dict, results: dict) -> tuple[list[dict], str]:
    c, b, comp = data["config"], data["batched_cfg"], data["compile"]
    verdicts = [verdict("Batched true CFG step vs two forwards (bf16, CPU)", "report (the gain is on a GPU)",
                        f"{rng(b['speedup'], '{:.2f}', 'x')}; outputs differ by {b['max_rel_diff']:.1e} (bf16)", INFO)]
    rows = [["true CFG, two forwards", rng(b["seconds"]["two_forwards"], "{:.2f}")],
            ["true CFG, one batched forward", rng(b["seconds"]["batched"], "{:.2f}")]]
    if "skipped" in comp:
        verdicts.append(verdict("Compiled vs eager step (inductor, CPU)", "report", comp["skipped"], NOT_RUN))
    else:
        verdicts.append(verdict("Compiled vs eager step (inductor, CPU)", "report",
                                f"{rng(comp['speedup'], '{:.2f}', 'x')}, compiled in {comp['compile_s']:.0f} s; outputs "
                                f"differ by {comp['max_rel_diff']:.1e} (bf16)", INFO))
        rows += [["one pass, eager", rng(comp["seconds"]["eager"], "{:.2f}")],
                 ["one pass, blocks compiled", rng(comp["seconds"]["compiled"], "{:.2f}")]]
    body = (f"The DiT at real width ({c['hidden']}) with {c['blocks'][0]} double + {c['blocks'][1]} single blocks, "
            f"random weights, {c['dtype']}, the step-cache bench's video size, text of {c['text_tokens'][0]} and "
            f"{c['text_tokens'][1]} tokens; each pair in turn, {c['repeats']} repeats. The fp32 equalities are tests "
            "(compiled == eager within 1e-5, batched == two forwards within 1e-6); here both run in bf16, where "
            "another kernel or batch shape rounds differently.\n\n")
    body += table(["one step", "seconds (median, range)"], rows)
    return verdicts, body


# -- the whole video vs ComfyUI's native KSampler + EasyCache ----------------------------------------

NATIVE_TARGET = 1.2  # issue 18: ours with each cache vs ComfyUI + EasyCache at equal final-latent PSNR


def _db(value) -> str:
    return "exact" if value is None or value == float("inf") else f"{value:.1f} dB"


def _per_repeat(values: list[float]) -> str:
    return f" (repeats {min(values):.2f} to {max(values):.2f})" if len(values) > 1 else ""


def native_cache_section(data: dict, results: dict) -> tuple[list[dict], str]:
    c, rows, steps = data["config"], data["variants"], data["config"]["steps"]
    uncached = data["uncached_speedup"]
    verdicts = [verdict("Whole video, no cache: ComfyUI native KSampler / ours (CPU time)", "report",
                        f"{uncached:.2f}x ({rows['comfy_none']['seconds']['median']:.1f} vs "
                        f"{rows['ours_none']['seconds']['median']:.1f} CPU s)", INFO)]
    for label, m in data["matched"].items():
        ours, peer = rows[label], rows[m["comfy"]]
        ok = m["speedup"] >= NATIVE_TARGET
        own = ours["seconds"]["median"] / rows["ours_none"]["seconds"]["median"]
        note = "" if ok else (
            f"{label} skipped {ours['skipped']} steps, the matched ComfyUI run {peer['skipped']}"
            + (": with random weights neither side skipped a step at these settings, so this is the uncached ratio "
               f"({uncached:.2f}x here) within the noise of the run (this variant took {own:.2f}x ours_none's time "
               "for the same computed steps)." if ours["skipped"] == peer["skipped"] == 0 else
               f"; ComfyUI's uncached video takes {uncached:.2f}x ours here."))
        verdicts.append(verdict(
            f"{label} vs ComfyUI + EasyCache at equal or better PSNR: whole video", f">= {NATIVE_TARGET}x (issue 18)",
            f"{m['speedup']:.2f}x{_per_repeat(m['per_repeat'])} vs {m['comfy']} (PSNR {_db(m['ours_psnr_db'])} vs {_db(m['comfy_psnr_db'])}; skipped "
            f"{ours['skipped']} vs {peer['skipped']} of {steps})", met(ok), note))
    table_rows = [[label, rng(r["seconds"], "{:.1f}"), rng(r["wall_seconds"], "{:.1f}"), f"{r['computed']} / {r['skipped']}",
                   _db(r["psnr_db"]) if r["psnr_db"] is not None else "- (reference)"] for label, r in rows.items()]
    body = (f"One safetensors file, real width ({c['hidden']}), {c['blocks'][0]} double + {c['blocks'][1]} single blocks "
            f"and the real token refiner, random weights, {c['dtype']}; {c['video_tokens']} video + {c['text_tokens']} "
            f"text tokens, {steps} Euler steps, embedded guidance, same seed; {c['repeats']} repeat(s), the variants in "
            "turn, timed in CPU seconds of the process (robust to other jobs on this shared machine; wall shown too). "
            "Ours: the token-refiner precompute and `sample_video` with each cache at its published setting, and "
            f"easycache (the rule ComfyUI's node implements) also at {c.get('ours_easycache_extra', [])}. "
            "ComfyUI: its own loader, `KSampler` (euler, simple) and `EasyCache` node (start/end "
            f"{c['comfy_start_end'][0]}/{c['comfy_start_end'][1]}) at reuse thresholds {c['comfy_thresholds']}, "
            "computing in bf16 as it does on a GPU (on a CPU it would compute in fp32). Each side's PSNR is against "
            "its own uncached video; a cache of ours is matched with ComfyUI's fastest run whose PSNR is at least "
            "ours (its uncached run when none is). Random weights: the skip counts and PSNR show the machinery, not "
            "what the rules give on the real model; quality must be judged on real weights. ComfyUI runs the token "
            "refiner inside every step, which at this partial depth is a far larger share of a step than at the "
            "real 60 blocks, so the uncached ratio overstates what the same comparison gives at full depth.\n\n")
    body += table(["variant", "CPU seconds per video", "wall seconds", "computed / skipped", "final latent vs own uncached"],
                  table_rows)
    return verdicts, body
