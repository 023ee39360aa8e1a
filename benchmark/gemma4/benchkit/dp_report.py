"""decode_profile's reports: the floor report (decode_floor.md / .json, with its checks) and the markdown of a
profiled run, with the commit they name."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence, Tuple

import stamp
from benchkit import tables
from benchkit.dp_families import FAMILIES, FAMILY_DOC, RULES
from benchkit.dp_floor import BF16, H200_COPY_BYTES_PER_S, ModelGeom, load_geometry, model_floor, parameter_counts

# The files a decode_profile result depends on: "-dirty" when they differ from the checkout's HEAD.
SOURCES = ("benchmark/gemma4/decode_profile.py", "benchmark/gemma4/benchkit/dp_*.py",
           "benchmark/gemma4/benchkit/tables.py")


def result_commit() -> str:
    return stamp.commit(paths=SOURCES)


def _fmt_bytes(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.3f} GB"
    if x >= 1e6:
        return f"{x / 1e6:.1f} MB"
    return f"{x / 1e3:.1f} kB"


def _rules_markdown() -> List[str]:
    lines = tables.table(("#", "family", "phase", "module label", "kernel name"))
    for i, (fam, pats) in enumerate(RULES, 1):
        cell = lambda k: ("`" + pats[k].replace("|", "\\|") + "`") if k in pats else ""
        fam_cell = fam + (" (PLE models)" if pats.get("ple") == r"^1$" else "")
        lines.append(tables.row([i, fam_cell, cell("phase"), cell("label"), cell("name")]))
    lines.append("")
    lines.append("`attn_core` becomes `attn_full` or `attn_sliding` by the layer in its module label "
                 "(`layers.N.`), or by its order among the step's decode-attention launches when it has none.")
    return lines


def floor_report(models: Sequence[str], batch_sizes: Sequence[int], context: int, configs_dir: str,
                 bw: float, peak: float) -> Tuple[Dict[str, Any], str]:
    data: Dict[str, Any] = {
        "date": stamp.utc_now(), "commit": result_commit(),
        "bandwidth_bytes_per_s": bw, "peak_bf16_flop_per_s": peak, "context": context,
        "batch_sizes": list(batch_sizes), "configs": "benchmark/gemma4/configs", "models": {},
    }
    geoms = {}
    for m in models:
        g = load_geometry(os.path.join(configs_dir, m), m)
        geoms[m] = g
        data["models"][m] = {"parameters": parameter_counts(g),
                             "floors": {str(b): model_floor(g, b, context, bw, peak) for b in batch_sizes}}
    L: List[str] = []
    L.append("# Gemma-4 text decode: bytes, FLOPs and floor time of one decode step (H200)")
    L.append("")
    L.append(f"Generated {data['date']} at commit {data['commit']} by `python3 benchmark/gemma4/decode_profile.py "
             f"floor` from the geometry in `benchmark/gemma4/configs/` (published config.json values). Context "
             f"{context} tokens per request (the KV of every request at the step, the new token included). "
             f"Bandwidth {bw / 1e12:.2f} TB/s: what a device-to-device copy moved on this workplace's H200, "
             f"counting bytes read plus bytes written; bf16 peak {peak / 1e12:.0f} TFLOP/s (8192^3 matrix "
             "product there). Floor = max((weights + KV) / bandwidth, FLOPs / peak), per family and for the "
             "step's totals. Activations are listed apart and are no part of the floor: a layer's intermediates "
             "are a few MB, live in the 60 MB L2 between producer and consumer, and a fused implementation never "
             "writes most of them; 'if activations hit HBM' is the floor of an implementation that sends each of "
             "them through HBM once. bf16 weights and KV, numbers per decode step.")
    L.append("")
    L.append("What a decode step must read (`weights` = parameters and the embedding-table rows of the batch's "
             "tokens, `KV` = KV cache, `activations` = intermediate tensors):")
    L.append("")
    for line in FLOOR_METHOD:
        L.append(f"- {line}")
    L.append("")
    L.append("## Step totals")
    L.append("")
    L += tables.table(("model", "batch", "weights", "KV", "weights + KV", "GFLOP", "memory floor ms",
                       "FLOP floor ms", "**step floor ms**", "activations", "floor if activations hit HBM ms"))
    for m in models:
        for b in batch_sizes:
            t = data["models"][m]["floors"][str(b)]["totals"]
            L.append(tables.row([m, b, _fmt_bytes(t["weight_bytes"]), _fmt_bytes(t["kv_bytes"]),
                                 _fmt_bytes(t["floor_bytes"]), f"{t['flops'] / 1e9:.1f}", f"{t['mem_us'] / 1e3:.3f}",
                                 f"{t['flop_us'] / 1e3:.3f}", f"**{t['floor_us'] / 1e3:.3f}**",
                                 _fmt_bytes(t["act_bytes"]), f"{t['floor_unfused_us'] / 1e3:.3f}"]))
    L.append("")
    for m in models:
        g = geoms[m]
        L.append(f"## {m}: floor per kernel family (us per step; weights + KV in parentheses)")
        L.append("")
        extra = ""
        if g.moe_experts:
            ds = ", ".join(f"b={b}: {data['models'][m]['floors'][str(b)]['moe_distinct_experts']:.1f}"
                           for b in batch_sizes)
            extra = (f" Expected distinct experts touched per layer (top-{g.moe_top_k} of {g.moe_experts}, "
                     f"uniform): {ds}.")
        L.append(f"{g.num_layers} layers ({sum(x.full for x in g.layers)} full, {sum(not x.full for x in g.layers)} "
                 f"sliding, window {g.window}; {sum(x.kv_shared for x in g.layers)} KV-shared), hidden {g.hidden}."
                 + extra)
        L.append("")
        L += tables.table(["family", *(f"b={b}" for b in batch_sizes)])
        fams = [f for f in FAMILIES if any(f in data["models"][m]["floors"][str(b)]["families"] for b in batch_sizes)]
        for f in fams + ["total"]:
            cells = []
            for b in batch_sizes:
                fl = data["models"][m]["floors"][str(b)]
                c = fl["totals"] if f == "total" else fl["families"].get(f)
                if c is None:
                    cells.append("-")
                    continue
                bound = " F" if c["flop_us"] > c["mem_us"] else ""
                cells.append(f"{c['floor_us']:.1f}{bound} ({_fmt_bytes(c['floor_bytes'])})")
            L.append(tables.row(["**step**" if f == "total" else f, *cells]))
        L.append("")
        ex = data["models"][m]["floors"][str(batch_sizes[0])]["totals"]["engine_extra_bytes"]
        why = []
        if any(x.kv_shared for x in g.layers):
            why.append("the k and v projections of the KV-shared layers, which its fused QKV GEMM computes and drops")
        if any(x.k_eq_v for x in g.layers):
            why.append("the V shard that the K = V layers load with K's weights")
        fbound = any(c["flop_us"] > c["mem_us"] for b in batch_sizes
                     for c in data["models"][m]["floors"][str(b)]["families"].values())
        L.append(("F = FLOP-bound. " if fbound else "")
                 + (f"0.5.23 reads {_fmt_bytes(ex)} per step more than this floor: {' and '.join(why)}." if ex
                    else "0.5.23 reads no projection weights beyond this floor."))
        L.append("")
    L.extend(issue_check(data, geoms, context, bw))
    L.extend(hand_check(geoms, context))
    return data, "\n".join(L) + "\n"


FLOOR_METHOD = (
    "attention projections: q and o on every layer; k and v only on layers that own their KV (the KV-shared "
    "layers of E2B/E4B read another layer's cache); no v_proj on K = V layers (26B-A4B, 31B full layers); "
    "full layers use head_dim 512 and the global kv-head count",
    "attention core (`attn_full`, `attn_sliding`): each layer reads K and V of its cache (a KV-shared layer its "
    "owner's): full layers every context token, sliding layers min(context, window) tokens; K and V are both "
    "stored on K = V layers (V is v_norm(k) without RoPE); FLOPs 2 x heads x tokens x (d_k + d_v) per request",
    "MLP: gate_up and down weights of every layer, double width on E2B's 20 KV-shared layers",
    "MoE experts: the experts a batch touches, expected value for top-k of E with uniform routing, "
    "E (1 - (1 - k/E)^b); each touched expert's gate_up and down weights read once",
    "router: its norm weight, the hidden x E router weight, per-expert scales",
    "norms: every RMSNorm weight (input, post-attention, pre/post-FF, the MoE block's three, q/k norms, final)",
    "PLE (E2B/E4B): entry = the PLE table rows of the batch's tokens (layers x 256 per token) + the model "
    "projection hidden x (layers x 256) + its norm; tail = each layer's gate (hidden x 256) and projection "
    "(256 x hidden) + norm",
    "embedding: the rows of the batch's tokens; LM head: the tied vocab x hidden embedding, read once",
    "activations: every GEMM reads its input and writes its output once (bf16; logits fp32), every norm "
    "reads and writes its rows once, elementwise ops read and write theirs, the new token's K and V are "
    "written, sampling reads the fp32 logits once. Residual adds fused into norms are not counted twice",
    "not counted: KV of the other layers that could sit in L2 (60 MB), CUDA-graph launch and per-kernel "
    "latency (about 1-2 us per launch in a graph), host work between steps",
)


def issue_check(data: Dict[str, Any], geoms: Dict[str, ModelGeom], context: int, bw: float) -> List[str]:
    """The issue's figure for E2B at 80 requests, recomputed item by item."""
    if "e2b" not in data["models"] or "80" not in data["models"]["e2b"]["floors"]:
        return []
    g = geoms["e2b"]
    p = data["models"]["e2b"]["parameters"]
    floors = data["models"]["e2b"]["floors"]
    fl = floors["80"]
    t, fam = fl["totals"], fl["families"]
    kv = t["kv_bytes"]
    full_share = fam["attn_full"]["kv_bytes"] / kv
    logits = fam["lm_head"]["act_bytes"] + fam["sampling"]["act_bytes"]
    n_full = sum(x.full for x in g.layers)
    L = ["## Check of the issue's figure (E2B, 80 requests of about 1,500 tokens: about 1.75 ms)", ""]
    L.append(f"- Parameters per step. The issue: 1.56 B (MLP) + 0.3 B (attention) + 0.4 B (LM head). Recount: MLP "
             f"{p['mlp'] / 1e9:.3f} B and LM head {p['lm_head'] / 1e9:.3f} B are right. Attention is "
             f"{p['attention'] / 1e9:.3f} B: the issue's 0.30 B includes the {p['attention_engine_extra'] / 1e6:.1f} M "
             "k/v-projection parameters of the 20 KV-shared layers, which no output needs (0.5.23 reads them: its "
             "fused QKV GEMM computes k and v on those layers and drops them). The issue leaves out the "
             f"per-layer-embedding weights, {p['ple'] / 1e6:.1f} M (the model projection 1536 x 8960 and each "
             "layer's gate and projection), and the PLE-table rows of the 80 tokens "
             f"({_fmt_bytes(80 * g.num_layers * g.ple_dim * BF16)}). Net {t['weight_bytes'] / BF16 / 1e9:.3f} B, "
             f"{_fmt_bytes(t['weight_bytes'])}: the two errors almost cancel.")
    L.append(f"- KV: {_fmt_bytes(kv)} (issue: about 2.9 GB; right). All 35 layers read a cache, the 20 KV-shared "
             f"layers their owner's once more: {n_full} full layers x {context} tokens x 2 KiB + "
             f"{g.num_layers - n_full} sliding layers x {g.window} tokens x 1 KiB = {_fmt_bytes(kv / 80)} per "
             f"request. The full layers carry {full_share * 100:.0f}% of it; the sliding layers read their window "
             "whatever the context.")
    L.append(f"- Floor: weights + KV = {_fmt_bytes(t['floor_bytes'])} -> {t['floor_us'] / 1e3:.3f} ms at "
             f"{bw / 1e12:.1f} TB/s (issue: 7.5 GB, 1.75 ms). So the 1.75 ms is right, to "
             f"{abs(t['floor_us'] / 1e3 - 1.75) / 1.75 * 100:.0f}%. The step is memory-bound: "
             f"{t['flops'] / 1e9:.0f} GFLOP take {t['flop_us'] / 1e3:.3f} ms at the bf16 peak. At 1 and 16 requests "
             f"the floor is {floors['1']['totals']['floor_us'] / 1e3:.3f} and "
             f"{floors['16']['totals']['floor_us'] / 1e3:.3f} ms, "
             "set by the weights.")
    L.append(f"- Not in the issue's figure, and no part of a floor: activations, {_fmt_bytes(t['act_bytes'])} if each "
             f"went through HBM once ({t['floor_unfused_us'] / 1e3:.3f} ms). The fp32 logits are the one large "
             f"tensor: 80 x 262144 x 4 B written by the LM head, read and written by the soft-cap, read by "
             f"sampling, {_fmt_bytes(logits)} ({logits / bw * 1e6:.0f} us), more than L2 holds; 0.5.23 pays that, a "
             "soft-cap and arg-max fused into the LM-head epilogue would not.")
    L.append("- Where the issue's comparison is weak: the 5.47 ms it sets against the floor is bench_serving's median "
             "TPOT, which also carries the scheduler's host time and the prefill batches of arriving requests (chat "
             "1k/1k at 80 concurrent requests: about 80 prefills of 1,000 tokens during each request's 1,000 decode "
             "steps). 'About 3x from the floor' describes TPOT; the decode step itself is what `decode_profile.py "
             "run` measures.")
    L.append(f"- Bandwidth: {bw / 1e12:.1f} TB/s is a copy's read + write rate, and a decode step only reads. "
             "The H200's HBM3e is specified at 4.8 TB/s; at that rate the same bytes take "
             f"{t['floor_bytes'] / 4.8e12 * 1e3:.3f} ms. "
             "The floor uses the rate measured here.")
    L.append("")
    return L


