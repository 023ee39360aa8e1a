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

How it stays sync-free (CUDA): a check is two Triton launches and one copy
(sglang.kernels.ops.attention.page_table_bounds). The first launch, one program
per row, scans only the row's live entries, finds the first out-of-range one,
keeps a window of the offending row and redirects its bad entries to page 0
(the pools' reserved padding page), so the kernel that follows cannot fault.
The second, a single program, writes the first violation and up to
``DUMP_ROWS`` offending rows into a sticky per-kind device record, unless that
record has already tripped. The record is then copied to pinned host memory
without waiting. The host reads that pinned copy (a plain memory read, no
synchronisation) at every later probe call and at every ``poll()``; the
backends poll when they build the metadata of the next forward, eager or
CUDA-graph replay. When it sees a tripped record it synchronises once (only on
this failure path), reads the dump, and raises :class:`PageTableBoundsError`
naming the backend, the layer kind, the layer, the request row and the bad
index. Without the Triton path (a CPU device, or ``use_triton=False``) the
same check runs as torch ops, which read the longest row length on the host;
on CPU the record is host memory, so the check itself raises.

Trade-off: the exception arrives after the GPU has run the violating step
(one step later with a synchronous scheduler, two with the overlap scheduler),
not inside it; the attention output of the offending rows in that step was
computed from page 0 and is wrong. The engine then stops on the exception.
Raising inside the violating step would need a device-to-host synchronisation
on every forward.

The backends hold ``_page_table_probe`` (None when the switch is off: no probe
object, nothing launched) and call it through the three hooks at the end of
this module, one call per site; off, a hook costs a call and one ``is None``
test.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from sglang.srt.environ import envs

try:
    from sglang.kernels.ops.attention.page_table_bounds import check_page_table_bounds
except ImportError:  # pragma: no cover - no Triton: the torch path only
    check_page_table_bounds = None

# Offending rows copied into the dump (the first ones, by row index), and the
# entries kept per row: a window that starts a quarter before its first bad one.
DUMP_ROWS = 4
DUMP_WINDOW = 64
# Record layout (int64): tripped, row, entry, value, seq_len, bad_rows.
_TRIPPED, _ROW, _ENTRY, _VALUE, _SEQ, _BAD_ROWS = range(6)
_RECORD_LEN = 6

LAYER_KINDS = ("full", "swa")


class PageTableBoundsError(RuntimeError):
    """A page index an attention kernel was about to read is out of range.

    ``dump`` holds the details: backend, kind, layer, row, entry, value,
    cache_size, seq_len, page_size, bad_rows and ``rows``: for up to
    ``DUMP_ROWS`` offending rows, ``{"row", "seq_len", "first_entry",
    "entries"}`` with up to ``DUMP_WINDOW`` of the entries the request reads,
    starting a quarter window before its first bad entry.
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
    dump_lo: torch.Tensor
    dump_entries: torch.Tensor
    layer_id: Optional[int] = None
    info: Dict[str, Any] = field(default_factory=dict)


class PageTableProbe:
    """Bounds probe for one attention backend instance (see module docstring)."""

    def __init__(
        self,
        backend: str,
        device: Any,
        max_row_entries: int,
        use_triton: Optional[bool] = None,
    ):
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
        self.dump_width = min(DUMP_WINDOW, self.max_row_entries)
        # Two Triton launches per check on CUDA (page_table_bounds); torch ops elsewhere.
        if use_triton is None:
            use_triton = self.device.type == "cuda"
        self.use_triton = bool(use_triton) and check_page_table_bounds is not None
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
                dump_lo=torch.zeros(DUMP_ROWS, dtype=torch.int64, device=self.device),
                dump_entries=torch.full(
                    (DUMP_ROWS, self.dump_width),
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
        if table.stride(1) != 1:
            raise ValueError(
                f"page-table probe ({self.backend}): page table rows must be "
                f"contiguous, got strides {tuple(table.stride())}"
            )
        self._sites[kind].info = {
            "cache_size": int(cache_size),
            "page_size": int(page_size),
            "layout": "paged",
        }
        if self.use_triton:
            self._check_rows_triton(
                kind, table, seq_lens[:rows], False, rows, cache_size, page_size,
                width, table.stride(0),
            )
            return
        seq = seq_lens[:rows].to(torch.int64)
        lens = ((seq + (page_size - 1)) // page_size).clamp(0, width)
        starts = torch.arange(rows, device=table.device) * table.stride(0)
        self._check_rows(kind, table, starts, lens, seq, int(cache_size))

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
        if indices.numel() == 0:
            return
        if not indices.is_contiguous():
            raise ValueError(
                f"page-table probe ({self.backend}): ragged indices must be contiguous"
            )
        self._sites[kind].info = {
            "cache_size": int(cache_size),
            "page_size": 1,
            "layout": "ragged",
        }
        if self.use_triton:
            self._check_rows_triton(
                kind, indices, indptr, True, indptr.numel() - 1, cache_size, 1, 0, 0
            )
            return
        ptr = indptr.to(torch.int64)
        starts = ptr[:-1]
        lens = (ptr[1:] - starts).clamp_min(0)
        self._check_rows(kind, indices, starts, lens, lens, int(cache_size))

    def _check_rows_triton(
        self,
        kind: str,
        values: torch.Tensor,
        lens_src: torch.Tensor,
        ragged: bool,
        rows: int,
        cache_size: int,
        page_size: int,
        width: int,
        stride_row: int,
    ) -> None:
        """CUDA path: one launch scans, dumps and neutralises every row; one
        single-program launch updates the sticky record; one async copy."""
        site = self._sites[kind]
        check_page_table_bounds(
            values,
            lens_src,
            ragged=ragged,
            rows=rows,
            cache_size=cache_size,
            page_size=page_size,
            width=width,
            stride_row=stride_row,
            record=site.record,
            dump_rows=site.dump_rows,
            dump_seq=site.dump_seq,
            dump_lo=site.dump_lo,
            dump_entries=site.dump_entries,
        )
        site.host.copy_(site.record, non_blocking=site.host.is_pinned())
        self.poll()

    def _check_rows(
        self,
        kind: str,
        values: torch.Tensor,
        starts: torch.Tensor,
        lens: torch.Tensor,
        seq: torch.Tensor,
        cache_size: int,
    ) -> None:
        """Row i reads values.flatten()[starts[i] : starts[i] + lens[i]]."""
        site = self._sites[kind]
        flat = values.view(-1) if values.is_contiguous() else None
        if flat is None:
            # A non-contiguous table view (never built by the backends).
            raise ValueError(
                f"page-table probe ({self.backend}): page table must be contiguous"
            )
        first_col, count, first_val = _scan_rows(
            flat, starts, lens, cache_size, sanitize=False
        )
        row_bad = count > 0
        row = row_bad.to(torch.int32).argmax()
        order = self._bad_rows_first(row_bad)
        # Dump a window of each offending row before it is neutralised.
        lo = (first_col.index_select(0, order) - self.dump_width // 4).clamp_min(0)
        col = lo.unsqueeze(1) + torch.arange(self.dump_width, device=flat.device)
        dump_live = col < lens.index_select(0, order).unsqueeze(1)
        at = (starts.index_select(0, order).unsqueeze(1) + col).clamp(
            0, flat.numel() - 1
        )
        dump_vals = flat.index_select(0, at.reshape(-1)).view(at.shape).to(torch.int64)
        dump_vals = torch.where(dump_live, dump_vals, torch.full_like(dump_vals, -1))
        one = row.view(1)
        self._commit(
            site,
            row_bad.any(),
            row,
            first_col.index_select(0, one)[0],
            first_val.index_select(0, one)[0],
            seq.index_select(0, one)[0],
            row_bad.sum(),
            order,
            seq.index_select(0, order),
            lo,
            dump_vals,
        )
        # The kernel that follows reads page 0 instead of faulting.
        _scan_rows(flat, starts, lens, cache_size, sanitize=True)
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
        from the KV buffer ``pool`` hands out for it. A None table (one the
        probe does not read, e.g. fa's local-attention tables) is skipped and
        does not take the layer-of-its-kind slot."""
        kind = self._kind_to_check(page_table, layer)
        if kind is None:
            return
        pages = cache_entries(pool.get_key_buffer(layer.layer_id), page_size, "pages")
        self.check_paged(kind, layer.layer_id, page_table, seq_lens, page_size, pages)

    def _kind_to_check(self, table: Optional[torch.Tensor], layer: Any) -> Optional[str]:
        """The layer's kind when ``table`` is one to check now, else None (after polling): a None
        table, or a layer that is not the first of its kind this forward."""
        if table is None:
            self.poll()
            return None
        kind = layer_kind(layer)
        if not self._should_check(kind, layer.layer_id):
            self.poll()
            return None
        return kind

    def check_layer_ragged(
        self,
        layer: Any,
        indices: torch.Tensor,
        indptr: torch.Tensor,
        page_size: int,
        pool: Any,
    ) -> None:
        """check_ragged for ``layer``; the indices are token slots. A None
        table is skipped as in check_layer_paged."""
        kind = self._kind_to_check(indices, layer)
        if kind is None:
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
        order_lo: torch.Tensor,
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
        w = min(dump_vals.shape[1], self.dump_width)
        rows_new = torch.full_like(site.dump_rows, -1)
        rows_new[:k] = order
        seq_new = torch.zeros_like(site.dump_seq)
        seq_new[:k] = order_seq.to(torch.int64)
        vals_new = torch.full_like(site.dump_entries, -1)
        vals_new[:k, :w] = dump_vals[:, :w]
        site.dump_rows.copy_(torch.where(fire, rows_new, site.dump_rows))
        site.dump_seq.copy_(torch.where(fire, seq_new, site.dump_seq))
        lo_new = torch.zeros_like(site.dump_lo)
        lo_new[:k] = order_lo
        site.dump_lo.copy_(torch.where(fire, lo_new, site.dump_lo))
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
        los = site.dump_lo.cpu().tolist()
        entries = site.dump_entries.cpu()
        info = dict(site.info)
        page_size = info.get("page_size", 1)
        dumped = []
        for i, r in enumerate(rows):
            if r < 0 or i >= rec[_BAD_ROWS]:
                continue
            n = seqs[i] if info.get("layout") == "ragged" else -(-seqs[i] // page_size)
            n = max(0, min(n - los[i], self.dump_width))
            dumped.append(
                {
                    "row": r,
                    "seq_len": seqs[i],
                    "first_entry": los[i],
                    "entries": entries[i, :n].tolist(),
                }
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


def _scan_rows(flat, starts, lens, cache_size, sanitize):
    """Per row: (index of the first out-of-range entry among the first lens[i]
    entries at starts[i], number of such entries, its value); with sanitize,
    set those entries to 0 instead. Torch ops over a [rows, longest row]
    window (the longest row length is read on the host)."""
    rows = starts.numel()
    width = int(lens.max().item()) if rows else 0
    if width == 0:
        zeros = torch.zeros(rows, dtype=torch.int64, device=flat.device)
        return None if sanitize else (zeros, zeros.clone(), zeros.clone())
    offs = torch.arange(width, device=flat.device).unsqueeze(0)
    live = offs < lens.unsqueeze(1)
    at = (starts.unsqueeze(1) + offs).clamp(0, flat.numel() - 1)
    vals = flat[at]
    bad = live & ((vals < 0) | (vals >= cache_size))
    if sanitize:
        flat[at[bad]] = 0
        return None
    first_col = torch.where(bad, offs.expand_as(bad), lens.unsqueeze(1)).amin(1)
    count = bad.sum(1)
    first_val = vals.gather(1, first_col.clamp(max=width - 1).unsqueeze(1))[:, 0]
    first_val = torch.where(count > 0, first_val.to(torch.int64), 0)
    return first_col, count, first_val


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
        lo = r["first_entry"]
        lines.append(
            f"  row {r['row']} (seq_len={r['seq_len']}) "
            f"entries[{lo}:{lo + len(r['entries'])}]: {r['entries']}"
        )
    return "\n".join(lines)


# -- backend hooks ------------------------------------------------------------------
# One call per site in trtllm_mha, triton and fa3/fa4; ``probe`` is the backend's
# ``_page_table_probe`` (None when the switch is off).


def poll_page_table_probe(probe: Optional[PageTableProbe]) -> None:
    """At metadata build: raise a violation an earlier forward recorded."""
    if probe is not None:
        probe.poll()


def probe_paged_table(
    probe: Optional[PageTableProbe],
    layer: Any,
    page_table: Optional[torch.Tensor],
    seq_lens: torch.Tensor,
    page_size: int,
    pool: Any,
) -> None:
    """Before a kernel that reads a dense page table (trtllm_mha, fa3/fa4)."""
    if probe is not None:
        probe.check_layer_paged(layer, page_table, seq_lens, page_size, pool)


def probe_ragged_table(
    probe: Optional[PageTableProbe],
    layer: Any,
    indices: Optional[torch.Tensor],
    indptr: torch.Tensor,
    page_size: int,
    pool: Any,
) -> None:
    """Before a kernel that reads ragged token-slot indices (triton)."""
    if probe is not None:
        probe.check_layer_ragged(layer, indices, indptr, page_size, pool)
