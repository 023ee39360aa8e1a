"""KV-pool sizing for Gemma-4: the split between the full and the SWA pool.

Gemma-4 text layers alternate sliding-window (SWA) and full attention layers
(5:1 for the 26B-A4B, 31B and E4B checkpoints, 4:1 for E2B). SGLang keeps two
token pools: the full pool (one row per full layer) and the SWA pool (one row
per SWA layer), and sizes them from one number, ``swa_full_tokens_ratio``
(SWA tokens / full tokens, 0.8 by default).

A running request of ``T`` tokens holds ``T`` rows of the full pool but only
its window tail in the SWA pool: ``window + eviction_interval * draft_tokens +
page + decode_alloc`` tokens (the SWA residency that
``compute_swa_request_cap`` uses), and the prefill chunks in flight hold up to
``chunks * chunked_prefill_size`` more. So the split that serves the most
concurrent requests without evicting any depends on the request length, the
window, the draft width and the budget, not on a constant:

    N   = (budget - C0 * swa_cell) / (T * full_cell + w * swa_cell)
    r   = (w * N + C0) / (N * T)

with ``full_cell``/``swa_cell`` the bytes one token takes on all layers of a
kind, ``w`` the SWA residency of one request and ``C0`` the chunk reservation.
Both pools then run out at the same concurrency ``N``.

The request length comes from ``SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS`` or an
explicit ``--context-length``; with neither, sglang's default is kept. The
budget is estimated while the arguments resolve (card size from
``get_device_memory_capacity``, ``mem_fraction_static``, the checkpoint's
safetensors index or a parameter count from the config), with the same model
as ``KVCacheConfigurator._profile_available_bytes``. Layer counts and draft rows
come from ``gemma4_kv_layout``, the functions the pool code itself calls.

Everything here is plain Python over configs; no GPU is needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from sglang.srt.mem_cache import gemma4_kv_layout
from sglang.srt.mem_cache.gemma4_kv_layout import (
    GEMMA4_TEXT_ARCHITECTURES,
    layer_types_of,
    text_config_of,
)

logger = logging.getLogger(__name__)

GEMMA4_ASSISTANT_ARCHITECTURES = (
    "Gemma4AssistantForCausalLM",
    "Gemma4UnifiedAssistantForCausalLM",
)

# sglang's default split (the fields/schedule.py fallback).
UPSTREAM_DEFAULT_RATIO = 0.8
# The draft width sglang picks for a Gemma-4 target when none is given
# (speculative_hook._auto_choose_speculative_params: steps 3, topk 1, 4 tokens).
DEFAULT_DRAFT_TOKENS = 4
# The request cap FROZEN_KV MTP sets when --max-running-requests is unset
# (speculative_hook._handle_frozen_kv_mtp).
FROZEN_KV_MTP_DEFAULT_MAX_RUNNING_REQUESTS = 48
# Memory the CUDA context, cuBLAS/NCCL workspaces take before the weights
# load (the part of the card that `pre_model_load_memory` never sees).
CUDA_CONTEXT_BYTES = 1 << 30
# Requests assumed to share the prefill-chunk reservation when the KV budget
# cannot be estimated (no GPU visible while the arguments resolve).
FALLBACK_CONCURRENCY = 32

# SWA rows kept above the request cap's need, so that a measured KV budget up to
# 13% below the estimate still leaves every capped request its SWA rows (both
# pools scale with the budget at a fixed ratio).
CAP_HEADROOM = 1.15

EXPECTED_REQUEST_TOKENS_ENV = "SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS"


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def check_swa_full_tokens_ratio(value: Any, source: str = "swa_full_tokens_ratio") -> float:
    """Return ``value`` as a float in (0, 1], else raise ValueError naming ``source``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{source} must be a number in (0, 1], got {value!r} ({type(value).__name__})"
        )
    ratio = float(value)
    if not math.isfinite(ratio) or not 0.0 < ratio <= 1.0:
        raise ValueError(
            f"{source} must be in (0, 1] (SWA pool tokens per full pool token), got {value!r}"
        )
    return ratio


