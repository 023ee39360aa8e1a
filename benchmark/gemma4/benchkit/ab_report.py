"""serve_ab's result files: the JSON document (rewritten atomically, summary and rows recomputed) and the
markdown report of a run or a merge."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from benchkit import tables
from benchkit.ab_common import ENGINES, MIN_REPEATS_FOR_CLAIM
from benchkit.ab_engines import series_label
from benchkit.ab_summary import compare_rows, summarise


class Recorder:
    """The run's JSON document, rewritten atomically after every change."""

    def __init__(self, path: str, doc: Dict[str, Any]):
        self.path, self.doc = path, doc

    def write(self) -> None:
        names = [wl for wl in self.doc["workloads"]]
        self.doc["summary"] = summarise(self.doc["runs"], names)
        self.doc["rows"] = compare_rows(self.doc["summary"], names)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.doc, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, self.path)


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"


def _cell(s: Optional[Dict[str, Any]]) -> str:
    if not s:
        return "-"
    text = f"{_fmt(s['median'])} [{_fmt(s['min'])}-{_fmt(s['max'])}] n={s['n']}"
    return text + (" hint" if s["n"] < MIN_REPEATS_FOR_CLAIM else "")


def _sources(doc: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any], str]]:
    if doc.get("kind") == "merge":
        return [(i["file"], i["meta"], i.get("status", "?")) for i in doc["inputs"]]
    return [("this run", doc["meta"], doc.get("status", "?"))]


def _contributes(doc: Dict[str, Any], label: str, meta: Dict[str, Any], engine: str) -> bool:
    """Whether ``engine`` of this source has passes in the document (a merge may take only some of them)."""
    if engine not in meta.get("engines", []):
        return False
    if doc.get("kind") != "merge":
        return True
    return any(r["engine"] == engine and r.get("source") == label for r in doc["runs"])


def _server_for(doc: Dict[str, Any], engine: str, workload: str) -> Optional[Dict[str, Any]]:
    for s in doc["servers"]:
        if s["engine"] == engine and workload in s["workloads"]:
            return s
    return None


COMPARISON_HEADER = ("workload", "metric", "upstream", "patched", "ratio", "spread")
SERVER_HEADER = ("engine", "full tokens", "SWA tokens", "max_running_requests", "peak running, timed passes",
                 "compile lines warm-up", "compile lines timed", "ready s")


def _comparison_cells(r: Dict[str, Any]) -> List[str]:
    """One metric of one workload: both engines' cells, the ratio and the spread."""
    rt = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    sp = r["spread"] or "-"
    if r["spread"] and r["hint"]:
        sp += " (hint)"
    return [r["workload"], f"{r['label']} ({r['unit']})", _cell(r["upstream"]), _cell(r["patched"]), rt, sp]


def _server_cells(doc: Dict[str, Any], wl: str, e: str) -> List[Any]:
    """What the server of engine ``e`` that served workload ``wl`` logged, and its passes' compile lines."""
    s = _server_for(doc, e, wl) or {}
    info = s.get("log_info") or {}
    runs = [r for r in doc["runs"] if r["workload"] == wl and r["engine"] == e]
    cw = sum(len(r["compile_lines"]) for r in runs if r["kind"] == "warmup")
    ct = sum(len(r["compile_lines"]) for r in runs if r["kind"] == "timed")
    peaks = [r.get("peak_running_requests") for r in runs if r["kind"] == "timed"]
    peaks = [p for p in peaks if p is not None]
    facts = [info.get(k) for k in ("full_layer_tokens", "swa_layer_tokens", "max_running_requests")]
    facts.append(max(peaks) if peaks else None)
    return [e, *("-" if v is None else v for v in facts), cw, ct, _fmt(s.get("ready_s"))]


USED_KEYS = ("peak_full_tokens_used", "peak_swa_tokens_used")
USED_HEADER = ("peak full tokens used, timed passes", "peak SWA tokens used, timed passes")


def _used_cells(doc: Dict[str, Any], wl: str, e: str) -> List[Any]:
    """The most full-pool and SWA-pool tokens in use over the timed passes (from the Decode batch lines)."""
    runs = [r for r in doc["runs"] if r["workload"] == wl and r["engine"] == e and r["kind"] == "timed"]
    out = []
    for key in USED_KEYS:
        seen = [r.get(key) for r in runs if r.get(key) is not None]
        out.append(max(seen) if seen else "-")
    return out


def _logs_pool_use(doc: Dict[str, Any], wl: str) -> bool:
    return any(r.get(k) is not None for r in doc["runs"] if r["workload"] == wl for k in USED_KEYS)


