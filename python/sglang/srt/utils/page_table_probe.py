"""Opt-in, sync-free bounds probe for the page tables an attention kernel reads.

An attention kernel trusts its page table: an entry past the end of the KV
cache it indexes is an illegal memory access that surfaces later, far from its
cause (the FROZEN_KV MTP draft crash on Gemma-4 was one: SWA layers were handed
full-pool page indices). With ``SGLANG_ENABLE_ASYNC_ASSERT=1`` the backends that
Gemma-4 uses (trtllm_mha, triton, fa3/fa4) run this probe on the table of the
first layer of each kind (full, swa) of every forward, right before the kernel.

What is checked: every entry a request will read, i.e. the first
``ceil(seq_len / page_size)`` entries of its row of a dense page table
(trtllm_mha, fa), or the ``[indptr[i], indptr[i+1])`` slice of a ragged index
array (triton), must lie in ``[0, cache_size)``. Entries past a request's
length are not read by the kernel and may hold garbage (dense tables are
allocated with ``torch.empty``); they are ignored.

How it stays sync-free: the check is a handful of device ops. On a violation
they (1) record the first offending entry (row, entry, value, seq_len) and a
copy of up to ``DUMP_ROWS`` offending rows in a sticky per-site device record,
(2) redirect the offending entries to page 0 (the pools' reserved padding page)
so the kernel that follows cannot fault, and (3) copy the small record to
pinned host memory without waiting. The host reads that pinned copy (a plain
memory read, no synchronisation) at every later probe call and at every
``poll()``; the backends call ``poll()`` when they build the metadata of the
next forward, eager or CUDA-graph replay. When it sees a tripped record it
synchronises once (only on this failure path), reads the dump, and raises
:class:`PageTableBoundsError` naming the backend, the layer kind, the layer,
the request row and the bad index.

Trade-off: the exception arrives after the GPU has run the violating step
(one step later with a synchronous scheduler, two with the overlap scheduler),
not inside it; the attention output of the offending rows in that step was
computed from page 0 and is wrong. The engine then stops on the exception.
Raising inside the violating step would need a device-to-host synchronisation
on every forward. When the switch is off no probe object exists and the
backends pay one ``is not None`` test per layer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from sglang.srt.environ import envs

# Offending rows copied into the dump (the first ones, by row index).
DUMP_ROWS = 4
# Record layout (int64): tripped, row, entry, value, seq_len, bad_rows.
_TRIPPED, _ROW, _ENTRY, _VALUE, _SEQ, _BAD_ROWS = range(6)
_RECORD_LEN = 6

LAYER_KINDS = ("full", "swa")


class PageTableBoundsError(RuntimeError):
    """A page index an attention kernel was about to read is out of range.

    ``dump`` holds the details: backend, kind, layer, row, entry, value,
    cache_size, seq_len, page_size, bad_rows and ``rows`` (a list of
    ``{"row", "seq_len", "entries"}`` for up to ``DUMP_ROWS`` offending rows,
    each truncated to the entries the request reads).
    """

    def __init__(self, message: str, dump: Dict[str, Any]):
        super().__init__(message)
        self.dump = dump


def page_table_probe_enabled() -> bool:
    return bool(envs.SGLANG_ENABLE_ASYNC_ASSERT.get())


def layer_kind(layer: Any) -> str:
    """'swa' for a sliding-window layer, 'full' otherwise."""
    window = getattr(layer, "sliding_window_size", None)
    return "swa" if window is not None and window > -1 else "full"


def maybe_create_page_table_probe(
    backend: str, device: Any, max_row_entries: int
) -> Optional["PageTableProbe"]:
    """The backend's probe when ``SGLANG_ENABLE_ASYNC_ASSERT`` is on, else None."""
    if not page_table_probe_enabled():
        return None
    return PageTableProbe(backend, device, max_row_entries)


@dataclass
class _Site:
    """Sticky device record + dump of one (layer kind) of one backend."""

    record: torch.Tensor
    host: torch.Tensor
    dump_rows: torch.Tensor
    dump_seq: torch.Tensor
    dump_entries: torch.Tensor
    layer_id: Optional[int] = None
    info: Dict[str, Any] = field(default_factory=dict)