# ---------------------------------------------------------------------------
# Geometry and the split policy
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Gemma4PoolGeometry:
    """Bytes per token of each layer kind and the layer counts that own a buffer."""

    full_layers: int
    swa_layers: int
    full_bytes_per_layer: int
    swa_bytes_per_layer: int
    window: int
    draft_full_layers: int = 0

    def __post_init__(self):
        for name in (
            "full_layers",
            "swa_layers",
            "full_bytes_per_layer",
            "swa_bytes_per_layer",
            "window",
        ):
            if int(getattr(self, name)) <= 0:
                raise ValueError(
                    f"Gemma4PoolGeometry.{name} must be positive, got {getattr(self, name)!r}"
                )
        if self.draft_full_layers < 0:
            raise ValueError("draft_full_layers must be >= 0")

    @property
    def full_cell(self) -> int:
        """Bytes one full-pool token takes (target rows plus reserved draft rows)."""
        return self.full_bytes_per_layer * (self.full_layers + self.draft_full_layers)

    @property
    def swa_cell(self) -> int:
        return self.swa_bytes_per_layer * self.swa_layers


def swa_tokens_per_request(
    *,
    window: int,
    page_size: int,
    draft_tokens: int,
    eviction_interval: int,
    decode_alloc: int,
) -> int:
    """SWA rows one running request holds at most (same terms as compute_swa_request_cap)."""
    return window + max(1, eviction_interval) * max(1, draft_tokens) + page_size + decode_alloc


@dataclass(frozen=True)
class RatioChoice:
    # None: nothing to size for; sglang's default stays.
    ratio: Optional[float]
    reason: str
    expected_concurrency: Optional[float] = None


