"""Opt-in page-table bounds probe (SGLANG_ENABLE_ASYNC_ASSERT).

The probe function is tested directly on small tables (dense: trtllm_mha and
fa; ragged: triton), then through a real trtllm_mha backend built on CPU
(forward_decode up to the kernel call, the kernel replaced by a recorder), and
through the hooks of fa4 and triton with their real pools and layers. On CPU
the device record is host memory, so a violation is reported at the probe
call itself; on CUDA it is reported at the next poll (see the GPU twin). The
CUDA path's kernels (sglang.kernels.ops.attention.page_table_bounds) run under
Triton's interpreter against the torch path.
"""

import os
import subprocess
import sys
import types

import pytest
import torch

from test_attention_swa_pool_resolver import engine_env  # noqa: F401  (fixture)

from sglang.srt.layers.attention.page_table_probe import (
    PageTableBoundsError,
    PageTableProbe,
    maybe_create_page_table_probe,
    poll_page_table_probe,
    probe_paged_table,
    probe_ragged_table,
)

FULL_MSG = (
    "page-table bounds probe: backend=trtllm_mha layer_kind=full layer=5 "
    "request_row=1 entry=2 bad_index=17 not in [0, 17) "
    "(seq_len=150, page_size=64, offending_rows=1)\n"
    "  row 1 (seq_len=150) entries[0:3]: [1, 2, 17]"
)
SWA_MSG = (
    "page-table bounds probe: backend=trtllm_mha layer_kind=swa layer=0 "
    "request_row=2 entry=0 bad_index=9 not in [0, 9) "
    "(seq_len=64, page_size=64, offending_rows=1)\n"
    "  row 2 (seq_len=64) entries[0:1]: [9]"
)
GARBAGE = 10**6


def _tables(device="cpu"):
    """4 requests (seq 10, 150, 64, 0), page 64; entries past each request's
    pages hold garbage, as torch.empty-allocated tables do."""
    seq = torch.tensor([10, 150, 64, 0], dtype=torch.int32, device=device)
    full = torch.full((4, 8), GARBAGE, dtype=torch.int32, device=device)
    full[0, :1] = 4
    full[1, :3] = torch.tensor([1, 2, 3])
    full[2, :1] = 16
    swa = torch.full((4, 8), GARBAGE, dtype=torch.int32, device=device)
    swa[0, :1] = 1
    swa[1, :3] = torch.tensor([0, 2, 8])
    swa[2, :1] = 5
    return seq, full, swa


# -- the probe function ----------------------------------------------------------


def test_silent_on_garbage_past_sequence_length():
    probe = PageTableProbe("trtllm_mha", "cpu", 8)
    seq, full, swa = _tables()
    before_full, before_swa = full.clone(), swa.clone()
    probe.check_paged("full", 5, full, seq, 64, 17)
    probe.check_paged("swa", 0, swa, seq, 64, 9)
    probe.poll()
    assert torch.equal(full, before_full) and torch.equal(swa, before_swa)


def test_fires_on_full_table_with_exact_message_and_dump():
    probe = PageTableProbe("trtllm_mha", "cpu", 8)
    seq, full, _ = _tables()
    full[1, 2] = 17  # == number of pages of the full cache
    with pytest.raises(PageTableBoundsError) as err:
        probe.check_paged("full", 5, full, seq, 64, 17)
    assert str(err.value) == FULL_MSG
    dump = err.value.dump
    assert (dump["backend"], dump["kind"], dump["row"], dump["value"]) == (
        "trtllm_mha",
        "full",
        1,
        17,
    )
    assert dump["rows"] == [
        {"row": 1, "seq_len": 150, "first_entry": 0, "entries": [1, 2, 17]}
    ]
    # The kernel that follows reads page 0 instead of faulting.
    assert full[1, :3].tolist() == [1, 2, 0]


