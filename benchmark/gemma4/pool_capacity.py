"""Gemma-4 KV-pool capacity planner (CPU only: no GPU, no weights).

For each Gemma-4 variant, GPU, workload, MTP on/off and what the deployment declares about request
length, it resolves sglang's own ServerArgs as on that GPU, builds sglang's KVCacheConfigurator for the
model geometry and sizes the pools with ``config_from_budget(budget)`` -- the call the engine makes with
the budget it measured -- then counts how many requests of the workload run at once. Three policies on
the same budget:

* upstream: sglang 0.5.23 as released (swa_full_tokens_ratio 0.8, draft rows reserved for the FROZEN_KV
  assistant, a buffer for every KV-shared layer);
* reference: the reference series' rule (0.15 when the model is MoE, else 0.8) on 0.5.23's accounting;
* series: this series (the Gemma-4 pool configurator of gemma4_pool_sizing, and the no-phantom-row and
  no-shared-layer-buffer pool fixes).

What the deployment declares (``declared`` column): ``expected`` = SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS
is the workload's prompt + output; ``context=workload`` = --context-length is the workload's length;
``context 131072`` = --context-length 131072; ``model default`` = nothing (the model's own context).

The budget is the planner's estimate of what the engine would measure (kv_budget.py); requests that fit
use the series' own request model (gemma4_pool_sizing.SplitModel.requests) for every policy.

Needs the patched engine. Run from the repository root:

    python benchmark/gemma4/pool_capacity.py --out benchmark/gemma4/results

Writes pool_capacity.json, pool_capacity.md and pool_capacity.png there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kv_budget  # noqa: E402  (planner-only budget estimate)
import stamp  # noqa: E402  (device, date and commit of a result)

# Card sizes as torch/nvidia-smi report them (MiB), and the platform flag
# that selects sglang's Gemma-4 defaults (attention backend, page size).
GPUS = {
    "H100-80GB": {"mib": 81559, "platform": {"is_sm90": True}},
    "H200-141GB": {"mib": 143771, "platform": {"is_sm90": True}},
    "B200-180GB": {"mib": 183359, "platform": {"is_sm100": True}},
}
# (prompt tokens, output tokens)
WORKLOADS = {
    "chat 1k/1k": (1000, 1000),
    "summarization 8k/1k": (8000, 1000),
    "long 32k/1k": (32000, 1000),
}
VARIANTS = ["e2b", "e4b", "26b-a4b", "31b"]
VARIANT_NAMES = {"e2b": "E2B", "e4b": "E4B", "26b-a4b": "26B-A4B", "31b": "31B"}
POLICIES = ["upstream", "reference", "series"]
# What the deployment declares about request length.
DECLARED = ["expected", "context=workload", "context 131072", "model default"]
EXPECTED_ENV = "SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS"

log = logging.getLogger("pool_capacity")


def _find_config_dir(roots: List[str], variant: str, assistant: bool) -> Optional[str]:
    names = [f"{variant}-assistant", os.path.join(variant, "assistant")] if assistant else [variant]
    for root in roots:
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(os.path.join(path, "config.json")):
                return path
    return None


# Pool accounting per policy: (series draft-row fix on, series shared-layer fix on).
LAYOUTS = {
    "upstream": (False, False),
    "reference": (False, False),
    "series": (True, True),
    "0.8 + no draft rows": (True, False),
    "0.8 + no shared buffers": (False, True),
    "0.8 + both pool fixes": (True, True),
}
ATTRIBUTION = ["0.8 + no draft rows", "0.8 + no shared buffers", "0.8 + both pool fixes"]


@contextlib.contextmanager
def _pool_layout(draft_fix: bool, shared_fix: bool):
    """Switch the series' pool fixes back to sglang 0.5.23 behaviour where asked."""
    from sglang.srt.mem_cache import gemma4_kv_layout

    saved = (
        gemma4_kv_layout.target_reserves_draft_kv_rows,
        gemma4_kv_layout.owning_attention_layer_ids,
    )
    if not draft_fix:
        gemma4_kv_layout.target_reserves_draft_kv_rows = lambda spec_algorithm: True
    if not shared_fix:
        gemma4_kv_layout.owning_attention_layer_ids = lambda mc, swa, full: (swa, full)
    try:
        yield
    finally:
        (
            gemma4_kv_layout.target_reserves_draft_kv_rows,
            gemma4_kv_layout.owning_attention_layer_ids,
        ) = saved


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _variant_name(variant_dir: str) -> str:
    base = os.path.basename(variant_dir.rstrip("/"))
    return VARIANT_NAMES.get(base.lower(), base)


