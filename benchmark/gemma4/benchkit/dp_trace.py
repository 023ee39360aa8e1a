"""decode_profile's traces: torch.profiler's chrome trace cut to a compact event list, kernels placed in their
step, phase and module, module labels carried from the eager step to the graph steps, time per family."""

from __future__ import annotations

import dataclasses
import difflib
import re
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchkit.dp_families import (ATTN_PRIMARY_RE, FAMILIES, LAYER_SUB, attention_family, classify,
                                  layer_of_label)
from benchkit.dp_floor import H200_BF16_FLOP_PER_S, H200_COPY_BYTES_PER_S, geometry, model_floor

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
STEP_PREFIX = "dp:step#"
PHASE_PREFIX = "dp:"
MODULE_PREFIX = "mod:"


def compact_trace(obj: Dict[str, Any]) -> Dict[str, Any]:
    """Keep what the attribution needs from a chrome trace (a dict with traceEvents): GPU activities, the CPU
    launch events they correlate with, and our record_function ranges (dp:..., mod:...)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("traceEvents"), list):
        raise ValueError("not a chrome trace: expected an object with a traceEvents list")
    names: Dict[str, int] = {}
    kernels, launches, ranges = [], {}, []
    for e in obj["traceEvents"]:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat, args = e.get("cat"), e.get("args") or {}
        if cat in GPU_CATS:
            n = str(e.get("name", ""))
            idx = names.setdefault(n, len(names))
            kernels.append([idx, float(e["ts"]), float(e.get("dur", 0.0)), args.get("correlation"), args.get("stream")])
        elif cat in LAUNCH_CATS and args.get("correlation") is not None:
            launches[int(args["correlation"])] = [float(e["ts"]), e.get("tid")]
        elif cat == "user_annotation":
            n = str(e.get("name", ""))
            if n.startswith(PHASE_PREFIX) or n.startswith(MODULE_PREFIX):
                ranges.append([n, float(e["ts"]), float(e.get("dur", 0.0)), e.get("tid")])
    used = {k[3] for k in kernels if k[3] is not None}
    launches = {c: v for c, v in launches.items() if c in used}
    return {"names": sorted(names, key=names.get), "kernels": kernels,
            "launches": {str(c): v for c, v in launches.items()}, "ranges": ranges}


def _innermost(ranges: List[Tuple[float, float, str]], points: List[float]) -> List[Optional[str]]:
    """For each point (time), the name of the innermost range containing it; ranges must nest."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    rs = sorted(ranges, key=lambda r: (r[0], -r[1]))
    out: List[Optional[str]] = [None] * len(points)
    stack: List[Tuple[float, float, str]] = []
    j = 0
    for i in order:
        t = points[i]
        while j < len(rs) and rs[j][0] <= t:
            while stack and stack[-1][1] < rs[j][0]:
                stack.pop()
            stack.append(rs[j])
            j += 1
        while stack and stack[-1][1] < t:
            stack.pop()
        out[i] = stack[-1][2] if stack else None
    return out


@dataclasses.dataclass
class KernelRec:
    name: str
    ts: float
    dur: float
    step: Optional[int]
    phase: Optional[str]
    label: Optional[str]  # module qualified name ("<root>" for the model itself), None when no module range