def balanced_swa_full_tokens_ratio(
    geometry: Gemma4PoolGeometry,
    *,
    request_tokens: Optional[int],
    swa_tokens_per_req: int,
    chunk_reserve_tokens: int,
    kv_budget_bytes: Optional[int],
    max_running_requests: Optional[int] = None,
    prefix_tail_tokens: int = 0,
    fallback_concurrency: int = FALLBACK_CONCURRENCY,
) -> RatioChoice:
    """The split at which the full and SWA pools run out at the same concurrency.

    ``request_tokens`` is the expected length of one request (prompt + output),
    ``swa_tokens_per_req`` its SWA residency, ``chunk_reserve_tokens`` the SWA rows
    prefill chunks hold. With a budget the concurrency follows from it; without
    one the chunk reservation is shared by ``fallback_concurrency`` requests.

    When ``max_running_requests`` caps the concurrency below what the budget
    allows (or no request length is known), the SWA pool is sized for exactly
    that many requests and everything else goes to the full pool: SWA rows past
    the cap can never be used by running requests, full rows serve longer ones.
    ``prefix_tail_tokens`` more SWA rows keep cached prefixes reusable there (the
    radix cache needs a prefix's last window in the SWA pool), as far as they fit
    without shrinking the full pool below the cap's need for known lengths.

    The ratio is None (keep sglang's default) when there is nothing to size for,
    or the budget cannot hold the sized requests at any split.
    """
    if request_tokens is not None and request_tokens <= 0:
        raise ValueError(f"expected request length must be positive, got {request_tokens}")
    if swa_tokens_per_req <= 0 or chunk_reserve_tokens < 0:
        raise ValueError("SWA residency must be positive and the chunk reserve >= 0")
    if max_running_requests is not None and max_running_requests <= 0:
        raise ValueError(f"max_running_requests must be positive, got {max_running_requests}")
    gib = 1 << 30
    per_req_swa = (
        swa_tokens_per_req if request_tokens is None else min(swa_tokens_per_req, request_tokens)
    )
    cells = f"full cell {geometry.full_cell} B/token, SWA cell {geometry.swa_cell} B/token"

    concurrency = None
    if request_tokens is not None and kv_budget_bytes is not None:
        usable = kv_budget_bytes - chunk_reserve_tokens * geometry.swa_cell
        per_req_bytes = request_tokens * geometry.full_cell + per_req_swa * geometry.swa_cell
        concurrency = usable / per_req_bytes
        if concurrency < 1:
            return RatioChoice(
                None,
                f"the KV budget ({kv_budget_bytes / gib:.2f} GiB) holds less than one "
                f"{request_tokens}-token request at any split; keeping sglang's default",
                concurrency,
            )

    capped = max_running_requests is not None and kv_budget_bytes is not None
    capped = capped and (concurrency is None or concurrency > max_running_requests)
    if capped:
        swa_tokens = (per_req_swa * max_running_requests + chunk_reserve_tokens) * CAP_HEADROOM
        tails = max(0, prefix_tail_tokens)
        if request_tokens is not None and tails:
            # Keep the full pool at the cap's need (with the same headroom).
            full_need = max_running_requests * request_tokens * CAP_HEADROOM
            spare = (kv_budget_bytes - full_need * geometry.full_cell) / geometry.swa_cell
            tails = int(max(0, min(tails, spare - swa_tokens)))
        swa_tokens += tails
        full_tokens = (kv_budget_bytes - swa_tokens * geometry.swa_cell) / geometry.full_cell
        if full_tokens < swa_tokens:
            return RatioChoice(
                None,
                f"the KV budget ({kv_budget_bytes / gib:.2f} GiB) cannot give "
                f"{max_running_requests} running requests their SWA rows and a larger full "
                "pool; keeping sglang's default",
                None,
            )
        raw = swa_tokens / full_tokens
        length = "" if request_tokens is None else f"{request_tokens}-token "
        reason = (
            f"SWA pool sized for the {max_running_requests}-request cap ({length}requests hold "
            f"{per_req_swa} SWA tokens each, +{chunk_reserve_tokens} for prefill chunks, "
            f"x{CAP_HEADROOM} headroom, +{tails} for cached prefix tails), "
            f"the rest of the KV budget {kv_budget_bytes / gib:.2f} GiB to the full pool; {cells}"
        )
        concurrency = float(max_running_requests)
    elif request_tokens is None:
        return RatioChoice(
            None,
            "no expected request length declared (set "
            f"{EXPECTED_REQUEST_TOKENS_ENV} or --context-length) and no known request cap "
            f"and budget; keeping sglang's default {UPSTREAM_DEFAULT_RATIO}",
        )
    else:
        if concurrency is None:
            concurrency = float(max(1, fallback_concurrency))
            basis = f"KV budget unknown, chunk reserve shared by {fallback_concurrency} requests"
        else:
            basis = f"KV budget {kv_budget_bytes / gib:.2f} GiB -> {concurrency:.0f} requests"
        raw = (per_req_swa * concurrency + chunk_reserve_tokens) / (concurrency * request_tokens)
        reason = (
            f"{request_tokens}-token requests hold {per_req_swa} SWA tokens each "
            f"(+{chunk_reserve_tokens} for prefill chunks); {basis}; {cells}"
        )
    # Round up to 1/1000 so rounding never leaves the SWA side short.
    ratio = max(0.001, min(1.0, math.ceil(raw * 1000.0) / 1000.0))
    return RatioChoice(ratio, reason, concurrency)


# ---------------------------------------------------------------------------
# Weight and budget estimates (used before any weight is loaded)
# ---------------------------------------------------------------------------


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _attention_shapes(text: Any) -> Dict[str, Tuple[int, int]]:
    """``{layer kind: (head_dim, kv heads)}`` of a Gemma-4 text config.

    Reads sglang's loaded config (full-attention values in ``head_dim`` /
    ``num_key_value_heads``, sliding ones in ``swa_*``) or a raw config.json
    dict (sliding values in ``head_dim`` / ``num_key_value_heads``, full ones in
    ``global_head_dim`` / ``num_global_key_value_heads``).
    """
    if _get(text, "swa_head_dim", None) is not None:
        return {
            "full_attention": (int(_get(text, "head_dim")), int(_get(text, "num_key_value_heads"))),
            "sliding_attention": (
                int(_get(text, "swa_head_dim")),
                int(_get(text, "swa_num_key_value_heads")),
            ),
        }
    if isinstance(text, dict):
        head_dim = int(text.get("head_dim", 256))
        kv = int(text["num_key_value_heads"])
        global_kv = text.get("num_global_key_value_heads")
        use_global_kv = global_kv is not None and text.get("attention_k_eq_v", True)
        return {
            "full_attention": (
                int(text.get("global_head_dim") or head_dim),
                int(global_kv) if use_global_kv else kv,
            ),
            "sliding_attention": (head_dim, kv),
        }
    raise ValueError(
        "weight estimate needs sglang's loaded Gemma-4 config (with swa_head_dim) "
        f"or a raw config.json dict, got {type(text).__name__}"
    )


