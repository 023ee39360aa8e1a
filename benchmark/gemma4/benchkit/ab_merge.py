"""serve_ab merge: several run files (one engine each, or some passes of each) joined into one comparison,
refused where they disagree on the model, server arguments, MTP, seed or a workload's definition."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Set, Tuple

import stamp
from benchkit.ab_common import ENGINES, FORMAT, ServeABError
from benchkit.ab_workloads import WORKLOADS


def _load_run(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ServeABError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ServeABError(f"{path} is not a serve_ab result file of format {FORMAT}")
    if doc.get("kind") != "run":
        raise ServeABError(f"{path} is a {doc.get('kind')!r} file; merge the run files it came from")
    return doc


def parse_take(specs: Sequence[str], paths: Sequence[str]) -> Dict[str, Set[Tuple[str, str]]]:
    """``FILE=engine:workload[,engine:workload...]`` -> {FILE: {(engine, workload), ...}}; FILE must be an input."""
    take: Dict[str, Set[Tuple[str, str]]] = {}
    for spec in specs:
        path, sep, pairs = spec.rpartition("=")
        if not sep or not path or not pairs:
            raise ServeABError(f"--take {spec!r}: expected FILE=engine:workload[,engine:workload]")
        if path not in paths:
            raise ServeABError(f"--take {spec!r}: {path} is not one of the files to merge")
        for item in pairs.split(","):
            engine, sep, workload = item.strip().partition(":")
            if not sep or engine not in ENGINES or workload not in WORKLOADS:
                raise ServeABError(f"--take {spec!r}: {item!r} is not engine:workload with engine in "
                                   f"{', '.join(ENGINES)} and workload in {', '.join(WORKLOADS)}")
            take.setdefault(path, set()).add((engine, workload))
    return take


def _restrict(path: str, doc: Dict[str, Any], pairs: Set[Tuple[str, str]]) -> Dict[str, Any]:
    """Keep only the given (engine, workload) pairs of one run file (its runs, workloads and servers)."""
    runs = [r for r in doc["runs"] if (r["engine"], r["workload"]) in pairs]
    missing = sorted(pairs - {(r["engine"], r["workload"]) for r in runs})
    if missing:
        raise ServeABError(f"--take: {path} holds no pass of " + ", ".join(f"{e}:{w}" for e, w in missing))
    wls = {w for _, w in pairs}
    servers = []
    for s in doc["servers"]:
        kept = [w for w in s["workloads"] if (s["engine"], w) in pairs]
        if kept:
            servers.append(dict(s, workloads=kept))
    return dict(doc, runs=runs, servers=servers,
                workloads={w: d for w, d in doc["workloads"].items() if w in wls})


def merge_docs(paths: Sequence[str], take: Optional[Dict[str, Set[Tuple[str, str]]]] = None) -> Dict[str, Any]:
    if len(paths) < 2:
        raise ServeABError("merge needs at least two run files")
    docs = [(p, _load_run(p)) for p in paths]
    take = take or {}
    docs = [(p, _restrict(p, d, take[p]) if p in take else d) for p, d in docs]
    base_path, base = docs[0]
    checks = [("model", lambda d: d["meta"]["model"]), ("load format", lambda d: d["meta"].get("load_format")),
              ("extra server args", lambda d: d["meta"].get("extra_server_args")),
              ("MTP flags", lambda d: (d["meta"].get("mtp") or {}).get("flags")),
              ("base seed", lambda d: d["meta"].get("base_seed")),
              ("switches set", lambda d: d["meta"].get("switches") or None)]
    for path, doc in docs[1:]:
        for what, get in checks:
            if get(doc) != get(base):
                raise ServeABError(f"{base_path} and {path} disagree on {what}: {get(base)!r} vs {get(doc)!r}")
    workloads: Dict[str, Dict[str, Any]] = {}
    owner: Dict[str, str] = {}
    for path, doc in docs:
        for wl, d in doc["workloads"].items():
            key = {k: d[k] for k in ("bench_args", "server_args", "server_env")}
            if wl in workloads:
                prev = {k: workloads[wl][k] for k in ("bench_args", "server_args", "server_env")}
                if prev != key:
                    raise ServeABError(f"{owner[wl]} and {path} disagree on workload {wl!r}: "
                                       f"{json.dumps(prev)} vs {json.dumps(key)}")
            else:
                workloads[wl], owner[wl] = d, path
    seen: Dict[Tuple[str, str], str] = {}
    for path, doc in docs:
        for pair in sorted({(r["engine"], r["workload"]) for r in doc["runs"]}):
            if pair in seen and seen[pair] != path:
                raise ServeABError(f"{seen[pair]} and {path} both hold engine {pair[0]!r} on workload "
                                   f"{pair[1]!r}; merge one of them")
            seen[pair] = path
    merged = {
        "format": FORMAT, "kind": "merge", "status": "merged",
        "inputs": [{"file": os.path.basename(p), "path": p, "status": d.get("status"), "meta": d["meta"]}
                   for p, d in docs],
        "meta": {"model": base["meta"]["model"], "load_format": base["meta"].get("load_format"),
                 "extra_server_args": base["meta"].get("extra_server_args"), "mtp": base["meta"].get("mtp"),
                 "base_seed": base["meta"].get("base_seed"),
                 "date": stamp.utc_now()},
        "workloads": workloads,
        "servers": [dict(s, source=os.path.basename(p)) for p, d in docs for s in d["servers"]],
        "runs": [dict(r, source=os.path.basename(p)) for p, d in docs for r in d["runs"]],
    }
    return merged
