"""serve_ab's statistics: median, [min, max] and n of every metric over the timed repeats, and the per-metric
comparison of the two engines (ratio, spread)."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence

from benchkit.ab_common import ENGINES, MIN_REPEATS_FOR_CLAIM
from benchkit.ab_workloads import METRICS, OPTIONAL_METRICS


def ratio(upstream: Optional[float], patched: Optional[float], lower_is_better: bool) -> Optional[float]:
    """Improvement factor of patched over upstream (> 1 means patched is better)."""
    if upstream is None or patched is None or upstream <= 0 or patched <= 0:
        return None
    return upstream / patched if lower_is_better else patched / upstream


def stats(values: Sequence[float]) -> Optional[Dict[str, Any]]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "values": vals}


def spread(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> Optional[str]:
    """'within spread' when the [min, max] ranges overlap, 'outside spread' when they do not."""
    if not a or not b:
        return None
    apart = a["max"] < b["min"] or b["max"] < a["min"]
    return "outside spread" if apart else "within spread"


def timed_runs(runs: Sequence[Dict[str, Any]], workload: str, engine: str) -> List[Dict[str, Any]]:
    return [r for r in runs if r["workload"] == workload and r["engine"] == engine and r["kind"] == "timed"
            and r["status"] == "ok" and r.get("result")]


def summarise(runs: Sequence[Dict[str, Any]], workloads: Sequence[str]) -> Dict[str, Any]:
    """Per workload and engine: median [min, max] and n of every metric over the timed repeats only."""
    out: Dict[str, Any] = {}
    for wl in workloads:
        for engine in ENGINES:
            timed = timed_runs(runs, wl, engine)
            warm = [r for r in runs if r["workload"] == wl and r["engine"] == engine and r["kind"] == "warmup"]
            if not timed and not warm:
                continue
            metrics = {k: stats([r["result"].get(k) for r in timed]) for k, *_ in METRICS}
            out.setdefault(wl, {})[engine] = {
                "n": len(timed), "hint": len(timed) < MIN_REPEATS_FOR_CLAIM, "metrics": metrics,
                "seeds": [r["seed"] for r in timed], "warmup_passes": len(warm),
            }
    return out


def compare_rows(summary: Dict[str, Any], workloads: Sequence[str]) -> List[Dict[str, Any]]:
    rows = []
    for wl in workloads:
        by = summary.get(wl, {})
        for key, label, unit, lower in METRICS:
            u = ((by.get("upstream") or {}).get("metrics") or {}).get(key)
            p = ((by.get("patched") or {}).get("metrics") or {}).get(key)
            if key in OPTIONAL_METRICS and u is None and p is None:
                continue
            rows.append({
                "workload": wl, "metric": key, "label": label, "unit": unit, "lower_is_better": lower,
                "upstream": u, "patched": p,
                "ratio": ratio(u and u["median"], p and p["median"], lower),
                "spread": spread(u, p),
                "hint": any(s is not None and s["n"] < MIN_REPEATS_FOR_CLAIM for s in (u, p)),
            })
    return rows
