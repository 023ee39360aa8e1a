"""Upper-bound check on the indices the SWA allocator hands out.

The hybrid SWA allocator returns full-pool indices and records, for each, a
peer index in the sliding-window pool. Every attention backend later reads the
SWA KV buffer at those peer indices, so a peer at or past the end of the SWA
buffer (``size_swa + page_size`` rows: the usable slots plus the reserved
padding page) is an illegal address far away from its cause. The allocator's
existing invariants check that peers are mapped and released; this one checks
that a freshly allocated peer index lies in ``[0, size_swa + page_size)``.

Gated by the existing ``SGLANG_INVARIANT_CHECK`` switch (``warn``/``strict``,
or the legacy ``SGLANG_ENABLE_ASYNC_ASSERT=1``). It is a FATAL_UNCONTAINABLE
invariant: at WARN or STRICT a hit fails the device-side async assert (no host
synchronisation; on CPU it raises at once) with the message
``invariant-check FAILED [swa.alloc_in_bounds]: ...``. Off, it costs one
level lookup per allocation.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang.srt.environ import InvariantCheckLevel
from sglang.srt.utils.invariants import Bucket, Invariant, IsTrue, expect, resolve_level

SWA_ALLOC_IN_BOUNDS = Invariant(
    "swa.alloc_in_bounds", Bucket.FATAL_UNCONTAINABLE, IsTrue()
)


def swa_index_limit(size_swa: int, page_size: int) -> int:
    """Rows of the SWA KV buffer: usable slots plus the reserved padding page."""
    if size_swa < 0 or page_size <= 0:
        raise ValueError(
            f"swa_index_limit: need size_swa >= 0 and page_size > 0, "
            f"got size_swa={size_swa}, page_size={page_size}"
        )
    return size_swa + page_size


def check_swa_alloc_bounds(
    swa_indices: Optional[torch.Tensor], size_swa: int, page_size: int, where: str
) -> None:
    """Under SGLANG_INVARIANT_CHECK >= warn, assert (asynchronously) that every
    index in ``swa_indices`` lies in ``[0, size_swa + page_size)``."""
    if swa_indices is None or swa_indices.numel() == 0:
        return
    if resolve_level() < InvariantCheckLevel.WARN:
        return
    limit = swa_index_limit(size_swa, page_size)
    ok = (swa_indices >= 0) & (swa_indices < limit)
    expect(
        SWA_ALLOC_IN_BOUNDS,
        ok,
        msg=f"SWA allocator {where} returned an index outside [0, {limit}) "
        f"(size_swa={size_swa}, page_size={page_size})",
    )