class PageTableProbe:
    """Bounds probe for one attention backend instance (see module docstring)."""

    def __init__(self, backend: str, device: Any, max_row_entries: int):
        if not backend:
            raise ValueError("PageTableProbe needs a backend name")
        if max_row_entries is None or int(max_row_entries) <= 0:
            raise ValueError(
                f"PageTableProbe({backend!r}): max_row_entries must be positive, "
                f"got {max_row_entries!r}"
            )
        self.backend = backend
        self.device = torch.device(device)
        self.max_row_entries = int(max_row_entries)
        self._lock = threading.Lock()
        self._raised = False
        pin = self.device.type == "cuda"
        self._sites: Dict[str, _Site] = {}
        # Allocated here, outside any CUDA-graph capture.
        for kind in LAYER_KINDS:
            self._sites[kind] = _Site(
                record=torch.zeros(_RECORD_LEN, dtype=torch.int64, device=self.device),
                host=torch.zeros(_RECORD_LEN, dtype=torch.int64, pin_memory=pin),
                dump_rows=torch.full(
                    (DUMP_ROWS,), -1, dtype=torch.int64, device=self.device
                ),
                dump_seq=torch.zeros(DUMP_ROWS, dtype=torch.int64, device=self.device),
                dump_entries=torch.full(
                    (DUMP_ROWS, self.max_row_entries),
                    -1,
                    dtype=torch.int64,
                    device=self.device,
                ),
            )

    # -- gate ------------------------------------------------------------------

    def _should_check(self, kind: str, layer_id: int) -> bool:
        """Check the first layer of each kind only: all layers of a kind read
        the same table against caches of the same size."""
        site = self._sites.get(kind)
        if site is None:
            raise ValueError(
                f"page-table probe ({self.backend}): unknown layer kind {kind!r}, "
                f"expected one of {LAYER_KINDS}"
            )
        if site.layer_id is None:
            site.layer_id = int(layer_id)
        return site.layer_id == int(layer_id)

    # -- checks ----------------------------------------------------------------

    def check_paged(
        self,
        kind: str,
        layer_id: int,
        page_table: torch.Tensor,
        seq_lens: torch.Tensor,
        page_size: int,
        cache_size: int,
    ) -> None:
        """Dense table ``[rows, width]``: row i reads its first
        ``ceil(seq_lens[i] / page_size)`` entries, each must be < cache_size."""
        self.poll()
        if not self._should_check(kind, layer_id):
            return
        if page_table is None or seq_lens is None:
            return
        if page_table.dim() != 2:
            raise ValueError(
                f"page-table probe ({self.backend}): page table must be 2-D, "
                f"got shape {tuple(page_table.shape)}"
            )
        if page_size <= 0:
            raise ValueError(
                f"page-table probe ({self.backend}): page_size must be positive, "
                f"got {page_size}"
            )
        rows = min(page_table.shape[0], seq_lens.shape[0])
        width = page_table.shape[1]
        if rows == 0 or width == 0:
            return
        table = page_table[:rows]
        seq = seq_lens[:rows].to(torch.int64)
        used = (seq + (page_size - 1)) // page_size
        cols = torch.arange(width, device=table.device)
        live = cols.unsqueeze(0) < used.unsqueeze(1)
        bad = live & ((table < 0) | (table >= cache_size))
        site = self._sites[kind]
        site.info = {
            "cache_size": int(cache_size),
            "page_size": int(page_size),
            "layout": "paged",
        }

        flat_bad = bad.reshape(-1)
        first = flat_bad.to(torch.int32).argmax()
        row = first // width
        entry = first - row * width
        value = table.reshape(-1).index_select(0, first.view(1)).to(torch.int64)[0]
        row_bad = bad.any(dim=1)
        order = self._bad_rows_first(row_bad)
        dump_vals = table.index_select(0, order).to(torch.int64)
        dump_cols = torch.arange(width, device=table.device).unsqueeze(0)
        dump_live = dump_cols < used.index_select(0, order).unsqueeze(1)
        dump_vals = torch.where(dump_live, dump_vals, torch.full_like(dump_vals, -1))
        self._commit(
            site,
            flat_bad.any(),
            row,
            entry,
            value,
            seq.index_select(0, row.view(1))[0],
            row_bad.sum(),
            order,
            seq.index_select(0, order),
            dump_vals,
        )
        table.masked_fill_(bad, 0)
        self.poll()

    def check_ragged(
        self,
        kind: str,
        layer_id: int,
        indices: torch.Tensor,
        indptr: torch.Tensor,
        cache_size: int,
    ) -> None:
        """Ragged rows (triton): row i reads ``indices[indptr[i]:indptr[i+1]]``,
        each must be < cache_size."""
        self.poll()
        if not self._should_check(kind, layer_id):
            return
        if indices is None or indptr is None:
            return
        if indices.dim() != 1 or indptr.dim() != 1 or indptr.numel() < 2:
            raise ValueError(
                f"page-table probe ({self.backend}): ragged check needs 1-D indices "
                f"and an indptr of at least 2 entries, got {tuple(indices.shape)} "
                f"and {tuple(indptr.shape)}"
            )
        n = indices.numel()
        if n == 0:
            return
        nrows = indptr.numel() - 1
        ptr = indptr.to(torch.int64)
        pos = torch.arange(n, device=indices.device)
        live = (pos >= ptr[0]) & (pos < ptr[nrows])
        bad = live & ((indices < 0) | (indices >= cache_size))
        site = self._sites[kind]
        site.info = {"cache_size": int(cache_size), "page_size": 1, "layout": "ragged"}

        first = bad.to(torch.int32).argmax()
        row = (torch.searchsorted(ptr, first.view(1), right=True) - 1).clamp(
            0, nrows - 1
        )[0]
        start = ptr.index_select(0, row.view(1))[0]
        entry = first - start
        value = indices.index_select(0, first.view(1)).to(torch.int64)[0]
        lens = ptr[1:] - ptr[:-1]
        row_of = (torch.searchsorted(ptr, pos, right=True) - 1).clamp(0, nrows - 1)
        row_bad = torch.zeros(nrows, dtype=torch.int32, device=indices.device)
        row_bad.scatter_add_(0, row_of, bad.to(torch.int32))
        row_bad = row_bad > 0
        order = self._bad_rows_first(row_bad)
        width = self.max_row_entries
        offs = torch.arange(width, device=indices.device).unsqueeze(0)
        gather_at = ptr.index_select(0, order).unsqueeze(1) + offs
        dump_live = offs < lens.index_select(0, order).unsqueeze(1)
        dump_vals = indices.index_select(
            0, gather_at.clamp(0, n - 1).reshape(-1)
        ).view(order.numel(), width)
        dump_vals = torch.where(
            dump_live, dump_vals.to(torch.int64), torch.full_like(gather_at, -1)
        )
        self._commit(
            site,
            bad.any(),
            row,
            entry,
            value,
            lens.index_select(0, row.view(1))[0],
            row_bad.sum(),
            order,
            lens.index_select(0, order),
            dump_vals,
        )
        indices.masked_fill_(bad, 0)
        self.poll()

    def check_layer_paged(
        self,
        layer: Any,
        page_table: torch.Tensor,
        seq_lens: torch.Tensor,
        page_size: int,
        pool: Any,
    ) -> None:
        """check_paged for ``layer``: kind from its window, cache size (pages)
        from the KV buffer ``pool`` hands out for it."""
        kind = layer_kind(layer)
        if not self._should_check(kind, layer.layer_id):
            self.poll()
            return
        pages = cache_entries(pool.get_key_buffer(layer.layer_id), page_size, "pages")
        self.check_paged(kind, layer.layer_id, page_table, seq_lens, page_size, pages)

    def check_layer_ragged(
        self,
        layer: Any,
        indices: torch.Tensor,
        indptr: torch.Tensor,
        page_size: int,
        pool: Any,
    ) -> None:
        """check_ragged for ``layer``; the indices are token slots."""
        kind = layer_kind(layer)
        if not self._should_check(kind, layer.layer_id):
            self.poll()
            return
        slots = cache_entries(pool.get_key_buffer(layer.layer_id), page_size, "slots")
        self.check_ragged(kind, layer.layer_id, indices, indptr, slots)

    @staticmethod
    def _bad_rows_first(row_bad: torch.Tensor) -> torch.Tensor:
        """Indices of up to DUMP_ROWS rows, offending rows first (by index)."""
        key = (~row_bad).to(torch.int32)
        order = torch.sort(key, stable=True).indices
        return order[:DUMP_ROWS]

    def _commit(
        self,
        site: _Site,
        any_bad: torch.Tensor,
        row: torch.Tensor,
        entry: torch.Tensor,
        value: torch.Tensor,
        seq_len: torch.Tensor,
        bad_rows: torch.Tensor,
        order: torch.Tensor,
        order_seq: torch.Tensor,
        dump_vals: torch.Tensor,
    ) -> None:
        # Keep only the first violation per site (sticky record).
        fire = any_bad & (site.record[_TRIPPED] == 0)
        new = torch.stack(
            [
                any_bad.to(torch.int64),
                row.to(torch.int64),
                entry.to(torch.int64),
                value,
                seq_len.to(torch.int64),
                bad_rows.to(torch.int64),
            ]
        )
        site.record.copy_(torch.where(fire, new, site.record))
        k = order.numel()
        w = min(dump_vals.shape[1], self.max_row_entries)
        rows_new = torch.full_like(site.dump_rows, -1)
        rows_new[:k] = order
        seq_new = torch.zeros_like(site.dump_seq)
        seq_new[:k] = order_seq.to(torch.int64)
        vals_new = torch.full_like(site.dump_entries, -1)
        vals_new[:k, :w] = dump_vals[:, :w]
        site.dump_rows.copy_(torch.where(fire, rows_new, site.dump_rows))
        site.dump_seq.copy_(torch.where(fire, seq_new, site.dump_seq))
        site.dump_entries.copy_(torch.where(fire, vals_new, site.dump_entries))
        site.host.copy_(site.record, non_blocking=site.host.is_pinned())

    # -- reporting -------------------------------------------------------------

    def poll(self) -> None:
        """Raise PageTableBoundsError if a probe has tripped and its record has
        reached the host. Reads pinned host memory only; never synchronises
        unless a violation is being reported."""
        if self._raised:
            return
        for kind, site in self._sites.items():
            if int(site.host[_TRIPPED]) != 0:
                self._raise(kind, site)

    def synchronize_and_poll(self) -> None:
        """Wait for the device, then poll (tests, shutdown paths)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.poll()

    def _raise(self, kind: str, site: _Site) -> None:
        with self._lock:
            if self._raised:
                return
            self._raised = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        rec = site.record.cpu().tolist()
        rows = site.dump_rows.cpu().tolist()
        seqs = site.dump_seq.cpu().tolist()
        entries = site.dump_entries.cpu()
        info = dict(site.info)
        page_size = info.get("page_size", 1)
        dumped = []
        for i, r in enumerate(rows):
            if r < 0 or i >= rec[_BAD_ROWS]:
                continue
            n = seqs[i] if info.get("layout") == "ragged" else -(-seqs[i] // page_size)
            n = min(n, self.max_row_entries)
            dumped.append(
                {"row": r, "seq_len": seqs[i], "entries": entries[i, :n].tolist()}
            )
        dump = {
            "backend": self.backend,
            "kind": kind,
            "layer": site.layer_id,
            "row": rec[_ROW],
            "entry": rec[_ENTRY],
            "value": rec[_VALUE],
            "seq_len": rec[_SEQ],
            "bad_rows": rec[_BAD_ROWS],
            "cache_size": info.get("cache_size"),
            "page_size": page_size,
            "rows": dumped,
        }
        raise PageTableBoundsError(format_message(dump), dump)


def cache_entries(buffer: torch.Tensor, page_size: int, unit: str) -> int:
    """Size of a KV buffer in pages or token slots. A 3-D buffer is token-major
    ``[slots, heads, dim]``; a 4-D one is page-major ``[pages, ...]``."""
    if unit not in ("pages", "slots"):
        raise ValueError(f"cache_entries: unit must be 'pages' or 'slots', got {unit!r}")
    if buffer.dim() >= 4:
        pages = buffer.shape[0]
        return pages if unit == "pages" else pages * page_size
    slots = buffer.shape[0]
    return slots // page_size if unit == "pages" else slots


def format_message(dump: Dict[str, Any]) -> str:
    """The exception text: one summary line, then the dumped rows."""
    head = (
        f"page-table bounds probe: backend={dump['backend']} "
        f"layer_kind={dump['kind']} layer={dump['layer']} "
        f"request_row={dump['row']} entry={dump['entry']} "
        f"bad_index={dump['value']} not in [0, {dump['cache_size']}) "
        f"(seq_len={dump['seq_len']}, page_size={dump['page_size']}, "
        f"offending_rows={dump['bad_rows']})"
    )
    lines: List[str] = [head]
    for r in dump["rows"]:
        entries = r["entries"]
        shown = entries if len(entries) <= 64 else entries[:32] + ["..."] + entries[-32:]
        lines.append(f"  row {r['row']} (seq_len={r['seq_len']}): {shown}")
    return "\n".join(lines)