def hand_check(geoms: Dict[str, ModelGeom], context: int) -> List[str]:
    """The arithmetic of single layers, spelled out (the tests check the same numbers)."""
    L = ["## One layer by hand (1 request, context 1500)", ""]
    if "e2b" in geoms:
        L += [
            "E2B layer 0 (sliding, owns its KV; head_dim 256, 8 q heads, 1 kv head, MLP 6144):",
            "- projections: q 1536 x 2048 + k 1536 x 256 + v 1536 x 256 + o 2048 x 1536 = 7,077,888 params "
            "= 14,155,776 B",
            "- KV read: 512 tokens (window) x 1 head x (256 + 256) x 2 B = 524,288 B",
            "- MLP: 3 x 1536 x 6144 = 28,311,552 params = 56,623,104 B",
            "",
            "E2B layer 34 (full, KV-shared: reads layer 14's cache; head_dim 512; double-wide MLP 12288):",
            "- projections: q 1536 x 4096 + o 4096 x 1536 = 12,582,912 params = 25,165,824 B (0.5.23 also "
            "reads k and v: 2 x 1536 x 512 x 2 B = 3,145,728 B)",
            f"- KV read: {context} tokens x 1 head x (512 + 512) x 2 B = {context * 1024 * 2:,} B",
            "- MLP: 3 x 1536 x 12288 = 56,623,104 params = 113,246,208 B",
            "",
        ]
    if "26b-a4b" in geoms:
        L += [
            "26B-A4B layer 5 (full, K = V; 16 q heads x 512, 2 kv heads x 512):",
            "- projections: q 2816 x 8192 + k 2816 x 1024 + o 8192 x 2816 = 49,020,928 params = 98,041,856 B "
            "(no v_proj; 0.5.23 loads K into a V shard and reads 5,767,168 B more)",
            f"- KV read: {context} tokens x 2 heads x (512 + 512) x 2 B = {context * 2 * 1024 * 2:,} B",
            "- dense MLP 3 x 2816 x 2112 = 17,842,176 params; one expert 3 x 2816 x 704 = 5,947,392 params; "
            "1 token touches 8 experts = 95,158,272 B; router 2816 x 128",
            "",
        ]
    return L


