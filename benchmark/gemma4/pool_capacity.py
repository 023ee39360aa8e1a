"""Gemma-4 KV-pool capacity planner (CPU only: no GPU, no weights).

For each Gemma-4 variant, GPU, workload and MTP on/off it resolves sglang's
own ServerArgs as on that GPU, builds sglang's KVCacheConfigurator for the
model geometry and sizes the pools with ``config_from_budget``; then it counts
how many requests of the workload run at once without evicting any KV. Three
split policies are compared on the same budget:

* upstream: sglang 0.5.23 as released (swa_full_tokens_ratio 0.8, draft rows
  reserved for the FROZEN_KV assistant, a buffer for every KV-shared layer);
* reference: the reference series' rule (0.15 when the model is MoE, else
  0.8), on the same 0.5.23 pool accounting;
* series: this series (the ratio policy of gemma4_pool_sizing plus the
  no-phantom-row and no-shared-layer-buffer pool fixes).

Needs the patched engine (``python -m pytest``-style import of ``sglang`` with
the series applied). Run from the repository root:

    python benchmark/gemma4/pool_capacity.py --out benchmark/gemma4/results

Writes pool_capacity.json, pool_capacity.md and pool_capacity.png there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
MTP_ARGS = [
    "--speculative-algorithm",
    "NEXTN",
    "--speculative-num-steps",
    "3",
    "--speculative-eagle-topk",
    "1",
    "--speculative-num-draft-tokens",
    "4",
]

log = logging.getLogger("pool_capacity")


def _find_config_dir(roots: List[str], variant: str, assistant: bool) -> Optional[str]:
    names = [f"{variant}-assistant", os.path.join(variant, "assistant")] if assistant else [variant]
    for root in roots:
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(os.path.join(path, "config.json")):
                return path
    return None


def _git_commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], text=True
        ).strip()
    except Exception:
        return "unknown"


@contextlib.contextmanager
def _gpu_capacity(mib: float):
    """Make sglang's resolution see a card of ``mib`` MiB."""
    import sglang.srt.arg_groups.memory_hook as memory_hook
    import sglang.srt.utils.common as common

    patched = [(common, "get_device_memory_capacity")]
    if hasattr(memory_hook, "get_device_memory_capacity"):
        patched.append((memory_hook, "get_device_memory_capacity"))
    try:
        import sglang.srt.arg_groups.kv_shard_hook as kv_shard_hook

        if hasattr(kv_shard_hook, "get_device_memory_capacity"):
            patched.append((kv_shard_hook, "get_device_memory_capacity"))
    except ImportError:
        pass
    saved = [(m, n, getattr(m, n)) for m, n in patched]
    for m, n in patched:
        setattr(m, n, lambda *a, **k: mib)
    try:
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


# Pool accounting per policy: (series draft-row fix on, series shared-layer fix on).
LAYOUTS = {
    "upstream": (False, False),
    "reference": (False, False),
    "series": (True, True),
    "0.8 + no draft rows": (True, False),
    "0.8 + no shared buffers": (False, True),
    "0.8 + both pool fixes": (True, True),
    "series, no declared length": (True, True),
}
UNDECLARED = "series, no declared length"
ROBUSTNESS_SCALES = (0.9, 1.1)
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


def _max_concurrent(
    *,
    full_tokens: int,
    swa_tokens: int,
    request_tokens: int,
    cap: int,
    page_size: int,
    window: int,
    attn_dp_size: int,
) -> Dict[str, Any]:
    """Largest n <= cap with n requests' full rows and SWA residency in the pools."""
    from sglang.srt.model_executor.pool_configurator import compute_swa_request_cap

    def swa_need(n: int) -> int:
        return compute_swa_request_cap(
            page_size=page_size,
            window=window,
            attn_dp_size=attn_dp_size,
            max_running_requests=n,
        )

    full_bound = full_tokens // request_tokens
    lo, hi = 0, min(cap, full_bound)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if swa_need(mid) <= swa_tokens:
            lo = mid
        else:
            hi = mid - 1
    n = lo
    if n >= cap:
        binding = "request cap"
    elif n >= full_bound:
        binding = "full pool"
    else:
        binding = "SWA pool"
    return {"requests": n, "binding": binding, "full_bound": full_bound}



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
    }
    row.update(pool)
    return row