def _reference_ratio(hf_config) -> float:
    from sglang.srt.mem_cache.gemma4_kv_layout import text_config_of

    text = text_config_of(hf_config)
    is_moe = (
        bool(getattr(text, "enable_moe_block", False))
        or int(getattr(text, "num_experts", 0) or 0) > 0
    )
    return 0.15 if is_moe else 0.8


def _no_requests(base, kv_budget_gib, binding, **pool):
    """A result row where no request fits: empty pools, with whatever pool geometry is known."""
    row = {
        **base,
        "kv_budget_gib": kv_budget_gib,
        "requests": 0,
        "binding": binding,
        "full_tokens": 0,
        "swa_tokens": 0,
        "max_running_requests": 0,
        "full_layers_in_pool": 0,
        "swa_layers_in_pool": 0,
        "draft_full_rows": 0,
        "full_cell_bytes": 0,
        "swa_cell_bytes": 0,
        "full_bound": 0,
        "ratio": 0.0,
        "policy_log": [],
    }
    row.update(pool)
    return row


def declared_args(declared: str, request_tokens: int) -> Tuple[List[str], Dict[str, str]]:
    """Server arguments and environment for what a deployment declares about request length."""
    if declared == "expected":
        return [], {EXPECTED_ENV: str(request_tokens)}
    if declared == "context=workload":
        return ["--context-length", str(request_tokens)], {}
    if declared == "context 131072":
        return ["--context-length", "131072"], {}
    if declared == "model default":
        return [], {}
    raise ValueError(f"unknown declaration {declared!r}; known: {', '.join(DECLARED)}")