def render_markdown(doc: Dict[str, Any]) -> str:
    sources = _sources(doc)
    workloads = list(doc["workloads"])
    versions: Dict[str, List[str]] = {}
    for label, meta, _ in sources:
        for e, p in (meta.get("engine_info") or {}).items():
            v = f"sglang {p.get('version') or 'unknown'} (series {series_label(p)})"
            if _contributes(doc, label, meta, e) and v not in versions.setdefault(e, []):
                versions[e].append(v)
    title = " vs ".join(f"{e}: {' / '.join(versions[e])}" for e in ENGINES if versions.get(e)) or "no engine"
    first = sources[0][1]
    lines = [f"# bench_serving A/B: {title}", ""]
    lines.append(f"Model `{first['model']}`{' (dummy weights)' if first.get('load_format') == 'dummy' else ''}"
                 f"; extra server args: {' '.join(first.get('extra_server_args') or []) or 'none'}"
                 f"; MTP: {' '.join((first.get('mtp') or {}).get('flags') or []) or 'off'}.")
    lines.append("")
    for label, meta, status in sources:
        order = "; ".join(f"{o['profile']} ({', '.join(o['workloads'])}): {' -> '.join(o['engines'])}"
                          for o in meta.get("order", []))
        lines.append(f"- {label} ({status}): engines {', '.join(meta.get('engines', []))}; device {meta['device']};"
                     f" date {meta['date']}; commit {meta['commit']} (from {meta.get('commit_source', '?')}"
                     f"{', uncommitted changes' if meta.get('commit_dirty') else ''})"
                     + (f"; patched engine built at series commit {meta['engine_series_commit']}"
                        if meta.get("engine_series_commit") and meta["engine_series_commit"] != meta["commit"] else "")
                     + f"; order {order}; "
                     f"{meta['repeats']} timed repeat(s) (seeds {meta['seeds']['timed']}) after one warm-up pass "
                     f"(seed {meta['seeds']['warmup']}, up to {meta['warmup_prompts']} prompts) per workload and "
                     f"engine; caches {'flushed' if meta.get('flush_before_pass') else 'not flushed'} before "
                     f"each pass."
                     + (f" Switches set for both engines: {', '.join(f'{k}={v}' for k, v in meta['switches'].items())}."
                        if meta.get("switches") else ""))
    devices = {meta["device"] for _, meta, _ in sources}
    if len(devices) > 1:
        lines.append(f"- **The inputs ran on different devices** ({'; '.join(sorted(devices))}).")
    if doc.get("kind") == "merge":
        for wl in workloads:
            src = {e: sorted({r["source"] for r in doc["runs"] if r["workload"] == wl and r["engine"] == e})
                   for e in ENGINES}
            if all(src.values()) and src["upstream"] != src["patched"]:
                lines.append(f"- **`{wl}`: the engines ran in different runs** (upstream from "
                             f"{', '.join(src['upstream'])}, patched from {', '.join(src['patched'])}), "
                             "so they were not alternated in one session; compare with that in mind.")
    lines += [
        "",
        "Each cell: median [min-max] over the timed repeats, n = repeats (warm-up passes excluded); \"hint\": "
        f"fewer than {MIN_REPEATS_FOR_CLAIM} repeats, not enough for a claim. Ratio = upstream / patched "
        "medians for times, patched / upstream for throughputs and accept length (> 1: patched better). "
        "Spread: whether the two [min-max] ranges overlap.",
        "",
        *tables.table(COMPARISON_HEADER, [_comparison_cells(r) for r in doc["rows"]]),
    ]
    for wl in workloads:
        engines = [e for e in ENGINES if any(r["workload"] == wl and r["engine"] == e for r in doc["runs"])]
        if not engines:
            continue
        if _logs_pool_use(doc, wl):  # servers that log pool use per decode batch (hybrid SWA, unified memory)
            table = tables.table(SERVER_HEADER + USED_HEADER,
                                 [_server_cells(doc, wl, e) + _used_cells(doc, wl, e) for e in engines])
        else:
            table = tables.table(SERVER_HEADER, [_server_cells(doc, wl, e) for e in engines])
        lines += ["", f"Server of `{wl}`:", "", *table]
    lines += ["", "Engines:"]
    for label, meta, _ in sources:
        for e in [e for e in meta.get("engines", []) if _contributes(doc, label, meta, e)]:
            p = (meta.get("engine_info") or {}).get(e) or {}
            lines.append(f"- {e} ({label}): sglang {p.get('version') or 'unknown'}, series {series_label(p)}")
    lines += ["", "Server logs:"]
    for s in doc["servers"]:
        info = s.get("log_info") or {}
        src = f" from {s['source']}" if s.get("source") else ""
        lines.append(f"- {s['engine']} {s['profile']} ({', '.join(s['workloads'])}){src}: "
                     f"series line: {info.get('series_line') or 'none'}; KV split: "
                     f"{' | '.join(info.get('kv_split_lines') or []) or 'none'}; command `{' '.join(s['cmd'])}`"
                     + (f" env {' '.join(f'{k}={v}' for k, v in s['env'].items())}" if s.get("env") else "")
                     + (f"; unified memory: {' | '.join(info['unified_pool_lines'])}"
                        if info.get("unified_pool_lines") else ""))
    lines += ["", "Workloads (bench_serving arguments after the --num-prompts override; serve_ab adds --seed, "
              "--num-prompts per pass, --dataset-path, --host/--port and --output-file):"]
    for wl, d in doc["workloads"].items():
        client = "video client (benchmark/gemma4/video_client.py)" if d.get("client") == "video" else "bench_serving"
        lines.append(f"- {wl}: {d['description']}; {client} {' '.join(d['bench_args'])}; "
                     f"{d['num_prompts']} prompts per timed pass, {d['warmup_prompts']} in the warm-up pass"
                     + (f"; server {' '.join(d['server_args'])}" if d["server_args"] else "")
                     + (f"; env {' '.join(f'{k}={v}' for k, v in d['server_env'].items())}" if d["server_env"] else ""))
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str, name: str, doc: Dict[str, Any], md: str) -> Tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, name + ".json")
    mpath = os.path.join(out_dir, name + ".md")
    Recorder(jpath, doc).write()
    with open(mpath, "w", encoding="utf-8") as f:
        f.write(md)
    return jpath, mpath