def test_fires_on_swa_table_with_exact_message():
    probe = PageTableProbe("trtllm_mha", "cpu", 8)
    seq, full, swa = _tables()
    swa[2, 0] = 9  # == number of pages of the SWA cache
    probe.check_paged("full", 5, full, seq, 64, 17)
    with pytest.raises(PageTableBoundsError) as err:
        probe.check_paged("swa", 0, swa, seq, 64, 9)
    assert str(err.value) == SWA_MSG


def test_negative_index_and_several_rows_are_reported():
    probe = PageTableProbe("fa4", "cpu", 8)
    seq, full, _ = _tables()
    full[0, 0] = -1
    full[2, 0] = 40
    with pytest.raises(PageTableBoundsError) as err:
        probe.check_paged("full", 3, full, seq, 64, 17)
    dump = err.value.dump
    assert (dump["row"], dump["entry"], dump["value"], dump["bad_rows"]) == (0, 0, -1, 2)
    assert [r["row"] for r in dump["rows"]] == [0, 2]
    assert "bad_index=-1 not in [0, 17)" in str(err.value)


def test_only_first_layer_of_each_kind_is_checked_and_report_is_one_shot():
    probe = PageTableProbe("trtllm_mha", "cpu", 8)
    seq, full, _ = _tables()
    probe.check_paged("full", 5, full, seq, 64, 17)
    bad = full.clone()
    bad[1, 0] = 99
    probe.check_paged("full", 11, bad, seq, 64, 17)  # later full layer: skipped
    assert bad[1, 0].item() == 99
    with pytest.raises(PageTableBoundsError):
        probe.check_paged("full", 5, bad, seq, 64, 17)
    probe.poll()  # reported once


def test_ragged_rows_triton():
    probe = PageTableProbe("triton", "cpu", 16)
    # rows [0,3) [3,5) [5,8); entries 8.. are stale tail garbage
    indices = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, GARBAGE, GARBAGE])
    indptr = torch.tensor([0, 3, 5, 8], dtype=torch.int32)
    probe.check_ragged("swa", 0, indices, indptr, 50)
    indices[6] = 50
    with pytest.raises(PageTableBoundsError) as err:
        probe.check_ragged("swa", 0, indices, indptr, 50)
    assert str(err.value) == (
        "page-table bounds probe: backend=triton layer_kind=swa layer=0 "
        "request_row=2 entry=1 bad_index=50 not in [0, 50) "
        "(seq_len=3, page_size=1, offending_rows=1)\n"
        "  row 2 (seq_len=3) entries[0:3]: [6, 50, 8]"
    )
    assert indices[6].item() == 0


def test_dump_window_follows_the_first_bad_entry():
    probe = PageTableProbe("fa4", "cpu", 512)
    seq = torch.tensor([200], dtype=torch.int32)
    table = torch.arange(1, 257, dtype=torch.int32).view(1, 256)
    table[0, 150] = 1000
    with pytest.raises(PageTableBoundsError) as err:
        probe.check_paged("full", 0, table, seq, 1, 500)
    (row,) = err.value.dump["rows"]
    assert row["first_entry"] == 150 - 16
    assert row["entries"] == list(range(135, 151)) + [1000] + list(range(152, 199))
    assert "entries[134:198]" in str(err.value)