@contextlib.contextmanager
def _env(values: Dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def plan_cell(
    *,
    variant_dir: str,
    assistant_dir: Optional[str],
    gpu: str,
    workload: str,
    mtp: bool,
    policy: str,
    declared: str = "expected",
) -> Dict[str, Any]:
    """One cell: pools from sglang's configurator on the planner's budget, and requests that fit."""
    from sglang.srt import runtime_context as rc
    from sglang.srt.arg_groups.model_override_base import model_config_of, resolved_view
    from sglang.srt.mem_cache import gemma4_pool_sizing as sizing
    from sglang.srt.model_executor.pool_configurator import create_memory_pool_configurator
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils.hf_transformers_utils import get_config

    prompt, output = WORKLOADS[workload]
    request_tokens = prompt + output
    extra, env = declared_args(declared, request_tokens)
    args = ["--model-path", variant_dir, "--device", "cuda", "--skip-tokenizer-init",
            "--load-format", "dummy", *extra]
    if mtp:
        if assistant_dir is None:
            raise ValueError(f"no assistant config for {variant_dir}")
        args += kv_budget.mtp_args(assistant_dir)
    if policy == "upstream" or policy in ATTRIBUTION:
        args += ["--swa-full-tokens-ratio", str(sizing.UPSTREAM_DEFAULT_RATIO)]
    elif policy == "reference":
        ratio = _reference_ratio(get_config(variant_dir, trust_remote_code=False))
        args += ["--swa-full-tokens-ratio", str(ratio)]
    elif policy != "series":
        raise ValueError(f"unknown policy {policy!r}")
    spec = GPUS[gpu]
    reasons = _Capture()
    sizing_log = logging.getLogger(sizing.__name__)
    sizing_log.addHandler(reasons)
    sizing_log.setLevel(logging.INFO)
    sizing._LOGGED.clear()
    try:
        with _env(env), _pool_layout(*LAYOUTS[policy]), kv_budget.device_capacity(spec["mib"]), \
                rc.override_platform(**spec["platform"]):
            server_args = prepare_server_args(args)
            server_args.resolve_once()
            rc.publish(server_args, role="test")
            view = resolved_view(server_args)
            model_config = model_config_of(server_args)
            hf_config = model_config.hf_config
            draft_weight_bytes = 0
            if mtp:
                draft_weight_bytes = kv_budget.estimate_weight_bytes(
                    get_config(assistant_dir, trust_remote_code=False)
                )
            budget = kv_budget.estimate_kv_budget_from_args(
                view, hf_config, is_multimodal=bool(model_config.is_multimodal),
                draft_weight_bytes=draft_weight_bytes,
            )
            base = {
                "variant": _variant_name(variant_dir),
                "gpu": gpu,
                "workload": workload,
                "mtp": mtp,
                "policy": policy,
                "declared": declared,
                "request_tokens": request_tokens,
                "declared_context_tokens": int(extra[1]) if extra else None,
                "declared_expected_tokens": int(env[EXPECTED_ENV]) if env else None,
                "context_len": int(model_config.context_len),
                "mem_fraction_static": float(view.mem_fraction_static),
                "chunked_prefill_size": int(view.chunked_prefill_size),
                "page_size": int(view.page_size),
            }
            if budget is None:
                return _no_requests(base, 0.0, "no KV budget (weights exceed the static fraction)")
            kvc = kv_budget.kv_configurator(server_args)
            layer_info = kvc.layer_info
            page_size = int(kvc.page_size)
            configurator = create_memory_pool_configurator(kvc)
            pool_geometry = dict(
                full_layers_in_pool=len(layer_info.full_attention_layer_ids),
                swa_layers_in_pool=len(layer_info.swa_attention_layer_ids),
                draft_full_rows=int(configurator._draft_full_layers_num),
                full_cell_bytes=int(configurator._full_cell_bytes()),
                swa_cell_bytes=int(configurator._swa_cell_bytes()),
            )
            try:
                config = kvc.config_from_budget(budget)
            except ValueError as exc:  # sglang refuses to start with these pools
                return _no_requests(base, budget / (1 << 30),
                                    f"engine refuses: {str(exc).split(':')[0]}", **pool_geometry)
            full_tokens = int(config.full_max_total_num_tokens)
            swa_tokens = int(config.swa_max_total_num_tokens)
            # One request model for every policy: the series' (sglang's SWA residency, the radix
            # cache's locked prefix tail, the prefill chunks, sglang's request cap).
            model = sizing.configurator_class()(kvc).split_model(budget, page_size)
            requests = model.requests(request_tokens, full_tokens, swa_tokens)
            cap = sizing.sglang_request_cap(full_tokens, model.context_len, model.request_cap)
            by_full = full_tokens // request_tokens
            binding = ("request cap" if requests >= cap else
                       "full pool" if requests >= by_full else "SWA pool")
    finally:
        sizing_log.removeHandler(reasons)
    return {
        **base,
        "ratio": round(swa_tokens / full_tokens, 4) if full_tokens else 0.0,
        "kv_budget_gib": budget / (1 << 30),
        "max_running_requests": cap,
        **pool_geometry,
        "full_tokens": full_tokens,
        "swa_tokens": swa_tokens,
        "requests": requests,
        "binding": binding,
        "full_bound": by_full,
        "policy_log": reasons.messages,
    }


def _attribution_md(rows: List[Dict[str, Any]], attribution: List[Dict[str, Any]]) -> List[str]:
    """Pool tokens at ratio 0.8 with each pool fix alone (workload-independent)."""
    out = ["## Pool fixes alone, at sglang's default ratio 0.8\n"]
    out.append(
        "Full / SWA pool tokens on the same budget: sglang 0.5.23, then with only the "
        "FROZEN_KV draft-row fix, only the KV-shared-layer fix, and both. Pool sizes do not "
        "depend on the workload at a fixed ratio.\n"
    )
    out.append(
        "| variant | GPU | MTP | KV budget GiB | 0.5.23 full / SWA | no draft rows | no shared buffers | both | full tokens gained |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|")
    first_workload = attribution[0]["workload"] if attribution else None
    for a in attribution:
        if a["policy"] != ATTRIBUTION[0]:
            continue
        key = (a["variant"], a["gpu"], a["mtp"])
        base = next(
            r
            for r in rows
            if (r["variant"], r["gpu"], r["mtp"]) == key
            and r["workload"] == first_workload
            and r["declared"] == a["declared"]
            and r["policy"] == "upstream"
        )
        by = {b["policy"]: b for b in attribution if (b["variant"], b["gpu"], b["mtp"]) == key}
        cells = [f"{base['full_tokens']} / {base['swa_tokens']}"]
        for p in ATTRIBUTION:
            cells.append(f"{by[p]['full_tokens']} / {by[p]['swa_tokens']}")
        both = by[ATTRIBUTION[-1]]["full_tokens"]
        gain = f"{(both / base['full_tokens'] - 1) * 100:+.0f}%" if base["full_tokens"] else "n/a"
        out.append(
            f"| {a['variant']} | {a['gpu']} | {'on' if a['mtp'] else 'off'} | "
            f"{a['kv_budget_gib']:.2f} | " + " | ".join(cells) + f" | {gain} |"
        )
    out.append("")
    return out


def _cell_key(r):
    return (r["variant"], r["gpu"], r["workload"], r["mtp"], r["declared"])


def tally(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, int]]:
    """Per declaration: cells, cells where the series is best or tied, cells where it serves at
    least as many requests as sglang 0.5.23, and cells where the reference rule serves more."""
    cells: Dict[tuple, Dict[str, int]] = {}
    for r in rows:
        cells.setdefault(_cell_key(r), {})[r["policy"]] = r["requests"]
    out: Dict[str, Dict[str, int]] = {}
    for key, c in cells.items():
        t = out.setdefault(key[4], {"cells": 0, "series_best_or_tied": 0, "series_ge_upstream": 0,
                                    "reference_ahead": 0})
        t["cells"] += 1
        t["series_best_or_tied"] += int(c["series"] >= max(c.values()))
        t["series_ge_upstream"] += int(c["series"] >= c["upstream"])
        t["reference_ahead"] += int(c["reference"] > c["series"])
    return out