def estimate_text_params(text: Any) -> int:
    """Parameter count of a Gemma-4 text stack (embeddings tied with the LM head)."""
    hidden = int(_get(text, "hidden_size"))
    vocab = int(_get(text, "vocab_size", 262144))
    layer_types = list(_get(text, "layer_types") or [])
    num_layers = int(_get(text, "num_hidden_layers", len(layer_types)))
    if len(layer_types) < num_layers:
        raise ValueError("estimate_text_params needs layer_types for every layer")
    heads = int(_get(text, "num_attention_heads"))
    shapes = _attention_shapes(text)
    k_eq_v = bool(_get(text, "attention_k_eq_v", False))
    inter = int(_get(text, "intermediate_size"))
    num_shared = int(_get(text, "num_kv_shared_layers", 0) or 0)
    double_wide = bool(_get(text, "use_double_wide_mlp", False))
    moe = bool(_get(text, "enable_moe_block", False))
    experts = int(_get(text, "num_experts", 0) or 0)
    moe_inter = int(_get(text, "moe_intermediate_size", 0) or 0)
    ple = int(_get(text, "hidden_size_per_layer_input", 0) or 0)
    ple_vocab = int(_get(text, "vocab_size_per_layer_input", 0) or 0)

    params = vocab * hidden
    first_shared = num_layers - num_shared
    for i in range(num_layers):
        full = layer_types[i] == "full_attention"
        hd, kvh = shapes[layer_types[i]]
        params += hidden * heads * hd * 2  # q, o
        params += hidden * kvh * hd * (1 if (full and k_eq_v) else 2)  # k (, v)
        layer_inter = inter * (2 if (double_wide and num_shared and i >= first_shared) else 1)
        params += 3 * hidden * layer_inter
        if moe and experts:
            params += experts * 3 * hidden * moe_inter + hidden * experts
        if ple:
            params += 2 * hidden * ple
    if ple:
        params += ple_vocab * num_layers * ple + hidden * num_layers * ple
    return params


def estimate_tower_params(tower: Any) -> int:
    """Parameter count of a vision/audio encoder (attention + MLP blocks)."""
    if tower is None:
        return 0
    hidden = int(_get(tower, "hidden_size"))
    layers = int(_get(tower, "num_hidden_layers"))
    inter = int(_get(tower, "intermediate_size", 4 * hidden) or 4 * hidden)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    # 2-D position table of the patch embedder (vision only).
    positions = int(_get(tower, "position_embedding_size", 0) or 0)
    return layers * per_layer + 2 * positions * hidden


def estimate_weight_bytes(hf_config: Any, bytes_per_param: float = 2.0) -> int:
    """Bytes of the weights sglang loads for a Gemma-4 (or assistant) config."""
    text = text_config_of(hf_config)
    params = estimate_text_params(text)
    params += estimate_tower_params(_get(hf_config, "vision_config", None))
    params += estimate_tower_params(_get(hf_config, "audio_config", None))
    backbone = _get(hf_config, "backbone_hidden_size", None)
    if backbone:  # assistant: pre/post projections between target and draft widths
        params += 3 * int(backbone) * int(_get(text, "hidden_size"))
    return int(params * bytes_per_param)