def annotate(trace: Dict[str, Any]) -> List[KernelRec]:
    """Each GPU activity with its step, phase and module label, in GPU time order.

    The CPU time that places a kernel is its launch call's (found by correlation id; a kernel replayed from a
    CUDA graph correlates with the cudaGraphLaunch); a kernel whose launch is missing is placed by its own
    start time (the steps synchronise at every phase end, so a kernel runs inside its phase's CPU range)."""
    names = trace["names"]
    launches = {int(c): v for c, v in trace["launches"].items()}
    by_kind: Dict[str, Dict[Any, List[Tuple[float, float, str]]]] = {"step": {}, "phase": {}, "mod": {}}
    for n, ts, dur, tid in trace["ranges"]:
        if n.startswith(STEP_PREFIX):
            kind, val = "step", n[len(STEP_PREFIX):]
        elif n.startswith(MODULE_PREFIX):
            kind, val = "mod", n[len(MODULE_PREFIX):]
        else:
            kind, val = "phase", n[len(PHASE_PREFIX):]
        by_kind[kind].setdefault(tid, []).append((ts, ts + dur, val))

    def lookup(kind: str, pts: List[Tuple[float, Any]], any_thread: bool) -> List[Optional[str]]:
        res: List[Optional[str]] = [None] * len(pts)
        groups: Dict[Any, List[int]] = {}
        for i, (_, tid) in enumerate(pts):
            groups.setdefault(None if any_thread else tid, []).append(i)
        for tid, idxs in groups.items():
            rs = [r for rl in by_kind[kind].values() for r in rl] if tid is None else by_kind[kind].get(tid, [])
            if not rs:
                continue
            for i, v in zip(idxs, _innermost(rs, [pts[i][0] for i in idxs])):
                res[i] = v
        return res

    ks = sorted(trace["kernels"], key=lambda k: k[1])
    at_launch: List[Tuple[float, Any]] = []
    has_launch: List[bool] = []
    for k in ks:
        lau = launches.get(int(k[3])) if k[3] is not None else None
        has_launch.append(lau is not None)
        at_launch.append((lau[0], lau[1]) if lau else (k[1], None))
    step_l = lookup("step", at_launch, any_thread=True)
    phase_l = lookup("phase", at_launch, any_thread=True)
    mod_l = lookup("mod", at_launch, any_thread=False)
    out = []
    for i, k in enumerate(ks):
        step = int(step_l[i]) if step_l[i] is not None and step_l[i].isdigit() else None
        label = mod_l[i] if has_launch[i] else None  # "<root>" for the model's own forward body
        out.append(KernelRec(names[k[0]], k[1], k[2], step, phase_l[i], label))
    return out


def template_from(kernels: List[KernelRec]) -> List[Tuple[str, Optional[str]]]:
    """(name, module label) of the forward-phase kernels of a labelled (eager) step, in GPU order."""
    return [(k.name, k.label) for k in kernels if k.phase == "forward"]


def align_labels(template: List[Tuple[str, Optional[str]]], names: List[str]) -> Tuple[List[Optional[str]], int]:
    """Module labels for a kernel-name sequence, taken from the template where the sequences align:
    equal runs map one to one, equal-length replaced runs (same op, another kernel variant) map position by
    position.  Returns the labels (None where unmatched) and how many kernels got one."""
    ids: Dict[str, int] = {}
    a = [ids.setdefault(n, len(ids)) for n, _ in template]
    b = [ids.setdefault(n, len(ids)) for n in names]
    labels: List[Optional[str]] = [None] * len(names)
    matched = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for di in range(j2 - j1):
                labels[j1 + di] = template[i1 + di][1]
                matched += 1
    return labels, matched


