"""KV-pool sizing for Gemma-4: the split between the full and the SWA pool.

Gemma-4 text layers alternate sliding-window (SWA) and full attention layers
(5:1 for the 26B-A4B, 31B and E4B checkpoints, 4:1 for E2B). SGLang keeps two
token pools, the full pool (one row per full layer) and the SWA pool (one row
per SWA layer), and splits the KV budget between them with one number,
``swa_full_tokens_ratio`` (SWA tokens per full token, 0.8 by default).

A running request of ``L`` tokens holds ``L`` rows of the full pool but at most
its window tail in the SWA pool, so the split that serves the most requests
depends on the request length, the window, the draft width, the radix cache
and the budget. This module decides it where the budget is measured: in a
pool configurator (``Gemma4SWAPoolConfigurator``, a HybridSWAPoolConfigurator
that only chooses the ratio), from the ``available_bytes`` the engine profiled.

The model of one running request (``SplitModel``):

* full rows: ``L``;
* SWA rows: ``min(L + page, w + tail)``, with ``w`` the scheduler's own worst
  case of a request's window tail (``compute_swa_request_cap``: window +
  eviction interval x draft tokens + page + decode allocation) and ``tail`` the
  window of its cached prefix that the radix cache keeps locked while the
  request runs (``window + page``; 0 without a radix cache or with
  SGLANG_OPT_RELEASE_PREFILL_SWA);
* the prefill chunks in flight hold ``chunk_reserve`` more SWA rows
  (the same function's chunk term);
* at most ``request_cap`` requests run (``--max-running-requests``, or the 48
  that FROZEN_KV MTP sets; else sglang's automatic cap).

The request length:

* declared with ``SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS`` (prompt + output of a
  typical request): the split that serves the most requests of that length;
* not declared: requests of any length from 1024 tokens up to the context
  length may come. The split maximises the worst ratio, over that range, of
  requests served to the requests sglang's ratio 0.8 serves on the same pools
  accounting. 0.8 itself scores exactly 1, so the choice is never worse than
  0.8 anywhere in the range; among equal worst cases the average gain decides.

No headroom constant: the budget is measured, and among splits that serve
the same requests the one nearest 0.8 (the most SWA rows) is taken. A user-set
``--swa-full-tokens-ratio`` always wins. The choice and its reason are logged
once.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

from sglang.srt.mem_cache.gemma4_kv_layout import GEMMA4_TEXT_ARCHITECTURES

logger = logging.getLogger(__name__)

# sglang's default split (the fields/schedule.py fallback).
UPSTREAM_DEFAULT_RATIO = 0.8
# Shortest request the undeclared policy must serve at least as well as 0.8.
MIN_REQUEST_TOKENS = 1024
# Candidate ratios: multiples of RATIO_STEP in (0, 1].
RATIO_STEP = 0.001
# Request lengths sampled (log-spaced) between MIN_REQUEST_TOKENS and the context length.
LENGTH_SAMPLES = 48

EXPECTED_REQUEST_TOKENS_ENV = "SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS"


def check_expected_request_tokens(value: Any) -> Optional[int]:
    """The declared expected request length, or None; a bad value is a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{EXPECTED_REQUEST_TOKENS_ENV} must be a positive number of tokens "
            f"(prompt + output of a typical request), got {value!r}"
        )
    return value


# ---------------------------------------------------------------------------
# The model and the choice (plain Python, no GPU)
# ---------------------------------------------------------------------------


