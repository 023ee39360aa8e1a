"""Device-side bounds check of an attention page table (the CUDA path of the page-table probe).

The host side, sglang.srt.layers.attention.page_table_probe, decides which tables to check and
reports a violation; this module holds its two kernels and their launcher:

* ``_page_table_scan_kernel``, one program per row: among the entries the row's request reads
  (the first ``ceil(seq_len / page_size)`` entries of a dense row, or the ``[indptr[i],
  indptr[i+1])`` slice of ragged indices), find the first one outside ``[0, cache_size)``, its value
  and the number of such entries; save a window of up to ``DUMP_W`` entries of an offending row
  (from a quarter window before its first bad entry); then set its bad entries to 0 (the pools'
  padding page), so the attention kernel that follows cannot fault;
* ``_page_table_commit_kernel``, a single program: if the sticky record is still clear and some
  row is bad, write the first violation (row, entry, value, seq_len, number of bad rows) and the
  windows of the first ``K`` bad rows into the record, then mark it tripped.

Both read the row lengths on the device, so neither needs a host synchronisation; the per-row scan
touches only the live entries, not the table's static width.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

STATS = 5  # per row: first bad entry, bad count, first bad value, seq_len, dump start


@triton.jit
def _page_table_scan_kernel(
    flat_ptr,  # the table, flattened (dense rows of stride_row, or ragged indices)
    lens_src_ptr,  # dense: seq_lens [rows]; ragged: indptr [rows + 1]
    stats_ptr,  # [rows, STATS] int64 out
    dump_ptr,  # [rows, DUMP_WP] int64 out (written for offending rows only)
    cache_size,
    page_size,
    width,
    stride_row,
    RAGGED: tl.constexpr,
    DUMP_W: tl.constexpr,
    DUMP_WP: tl.constexpr,  # next power of two >= DUMP_W
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    if RAGGED:
        start = tl.load(lens_src_ptr + row).to(tl.int64)
        n = tl.maximum(tl.load(lens_src_ptr + row + 1).to(tl.int64) - start, 0)
        seq = n
    else:
        seq = tl.load(lens_src_ptr + row).to(tl.int64)
        start = row * stride_row
        n = tl.minimum(tl.maximum((seq + page_size - 1) // page_size, 0), width)
    first = n
    count = tl.zeros((), dtype=tl.int64)
    first_val = tl.zeros((), dtype=tl.int64)
    for off in range(0, n, BLOCK):
        cols = off + tl.arange(0, BLOCK).to(tl.int64)
        live = cols < n
        v = tl.load(flat_ptr + start + cols, mask=live, other=0)
        bad = live & ((v < 0) | (v >= cache_size))
        col = tl.min(tl.where(bad, cols, n), axis=0)
        val = tl.sum(tl.where(bad & (cols == col), v.to(tl.int64), 0), axis=0)
        first_val = tl.where(col < first, val, first_val)
        first = tl.minimum(first, col)
        count += tl.sum(bad.to(tl.int64), axis=0)
    lo = tl.maximum(first - DUMP_W // 4, 0)
    tl.store(stats_ptr + row * 5 + 0, first)
    tl.store(stats_ptr + row * 5 + 1, count)
    tl.store(stats_ptr + row * 5 + 2, first_val)
    tl.store(stats_ptr + row * 5 + 3, seq)
    tl.store(stats_ptr + row * 5 + 4, lo)
    if count > 0:
        e = tl.arange(0, DUMP_WP).to(tl.int64)
        w = lo + e
        wl = (w < n) & (e < DUMP_W)
        window = tl.load(flat_ptr + start + w, mask=wl, other=0).to(tl.int64)
        tl.store(dump_ptr + row * DUMP_WP + e, tl.where(wl, window, -1))
        for off in range(0, n, BLOCK):
            cols = off + tl.arange(0, BLOCK).to(tl.int64)
            live = cols < n
            v = tl.load(flat_ptr + start + cols, mask=live, other=0)
            bad = live & ((v < 0) | (v >= cache_size))
            tl.store(flat_ptr + start + cols, tl.zeros_like(v), mask=bad)


@triton.jit
def _page_table_commit_kernel(
    stats_ptr,
    dump_ptr,
    rows,
    record_ptr,  # int64 [tripped, row, entry, value, seq_len, bad_rows], sticky
    dump_rows_ptr,  # [K] int64
    dump_seq_ptr,  # [K] int64
    dump_lo_ptr,  # [K] int64
    dump_entries_ptr,  # [K, DUMP_W] int64
    DUMP_W: tl.constexpr,
    DUMP_WP: tl.constexpr,
    K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    tripped = tl.load(record_ptr)
    if tripped == 0:
        found = tl.zeros((), dtype=tl.int64)
        first_row = tl.zeros((), dtype=tl.int64) + rows
        e = tl.arange(0, DUMP_WP).to(tl.int64)
        for off in range(0, rows, BLOCK_R):
            r = off + tl.arange(0, BLOCK_R).to(tl.int64)
            m = r < rows
            cnt = tl.load(stats_ptr + r * 5 + 1, mask=m, other=0)
            bad = m & (cnt > 0)
            bi = bad.to(tl.int64)
            pos = found + tl.cumsum(bi, 0) - 1
            sel = bad & (pos < K)
            tl.store(dump_rows_ptr + pos, r, mask=sel)
            tl.store(
                dump_seq_ptr + pos, tl.load(stats_ptr + r * 5 + 3, mask=sel, other=0),
                mask=sel,
            )
            tl.store(
                dump_lo_ptr + pos, tl.load(stats_ptr + r * 5 + 4, mask=sel, other=0),
                mask=sel,
            )
            m2 = sel[:, None] & (e[None, :] < DUMP_W)
            src = tl.load(dump_ptr + r[:, None] * DUMP_WP + e[None, :], mask=m2, other=-1)
            tl.store(dump_entries_ptr + pos[:, None] * DUMP_W + e[None, :], src, mask=m2)
            found += tl.sum(bi, axis=0)
            first_row = tl.minimum(first_row, tl.min(tl.where(bad, r, rows), axis=0))
        if found > 0:
            tl.store(record_ptr + 1, first_row)
            tl.store(record_ptr + 2, tl.load(stats_ptr + first_row * 5 + 0))
            tl.store(record_ptr + 3, tl.load(stats_ptr + first_row * 5 + 2))
            tl.store(record_ptr + 4, tl.load(stats_ptr + first_row * 5 + 3))
            tl.store(record_ptr + 5, found)
            tl.store(record_ptr, found * 0 + 1)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def check_page_table_bounds(
    values: torch.Tensor,
    lens_src: torch.Tensor,
    *,
    ragged: bool,
    rows: int,
    cache_size: int,
    page_size: int,
    width: int,
    stride_row: int,
    record: torch.Tensor,
    dump_rows: torch.Tensor,
    dump_seq: torch.Tensor,
    dump_lo: torch.Tensor,
    dump_entries: torch.Tensor,
) -> None:
    """Scan ``rows`` rows of ``values`` (dense: row i at ``i * stride_row``, ``lens_src`` =
    seq_lens, ``width`` entries at most; ragged: ``lens_src`` = indptr), redirect out-of-range
    entries to 0 and fold the first violation into the sticky ``record`` and the dump tensors
    (``dump_entries`` is [len(dump_rows), DUMP_W]). Two launches, no host synchronisation."""
    num_dump, dump_w = dump_entries.shape
    dump_wp = _next_pow2(dump_w)
    stats = torch.empty((rows, STATS), dtype=torch.int64, device=values.device)
    dump = torch.empty((rows, dump_wp), dtype=torch.int64, device=values.device)
    _page_table_scan_kernel[(rows,)](
        values,
        lens_src,
        stats,
        dump,
        int(cache_size),
        int(page_size),
        int(width),
        int(stride_row),
        RAGGED=ragged,
        DUMP_W=dump_w,
        DUMP_WP=dump_wp,
        BLOCK=1024,
        num_warps=4,
    )
    _page_table_commit_kernel[(1,)](
        stats,
        dump,
        rows,
        record,
        dump_rows,
        dump_seq,
        dump_lo,
        dump_entries,
        DUMP_W=dump_w,
        DUMP_WP=dump_wp,
        K=num_dump,
        BLOCK_R=64,
        num_warps=4,
    )
