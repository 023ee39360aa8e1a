"""Regenerate the README's results tables from the result JSON files (numbers live in one place).

The README holds generated blocks between marker lines:

    <!-- results:NAME -->
    ... generated, do not edit ...
    <!-- /results:NAME -->

``python3 tools/readme_results.py`` rewrites every block from benchmark/gemma4/results/; ``--check`` only
compares and exits 1 naming the stale blocks (the test suite runs it). A block whose generator or result
file is missing is an error, not a silent skip.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmark", "gemma4", "results")
README = os.path.join(REPO, "README.md")
BLOCK = re.compile(r"(<!-- results:([a-z0-9_]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


class ResultsError(RuntimeError):
    pass


def _load(name: str) -> dict:
    path = os.path.join(RESULTS, name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ResultsError(f"result file {os.path.relpath(path, REPO)} is missing: {e.strerror}") from None
    except ValueError as e:
        raise ResultsError(f"result file {os.path.relpath(path, REPO)} is not JSON: {e}") from None


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# --------------------------------------------------------------------------- KV-pool capacity


GPU_ORDER = ["H100-80GB", "H200-141GB", "B200-180GB"]
VARIANT_ORDER = ["E2B", "E4B", "26B-A4B", "31B"]


def _pool_cells(doc: dict, declared: str) -> Dict[tuple, Dict[str, int]]:
    cells: Dict[tuple, Dict[str, int]] = {}
    for r in doc["rows"]:
        if r["declared"] == declared:
            cells.setdefault((r["variant"], r["workload"], r["mtp"], r["gpu"]), {})[r["policy"]] = r["requests"]
    return cells


def pool_summary(doc: dict) -> List[str]:
    tally = doc["meta"]["tally"]
    rows = [[d, str(t["cells"]), str(t["series_best_or_tied"]), str(t["series_ge_upstream"]), str(t["reference_ahead"])]
            for d, t in tally.items()]
    return [
        f"CPU planner over sglang's own configurator, commit {doc['meta']['commit']}, {doc['meta']['date']} "
        "([details](benchmark/gemma4/results/pool_capacity.md)). Cells: variant x GPU x workload x MTP.",
        "",
        *_table(["declared", "cells", "series best or tied", "series >= sglang 0.5.23",
                 "reference rule ahead of the series"], rows),
    ]


def pool_table(doc: dict, declared: str) -> List[str]:
    cells = _pool_cells(doc, declared)
    workloads = []
    for r in doc["rows"]:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    rows = []
    for v in VARIANT_ORDER:
        for w in workloads:
            for mtp in (False, True):
                parts = []
                for g in GPU_ORDER:
                    c = cells.get((v, w, mtp, g))
                    if not c:
                        parts.append("n/a")
                        continue
                    vals = [c["upstream"], c["reference"], c["series"]]
                    parts.append(" / ".join(f"**{x}**" if x == max(vals) else str(x) for x in vals))
                if any(p != "n/a" for p in parts):
                    rows.append([v, w, "on" if mtp else "off", *parts])
    return _table(["variant", "workload", "MTP", *GPU_ORDER], rows)


def gen_pool_summary() -> List[str]:
    return pool_summary(_load("pool_capacity.json"))


def gen_pool_expected() -> List[str]:
    return pool_table(_load("pool_capacity.json"), "expected")


def gen_pool_default() -> List[str]:
    return pool_table(_load("pool_capacity.json"), "model default")


# --------------------------------------------------------------------------- end-to-end A/B


SERVE_METRICS = [("duration", "duration s", True), ("median_ttft_ms", "median TTFT ms", True),
                 ("median_tpot_ms", "median TPOT ms", True), ("output_throughput", "output tok/s", False)]


def _cell(m: Optional[dict]) -> str:
    if not m or m.get("median") is None:
        return "not run"
    fmt = (lambda v: f"{v:.2f}") if abs(m["median"]) < 1000 else (lambda v: f"{v:.0f}")
    return f"{fmt(m['median'])} [{fmt(m['min'])}-{fmt(m['max'])}]"


def serve_ab_table(doc: dict, model: str) -> List[str]:
    rows = []
    for wl, by in doc["summary"].items():
        for key, label, lower in SERVE_METRICS:
            u = ((by.get("upstream") or {}).get("metrics") or {}).get(key)
            p = ((by.get("patched") or {}).get("metrics") or {}).get(key)
            ratio, spread = "-", "-"
            if u and p and u.get("median") and p.get("median"):
                r = u["median"] / p["median"] if lower else p["median"] / u["median"]
                ratio = f"{r:.2f}x"
                spread = "within spread" if (u["min"] <= p["max"] and p["min"] <= u["max"]) else "beyond spread"
            n = "/".join(str((by.get(e) or {}).get("n", 0)) for e in ("upstream", "patched"))
            rows.append([model, wl, label, _cell(u), _cell(p), ratio, spread, n])
    return _table(["model", "workload", "metric", "sglang 0.5.23", "series", "series vs stock", "spread",
                   "repeats stock/series"], rows)


def serve_ab_pools(doc: dict, model: str) -> List[str]:
    rows = []
    for srv in doc["servers"]:
        info = srv.get("log_info") or {}
        rows.append([model, srv["engine"], ", ".join(srv["workloads"]), srv.get("source", "-"),
                     f"{info.get('full_layer_tokens')}", f"{info.get('swa_layer_tokens')}",
                     f"{info.get('max_running_requests')}"])
    return _table(["model", "engine", "workloads", "run", "full pool tokens", "SWA pool tokens",
                   "max_running_requests"], rows)


def gen_serve_e2b() -> List[str]:
    doc = _load("serve_ab_h200_e2b_merged.json")
    return [*serve_ab_table(doc, "E2B"), "", *serve_ab_pools(doc, "E2B")]


# --------------------------------------------------------------------------- router


def gen_routing() -> List[str]:
    doc = _load("routing_h200.json")
    hot = {r["tokens"]: r for r in doc["rows"] if r["mode"] == "hot"}
    rows = []
    for r in doc["rows"]:
        if r["mode"] != "cold" or r["tokens"] not in (1, 64, 1024, 2048, 4096, 8192, 16384):
            continue
        h = hot.get(r["tokens"])
        rows.append([str(r["tokens"]), f"{r['upstream_us']:.2f}", f"{r['patched_us']:.2f}",
                     f"{r['speedup_vs_upstream']:.2f}x", f"{r['patched_over_floor_copy']:.2f}",
                     f"{h['speedup_vs_upstream']:.2f}x" if h else "-"])
    return [f"{doc['device']}, {doc['date']}, commit {doc['commit']}, triton {doc['triton']}, E={doc['experts']}, "
            f"K={doc['topk']}, {doc['dtype']}, per launch in a CUDA graph of {doc['launches_per_graph']} "
            f"([details](benchmark/gemma4/results/routing_h200.md)).", "",
            *_table(["tokens", "0.5.23 kernel us", "patched us", "speed-up", "patched / copy of the same bytes",
                     "logits in L2: speed-up"], rows)]


# --------------------------------------------------------------------------- vision tower (H100, stand-ins)


def gen_vision() -> List[str]:
    doc = _load("vision_bench.json")
    m = doc["meta"]
    rows = [[r["tower"], r["workload"], f"{r['upstream_img_s']:.1f}", f"{r['patched_img_s']:.1f}",
             f"{r['speedup']:.2f}x", f"{r['upstream_peak_mib']:.1f} / {r['patched_peak_mib']:.1f}"]
            for r in doc["rows"]]
    return [f"{m['device']}, {m.get('date') or m['date_utc']}, commit {m['commit']}, {m['backend']}, {m['dtype']}, median of "
            f"{m['reps']} ([details](benchmark/gemma4/results/vision_bench.md)).", "",
            *_table(["tower", "images", "0.5.23 img/s", "patched img/s", "speed-up", "peak MiB 0.5.23 / patched"],
                    rows)]


# --------------------------------------------------------------------------- page-table probe


def gen_probe() -> List[str]:
    doc = _load("page_table_probe.json")
    m = doc["meta"]
    rows = [[r["variant"], f"{r['probe_graph_us']:.1f} us", f"{r['ratio_on_over_off']:.4f}",
             f"{r['ratio_on_over_off_eager']:.4f}"] for r in doc["results"]]
    return [f"{m['device']}, {m['date'][:10]}, commit {m['git_commit']}, {m['geometry']['bs']}-request decode batch "
            "([details](benchmark/gemma4/results/page_table_probe.md)).", "",
            *_table(["variant", "probe per forward, CUDA graph", "attention on/off (graph)", "(eager)"], rows)]


# --------------------------------------------------------------------------- decode floor


def gen_decode_floor() -> List[str]:
    doc = _load("decode_floor.json")
    rows = []
    for model, d in doc["models"].items():
        for b in doc["batch_sizes"]:
            t = d["floors"][str(b)].get("totals") or d["floors"][str(b)]
            rows.append([model, str(b), f"{t['weight_bytes'] / 1e9:.3f} GB", f"{t['kv_bytes'] / 1e9:.3f} GB",
                         f"{t['floor_us'] / 1000:.3f} ms"])
    return [f"Arithmetic, not a measurement: commit {doc['commit']}, context {doc['context']} tokens, "
            f"{doc['bandwidth_bytes_per_s'] / 1e12:.1f} TB/s ([details](benchmark/gemma4/results/decode_floor.md)).",
            "", *_table(["model", "running requests", "weights read", "KV read", "step floor"], rows)]


# --------------------------------------------------------------------------- PLE tail (0050)


def gen_ple_tail() -> List[str]:
    doc = _load("ple_tail_h100.json")
    rows = [[r["model"], str(r["rows"]), f"{r['upstream_us']:.2f}", f"{r['fused_us']:.2f}", f"{r['speedup']:.2f}x",
             f"{r['equal_share']:.1%}"] for r in doc["rows"]]
    return [f"{doc['device']}, {doc['date'][:10]}, commit {doc['commit']}, per layer in a CUDA graph of 35 layers' "
            "launches, each with its own weights ([details](benchmark/gemma4/results/ple_tail_h100.md)).", "",
            *_table(["model", "rows", "0.5.23 ops us", "series us", "speed-up", "elements equal to 0.5.23's"], rows)]


# --------------------------------------------------------------------------- decode KV splits (0051)

# (result file, model, KV-split cap as run): profiles of one H100 hold, the cap set by
# SGLANG_GEMMA4_TRITON_KV_SPLITS (0 = 0.5.23's 8) in gpu_plans/decode_splits.json
KV_SPLIT_PROFILES = [
    ("decode_profile_e2b_stock_h100_kvsplits.json", "E2B", "stock (8)"),
    ("decode_profile_e2b_patched_h100_kvsplits8.json", "E2B", "series, cap 8"),
    ("decode_profile_e2b_patched_h100_kvsplits32.json", "E2B", "series, cap 32"),
    ("decode_profile_e2b_patched_h100_16k_kvsplits8.json", "E2B", "series, cap 8"),
    ("decode_profile_e2b_patched_h100_16k_kvsplits32.json", "E2B", "series, cap 32"),
    ("decode_profile_e2b_patched_h100_16k_kvsplits64.json", "E2B", "series, cap 64"),
    ("decode_profile_26b-a4b_patched_h100_kvsplits8.json", "26B-A4B", "series, cap 8"),
    ("decode_profile_26b-a4b_patched_h100_kvsplits32.json", "26B-A4B", "series, cap 32"),
]


def gen_decode_kv_splits() -> List[str]:
    rows, devices, dates = [], set(), set()
    for name, model, label in KV_SPLIT_PROFILES:
        doc = _load(name)
        devices.add(doc["meta"]["device"])
        dates.add(doc["meta"]["date"][:10])
        for b in doc["batches"]:
            fam = b["attribution"]["families"]
            full, swa = fam["attn_full"]["us_per_step"], fam["attn_sliding"]["us_per_step"]
            rows.append([model, f"{b['context_mean']:.0f}", label, str(b["batch_size"]), f"{full:.0f}", f"{swa:.0f}",
                         f"{b['attribution']['kernel_us_per_step'] / 1000:.3f}",
                         f"{b['forward_device_ms_median']:.3f}"])
    return [f"{', '.join(sorted(devices))}, {', '.join(sorted(dates))}, one hold, one_batch decode steps with CUDA "
            "graphs, dummy weights; attention = Triton stage 1 + stage 2 per step, kernel sum from the profiler, "
            "forward from CUDA events (median of 10) ([session](benchmark/gemma4/results/gpu_session_h100_2026-12-06.md)).",
            "", *_table(["model", "context", "engine, KV-split cap", "requests", "full-layer attention us",
                         "sliding attention us", "kernels ms", "forward ms"], rows)]


# --------------------------------------------------------------------------- end to end on an H100 (E2B decode)


def gen_serve_h100_decode() -> List[str]:
    chat, single = _load("serve_ab_h100_e2b_chat.json"), _load("serve_ab_h100_e2b_sum_c1.json")
    return [*serve_ab_table(chat, "E2B"), *serve_ab_table(single, "E2B")[2:], "",
            *serve_ab_pools(chat, "E2B")]


GENERATORS: Dict[str, Callable[[], List[str]]] = {
    "pool_summary": gen_pool_summary,
    "pool_expected": gen_pool_expected,
    "pool_default": gen_pool_default,
    "serve_e2b": gen_serve_e2b,
    "routing": gen_routing,
    "vision": gen_vision,
    "probe": gen_probe,
    "decode_floor": gen_decode_floor,
    "ple_tail": gen_ple_tail,
    "decode_kv_splits": gen_decode_kv_splits,
    "serve_h100_decode": gen_serve_h100_decode,
}


def render(text: str, generators: Optional[Dict[str, Callable[[], List[str]]]] = None) -> str:
    generators = GENERATORS if generators is None else generators
    names = [m.group(2) for m in BLOCK.finditer(text)]
    unknown = [n for n in names if n not in generators]
    if unknown:
        raise ResultsError(f"README block(s) with no generator: {', '.join(unknown)}; known: {', '.join(generators)}")

    def fill(m: re.Match) -> str:
        body = "\n".join(generators[m.group(2)]()) + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 when a block is stale")
    ap.add_argument("--readme", default=README)
    ns = ap.parse_args(argv)
    with open(ns.readme, encoding="utf-8") as f:
        text = f.read()
    try:
        new = render(text)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ns.check:
        if new != text:
            stale = [m.group(2) for m, n in zip(BLOCK.finditer(text), BLOCK.finditer(new)) if m.group(0) != n.group(0)]
            print(f"README results are stale: {', '.join(stale)}; run python3 tools/readme_results.py", file=sys.stderr)
            return 1
        print("README results up to date")
        return 0
    if new != text:
        with open(ns.readme, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"rewrote {os.path.relpath(ns.readme, REPO)}")
    else:
        print("README results up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