# Run as a file (Triton reads kernel sources from files) with TRITON_INTERPRET=1. The
# row-scan kernel below is this test's own: an independent check of the torch path's scan.
_INTERPRETER_CHECK = """
import torch
import triton
import triton.language as tl
from sglang.srt.layers.attention import page_table_probe as m
assert m.check_page_table_bounds is not None


@triton.jit
def _scan_rows_kernel(flat_ptr, start_ptr, lens_ptr, out_ptr, rows, cache_size,
                      SANITIZE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    start = tl.load(start_ptr + row).to(tl.int64)
    n = tl.load(lens_ptr + row).to(tl.int64)
    first = n
    count = tl.zeros((), dtype=tl.int64)
    first_val = tl.zeros((), dtype=tl.int64)
    for off in range(0, n, BLOCK):
        cols = off + tl.arange(0, BLOCK).to(tl.int64)
        live = cols < n
        v = tl.load(flat_ptr + start + cols, mask=live, other=0)
        bad = live & ((v < 0) | (v >= cache_size))
        if SANITIZE:
            tl.store(flat_ptr + start + cols, tl.zeros_like(v), mask=bad)
        else:
            col = tl.min(tl.where(bad, cols, n), axis=0)
            val = tl.sum(tl.where(bad & (cols == col), v.to(tl.int64), 0), axis=0)
            first_val = tl.where(col < first, val, first_val)
            first = tl.minimum(first, col)
            count += tl.sum(bad.to(tl.int64), axis=0)
    if not SANITIZE:
        tl.store(out_ptr + row, first)
        tl.store(out_ptr + rows + row, count)
        tl.store(out_ptr + 2 * rows + row, first_val)


def scan_rows_triton(flat, starts, lens, cache_size, sanitize):
    rows = starts.numel()
    out = torch.empty((3, rows), dtype=torch.int64)
    _scan_rows_kernel[(rows,)](flat, starts, lens, out, rows, cache_size, SANITIZE=sanitize,
                               BLOCK=1024)
    return None if sanitize else (out[0], out[1], out[2])


g = torch.Generator().manual_seed(0)
for rows, n, limit in ((4, 400, 50), (7, 3000, 900), (1, 5, 1)):
    flat = torch.randint(-2, limit + 8, (n,), generator=g, dtype=torch.int32)
    lens = torch.randint(0, n // rows + 1, (rows,), generator=g)
    starts = torch.cumsum(lens, 0) - lens
    ref = m._scan_rows(flat.clone(), starts, lens, limit, False)
    got = scan_rows_triton(flat.clone(), starts, lens, limit, False)
    for a, b in zip(ref, got):
        assert a.tolist() == b.tolist(), (a, b)
    x, y = flat.clone(), flat.clone()
    m._scan_rows(x, starts, lens, limit, True)
    scan_rows_triton(y, starts, lens, limit, True)
    assert torch.equal(x, y)


def run(use_triton, case):
    probe = m.PageTableProbe("trtllm_mha", "cpu", 300, use_triton=use_triton)
    assert probe.use_triton == use_triton
    args = case()
    try:
        if args[0] == "paged":
            probe.check_paged("full", 5, *args[1:])
        else:
            probe.check_ragged("swa", 0, *args[1:])
        probe.synchronize_and_poll()
        return ("silent", args[1].tolist())
    except m.PageTableBoundsError as err:
        return (str(err), err.dump, args[1].tolist())


def dense():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 100, (9, 300), generator=g, dtype=torch.int32)
    seq = torch.randint(0, 1200, (9,), generator=g)
    t[3, 200], t[5, 10], t[6, 299], t[7, :], seq[7] = 100, -4, 500, 999, 0
    return ("paged", t, seq, 4, 100)


def clean():
    t = torch.full((3, 50), 10**6, dtype=torch.int32)
    t[:, :5] = 7
    return ("paged", t, torch.tensor([17, 20, 1]), 4, 8)


def ragged():
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 50, (400,), generator=g)
    idx[120], idx[260], idx[395] = 50, 77, 999
    return ("ragged", idx, torch.tensor([0, 100, 100, 250, 390], dtype=torch.int32), 50)


def partial_last_page():
    # page 4: seq 6 reads 2 entries, seq 9 reads 3; the bad ones sit in each row's partial last page,
    # and the entries past them hold garbage that neither the check nor the dump may read
    t = torch.full((2, 8), 10**6, dtype=torch.int32)
    t[0, :2] = torch.tensor([3, 9])
    t[1, :3] = torch.tensor([1, 2, 8])
    return ("paged", t, torch.tensor([6, 9]), 4, 8)


def full_last_row():
    # the last row reads every entry of its row (seq = width x page): the dump window must stop at
    # the row's end, which is also the end of the table
    t = torch.arange(1, 3 * 6 + 1, dtype=torch.int32).view(3, 6) % 7
    t[2, 5] = 7
    return ("paged", t, torch.tensor([5, 0, 24]), 4, 7)


for case in (dense, clean, ragged, partial_last_page, full_last_row):
    a, b = run(False, case), run(True, case)
    assert a == b, (case.__name__, a, b)
    assert (a[0] == "silent") == (case is clean)
_, dump, table = run(True, partial_last_page)
assert (dump["row"], dump["entry"], dump["value"], dump["bad_rows"]) == (0, 1, 9, 2), dump
assert [r["entries"] for r in dump["rows"]] == [[3, 9], [1, 2, 8]], dump["rows"]
assert table[0][:2] == [3, 0] and table[1][:3] == [1, 2, 0] and table[0][2] == 10**6
# the device-side dump holds -1 past each row's live entries: the window never reads past them
for case, live in ((partial_last_page, [2, 3]), (full_last_row, [6])):
    probe = m.PageTableProbe("trtllm_mha", "cpu", 300, use_triton=True)
    try:
        probe.check_paged("full", 5, *case()[1:])
        probe.synchronize_and_poll()
        raise AssertionError(case.__name__ + ": no report")
    except m.PageTableBoundsError:
        pass
    raw = probe._sites["full"].dump_entries
    for i, n in enumerate(live):
        assert raw[i, n:].eq(-1).all(), (case.__name__, i, raw[i, : n + 4].tolist())
print("ok")
"""


