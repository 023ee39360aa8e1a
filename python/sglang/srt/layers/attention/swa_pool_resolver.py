"""Which sliding-window KV pool an attention backend must translate against.

A hybrid-SWA model keeps full-attention and sliding-window layers in two pools
with separate index spaces; a backend translates full-pool page indices into
the SWA pool before its kernel reads an SWA layer. Usually the pool to use is
simply the runner's own ``token_to_kv_pool``. Two kinds of draft worker differ:

* EAGLE-like drafts share the target's allocator for token bookkeeping but own
  a separate KV pool, so the target's SWA mapping must NOT be applied to them.
* A FROZEN_KV MTP draft (Gemma-4's assistant) owns only a small dummy, non-SWA
  pool, yet its attention reads the target's KV cache directly (the worker
  swaps the backend's ``token_to_kv_pool`` to the target pool around metadata
  building and the forward). Its backend therefore needs the target's SWA pool,
  which the shared allocator hands out through ``get_kvcache()``.

Backends used to decide this each on their own; a backend that looked only at
the draft's own pool turned its SWA translation off for a FROZEN_KV draft and
fed full-pool page indices to the SWA cache (an illegal address once the SWA
pool filled). Every backend now asks :func:`resolve_swa_kv_pool`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Type, Union

from sglang.srt.mem_cache.base_swa_memory_pool import BaseSWAKVPool

PoolTypes = Union[Type[Any], Tuple[Type[Any], ...]]


def _is_frozen_kv_mtp_draft(model_runner: Any) -> bool:
    if not getattr(model_runner, "is_draft_worker", False):
        return False
    spec_algorithm = getattr(model_runner, "spec_algorithm", None)
    return spec_algorithm is not None and bool(spec_algorithm.is_frozen_kv_mtp())


def resolve_swa_kv_pool(
    model_runner: Any,
    pool_type: PoolTypes = BaseSWAKVPool,
    *,
    require_swa_layers: bool = False,
    allocator_fallback: bool = True,
) -> Optional[Any]:
    """Return the SWA pool ``model_runner``'s attention backend must translate
    against, or None when it has none (a non-SWA model, an EAGLE-like draft).

    ``pool_type`` is the pool class (or classes) the calling backend can drive:
    a backend that needs the static pool's raw full->swa mapping passes
    ``SWAKVPool``; one that only calls ``translate_loc_from_full_to_swa``
    passes ``BaseSWAKVPool``. ``require_swa_layers`` additionally treats a pool
    with no sliding-window layer as no SWA pool. ``allocator_fallback=False``
    keeps a non-draft runner on its own pool (the allocator's pool is then
    consulted for a FROZEN_KV MTP draft only), for backends that translate
    through ``self.token_to_kv_pool`` rather than through the resolved pool.
    """
    if model_runner is None:
        raise ValueError("resolve_swa_kv_pool needs a model runner, got None")

    pool = getattr(model_runner, "token_to_kv_pool", None)
    if not isinstance(pool, pool_type):
        frozen_kv_draft = _is_frozen_kv_mtp_draft(model_runner)
        if getattr(model_runner, "is_draft_worker", False) and not frozen_kv_draft:
            return None
        if not frozen_kv_draft and not allocator_fallback:
            return None
        allocator = getattr(model_runner, "token_to_kv_pool_allocator", None)
        pool = allocator.get_kvcache() if allocator is not None else None
        if not isinstance(pool, pool_type):
            return None

    if require_swa_layers and not getattr(pool, "swa_layer_nums", 0) > 0:
        return None
    return pool


def uses_sliding_window_kv_pool(
    model_runner: Any, pool_type: PoolTypes, require_swa_layers: bool = True
) -> bool:
    """The ``use_sliding_window_kv_pool`` flag of a backend whose SWA
    translation reads the (possibly view-swapped) ``token_to_kv_pool``: on for
    the runner's own SWA pool, and for a FROZEN_KV MTP draft when the target's
    pool is SWA (inside the worker's target views ``token_to_kv_pool`` is that
    pool). ``require_swa_layers`` also asks for at least one SWA layer."""
    return (
        resolve_swa_kv_pool(
            model_runner,
            pool_type,
            require_swa_layers=require_swa_layers,
            allocator_fallback=False,
        )
        is not None
    )