def plan_cell(
    *,
    variant_dir: str,
    assistant_dir: Optional[str],
    gpu: str,
    workload: str,
    mtp: bool,
    policy: str,
    budget_scale: float = 1.0,
) -> Dict[str, Any]:
    """One cell. ``budget_scale`` sizes the pools from a budget off by that factor
    from the estimate the policies see (the measured budget of a real GPU differs)."""
    import torch

    from sglang.srt import runtime_context as rc
    from sglang.srt.arg_groups.model_override_base import model_config_of, resolved_view
    from sglang.srt.arg_groups.overrides import resolution_result
    from sglang.srt.mem_cache import gemma4_pool_sizing as sizing
    from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator
    from sglang.srt.model_executor.model_runner_components.layer_setup import (
        resolve_layer_indices,
    )
    from sglang.srt.model_executor.model_runner_components.spec_aux_hidden_state import (
        resolve_spec_aux_hidden_state_config,
    )
    from sglang.srt.model_executor.pool_configurator import create_memory_pool_configurator
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    prompt, output = WORKLOADS[workload]
    request_tokens = prompt + output
    args = [
        "--model-path",
        variant_dir,
        "--device",
        "cuda",
        "--skip-tokenizer-init",
        "--load-format",
        "dummy",
    ]
    if policy != UNDECLARED:
        args += ["--context-length", str(request_tokens)]
    if mtp:
        if assistant_dir is None:
            raise ValueError(f"no assistant config for {variant_dir}")
        args += MTP_ARGS + ["--speculative-draft-model-path", assistant_dir]
    hf_probe = None
    if policy not in ("series", UNDECLARED):
        if policy != "reference":
            ratio = sizing.UPSTREAM_DEFAULT_RATIO
        else:
            from sglang.srt.utils.hf_transformers_utils import get_config

            hf_probe = get_config(variant_dir, trust_remote_code=False)
            ratio = _reference_ratio(hf_probe)
        args += ["--swa-full-tokens-ratio", str(ratio)]
    layout = _pool_layout(*LAYOUTS[policy])
    spec = GPUS[gpu]
    reasons = _Capture()
    sizing_log = logging.getLogger(sizing.__name__)
    sizing_log.addHandler(reasons)
    sizing_log.setLevel(logging.INFO)
    sizing._LOGGED.clear()
    with layout, _gpu_capacity(spec["mib"]), rc.override_platform(**spec["platform"]):
        try:
            server_args = prepare_server_args(args)
            server_args.resolve_once()
        finally:
            sizing_log.removeHandler(reasons)
        rc.publish(server_args, role="test")
        view = resolved_view(server_args)
        model_config = model_config_of(server_args)
        hf_config = model_config.hf_config
        algo = SpeculativeAlgorithm.from_string(view.speculative_algorithm)
        draft_weight_bytes = 0
        if mtp:
            from sglang.srt.utils.hf_transformers_utils import get_config

            draft_weight_bytes = sizing.estimate_weight_bytes(
                get_config(assistant_dir, trust_remote_code=False)
            )
        budget = sizing.estimate_kv_budget_from_args(
            view,
            hf_config,
            is_multimodal=bool(model_config.is_multimodal),
            draft_weight_bytes=draft_weight_bytes,
        )
        base = {
            "variant": _variant_name(variant_dir),
            "gpu": gpu,
            "workload": workload,
            "mtp": mtp,
            "policy": policy,
            "ratio": float(resolution_result(server_args, "swa_full_tokens_ratio")),
            "mem_fraction_static": float(view.mem_fraction_static),
            "chunked_prefill_size": int(view.chunked_prefill_size),
            "page_size": int(view.page_size),
            "request_tokens": request_tokens,
            "policy_log": reasons.messages,
        }
        if budget is not None:
            budget = int(budget * budget_scale)
        base["budget_scale"] = budget_scale
        if budget is None:
            return _no_requests(base, 0.0, "no KV budget (weights exceed the static fraction)")
        layer_info = resolve_layer_indices(
            model=None, model_config=model_config, is_draft_worker=False
        )
        aux = resolve_spec_aux_hidden_state_config(
            server_args=server_args,
            model_config=model_config,
            spec_algorithm=algo,
            is_draft_worker=False,
        )
        window = int(sizing.text_config_of(hf_config).sliding_window) - 1
        page_size = int(view.page_size)
        kvc = KVCacheConfigurator(
            device="cuda",
            gpu_id=0,
            attn_dp_size=1,
            pp_size=1,
            pp_group=None,
            model=None,
            model_config=model_config,
            server_args=server_args,
            kv_cache_dtype=torch.bfloat16,
            kv_cache_dtype_str="auto",
            model_dtype=torch.bfloat16,
            page_size=page_size,
            sliding_window_size=window,
            spec_algorithm=algo,
            is_draft_worker=False,
            post_capture_kv_active=False,
            spec_aux_config=aux,
            is_hybrid_swa=True,
            is_hybrid_swa_compress=model_config.is_hybrid_swa_compress,
            use_mla_backend=False,
            layer_info=layer_info,
            forward_stream=None,
            req_to_token_pool=None,
            token_to_kv_pool_allocator=None,
            memory_pool_config=None,
        )
        configurator = create_memory_pool_configurator(kvc)
        try:
            config = kvc.config_from_budget(budget)
        except ValueError as exc:  # sglang refuses to start with these pools
            return _no_requests(
                base,
                budget / (1 << 30),
                f"engine refuses: {str(exc).split(':')[0]}",
                full_layers_in_pool=len(layer_info.full_attention_layer_ids),
                swa_layers_in_pool=len(layer_info.swa_attention_layer_ids),
                draft_full_rows=int(configurator._draft_full_layers_num),
                full_cell_bytes=int(configurator._full_cell_bytes()),
                swa_cell_bytes=int(configurator._swa_cell_bytes()),
            )
        full_tokens = int(config.full_max_total_num_tokens)
        swa_tokens = int(config.swa_max_total_num_tokens)
        cap = int(kvc.resolve_max_num_reqs(full_tokens))
        fit = _max_concurrent(
            full_tokens=full_tokens,
            swa_tokens=swa_tokens,
            request_tokens=request_tokens,
            cap=cap,
            page_size=page_size,
            window=window,
            attn_dp_size=1,
        )
        return {
            **base,
            "kv_budget_gib": budget / (1 << 30),
            "max_running_requests": cap,
            "full_layers_in_pool": len(layer_info.full_attention_layer_ids),
            "swa_layers_in_pool": len(layer_info.swa_attention_layer_ids),
            "draft_full_rows": int(configurator._draft_full_layers_num),
            "full_cell_bytes": int(configurator._full_cell_bytes()),
            "swa_cell_bytes": int(configurator._swa_cell_bytes()),
            "full_tokens": full_tokens,
            "swa_tokens": swa_tokens,
            **fit,
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


def _undeclared_md(rows: List[Dict[str, Any]], undeclared: List[Dict[str, Any]]) -> List[str]:
    out = ["## The series when the deployment declares no request length\n"]
    out.append(
        "Same cells, launched without --context-length or SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS: "
        "the series keeps 0.8 unless a request cap (FROZEN_KV MTP's 48) sizes the SWA pool. "
        "Cells: requests for upstream / series without a declared length (ratio used).\n"
    )
    gpus = list(GPUS)
    out.append("| variant | workload | MTP | " + " | ".join(gpus) + " |")
    out.append("|" + "---|" * (3 + len(gpus)))
    by = {(r["variant"], r["gpu"], r["workload"], r["mtp"]): r for r in undeclared}
    up = {
        (r["variant"], r["gpu"], r["workload"], r["mtp"]): r
        for r in rows
        if r["policy"] == "upstream"
    }
    for variant in [VARIANT_NAMES[v] for v in VARIANTS]:
        for workload in WORKLOADS:
            for mtp in (False, True):
                parts = []
                for gpu in gpus:
                    k = (variant, gpu, workload, mtp)
                    if k not in by or k not in up:
                        parts.append("n/a")
                        continue
                    parts.append(
                        f"{up[k]['requests']} / {by[k]['requests']} (r={by[k]['ratio']:.3f})"
                    )
                if any(p != "n/a" for p in parts):
                    out.append(
                        f"| {variant} | {workload} | {'on' if mtp else 'off'} | "
                        + " | ".join(parts)
                        + " |"
                    )
    out.append("")
    return out


def _robustness_md(robustness: List[Dict[str, Any]]) -> List[str]:
    out = ["## When the real budget differs from the estimate\n"]
    out.append(
        "The series sizes its split for the budget estimated while the arguments resolve; "
        "the engine then measures the real one. Here every policy keeps its ratio and the "
        "pools are sized from a budget "
        + " / ".join(f"{(s - 1) * 100:+.0f}%" for s in ROBUSTNESS_SCALES)
        + " off the estimate.\n"
    )
    out.append(
        "| budget vs estimate | cells | series best or tied | worst series shortfall (requests) |"
    )
    out.append("|---|---|---|---|")
    for scale in ROBUSTNESS_SCALES:
        cells: Dict[tuple, Dict[str, int]] = {}
        for r in robustness:
            if r["budget_scale"] != scale:
                continue
            cells.setdefault((r["variant"], r["gpu"], r["workload"], r["mtp"]), {})[r["policy"]] = (
                r["requests"]
            )
        best = sum(1 for c in cells.values() if c["series"] >= max(c.values()))
        worst = max((max(c.values()) - c["series"] for c in cells.values()), default=0)
        worst_cells = [
            f"{k[0]} {k[1]} {k[2]} MTP {'on' if k[3] else 'off'}: "
            f"{c['series']} vs {max(c.values())}"
            for k, c in cells.items()
            if c["series"] < max(c.values())
        ]
        out.append(
            f"| {(scale - 1) * 100:+.0f}% | {len(cells)} | {best} | {worst}"
            + (f" ({'; '.join(worst_cells[:4])})" if worst_cells else "")
            + " |"
        )
    out.append("")
    return out


def _markdown(
    rows: List[Dict[str, Any]],
    meta: Dict[str, Any],
    attribution: Optional[List[Dict[str, Any]]] = None,
    robustness: Optional[List[Dict[str, Any]]] = None,
    undeclared: Optional[List[Dict[str, Any]]] = None,
) -> str:
    def key(r):
        return (r["variant"], r["gpu"], r["workload"], r["mtp"])

    cells: Dict[tuple, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(key(r), {})[r["policy"]] = r
    out = []
    out.append("# Gemma-4 KV-pool capacity (CPU planner)\n")
    out.append(
        f"Generated {meta['date']} at commit {meta['commit']} by "
        "`benchmark/gemma4/pool_capacity.py` on CPU with sglang "
        f"{meta['sglang']} (patched tree); no GPU, no weights. Geometry configs: "
        f"{', '.join(meta['config_sources'])}.\n"
    )
    out.append("## Model of the budget and of capacity\n")
    for line in meta["model"]:
        out.append(f"- {line}")
    out.append("")
    out.append("## Concurrent requests without eviction (upstream / reference / series)\n")
    out.append(
        "Each cell: requests that fit at once under sglang 0.5.23 (ratio 0.8), the "
        "reference rule (0.15 if MoE), and this series. **Bold** = best; ties are all bold.\n"
    )
    gpus = list(GPUS)
    header = "| variant | workload | MTP | " + " | ".join(gpus) + " |"
    out.append(header)
    out.append("|" + "---|" * (3 + len(gpus)))
    wins = {"series_best_or_tied": 0, "cells": 0}
    for variant in [VARIANT_NAMES[v] for v in VARIANTS]:
        for workload in WORKLOADS:
            for mtp in (False, True):
                parts = []
                for gpu in gpus:
                    c = cells.get((variant, gpu, workload, mtp))
                    if not c:
                        parts.append("n/a")
                        continue
                    vals = [c[p]["requests"] for p in POLICIES]
                    best = max(vals)
                    wins["cells"] += 1
                    if c["series"]["requests"] == best:
                        wins["series_best_or_tied"] += 1
                    parts.append(" / ".join(f"**{v}**" if v == best else str(v) for v in vals))
                out.append(
                    f"| {variant} | {workload} | {'on' if mtp else 'off'} | "
                    + " | ".join(parts)
                    + " |"
                )
    out.append("")
    out.append(
        f"The series is best or tied in {wins['series_best_or_tied']} of {wins['cells']} cells.\n"
    )
    if attribution:
        out.extend(_attribution_md(rows, attribution))
    if undeclared:
        out.extend(_undeclared_md(rows, undeclared))
    if robustness:
        out.extend(_robustness_md(robustness))
    out.append("## Pool sizes per cell\n")
    out.append(
        "| variant | GPU | workload | MTP | KV budget GiB | policy | ratio | full tokens | "
        "SWA tokens | full/SWA layers in pool | draft rows | requests | bound by |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        out.append(
            f"| {r['variant']} | {r['gpu']} | {r['workload']} | {'on' if r['mtp'] else 'off'} | "
            f"{r['kv_budget_gib']:.2f} | {r['policy']} | {r['ratio']:.3f} | {r['full_tokens']} | "
            f"{r['swa_tokens']} | {r['full_layers_in_pool']}/{r['swa_layers_in_pool']} | "
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
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--no-robustness", action="store_true", help="skip the +-10%% budget-error pass"
    )
    parser.add_argument("--name", default="pool_capacity", help="output file stem")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("sglang", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    roots = ns.configs or [
        os.path.join(REPO, "benchmark", "gemma4", "configs"),
        os.path.join(REPO, "benchmark", "gemma4", "pool_geometries"),
    ]
    os.environ.pop("SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS", None)
    import sglang

    t0 = time.time()
    rows: List[Dict[str, Any]] = []
    attribution: List[Dict[str, Any]] = []
    undeclared: List[Dict[str, Any]] = []
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
                    extra = [UNDECLARED]
                    extra += ATTRIBUTION if workload == ns.workloads[0] else []
                    for policy in POLICIES + extra:
                        row = plan_cell(
                            variant_dir=vdir,
                            assistant_dir=adir,
                            gpu=gpu,
                            workload=workload,
                            mtp=mtp,
                            policy=policy,
                        )
                        if policy in POLICIES:
                            rows.append(row)
                        elif policy == UNDECLARED:
                            undeclared.append(row)
                        else:
                            attribution.append(row)
                        print(
                            f"{row['variant']:8s} {gpu:11s} {workload:20s} mtp={'on ' if mtp else 'off'} "
                            f"{policy:9s} r={row['ratio']:.3f} full={row['full_tokens']:>8d} "
                            f"swa={row['swa_tokens']:>8d} n={row['requests']:>5d} ({row['binding']})",
                            flush=True,
                        )
    # Robustness: the policies size for the estimated budget; the engine measures its own.
    robustness: List[Dict[str, Any]] = []
    if not ns.no_robustness:
        for variant in ns.variants:
            vdir = _find_config_dir(roots, variant, assistant=False)
            adir = _find_config_dir(roots, variant, assistant=True)
            for gpu in ns.gpus:
                for workload in ns.workloads:
                    for mtp in (False, True):
                        if mtp and adir is None:
                            continue
                        for scale in ROBUSTNESS_SCALES:
                            for policy in POLICIES:
                                robustness.append(
                                    plan_cell(
                                        variant_dir=vdir,
                                        assistant_dir=adir,
                                        gpu=gpu,
                                        workload=workload,
                                        mtp=mtp,
                                        policy=policy,
                                        budget_scale=scale,
                                    )
                                )
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "sglang": getattr(sglang, "__version__", "?"),
        "device": "CPU only (planner); GPU sizes modelled",
        "config_sources": sorted(sources),
        "gpus_mib": {g: GPUS[g]["mib"] for g in GPUS},
        "seconds": round(time.time() - t0, 1),
        "model": [
            "Card sizes (MiB): "
            + ", ".join(f"{g} {GPUS[g]['mib']}" for g in GPUS)
            + "; sglang resolves its own defaults for that card (mem_fraction_static, "
            "chunked_prefill_size, attention backend and page size; SM90 for H100/H200, SM100 for B200).",
            "KV budget = (card - 1 GiB CUDA context) x mem_fraction_static - weights - 100 MB "
            "multimodal cache, as KVCacheConfigurator._profile_available_bytes computes it "
            "(gemma4_pool_sizing.estimate_kv_budget_from_args). TP=1, bf16 weights and KV.",
            "Weights = parameter count from the config (text stack with tied embeddings, "
            "per-layer embeddings, MoE experts, vision/audio towers) x 2 bytes, plus the "
            "assistant's when MTP is on (gemma4_pool_sizing.estimate_weight_bytes).",
            "Pools: sglang's KVCacheConfigurator.config_from_budget with the resolved "
            "arguments (HybridSWAPoolConfigurator), the layer lists of resolve_layer_indices "
            "and the draft rows of resolve_spec_aux_hidden_state_config.",
            "A request of the workload holds prompt+output rows in the full pool and, in "
            "the SWA pool, sglang's own worst case compute_swa_request_cap(n): per request "
            "window + SGLANG_SWA_EVICTION_INTERVAL (128) x draft tokens + page + decode "
            "allocation, plus the prefill chunks in flight.",
            "Concurrent requests = the largest n up to sglang's max_running_requests "
            "(48 with FROZEN_KV MTP) whose full rows and SWA residency both fit.",
            "MTP = FROZEN_KV MTP with the Gemma-4 assistant, 3 steps, topk 1, 4 draft tokens.",
            "Every deployment declares its request length with --context-length = "
            "prompt + output (the series sizes the split for it; the other policies ignore it).",
            "upstream/reference use 0.5.23's pool accounting (the series' two pool fixes "
            "switched back to upstream behaviour in-process); series uses the patched engine as is.",
        ],
    }
    os.makedirs(ns.out, exist_ok=True)
    with open(os.path.join(ns.out, f"{ns.name}.json"), "w") as f:
        keep = (
            "variant",
            "gpu",
            "workload",
            "mtp",
            "policy",
            "budget_scale",
            "ratio",
            "kv_budget_gib",
            "full_tokens",
            "swa_tokens",
            "requests",
            "binding",
        )
        json.dump(
            {
                "meta": meta,
                "rows": rows,
                "pool_fix_attribution": attribution,
                "series_no_declared_length": undeclared,
                "budget_robustness": [{k: r.get(k) for k in keep} for r in robustness],
            },
            f,
            indent=1,
        )
    with open(os.path.join(ns.out, f"{ns.name}.md"), "w") as f:
        f.write(_markdown(rows, meta, attribution, robustness, undeclared))
    if not ns.no_chart:
        _chart(rows, os.path.join(ns.out, f"{ns.name}.png"))
    print(
        f"wrote {ns.out}/{ns.name}.{{json,md{',png' if not ns.no_chart else ''}}} in {meta['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