def test_triton_scan_kernel_matches_torch_path_in_interpreter(tmp_path):
    """CPU twin of the CUDA path: the probe's Triton kernels under TRITON_INTERPRET
    give the torch path's reports, dumps and neutralised tables."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = tmp_path / "probe_interpreter_check.py"
    script.write_text(_INTERPRETER_CHECK)
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_bad_arguments_are_named():
    probe = PageTableProbe("trtllm_mha", "cpu", 8)
    seq, full, _ = _tables()
    with pytest.raises(ValueError, match="unknown layer kind 'local'"):
        probe.check_paged("local", 0, full, seq, 64, 17)
    with pytest.raises(ValueError, match="page table must be 2-D"):
        probe.check_paged("full", 0, full[0], seq, 64, 17)
    with pytest.raises(ValueError, match="max_row_entries must be positive"):
        PageTableProbe("x", "cpu", 0)


def test_switch(monkeypatch):
    monkeypatch.delenv("SGLANG_ENABLE_ASYNC_ASSERT", raising=False)
    assert maybe_create_page_table_probe("triton", "cpu", 8) is None
    monkeypatch.setenv("SGLANG_ENABLE_ASYNC_ASSERT", "1")
    assert isinstance(maybe_create_page_table_probe("triton", "cpu", 8), PageTableProbe)


class _Pool:
    """A KV pool with one token-major key buffer of ``pages`` pages for every layer."""

    def __init__(self, pages, page_size):
        self.buffer = torch.empty(pages * page_size, 1, 1)

    def get_key_buffer(self, layer_id):
        return self.buffer


def test_hooks_do_nothing_without_a_probe():
    seq, full, _ = _tables()
    full[1, 2] = 17
    before = full.clone()
    layer = types.SimpleNamespace(layer_id=5, sliding_window_size=None)
    poll_page_table_probe(None)
    probe_paged_table(None, layer, full, seq, 64, _Pool(17, 64))
    probe_ragged_table(None, layer, full.view(-1), torch.tensor([0, 8]), 1, _Pool(17, 1))
    assert torch.equal(full, before)


def test_a_table_the_probe_does_not_read_leaves_the_first_layer_slot_free():
    """fa passes None for local-attention tables: skipped, so the next full
    layer is the one checked."""
    probe = PageTableProbe("fa4", "cpu", 8)
    pool = _Pool(17, 64)
    seq, full, _ = _tables()
    local = types.SimpleNamespace(layer_id=2, sliding_window_size=None)
    probe_paged_table(probe, local, None, seq, 64, pool)
    full[1, 2] = 17
    with pytest.raises(PageTableBoundsError) as err:
        probe_paged_table(probe, types.SimpleNamespace(layer_id=5, sliding_window_size=-1),
                          full, seq, 64, pool)
    assert str(err.value) == FULL_MSG.replace("backend=trtllm_mha", "backend=fa4")


@pytest.mark.gpu
def test_cuda_probe_reports_without_sync_at_next_poll():
    """GPU twin of the tests above: the check enqueues device work only; the
    report comes from the pinned record at a later poll."""
    probe = PageTableProbe("trtllm_mha", "cuda", 8)
    seq, full, _ = _tables("cuda")
    probe.check_paged("full", 5, full, seq, 64, 17)
    probe.synchronize_and_poll()
    full[1, 2] = 17
    with pytest.raises(PageTableBoundsError) as err:
        probe.check_paged("full", 5, full, seq, 64, 17)
        probe.synchronize_and_poll()
    assert str(err.value) == FULL_MSG
    assert full[1, :3].tolist() == [1, 2, 0]


# -- through the backends ----------------------------------------------------------


def _layers():
    from sglang.srt.layers.radix_attention import RadixAttention

    swa = RadixAttention(4, 16, 1.0, 2, layer_id=0, sliding_window_size=512)
    full = RadixAttention(4, 16, 1.0, 2, layer_id=5)
    return swa, full


def _target_backend(env, name, page_size, monkeypatch):
    import test_attention_swa_pool_resolver as helpers

    monkeypatch.setenv("SGLANG_ENABLE_ASYNC_ASSERT", "1")
    target, allocator, _ = helpers._pools(page_size)
    runner = helpers._runner(
        env, target, allocator, page_size, draft=False, algorithm="NONE", backend=name
    )
    backend = helpers._build(env, name, runner)
    assert backend._page_table_probe is not None
    return backend, target


def test_backends_have_no_probe_when_off(engine_env, monkeypatch):
    import test_attention_swa_pool_resolver as helpers

    monkeypatch.delenv("SGLANG_ENABLE_ASYNC_ASSERT", raising=False)
    target, allocator, _ = helpers._pools(64)
    for name in ("trtllm_mha", "fa4", "triton"):
        runner = helpers._runner(
            engine_env, target, allocator, 64, draft=False, algorithm="NONE", backend=name
        )
        assert helpers._build(engine_env, name, runner)._page_table_probe is None


def test_trtllm_mha_forward_decode_probe(engine_env, monkeypatch):
    backend, target = _target_backend(engine_env, "trtllm_mha", 64, monkeypatch)
    swa_layer, full_layer = _layers()
    seq, full, swa = _tables()
    backend.forward_metadata = types.SimpleNamespace(
        page_table=full, swa_page_table=swa, cache_seqlens_int32=seq
    )
    calls = []

    def kernel(q, kv_cache, page_table, seq_lens, **kwargs):
        calls.append(page_table)
        return torch.zeros(q.shape[0], q.shape[1], q.shape[2])

    backend._run_fixed_q_len_decode = kernel
    fb = types.SimpleNamespace()
    q = torch.zeros(4, 4 * 16, dtype=torch.bfloat16)
    # Garbage past the sequence lengths: silent, kernel runs on both kinds.
    backend.forward_decode(q, None, None, swa_layer, fb, save_kv_cache=False)
    backend.forward_decode(q, None, None, full_layer, fb, save_kv_cache=False)
    assert calls[0] is swa and calls[1] is full
    # A planted out-of-range full-table entry fires before the kernel.
    full[1, 2] = 17
    with pytest.raises(PageTableBoundsError) as err:
        backend.forward_decode(q, None, None, full_layer, fb, save_kv_cache=False)
    assert str(err.value) == FULL_MSG
    assert len(calls) == 2


def test_trtllm_mha_swa_table_probe(engine_env, monkeypatch):
    backend, _ = _target_backend(engine_env, "trtllm_mha", 64, monkeypatch)
    swa_layer, _ = _layers()
    seq, full, swa = _tables()
    swa[2, 0] = 9
    backend.forward_metadata = types.SimpleNamespace(
        page_table=full, swa_page_table=swa, cache_seqlens_int32=seq
    )
    backend._run_fixed_q_len_decode = lambda *a, **k: pytest.fail("kernel ran")
    q = torch.zeros(4, 4 * 16, dtype=torch.bfloat16)
    with pytest.raises(PageTableBoundsError) as err:
        backend.forward_decode(
            q, None, None, swa_layer, types.SimpleNamespace(), save_kv_cache=False
        )
    assert str(err.value) == SWA_MSG


def test_fa4_hook_with_real_pool(engine_env, monkeypatch):
    backend, target = _target_backend(engine_env, "fa4", 64, monkeypatch)
    swa_layer, full_layer = _layers()
    probe = backend._page_table_probe
    seq, full, swa = _tables()
    probe_paged_table(probe, full_layer, full, seq, 64, backend.token_to_kv_pool)
    full[1, 2] = 17
    with pytest.raises(PageTableBoundsError) as err:
        probe_paged_table(probe, full_layer, full, seq, 64, backend.token_to_kv_pool)
    assert str(err.value) == FULL_MSG.replace("backend=trtllm_mha", "backend=fa4")


def test_triton_forward_decode_probe(engine_env, monkeypatch):
    backend, target = _target_backend(engine_env, "triton", 1, monkeypatch)
    swa_layer, _ = _layers()
    size_swa_rows = target.swa_kv_pool.k_buffer[0].shape[0]
    indices = torch.tensor([1, 2, 3, 4, size_swa_rows, 6, GARBAGE])
    indptr = torch.tensor([0, 3, 6], dtype=torch.int32)
    backend.forward_metadata = types.SimpleNamespace(
        window_kv_indptr=indptr, window_kv_indices=indices
    )
    q = torch.zeros(2, 4 * 16, dtype=torch.bfloat16)
    with pytest.raises(PageTableBoundsError) as err:
        backend.forward_decode(
            q, None, None, swa_layer, types.SimpleNamespace(), save_kv_cache=False
        )
    assert str(err.value).startswith(
        "page-table bounds probe: backend=triton layer_kind=swa layer=0 "
        f"request_row=1 entry=1 bad_index={size_swa_rows} not in [0, {size_swa_rows}) "
        "(seq_len=3, page_size=1, offending_rows=1)"
    )


def test_probe_turns_the_frozen_kv_swa_bug_into_an_error(engine_env, monkeypatch):
    """The 0.5.23 fa4 FROZEN_KV draft bug pattern: an SWA layer handed the
    full-pool table reads past the SWA cache. The probe names it."""
    import test_attention_swa_pool_resolver as helpers

    from sglang.srt.speculative.frozen_kv_mtp_utils import target_kv_pool_view

    monkeypatch.setenv("SGLANG_ENABLE_ASYNC_ASSERT", "1")
    target, allocator, draft_pool = helpers._pools(64)  # full 16 pages, SWA 8
    runner = helpers._runner(
        engine_env, draft_pool, allocator, 64, draft=True, algorithm="FROZEN_KV_MTP",
        backend="fa4",
    )
    backend = helpers._build(engine_env, "fa4", runner)
    swa_layer, _ = _layers()
    seq = torch.tensor([12 * 64], dtype=torch.int32)
    full_table = torch.arange(1, 17, dtype=torch.int32).view(1, 16)  # full-pool pages
    view = target_kv_pool_view(
        types.SimpleNamespace(), types.SimpleNamespace(target_token_to_kv_pool=target), backend
    )
    with view, pytest.raises(PageTableBoundsError) as err:
        probe_paged_table(
            backend._page_table_probe, swa_layer, full_table, seq, 64, backend.token_to_kv_pool
        )
    assert str(err.value).splitlines()[0] == (
        "page-table bounds probe: backend=fa4 layer_kind=swa layer=0 request_row=0 "
        "entry=8 bad_index=9 not in [0, 9) (seq_len=768, page_size=64, offending_rows=1)"
    )