def attribute(graph_kernels: List[KernelRec], template: Optional[List[Tuple[str, Optional[str]]]],
              layer_types: Sequence[str], has_ple: bool) -> Dict[str, Any]:
    """Family of every kernel of the profiled graph steps; per-step totals per family."""
    steps: Dict[int, List[KernelRec]] = {}
    unplaced_us = 0.0
    for k in graph_kernels:
        if k.step is None:
            unplaced_us += k.dur
        else:
            steps.setdefault(k.step, []).append(k)
    if not steps:
        raise ValueError("no kernel of the profile lies inside a dp:step range: the profiler recorded no GPU "
                         "activity for the decode steps (is CUPTI available, did the steps run on the GPU?)")
    per_step: Dict[int, Dict[str, List[float]]] = {}
    kernel_rows: Dict[Tuple[str, str, str], List[float]] = {}
    align = {"template_forward_kernels": len(template or []), "forward_kernels": 0, "labelled": 0,
             "labelled_us": 0.0, "forward_us": 0.0}
    attn_by = {"label": 0, "order": 0}
    for s, ks in sorted(steps.items()):
        ks.sort(key=lambda k: k.ts)
        fwd = [k for k in ks if k.phase == "forward"]
        labels: Dict[int, Optional[str]] = {}
        if template:
            lab, _ = align_labels(template, [k.name for k in fwd])
            labels = {id(k): lab[i] for i, k in enumerate(fwd)}
        acc: Dict[str, List[float]] = {}
        primaries = 0
        for k in ks:
            label = labels.get(id(k)) if k.phase == "forward" else k.label
            if k.phase == "forward":
                align["forward_kernels"] += 1
                align["forward_us"] += k.dur
                if label is not None:
                    align["labelled"] += 1
                    align["labelled_us"] += k.dur
            fam = classify(k.name, label, k.phase, has_ple)
            if fam == "attn_core":
                is_primary = bool(ATTN_PRIMARY_RE.search(k.name))
                layer = layer_of_label(label)
                if layer is not None:
                    attn_by["label"] += 1
                else:
                    layer = primaries if is_primary else primaries - 1
                    attn_by["order"] += 1
                if is_primary:
                    primaries += 1
                fam = attention_family(layer, layer_types)
            a = acc.setdefault(fam, [0.0, 0])
            a[0] += k.dur
            a[1] += 1
            where = LAYER_SUB.sub(r"\1layers.N", label) if label is not None else "-"
            row = kernel_rows.setdefault((fam, short_name(k.name), where), [0.0, 0])
            row[0] += k.dur
            row[1] += 1
        per_step[s] = acc
    n = len(per_step)
    fams: Dict[str, Dict[str, float]] = {}
    for f in FAMILIES:
        vals = [per_step[s].get(f, [0.0, 0]) for s in per_step]
        if not any(v[1] for v in vals):
            continue
        us = [v[0] for v in vals]
        fams[f] = {"us_per_step": sum(us) / n, "us_min": min(us), "us_max": max(us),
                   "kernels_per_step": sum(v[1] for v in vals) / n}
    total = sum(v["us_per_step"] for v in fams.values())
    for v in fams.values():
        v["share"] = v["us_per_step"] / total if total else 0.0
    phases: Dict[str, float] = {}
    spans: List[float] = []
    for s, ks in steps.items():
        for k in ks:
            phases[k.phase or "none"] = phases.get(k.phase or "none", 0.0) + k.dur / n
        fwd = [k for k in ks if k.phase == "forward"]
        if fwd:
            spans.append(max(k.ts + k.dur for k in fwd) - min(k.ts for k in fwd))
    top = sorted(kernel_rows.items(), key=lambda kv: -kv[1][0])
    return {
        "steps": n, "families": fams, "kernel_us_per_step": total,
        "kernels_per_step": sum(v["kernels_per_step"] for v in fams.values()),
        "phase_us_per_step": phases, "forward_span_us": statistics.median(spans) if spans else None,
        "unplaced_us": unplaced_us, "alignment": align, "attention_layer_by": attn_by,
        "top_kernels": [{"family": f, "kernel": nm, "module": lab, "us_per_step": v[0] / n,
                         "launches_per_step": v[1] / n} for (f, nm, lab), v in top[:30]],
    }


def short_name(name: str, limit: int = 90) -> str:
    """A kernel name without its argument list, at most `limit` characters."""
    n = name.split("(", 1)[0] if not name.startswith("Memcpy") else name
    n = re.sub(r"^void ", "", n)
    return n if len(n) <= limit else n[: limit - 3] + "..."


def analyze_events(events: Dict[str, Any]) -> Dict[str, Any]:
    """Attribution and floors from a run's saved events (CPU)."""
    meta = events["meta"]
    geom = geometry(events["geometry_config"], meta.get("model", "model"))
    bw = meta.get("bandwidth_bytes_per_s", H200_COPY_BYTES_PER_S)
    peak = meta.get("peak_bf16_flop_per_s", H200_BF16_FLOP_PER_S)
    out = {"meta": meta, "batches": []}
    for r in events["batches"]:
        graph = annotate(r["_graph_trace"])
        template = template_from(annotate(r["_template_trace"])) if r.get("_template_trace") else None
        att = attribute(graph, template, geom.layer_types, geom.ple_dim > 0)
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        row["attribution"] = att
        row["floor"] = model_floor(geom, r["batch_size"], int(round(r["context_mean"])), bw, peak)
        for f, v in att["families"].items():
            c = row["floor"]["families"].get(f)
            v["floor_us"] = c["floor_us"] if c else 0.0
        out["batches"].append(row)
    return out
