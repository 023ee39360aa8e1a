"""Upper-bound check on SWA allocator indices (SGLANG_INVARIANT_CHECK).

A real SWATokenToKVPoolAllocator over a real SWAKVPool on CPU; the SWA
sub-allocator is made to return a planted out-of-range index. With the
invariant switch at warn/strict the allocation fails with the invariant's
message (on CPU torch's async assert raises at once); with it off the check
does nothing.
"""

import pytest
import torch

from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.swa_index_bounds import (
    check_swa_alloc_bounds,
    swa_index_limit,
)
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

SIZE, SIZE_SWA = 64, 32


def _allocator(page_size):
    pool = SWAKVPool(
        size=SIZE,
        size_swa=SIZE_SWA,
        page_size=page_size,
        dtype=torch.bfloat16,
        head_num=1,
        head_dim=8,
        swa_attention_layer_ids=[0],
        full_attention_layer_ids=[1],
        device="cpu",
        enable_memory_saver=False,
    )
    alloc = SWATokenToKVPoolAllocator(
        SIZE, SIZE_SWA, page_size, torch.bfloat16, "cpu", pool, need_sort=False
    )
    return pool, alloc


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv("SGLANG_INVARIANT_CHECK", "2")


def test_limit_is_the_swa_buffer_rows():
    pool, _ = _allocator(1)
    assert swa_index_limit(SIZE_SWA, 1) == pool.swa_kv_pool.k_buffer[0].shape[0]
    with pytest.raises(ValueError, match="page_size > 0"):
        swa_index_limit(SIZE_SWA, 0)


@pytest.mark.parametrize("page", [4, 16])
def test_every_buffer_row_passes_with_pages(strict, page):
    """With pages, the buffer has size_swa + page_size rows: indices up to the last row of the
    padding page are in bounds, the first one past it is not (page_size 1 tests cannot tell
    size_swa + page_size from size_swa + 1)."""
    pool, _ = _allocator(page)
    rows = pool.swa_kv_pool.k_buffer[0].shape[0]
    assert swa_index_limit(SIZE_SWA, page) == rows == SIZE_SWA + page
    check_swa_alloc_bounds(torch.tensor([0, SIZE_SWA, rows - 1]), SIZE_SWA, page, "alloc")
    with pytest.raises(RuntimeError, match=rf"outside \[0, {rows}\)"):
        check_swa_alloc_bounds(torch.tensor([rows]), SIZE_SWA, page, "alloc")


def test_real_allocations_pass(strict):
    _, alloc = _allocator(1)
    full = alloc.alloc(SIZE_SWA)  # every SWA slot, the largest index included
    assert full is not None and full.numel() == SIZE_SWA


@pytest.mark.parametrize("bad", [SIZE_SWA + 1, -1])
def test_fires_on_planted_index_in_alloc(strict, bad):
    _, alloc = _allocator(1)
    real = alloc.swa_attn_allocator.alloc

    def planted(n):
        out = real(n)
        out[-1] = bad
        return out

    alloc.swa_attn_allocator.alloc = planted
    with pytest.raises(RuntimeError) as err:
        alloc.alloc(4)
    msg = str(err.value)
    assert "invariant-check FAILED [swa.alloc_in_bounds]" in msg
    assert f"SWA allocator alloc returned an index outside [0, {SIZE_SWA + 1})" in msg


def test_fires_on_planted_index_in_paged_alloc_decode(strict):
    page = 4
    _, alloc = _allocator(page)
    real = alloc.swa_attn_allocator.alloc_decode

    def planted(*args, **kwargs):
        out = real(*args, **kwargs)
        out[0] = SIZE_SWA + page
        return out

    alloc.swa_attn_allocator.alloc_decode = planted
    seq_lens = torch.tensor([1], dtype=torch.int64)
    last_loc = torch.tensor([-1], dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"alloc_decode returned an index outside"):
        alloc.alloc_decode(seq_lens, seq_lens, last_loc)


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("SGLANG_INVARIANT_CHECK", raising=False)
    monkeypatch.delenv("SGLANG_ENABLE_ASYNC_ASSERT", raising=False)
    check_swa_alloc_bounds(torch.tensor([SIZE_SWA * 10]), SIZE_SWA, 1, "alloc")
    monkeypatch.setenv("SGLANG_INVARIANT_CHECK", "1")  # warn: uncontainable still fails
    with pytest.raises(RuntimeError, match="swa.alloc_in_bounds"):
        check_swa_alloc_bounds(torch.tensor([SIZE_SWA * 10]), SIZE_SWA, 1, "alloc")