def sglang_request_cap(full_tokens: int, context_len: int, user_cap: Optional[int]) -> int:
    """max_running_requests per worker that sglang derives for a full pool of ``full_tokens``
    (KVCacheConfigurator.resolve_max_num_reqs, without the Mamba term)."""
    if user_cap is not None:
        return max(0, min(user_cap, full_tokens // 2))
    estimated = max(min(int(full_tokens / max(1, context_len) * 512), 4096), 2048)
    return max(0, min(estimated, full_tokens // 2))


@dataclass(frozen=True)
class SplitModel:
    """What one split of ``budget_bytes`` gives, in requests."""

    budget_bytes: int
    full_cell: float  # bytes one full-pool token takes (all full layers with a buffer, draft rows)
    swa_cell: float  # bytes one SWA-pool token takes
    page_size: int
    swa_per_request: int  # w: a running request's window tail (scheduler's worst case)
    prefix_tail_tokens: int  # SWA rows of its cached prefix the radix cache keeps locked
    chunk_reserve: int  # SWA rows of the prefill chunks in flight
    context_len: int
    request_cap: Optional[int] = None  # per worker; None: sglang's automatic cap

    def __post_init__(self):
        for name in ("budget_bytes", "full_cell", "swa_cell", "page_size", "swa_per_request",
                     "context_len"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SplitModel.{name} must be positive, got {getattr(self, name)!r}")
        if self.prefix_tail_tokens < 0 or self.chunk_reserve < 0:
            raise ValueError("SplitModel prefix_tail_tokens and chunk_reserve must be >= 0")
        if self.request_cap is not None and self.request_cap <= 0:
            raise ValueError(f"SplitModel.request_cap must be positive, got {self.request_cap}")

    def pools(self, ratio: float) -> Tuple[int, int]:
        """(full, SWA) tokens at ``ratio``, as HybridSWAPoolConfigurator sizes them."""
        page = self.page_size
        full = int(self.budget_bytes // (self.full_cell + ratio * self.swa_cell)) // page * page
        swa = int(full * ratio) // page * page
        return full, swa

    def swa_rows(self, request_tokens: int) -> int:
        return min(request_tokens + self.page_size, self.swa_per_request + self.prefix_tail_tokens)

    def requests(self, request_tokens: int, full: int, swa: int) -> int:
        """Requests of ``request_tokens`` that run at once on pools (full, swa)."""
        if request_tokens <= 0:
            raise ValueError(f"request length must be positive, got {request_tokens}")
        by_full = full // request_tokens
        by_swa = max(0, (swa - self.chunk_reserve) // self.swa_rows(request_tokens))
        cap = sglang_request_cap(full, self.context_len, self.request_cap)
        return max(0, min(by_full, by_swa, cap))


@dataclass(frozen=True)
class SplitChoice:
    ratio: float
    full_tokens: int
    swa_tokens: int
    worst_gain: float  # min over the lengths of requests / requests at 0.8
    mean_gain: float  # geometric mean of the same
    lengths: Tuple[int, ...]


def request_lengths(context_len: int, expected: Optional[int]) -> Tuple[int, ...]:
    """The request lengths a split is judged on."""
    if expected is not None:
        return (int(expected),)
    hi = max(1, int(context_len))
    lo = min(MIN_REQUEST_TOKENS, hi)
    if lo == hi:
        return (hi,)
    step = (math.log(hi) - math.log(lo)) / (LENGTH_SAMPLES - 1)
    return tuple(sorted({int(round(math.exp(math.log(lo) + i * step))) for i in range(LENGTH_SAMPLES)}))


def _gain(value: int, reference: int) -> float:
    if reference > 0:
        return value / reference
    return math.inf if value > 0 else 1.0


def serves_at_least(model: SplitModel, pools: Tuple[int, int], reference: Tuple[int, int],
                    lo: int, hi: int) -> bool:
    """Whether ``pools`` serve at least as many requests as ``reference`` at EVERY integer
    request length in [lo, hi] (exact, not sampled)."""
    import numpy as np

    (full, swa), (full0, swa0) = pools, reference
    cap = sglang_request_cap(full, model.context_len, model.request_cap)
    cap0 = sglang_request_cap(full0, model.context_len, model.request_cap)
    page, chunks = model.page_size, model.chunk_reserve
    flat = model.swa_per_request + model.prefix_tail_tokens  # SWA rows of a long request
    # Short lengths: SWA rows grow with the length; compare each one.
    short_end = min(hi, flat - page - 1)
    if short_end >= lo:
        length = np.arange(lo, short_end + 1, dtype=np.int64)
        rows = length + page
        served = np.minimum(np.minimum(cap, full // length), np.maximum(0, (swa - chunks) // rows))
        ref = np.minimum(np.minimum(cap0, full0 // length), np.maximum(0, (swa0 - chunks) // rows))
        if bool(np.any(served < ref)):
            return False
    a = max(lo, flat - page)
    if a > hi:
        return True
    # Long lengths: a constant SWA term, so the reference min(cap0, swa term, full0 // L) only falls.
    swa_term, swa_term0 = max(0, (swa - chunks) // flat), max(0, (swa0 - chunks) // flat)
    if min(cap, swa_term) < min(cap0, swa_term0, full0 // a):
        return False
    if full >= full0:
        return True
    # Fewer full rows: wherever the reference is bound by its full pool (full0 // L = k below
    # k0 = min(cap0, swa term)), this split must still give k at the largest such L.
    k0 = min(cap0, swa_term0)
    if k0 <= 0:
        return True
    top = min(hi, full0 // k0)
    if top >= a and top > full // k0:
        return False
    k = np.arange(1, k0, dtype=np.int64)
    first = np.maximum(a, full0 // (k + 1) + 1)
    last = np.minimum(hi, full0 // k)
    present = first <= last
    return not bool(np.any(present & (last > full // k)))


def choose_split(model: SplitModel, expected: Optional[int]) -> SplitChoice:
    """The split for a declared request length, or for any length up to the context length.

    Declared: the ratio that serves the most requests of that length. Undeclared: among the
    ratios that serve at least as many requests as 0.8 at every length from 1024 tokens to the
    context length (0.8 itself always does), the one with the largest mean gain over the
    sampled lengths. Ties go to the ratio nearest 0.8 (the most SWA rows below it).
    """
    lengths = request_lengths(model.context_len, expected)
    ref_pools = model.pools(UPSTREAM_DEFAULT_RATIO)
    reference = [model.requests(n, *ref_pools) for n in lengths]
    lo, hi = lengths[0], lengths[-1]
    best = None
    steps = int(round(1.0 / RATIO_STEP))
    for k in range(1, steps + 1):
        ratio = round(k * RATIO_STEP, 6)
        pools = model.pools(ratio)
        if pools[0] <= 0:
            continue
        gains = [_gain(model.requests(n, *pools), r) for n, r in zip(lengths, reference)]
        finite = [g for g in gains if math.isfinite(g) and g > 0]
        mean = math.exp(sum(math.log(g) for g in finite) / len(finite)) if finite else 0.0
        key = (round(mean, 9), -abs(ratio - UPSTREAM_DEFAULT_RATIO))
        if best is not None and key <= best[0]:
            continue
        if expected is None and not serves_at_least(model, pools, ref_pools, lo, hi):
            continue
        best = (key, ratio, pools, min(gains), mean)
    if best is None:
        raise ValueError(
            f"a KV budget of {model.budget_bytes / (1 << 30):.2f} GiB holds no full-pool page "
            "at any split"
        )
    _, ratio, (full, swa), worst, mean = best
    return SplitChoice(ratio, full, swa, worst, mean, tuple(lengths))


# ---------------------------------------------------------------------------
# The pool configurator
# ---------------------------------------------------------------------------

_LOGGED: set = set()


def _log_once(message: str) -> None:
    if message in _LOGGED:
        return
    _LOGGED.add(message)
    logger.info(message)


def is_gemma4_target(kvc: Any) -> bool:
    """A Gemma-4 text target (not a draft worker) with both full and SWA layers."""
    hf_config = getattr(kvc.model_config, "hf_config", None)
    architectures = getattr(hf_config, "architectures", None) or []
    return (
        any(a in GEMMA4_TEXT_ARCHITECTURES for a in architectures)
        and not kvc.is_draft_worker
        and kvc.sliding_window_size is not None
        and len(kvc.layer_info.full_attention_layer_ids) > 0
        and len(kvc.layer_info.swa_attention_layer_ids) > 0
    )


def declared_length_set() -> bool:
    from sglang.srt.environ import envs

    return bool(envs.SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS.is_set())


def expected_request_tokens() -> Optional[int]:
    """SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS (registered in sglang.srt.environ), checked."""
    from sglang.srt.environ import envs

    field = envs.SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS
    if not field.is_set():
        return None
    raw = os.environ.get(EXPECTED_REQUEST_TOKENS_ENV, "")
    try:
        value = field.parse(raw)  # get() would warn and fall back to "unset"
    except ValueError:
        raise ValueError(
            f"{EXPECTED_REQUEST_TOKENS_ENV} must be a positive integer number of tokens, got {raw!r}"
        ) from None
    return check_expected_request_tokens(value)


def check_declared_length(context_len: int) -> Optional[int]:
    """The declared request length, refused when no request can be that long (above the context
    length); None when nothing is declared."""
    expected = expected_request_tokens()
    if expected is not None and expected > context_len:
        raise ValueError(
            f"{EXPECTED_REQUEST_TOKENS_ENV}={expected} is longer than the context length {context_len}: "
            f"no request can hold that many tokens; declare the prompt + output of a typical request, "
            f"at most {context_len}"
        )
    return expected


def _make_configurator_class():
    from sglang.srt.environ import envs
    from sglang.srt.model_executor.pool_configurator import (
        HybridSWAPoolConfigurator,
        compute_swa_request_cap,
    )
    from sglang.srt.runtime_context import get_memory, get_schedule

    class Gemma4SWAPoolConfigurator(HybridSWAPoolConfigurator):
        """HybridSWAPoolConfigurator whose full/SWA ratio is chosen from the measured budget."""

        @staticmethod
        def is_applicable(kvc) -> bool:
            return (
                is_gemma4_target(kvc)
                and not get_memory().enable_unified_memory
                and kvc.fused_entry_bytes("full") is None
                and kvc.fused_entry_bytes("swa") is None
            )

        def __init__(self, kvc):
            super().__init__(kvc)
            self._kvc = kvc
            self._user_ratio = bool(get_schedule()._swa_full_tokens_ratio_explicitly_set)
            self.choice: Optional[SplitChoice] = None

        def split_model(self, available_bytes: int, page_size: int) -> SplitModel:
            kvc = self._kvc
            dp = max(1, int(kvc.attn_dp_size))
            window = int(kvc.sliding_window_size)

            def swa_cap(requests_per_worker: int) -> int:
                return compute_swa_request_cap(
                    page_size=page_size,
                    window=window,
                    attn_dp_size=dp,
                    max_running_requests=requests_per_worker * dp,
                )

            per_request = swa_cap(2) - swa_cap(1)
            tail = 0
            if not get_memory().disable_radix_cache and not envs.SGLANG_OPT_RELEASE_PREFILL_SWA.get():
                tail = window + page_size
            cap = get_schedule().max_running_requests
            return SplitModel(
                budget_bytes=int(available_bytes),
                full_cell=(
                    self._full_cell_bytes()
                    + self._swa_per_token * self._draft_swa_full_layers_num
                    + self._draft_cell_size
                ),
                swa_cell=self._swa_cell_bytes(),
                page_size=page_size,
                swa_per_request=per_request,
                prefix_tail_tokens=tail,
                chunk_reserve=swa_cap(1) - per_request,
                context_len=int(kvc.model_config.context_len),
                request_cap=None if cap is None else max(1, int(cap) // dp),
            )

        def calculate_pool_sizes(self, available_bytes: int, page_size: int):
            if self._user_ratio:
                _log_once(
                    "Gemma-4 KV split: keeping the user-set swa_full_tokens_ratio="
                    f"{self._swa_full_tokens_ratio}"
                )
                return super().calculate_pool_sizes(available_bytes, page_size)
            model = self.split_model(available_bytes, page_size)
            expected = check_declared_length(model.context_len)
            choice = choose_split(model, expected)
            self.choice = choice
            self._swa_full_tokens_ratio = choice.ratio
            self._recompute_cell_size()
            _log_once(describe_choice(model, choice, expected))
            return super().calculate_pool_sizes(available_bytes, page_size)

    return Gemma4SWAPoolConfigurator


_CONFIGURATOR_CLASS = None


def configurator_class():
    """The Gemma-4 configurator class (built on first use: pool_configurator imports this module)."""
    global _CONFIGURATOR_CLASS
    if _CONFIGURATOR_CLASS is None:
        _CONFIGURATOR_CLASS = _make_configurator_class()
    return _CONFIGURATOR_CLASS


def maybe_gemma4_configurator(kvc: Any):
    """A Gemma4SWAPoolConfigurator for a Gemma-4 target, else None (the caller keeps its choice)."""
    cls = configurator_class()
    return cls(kvc) if cls.is_applicable(kvc) else None


def describe_choice(model: SplitModel, choice: SplitChoice, expected: Optional[int]) -> str:
    if expected is not None:
        basis = f"expected request {expected} tokens ({EXPECTED_REQUEST_TOKENS_ENV})"
    else:
        basis = (
            f"no expected request length declared ({EXPECTED_REQUEST_TOKENS_ENV} unset): "
            f"requests of {choice.lengths[0]}..{choice.lengths[-1]} tokens"
        )
    cap = "automatic" if model.request_cap is None else str(model.request_cap)
    return (
        f"Gemma-4 KV split: full {choice.full_tokens} / SWA {choice.swa_tokens} tokens "
        f"(swa_full_tokens_ratio={choice.ratio}) from a measured KV budget of "
        f"{model.budget_bytes / (1 << 30):.2f} GiB; {basis}; requests served vs ratio "
        f"{UPSTREAM_DEFAULT_RATIO}: worst {choice.worst_gain:.2f}x, mean {choice.mean_gain:.2f}x; "
        f"SWA rows per request {model.swa_per_request} + {model.prefix_tail_tokens} locked prefix "
        f"tail, {model.chunk_reserve} for prefill chunks, request cap {cap}; "
        f"cells {model.full_cell:.0f} / "
        f"{model.swa_cell:.0f} B per full / SWA token"
    )