def _markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any],
              attribution: Optional[List[Dict[str, Any]]] = None) -> str:
    cells: Dict[tuple, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(_cell_key(r), {})[r["policy"]] = r
    out = ["# Gemma-4 KV-pool capacity (CPU planner)\n"]
    out.append(
        f"Generated {meta['date']} at commit {meta['commit']} by "
        "`benchmark/gemma4/pool_capacity.py` on CPU with sglang "
        f"{meta['sglang']} (patched tree); no GPU, no weights. Geometry configs: "
        f"{', '.join(meta['config_sources'])}.\n"
    )
    out.append("## Model of the budget and of capacity\n")
    out.extend(f"- {line}" for line in meta["model"])
    out.append("")
    counts = tally(rows)
    out.append("## Summary\n")
    out.append("| declared | cells | series best or tied | series >= sglang 0.5.23 | "
               "reference rule ahead of the series |")
    out.append("|---|---|---|---|---|")
    for d in DECLARED:
        if d in counts:
            t = counts[d]
            out.append(f"| {d} | {t['cells']} | {t['series_best_or_tied']} | {t['series_ge_upstream']} | "
                       f"{t['reference_ahead']} |")
    out.append("")
    gpus = list(GPUS)
    for d in DECLARED:
        if d not in counts:
            continue
        out.append(f"## Concurrent requests, declared: {d} (upstream / reference / series)\n")
        out.append("**Bold** = best; ties are all bold.\n")
        out.append("| variant | workload | MTP | " + " | ".join(gpus) + " |")
        out.append("|" + "---|" * (3 + len(gpus)))
        for variant in [VARIANT_NAMES[v] for v in VARIANTS]:
            for workload in WORKLOADS:
                for mtp in (False, True):
                    parts = []
                    for gpu in gpus:
                        c = cells.get((variant, gpu, workload, mtp, d))
                        if not c:
                            parts.append("n/a")
                            continue
                        vals = [c[p]["requests"] for p in POLICIES]
                        parts.append(" / ".join(f"**{v}**" if v == max(vals) else str(v) for v in vals))
                    if any(p != "n/a" for p in parts):
                        out.append(f"| {variant} | {workload} | {'on' if mtp else 'off'} | "
                                   + " | ".join(parts) + " |")
        out.append("")
    if attribution:
        out.extend(_attribution_md(rows, attribution))
    out.append("## Pool sizes per cell\n")
    out.append(
        "| variant | GPU | workload | MTP | declared | KV budget GiB | policy | ratio | full tokens | "
        "SWA tokens | full/SWA layers in pool | draft rows | requests | bound by |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        out.append(
            f"| {r['variant']} | {r['gpu']} | {r['workload']} | {'on' if r['mtp'] else 'off'} | "
            f"{r['declared']} | {r['kv_budget_gib']:.2f} | {r['policy']} | {r['ratio']:.3f} | "
            f"{r['full_tokens']} | {r['swa_tokens']} | "
            f"{r['full_layers_in_pool']}/{r['swa_layers_in_pool']} | "
            f"{r['draft_full_rows']} | {r['requests']} | {r['binding']} |"
        )
    out.append("")
    return "\n".join(out)


def _chart(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [VARIANT_NAMES[v] for v in VARIANTS]
    gpus = list(GPUS)
    fig, axes = plt.subplots(len(variants), 2, figsize=(16, 3.2 * len(variants)), squeeze=False)
    colors = {"upstream": "#9e9e9e", "reference": "#ef8a17", "series": "#1f6fb2"}
    for i, variant in enumerate(variants):
        for j, mtp in enumerate((False, True)):
            ax = axes[i][j]
            labels = []
            xs = []
            x = 0
            for gpu in gpus:
                for workload in WORKLOADS:
                    labels.append(f"{gpu.split('-')[0]}\n{workload.split()[0]}")
                    xs.append(x)
                    x += 1
            width = 0.27
            for k, policy in enumerate(POLICIES):
                vals = []
                for gpu in gpus:
                    for workload in WORKLOADS:
                        match = [
                            r
                            for r in rows
                            if r["variant"] == variant
                            and r["gpu"] == gpu
                            and r["workload"] == workload
                            and r["mtp"] == mtp
                            and r["policy"] == policy
                        ]
                        vals.append(match[0]["requests"] if match else 0)
                ax.bar(
                    [xx + (k - 1) * width for xx in xs],
                    vals,
                    width,
                    label=policy,
                    color=colors[policy],
                )
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_yscale("linear" if mtp else "log")
            ax.set_title(f"{variant}, MTP {'on' if mtp else 'off'}", fontsize=10)
            ax.set_ylabel("concurrent requests")
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(
        "Gemma-4: requests that fit without KV eviction (CPU planner, sglang configurator)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs",
        action="append",
        default=None,
        help="directory with <variant>/config.json and <variant>-assistant/config.json "
        "(repeatable; searched in order)",
    )
    parser.add_argument("--out", default=os.path.join(REPO, "benchmark", "gemma4", "results"))
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--gpus", nargs="+", default=list(GPUS), choices=list(GPUS))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--declared", nargs="+", default=DECLARED, choices=DECLARED)
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--name", default="pool_capacity", help="output file stem")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("sglang", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    roots = ns.configs or [
        os.path.join(REPO, "benchmark", "gemma4", "configs"),
        os.path.join(REPO, "benchmark", "gemma4", "pool_geometries"),
    ]
    os.environ.pop(EXPECTED_ENV, None)
    import sglang

    t0 = time.time()
    rows: List[Dict[str, Any]] = []
    attribution: List[Dict[str, Any]] = []
    sources = set()
    for variant in ns.variants:
        vdir = _find_config_dir(roots, variant, assistant=False)
        adir = _find_config_dir(roots, variant, assistant=True)
        if vdir is None:
            raise SystemExit(f"no config.json for {variant} under {roots}")
        sources.add(os.path.relpath(os.path.dirname(vdir), REPO))
        if adir:
            sources.add(os.path.relpath(os.path.dirname(adir), REPO))
        for gpu in ns.gpus:
            for workload in ns.workloads:
                for mtp in (False, True):
                    if mtp and adir is None:
                        continue
                    for declared in ns.declared:
                        policies = list(POLICIES)
                        if workload == ns.workloads[0] and declared == ns.declared[0]:
                            policies += ATTRIBUTION
                        for policy in policies:
                            row = plan_cell(variant_dir=vdir, assistant_dir=adir, gpu=gpu,
                                            workload=workload, mtp=mtp, policy=policy, declared=declared)
                            (rows if policy in POLICIES else attribution).append(row)
                            print(
                                f"{row['variant']:8s} {gpu:11s} {workload:20s} mtp={'on ' if mtp else 'off'} "
                                f"{declared:16s} {policy:9s} r={row['ratio']:.3f} "
                                f"full={row['full_tokens']:>8d} swa={row['swa_tokens']:>8d} "
                                f"n={row['requests']:>5d} ({row['binding']})",
                                flush=True,
                            )
    meta = {
        "date": stamp.utc_now(),
        "commit": stamp.commit(),
        "sglang": getattr(sglang, "__version__", "?"),
        "device": "CPU only (planner); GPU sizes modelled",
        "config_sources": sorted(sources),
        "gpus_mib": {g: GPUS[g]["mib"] for g in GPUS},
        "seconds": round(time.time() - t0, 1),
        "tally": tally(rows),
        "model": [
            "Card sizes (MiB): "
            + ", ".join(f"{g} {GPUS[g]['mib']}" for g in GPUS)
            + "; sglang resolves its own defaults for that card (mem_fraction_static, "
            "chunked_prefill_size, attention backend and page size; SM90 for H100/H200, SM100 for B200).",
            "KV budget (the engine measures it; the planner estimates it): (card - 1 GiB CUDA context) x "
            "mem_fraction_static - weights - 100 MB multimodal cache, as "
            "KVCacheConfigurator._profile_available_bytes computes it (benchmark/gemma4/kv_budget.py). "
            "TP=1, bf16 weights and KV.",
            "Weights = parameter count from the config (text stack with tied embeddings, per-layer "
            "embeddings, MoE experts, vision/audio towers) x 2 bytes, plus the assistant's when MTP is on.",
            "Pools: sglang's KVCacheConfigurator.config_from_budget(budget) with the resolved arguments "
            "(the series' Gemma-4 configurator for the series; HybridSWAPoolConfigurator at the fixed ratio "
            "for the others), the layer lists of resolve_layer_indices and the draft rows of "
            "resolve_spec_aux_hidden_state_config.",
            "A request of the workload holds prompt+output rows in the full pool and, in the SWA pool, "
            "min(length + page, w + tail): w = sglang's compute_swa_request_cap per request (window + "
            "SGLANG_SWA_EVICTION_INTERVAL (128) x draft tokens + page + decode allocation), tail = the "
            "window of its cached prefix the radix cache keeps locked (window + page); the prefill chunks "
            "in flight hold compute_swa_request_cap's chunk term (gemma4_pool_sizing.SplitModel).",
            "Concurrent requests = min(sglang's max_running_requests for that full pool (48 with FROZEN_KV "
            "MTP), full rows / length, SWA rows / SWA per request), the same model for every policy.",
            "MTP = FROZEN_KV MTP with the Gemma-4 assistant, 3 steps, topk 1, 4 draft tokens.",
            "declared: expected = SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS set to the workload's length; "
            "context=workload = --context-length set to it; context 131072 = --context-length 131072; "
            "model default = nothing declared (the model's own context length).",
            "upstream/reference use 0.5.23's pool accounting (the series' two pool fixes switched back to "
            "upstream behaviour in-process); series uses the patched engine as is.",
        ],
    }
    os.makedirs(ns.out, exist_ok=True)
    keep = ("variant", "gpu", "workload", "mtp", "policy", "declared", "request_tokens",
            "declared_context_tokens", "declared_expected_tokens", "context_len", "ratio", "kv_budget_gib",
            "full_tokens", "swa_tokens", "max_running_requests", "requests", "binding", "full_layers_in_pool",
            "swa_layers_in_pool", "draft_full_rows", "full_cell_bytes", "swa_cell_bytes", "page_size",
            "chunked_prefill_size", "mem_fraction_static", "policy_log")
    with open(os.path.join(ns.out, f"{ns.name}.json"), "w") as f:
        json.dump(
            {
                "meta": meta,
                "rows": [{k: r.get(k) for k in keep} for r in rows],
                "pool_fix_attribution": [{k: r.get(k) for k in keep} for r in attribution],
            },
            f,
            indent=1,
        )
        f.write("\n")
    with open(os.path.join(ns.out, f"{ns.name}.md"), "w") as f:
        f.write(_markdown(rows, meta, attribution))
    if not ns.no_chart:
        _chart([r for r in rows if r["declared"] == ns.declared[0]], os.path.join(ns.out, f"{ns.name}.png"))
    print(
        f"wrote {ns.out}/{ns.name}.{{json,md{',png' if not ns.no_chart else ''}}} in {meta['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