def checkpoint_weight_bytes(model_path: Optional[str]) -> Optional[int]:
    """``total_size`` from a local safetensors index, if the checkpoint has one."""
    if not model_path:
        return None
    index = os.path.join(str(model_path), "model.safetensors.index.json")
    try:
        with open(index) as f:
            total = json.load(f).get("metadata", {}).get("total_size")
    except (OSError, ValueError):
        return None
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


def estimate_kv_budget_bytes(
    *,
    gpu_memory_bytes: int,
    mem_fraction_static: float,
    weight_bytes: int,
    mm_reservation_bytes: int = 0,
    context_bytes: int = CUDA_CONTEXT_BYTES,
) -> int:
    """KV budget as KVCacheConfigurator._profile_available_bytes computes it.

    free after weights - pre_model_load_memory * (1 - mem_fraction_static)
    - multimodal reservation, with pre_model_load_memory = card - context and
    free after weights = pre_model_load_memory - weights.
    """
    pre_load = gpu_memory_bytes - context_bytes
    return int(pre_load * mem_fraction_static - weight_bytes - mm_reservation_bytes)


def mm_reservation_bytes(is_multimodal: bool) -> int:
    """The multimodal embedding cache the KV budget leaves out (SGLANG_VLM_CACHE_SIZE_MB, 100 MB)."""
    if not is_multimodal:
        return 0
    raw = os.environ.get("SGLANG_VLM_CACHE_SIZE_MB", "").strip()
    mb = int(raw) if raw.isdigit() else 100
    return mb * (1 << 20)


def estimate_kv_budget_from_args(
    cfg: Any,
    hf_config: Any,
    *,
    is_multimodal: bool,
    draft_weight_bytes: int = 0,
) -> Optional[int]:
    """KV budget of one GPU for resolved (or resolving) arguments, or None.

    None when the card size or ``mem_fraction_static`` is unknown (no GPU
    visible) or the weights alone exceed the static budget.
    """
    from sglang.srt.utils import common

    gpu_mib = common.get_device_memory_capacity(getattr(cfg, "device", None))
    mfs = getattr(cfg, "mem_fraction_static", None)
    if not gpu_mib or not mfs:
        return None
    tp = max(1, int(getattr(cfg, "tp_size", 1) or 1))
    weights = checkpoint_weight_bytes(getattr(cfg, "model_path", None))
    if weights is None:
        weights = estimate_weight_bytes(hf_config)
    budget = estimate_kv_budget_bytes(
        gpu_memory_bytes=int(gpu_mib * (1 << 20)),
        mem_fraction_static=float(mfs),
        weight_bytes=weights // tp + draft_weight_bytes,
        mm_reservation_bytes=mm_reservation_bytes(is_multimodal),
    )
    return budget if budget > 0 else None


# ---------------------------------------------------------------------------
# The model override
# ---------------------------------------------------------------------------

_LOGGED: set = set()


def _log_once(key: Any, message: str) -> None:
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    logger.info(message)


def kv_dtype_bytes(kv_cache_dtype: Optional[str], model_dtype_bytes: int = 2) -> float:
    name = (kv_cache_dtype or "auto").lower()
    if name in ("auto", "bf16", "bfloat16", "fp16", "float16", "half"):
        return model_dtype_bytes
    if "fp8" in name or "int8" in name:
        return 1
    if "fp4" in name or "int4" in name:
        return 0.5
    if name in ("fp32", "float32", "float"):
        return 4
    raise ValueError(f"unknown --kv-cache-dtype {kv_cache_dtype!r} for Gemma-4 pool sizing")


def expected_request_tokens(cfg: Any) -> Tuple[Optional[int], str]:
    """The request length the split is sized for, and where it came from.

    ``SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS`` (prompt + output tokens of a
    typical request) wins; else an explicit ``--context-length``; else none.
    """
    raw = os.environ.get(EXPECTED_REQUEST_TOKENS_ENV)
    if raw is not None and raw.strip():
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(
                f"{EXPECTED_REQUEST_TOKENS_ENV} must be a positive integer, got {raw!r}"
            ) from None
        if value <= 0:
            raise ValueError(f"{EXPECTED_REQUEST_TOKENS_ENV} must be positive, got {value}")
        return value, EXPECTED_REQUEST_TOKENS_ENV
    context_length = getattr(cfg, "context_length", None)
    if context_length is not None:
        if int(context_length) <= 0:
            raise ValueError(f"--context-length must be positive, got {context_length}")
        return int(context_length), "--context-length"
    return None, "none"