def profile_markdown(res: Dict[str, Any]) -> str:
    m = res["meta"]
    L = [f"# Gemma-4 decode step per kernel family: {m['model']} on {m['engine_label']} sglang "
         f"{m['engine_version']} ({m['device']})", ""]
    L.append(f"Date {m['date']}, commit {m['commit']}, torch {m['torch']}, triton {m['triton']}. "
             f"Model directory geometry `{m['model']}` ({m['load_format']} weights), attention backend "
             f"{m.get('attention_backend', '?')}, sampling backend {m.get('sampling_backend', '?')}, CUDA graphs "
             f"for batch sizes {m['batch_sizes']}. Series: {m.get('series') or 'none (stock)'}."
             + (f" Switches set: {', '.join(f'{k}={v}' for k, v in m['switches'].items())}."
                if m.get("switches") else ""))
    L.append("")
    tm = m["timings"]
    L.append(f"Timings: model load {tm.get('load_model_s', float('nan')):.1f} s, CUDA-graph capture "
             f"{tm.get('cuda_graph_capture_s', float('nan')):.1f} s, ModelRunner set-up in all "
             f"{tm.get('load_total_s', float('nan')):.1f} s, whole run {tm.get('run_total_s', float('nan')):.1f} s.")
    L.append("")
    L.append("Method: one_batch's ModelRunner; per batch size one prefill of b requests, then decode steps: "
             f"{m['warmup_steps']} warm-up, {m['timed_steps']} timed end to end (one_batch's decode: prepare + "
             f"forward + sample, host included), {m['timed_steps']} with CUDA events around the forward, "
             f"{m['profiled_steps']} under torch.profiler (each phase ends with a synchronize), then one eager step "
             "with a range per module that names the kernels of the graph steps (alignment by kernel name). "
             "Device time = sum of kernel durations per step. Floor: same arithmetic as decode_floor.md at the "
             f"measured mean context, at {m.get('bandwidth_bytes_per_s', H200_COPY_BYTES_PER_S) / 1e12:.2f} TB/s "
             f"({m.get('bandwidth_source', 'given')}, bytes read plus written).")
    L.append("")
    for r in res["batches"]:
        a = r["attribution"]
        L.append(f"## {r['batch_size']} running requests, context {r['context_mean']:.0f} tokens")
        L.append("")
        step_floor = r["floor"]["totals"]["floor_us"]
        g = "yes" if r["graph_used"] else "**NO (eager replay: not a CUDA-graph measurement)**"
        L.append(f"CUDA graph replayed: {g}. Step end to end {r['step_wall_ms_median']:.3f} ms (median), forward on "
                 f"device {r['forward_device_ms_median']:.3f} ms (CUDA events, no profiler), kernel time per profiled "
                 f"step {a['kernel_us_per_step'] / 1e3:.3f} ms in {a['kernels_per_step']:.0f} kernels (forward span "
                 f"{(a['forward_span_us'] or 0) / 1e3:.3f} ms). Step floor {step_floor / 1e3:.3f} ms: "
                 f"forward on device / floor = {r['forward_device_ms_median'] * 1e3 / step_floor:.2f}x. "
                 f"Prefill {r['prefill_s']:.2f} s.")
        al = a["alignment"]
        if al["forward_us"]:
            L.append(f"Module labels from the eager step: {al['labelled_us'] / al['forward_us'] * 100:.1f}% of forward "
                     f"kernel time ({al['template_forward_kernels']} kernels in the eager step); attention layers "
                     f"assigned by label {a['attention_layer_by']['label']}, by order "
                     f"{a['attention_layer_by']['order']}.")
        if r.get("template_error"):
            L.append(f"Eager template step failed ({r['template_error']}); families come from kernel names only.")
        L.append("")
        L += tables.table(("family", "us / step", "kernels / step", "us / kernel", "share", "floor us",
                           "measured / floor", "floor if activations hit HBM, us", "weights + KV", "GFLOP"))
        fl = r["floor"]["families"]
        for f in FAMILIES:
            v = a["families"].get(f)
            c = fl.get(f)
            if v is None and c is None:
                continue
            us = v["us_per_step"] if v else 0.0
            n = v["kernels_per_step"] if v else 0.0
            share = v["share"] * 100 if v else 0.0
            floor_us = c["floor_us"] if c else 0.0
            ratio = f"{us / floor_us:.1f}x" if floor_us >= 0.5 and us > 0 else "-"
            per = f"{us / n:.1f}" if n else "-"
            unf = f"{c['floor_unfused_us']:.1f}" if c else "-"
            fb = _fmt_bytes(c["floor_bytes"]) if c else "-"
            gf = f"{c['flops'] / 1e9:.2f}" if c and c["flops"] else "-"
            L.append(tables.row([f, f"{us:.1f}", f"{n:.1f}", per, f"{share:.1f}%", f"{floor_us:.1f}", ratio, unf,
                                 fb, gf]))
        tt = r["floor"]["totals"]
        L.append(tables.row(["**step**", f"{a['kernel_us_per_step']:.1f}", f"{a['kernels_per_step']:.0f}",
                             f"{a['kernel_us_per_step'] / max(a['kernels_per_step'], 1):.1f}", "100%",
                             f"{tt['floor_us']:.1f}", f"{a['kernel_us_per_step'] / tt['floor_us']:.1f}x",
                             f"{tt['floor_unfused_us']:.1f}", _fmt_bytes(tt["floor_bytes"]),
                             f"{tt['flops'] / 1e9:.2f}"]))
        L.append("")
        L.append("Top kernels (us per step):")
        L.append("")
        L += tables.table(("family", "kernel", "module (from the eager step)", "us / step", "launches / step"))
        for row in a["top_kernels"][:15]:
            kern, mod = row["kernel"].replace("|", "\\|"), row["module"].replace("|", "\\|")
            L.append(tables.row([row["family"], f"`{kern}`", f"`{mod}`", f"{row['us_per_step']:.1f}",
                                 f"{row['launches_per_step']:.1f}"]))
        L.append("")
    L.append("## Kernel name -> family rules (first match wins)")
    L.append("")
    L.extend(_rules_markdown())
    L.append("")
    L.append("Family meanings: " + "; ".join(f"`{k}`: {v}" for k, v in FAMILY_DOC.items()) + ".")
    return "\n".join(L) + "\n"


def write_result(res: Dict[str, Any], out_dir: str, stem: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(out_dir, stem + ".md"), "w", encoding="utf-8") as f:
        f.write(profile_markdown(res))