def _draft_config(cfg: Any) -> Any:
    path = getattr(cfg, "speculative_draft_model_path", None)
    if not path:
        return None
    from sglang.srt.utils.hf_transformers_utils import get_config

    return get_config(path, trust_remote_code=bool(getattr(cfg, "trust_remote_code", False)))


_TRTLLM_MHA_PAGE_SIZES = (16, 32, 64, 128)


def predicted_page_size(cfg: Any, pending: Optional[Dict[str, Any]] = None) -> int:
    """The page size resolution will settle on (it runs after model overrides).

    An explicit --page-size is kept, except that trtllm_mha (the Gemma-4 default
    on SM100) moves any other size to 64, as sglang's page-size pass does.
    """
    pending = pending or {}
    page_size = getattr(cfg, "page_size", None) or 1
    backends = {
        pending.get("attention_backend", getattr(cfg, "attention_backend", None)),
        getattr(cfg, "prefill_attention_backend", None),
        getattr(cfg, "decode_attention_backend", None),
    }
    if "trtllm_mha" in backends and page_size not in _TRTLLM_MHA_PAGE_SIZES:
        page_size = 64
    return int(page_size)


def plan_from_server_args(
    server_args: Any, hf_config: Any, pending: Optional[Dict[str, Any]] = None
) -> RatioChoice:
    """Our split for a resolving ServerArgs of a Gemma-4 target (no user ratio).

    ``pending`` holds declarations the calling provider has not returned yet
    (the attention backend), which decide the page size.
    """
    from sglang.srt.arg_groups.model_override_base import model_config_of, resolving_view
    from sglang.srt.environ import envs

    cfg = resolving_view(server_args)
    text = text_config_of(hf_config)
    layer_types = layer_types_of(text)
    model_config = model_config_of(server_args)
    tp = max(1, int(getattr(cfg, "tp_size", 1) or 1))

    request_tokens, source = expected_request_tokens(cfg)

    kv_bytes = kv_dtype_bytes(getattr(cfg, "kv_cache_dtype", "auto"))
    full_per_layer = int(
        model_config.get_num_kv_heads(tp)
        * (model_config.head_dim + model_config.v_head_dim)
        * kv_bytes
    )
    swa_per_layer = int(
        model_config.get_swa_num_kv_heads(tp)
        * (model_config.swa_head_dim + model_config.swa_v_head_dim)
        * kv_bytes
    )
    swa_ids = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
    full_ids = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    swa_ids, full_ids = gemma4_kv_layout.owning_attention_layer_ids(model_config, swa_ids, full_ids)

    spec = getattr(cfg, "speculative_algorithm", None)
    draft_tokens = 1
    draft_full_layers = 0
    draft_weight_bytes = 0
    is_frozen_kv = False
    max_running = getattr(cfg, "max_running_requests", None)
    if spec is not None:
        steps = getattr(cfg, "speculative_num_steps", None)
        draft_tokens = int(
            getattr(cfg, "speculative_num_draft_tokens", None)
            or ((steps + 1) if steps else DEFAULT_DRAFT_TOKENS)
        )
        draft = _draft_config(cfg)
        if draft is not None:
            archs = getattr(draft, "architectures", None) or []
            is_frozen_kv = any(a in GEMMA4_ASSISTANT_ARCHITECTURES for a in archs)
            draft_weight_bytes = estimate_weight_bytes(draft) // tp
            if not is_frozen_kv:
                # An EAGLE-style draft keeps its own KV at the target's geometry.
                draft_full_layers = int(getattr(text_config_of(draft), "num_hidden_layers", 0) or 0)
        if is_frozen_kv and max_running is None:
            max_running = FROZEN_KV_MTP_DEFAULT_MAX_RUNNING_REQUESTS

    page_size = predicted_page_size(cfg, pending)
    window = int(getattr(text, "sliding_window")) - 1  # sglang's exclusive window
    if spec is None:
        decode_alloc = page_size
    else:
        decode_alloc = 2 * draft_tokens
    eviction_interval = int(envs.SGLANG_SWA_EVICTION_INTERVAL.get())
    w = swa_tokens_per_request(
        window=window,
        page_size=page_size,
        draft_tokens=draft_tokens if spec is not None else 1,
        eviction_interval=eviction_interval,
        decode_alloc=decode_alloc,
    )
    # Cached prefixes the radix cache keeps reusable in the SWA pool: the user's
    # --swa-prefix-tails, else one per running request (none without a radix cache).
    prefix_tails = getattr(cfg, "swa_prefix_tails", None)
    if prefix_tails is None:
        radix = not getattr(cfg, "disable_radix_cache", False)
        prefix_tails = (max_running or 0) if radix else 0
    chunk = int(getattr(cfg, "chunked_prefill_size", None) or 0)
    chunks_in_flight = 1 if getattr(cfg, "disable_overlap_schedule", False) else 2
    chunk_reserve = chunks_in_flight * max(chunk, 0) + page_size

    geometry = Gemma4PoolGeometry(
        full_layers=len(full_ids),
        swa_layers=len(swa_ids),
        full_bytes_per_layer=full_per_layer,
        swa_bytes_per_layer=swa_per_layer,
        window=window,
        draft_full_layers=draft_full_layers,
    )

    budget = estimate_kv_budget_from_args(
        cfg,
        hf_config,
        is_multimodal=bool(getattr(model_config, "is_multimodal", False)),
        draft_weight_bytes=draft_weight_bytes,
    )
    choice = balanced_swa_full_tokens_ratio(
        geometry,
        request_tokens=request_tokens,
        swa_tokens_per_req=w,
        chunk_reserve_tokens=chunk_reserve,
        kv_budget_bytes=budget,
        max_running_requests=max_running,
        prefix_tail_tokens=prefix_tails * (window + page_size),
        fallback_concurrency=max_running or FALLBACK_CONCURRENCY,
    )
    if request_tokens is None:
        prefix = "no expected request length declared"
    else:
        prefix = f"expected request {request_tokens} tokens (from {source})"
    if spec is not None:
        prefix += f", {draft_tokens} draft tokens x eviction interval {eviction_interval}"
    return RatioChoice(choice.ratio, f"{prefix}: {choice.reason}", choice.expected_concurrency)


def gemma4_swa_ratio_overrides(
    server_args: Any, hf_config: Any, pending: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Model-override declarations for the Gemma-4 full/SWA split.

    A user-set ``--swa-full-tokens-ratio`` is checked and kept; otherwise the
    balanced split is declared and logged once with its reason.
    """
    from sglang.srt.arg_groups.model_override_base import resolving_view

    architectures = getattr(hf_config, "architectures", None) or []
    if not any(a in GEMMA4_TEXT_ARCHITECTURES for a in architectures):
        return {}
    cfg = resolving_view(server_args)
    user_ratio = cfg.swa_full_tokens_ratio
    if user_ratio is not None:
        ratio = check_swa_full_tokens_ratio(user_ratio, "--swa-full-tokens-ratio")
        _log_once(
            ("user", ratio), f"Gemma-4 KV split: keeping the user-set swa_full_tokens_ratio={ratio}"
        )
        return {}
    choice = plan_from_server_args(server_args, hf_config, pending)
    if choice.ratio is None:
        _log_once(("default", choice.reason), f"Gemma-4 KV split: {choice.reason}")
        return {}
    ratio = check_swa_full_tokens_ratio(choice.ratio, "computed swa_full_tokens_ratio")
    _log_once(
        ("ours", ratio, choice.reason),
        f"Gemma-4 KV split: swa_full_tokens_ratio={ratio} ({choice.reason})",
    )
    return {"swa_full_tokens_ratio": ratio}
