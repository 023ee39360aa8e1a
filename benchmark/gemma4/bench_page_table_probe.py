"""Cost of the opt-in page-table bounds probe (patch 0031) on a Gemma-4 decode batch.

Workload: a decode batch of 64 requests on a Gemma-4 26B-A4B geometry (30
layers: 25 sliding-window layers, 8 KV heads x 256, window 1024; 5 full layers,
2 KV heads x 512; 16 query heads; context 262144). KV pools sized as the
0.5.23 configurator sizes them for that model at a 40 GiB budget
(full 232960 tokens, SWA 186368 tokens). Sequence lengths are drawn uniformly
from [512, 6144] (seeded), which fills the full pool to about 90 %.

Per forward the probe runs twice (first full layer, first SWA layer) on:
  * trtllm_mha / fa tables: dense [64, ceil(262144 / page)] int32 tables, for
    page 64 and page 1, with garbage past each request's pages;
  * triton: ragged token-slot indices (full rows and 1024-token window rows).

Timed, median of repeats, each variant captured in a CUDA graph (as the decode
step runs in production) and also eager (Python included):
  * the probe alone (both kinds) per forward;
  * the reference: sglang's own Triton decode-attention kernel (the kernel
    Gemma-4 uses on Hopper) over all 30 layers of one forward;
  * reference + probe, and the ratio (reference + probe) / reference.
The ratio is to the attention kernels alone, so it bounds the ratio to a full
decode step from above. Probe off means no probe object: nothing is launched.

Also checked on the device: a clean batch stays silent, garbage past the
sequence lengths is ignored, a planted out-of-range index in the full and in
the SWA table is reported with the exact message, and the offending entry is
redirected to page 0.

Usage: python benchmark/gemma4/bench_page_table_probe.py --out DIR
  [--sglang-root DIR]  directory holding an importable ``sglang`` package
  [--small]            tiny shapes (CPU smoke run with TRITON_INTERPRET=1)
  [--commit SHA]       commit to stamp (default: git HEAD of the working directory)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)
from graph_timing import graph_time_us  # noqa: E402


SMALL_GEOMETRY = dict(bs=4, q_heads=4, swa_kv=2, swa_dim=32, full_kv=1, full_dim=64,
                      swa_layers=2, full_layers=1, window=16, context=256,
                      full_tokens=2048, swa_tokens=1024, seq_lo=8, seq_hi=200)
GEMMA4_26B_GEOMETRY = dict(bs=64, q_heads=16, swa_kv=8, swa_dim=256, full_kv=2, full_dim=512,
                           swa_layers=25, full_layers=5, window=1024, context=262144,
                           full_tokens=232960, swa_tokens=186368, seq_lo=512, seq_hi=6144)
GARBAGE = 2**30


class Batch:
    """The decode batch: seeded sequence lengths and the page tables the backends hand the probe."""

    def __init__(self, geo, device, torch):
        self.geo, self.device, self.torch = geo, device, torch
        self.g = torch.Generator().manual_seed(1234)
        self.bs = geo["bs"]
        self.seq_cpu = torch.randint(geo["seq_lo"], geo["seq_hi"] + 1, (self.bs,), generator=self.g)
        self.seq = self.seq_cpu.to(device=device, dtype=torch.int32)

    def dense_tables(self, page):
        """trtllm_mha / fa tables [bs, ceil(context / page)] with garbage past each request's pages."""
        torch, geo, g = self.torch, self.geo, self.g
        width = -(-geo["context"] // page)
        full_pages = geo["full_tokens"] // page
        swa_pages = geo["swa_tokens"] // page
        full = torch.full((self.bs, width), GARBAGE, dtype=torch.int32)
        swa = torch.full((self.bs, width), GARBAGE, dtype=torch.int32)
        perm = torch.randperm(full_pages - 1, generator=g) + 1
        pos = 0
        for i, s in enumerate(self.seq_cpu.tolist()):
            n = -(-s // page)
            full[i, :n] = perm[pos:pos + n]
            pos += n
            swa[i, :n] = torch.randint(1, swa_pages, (n,), generator=g)
        # +1: the padding page, as a pool buffer of size + page rows has.
        return full.to(self.device), swa.to(self.device), full_pages + 1, swa_pages + 1

    def ragged(self):
        """triton's token-slot indices: full rows and window rows, with their indptrs."""
        torch, geo, g = self.torch, self.geo, self.g
        lens = self.seq_cpu.tolist()
        wlens = [min(s, geo["window"]) for s in lens]
        full = torch.randint(1, geo["full_tokens"], (sum(lens) + 4096,), generator=g)
        swa = torch.randint(1, geo["swa_tokens"], (sum(wlens) + 4096,), generator=g)
        full[sum(lens):] = GARBAGE
        swa[sum(wlens):] = GARBAGE
        ptr = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
        wptr = torch.tensor([0] + wlens).cumsum(0).to(torch.int32)
        d = self.device
        return (full.to(d), ptr.to(d), swa.to(d), wptr.to(d), geo["full_tokens"] + 1, geo["swa_tokens"] + 1)


class Timer:
    """Eager and CUDA-graph timing, median of ``repeats``."""

    def __init__(self, device, torch, repeats):
        self.device, self.torch, self.repeats = device, torch, repeats

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def eager(self, fn, iters):
        fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / iters * 1e6

    def graph(self, fn, replays):
        if self.device != "cuda":
            return float("nan")
        return graph_time_us(self.torch, lambda i: fn(), replays)

    def median(self, fn, *a):
        return statistics.median(fn(*a) for _ in range(self.repeats))


def reference_attention(batch):
    """sglang's Triton decode attention over all layers of one forward, or (None, why it is unavailable)."""
    torch, geo, device, bs = batch.torch, batch.geo, batch.device, batch.bs
    try:
        from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd

        full_idx, ptr, swa_idx, wptr, full_rows, swa_rows = batch.ragged()
        splits = 8
        dt = torch.bfloat16
        k_full = torch.randn(full_rows, geo["full_kv"], geo["full_dim"], dtype=dt, device=device)
        v_full = torch.randn_like(k_full)
        k_swa = torch.randn(swa_rows, geo["swa_kv"], geo["swa_dim"], dtype=dt, device=device)
        v_swa = torch.randn_like(k_swa)
        hq = geo["q_heads"]
        q_full = torch.randn(bs, hq, geo["full_dim"], dtype=dt, device=device)
        q_swa = torch.randn(bs, hq, geo["swa_dim"], dtype=dt, device=device)
        o_full, o_swa = torch.empty_like(q_full), torch.empty_like(q_swa)
        f32 = dict(dtype=torch.float32, device=device)
        logits_full = torch.empty(bs, hq, splits, geo["full_dim"], **f32)
        logits_swa = torch.empty(bs, hq, splits, geo["swa_dim"], **f32)
        lse = torch.empty(bs, hq, splits, **f32)
        nsplits = torch.full((bs,), splits, dtype=torch.int32, device=device)

        def attention():
            for layer in range(geo["swa_layers"] + geo["full_layers"]):
                if layer % 6 == 5 and layer // 6 < geo["full_layers"]:
                    decode_attention_fwd(q_full, k_full, v_full, o_full, ptr, full_idx,
                                         logits_full, lse, nsplits, splits,
                                         geo["full_dim"] ** -0.5, 1.0, 1.0)
                else:
                    decode_attention_fwd(q_swa, k_swa, v_swa, o_swa, wptr, swa_idx,
                                         logits_swa, lse, nsplits, splits,
                                         geo["swa_dim"] ** -0.5, 1.0, 1.0)
        return attention, None
    except Exception as exc:  # reported, not hidden
        return None, f"{type(exc).__name__}: {exc}"


def probe_variants(batch):
    """name -> table spec: trtllm_mha/fa dense tables at page 64 and 1, triton ragged indices."""
    variants = {}
    for page in (64, 1):
        full, swa, full_pages, swa_pages = batch.dense_tables(page)
        # trtllm_mha and fa hand the probe the same kind of table.
        variants[f"trtllm_mha/fa4 page={page}"] = ("paged", full, swa, page, full_pages, swa_pages)
    variants["triton page=1"] = ("ragged", *batch.ragged())
    return variants


def probe_call(batch, spec, backend, PageTableProbe):
    """A probe and a call that checks the first full and the first SWA layer of one forward."""
    geo, seq, device = batch.geo, batch.seq, batch.device
    if spec[0] == "paged":
        _, full, swa, page, fp, sp = spec
        probe = PageTableProbe(backend, device, -(-geo["context"] // page))

        def call():
            probe.check_paged("full", 5, full, seq, page, fp)
            probe.check_paged("swa", 0, swa, seq, page, sp)
    else:
        _, fi, fptr, si, sptr, fr, sr = spec
        probe = PageTableProbe(backend, device, geo["context"])

        def call():
            probe.check_ragged("full", 5, fi, fptr, fr)
            probe.check_ragged("swa", 0, si, sptr, sr)
    return probe, call


def time_variants(batch, timer, attention, replays, PageTableProbe):
    """Per variant: the probe alone, and with the reference attention (ratio on / off), graph and eager."""
    results = []
    attn_graph = attn_eager = None
    if attention is not None:
        attn_graph = timer.median(timer.graph, attention, max(2, replays // 10))
        attn_eager = timer.median(timer.eager, attention, 3)
    for name, spec in probe_variants(batch).items():
        backend = name.split()[0].split("/")[0]
        probe, call = probe_call(batch, spec, backend, PageTableProbe)
        row = {"variant": name}
        row["probe_eager_us"] = timer.median(timer.eager, call, 20)
        row["probe_graph_us"] = timer.median(timer.graph, call, replays)
        probe.synchronize_and_poll()  # clean batch: must stay silent
        if attention is not None:
            row["attention_graph_us"] = attn_graph

            def both():
                call()
                attention()

            on = timer.median(timer.graph, both, max(2, replays // 10))
            row["attention_plus_probe_graph_us"] = on
            row["ratio_on_over_off"] = on / row["attention_graph_us"]
            row["attention_eager_us"] = attn_eager
            row["attention_plus_probe_eager_us"] = timer.median(timer.eager, both, 3)
            row["ratio_on_over_off_eager"] = (
                row["attention_plus_probe_eager_us"] / row["attention_eager_us"]
            )
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def device_checks(batch, PageTableProbe, PageTableBoundsError):
    """Silent on a clean batch, planted full and SWA violations reported exactly, entry redirected to
    page 0, and the whole probe's Triton kernels against its torch path."""
    torch, device, seq, seq_cpu, bs, g = batch.torch, batch.device, batch.seq, batch.seq_cpu, batch.bs, batch.g
    context = batch.geo["context"]
    checks = {}
    full, swa, full_pages, swa_pages = batch.dense_tables(64)
    probe = PageTableProbe("trtllm_mha", device, -(-context // 64))
    probe.check_paged("full", 5, full, seq, 64, full_pages)
    probe.check_paged("swa", 0, swa, seq, 64, swa_pages)
    probe.synchronize_and_poll()
    checks["clean_batch_with_tail_garbage_silent"] = True
    row, n = 3, -(-int(seq_cpu[3]) // 64)
    full[row, n - 1] = full_pages
    try:
        probe.check_paged("full", 5, full, seq, 64, full_pages)
        probe.synchronize_and_poll()
        checks["full_violation_reported"] = False
    except PageTableBoundsError as err:
        head = str(err).splitlines()[0]
        want = (f"page-table bounds probe: backend=trtllm_mha layer_kind=full layer=5 "
                f"request_row={row} entry={n - 1} bad_index={full_pages} not in "
                f"[0, {full_pages}) (seq_len={int(seq_cpu[3])}, page_size=64, offending_rows=1)")
        checks["full_violation_reported"] = head == want
        checks["full_message"] = head
        checks["entry_redirected_to_page_0"] = int(full[row, n - 1]) == 0
    probe2 = PageTableProbe("fa4", device, -(-context // 64))
    srow = bs - 1
    swa[srow, 0] = -7
    try:
        probe2.check_paged("swa", 0, swa, seq, 64, swa_pages)
        probe2.synchronize_and_poll()
        checks["swa_violation_reported"] = False
    except PageTableBoundsError as err:
        head = str(err).splitlines()[0]
        checks["swa_violation_reported"] = head.startswith(
            "page-table bounds probe: backend=fa4 layer_kind=swa layer=0 "
            f"request_row={srow} entry=0 bad_index=-7 not in [0, {swa_pages})")
        checks["swa_message"] = head
    # The whole probe, its Triton kernels (page_table_bounds) against the torch path.
    agree = True
    for trial in range(3):
        t = torch.randint(0, 3000, (64, 4096), generator=g, dtype=torch.int32).to(device)
        sl = torch.randint(0, 4096 * 64, (64,), generator=g).to(device)
        t[trial * 7, trial * 100] = 3000 + trial
        t[40, 3] = -1
        reports = []
        for use_triton in (False, True):
            tt = t.clone()
            pr = PageTableProbe("trtllm_mha", device, 4096, use_triton=use_triton)
            try:
                pr.check_paged("full", 5, tt, sl, 64, 3000)
                pr.synchronize_and_poll()
                reports.append(("silent", tt.cpu()))
            except PageTableBoundsError as err:
                reports.append((str(err), tt.cpu()))
        agree &= reports[0][0] == reports[1][0] and torch.equal(reports[0][1], reports[1][1])
    checks["probe_kernels_match_torch_path"] = bool(agree)
    fused = PageTableProbe("x", device, 8).use_triton
    checks["probe_path"] = "triton (fused)" if fused else "torch"
    print(json.dumps(checks), flush=True)
    return checks


def write_results(out, meta, results, checks):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "page_table_probe.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "checks": checks}, f, indent=1)
    print("wrote", os.path.join(out, "page_table_probe.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sglang-root", default=None)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--replays", type=int, default=50)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()
    commit = stamp.commit(args.commit, required=True)
    if args.sglang_root:
        sys.path.insert(0, os.path.abspath(args.sglang_root))

    import torch

    from sglang.srt.layers.attention.page_table_probe import (
        PageTableBoundsError,
        PageTableProbe,
    )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.small:
        raise SystemExit("no CUDA device: run with --small (and TRITON_INTERPRET=1)")
    geo = SMALL_GEOMETRY if args.small else GEMMA4_26B_GEOMETRY
    batch = Batch(geo, device, torch)
    attention, attn_error = reference_attention(batch)
    results = time_variants(batch, Timer(device, torch, args.repeats), attention, args.replays, PageTableProbe)
    checks = device_checks(batch, PageTableProbe, PageTableBoundsError)
    meta = {
        "benchmark": "bench_page_table_probe",
        "date": stamp.utc_now(),
        "git_commit": commit,
        "device": (
            stamp.device_name(torch, cuda=device == "cuda")
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "small": args.small,
        "geometry": geo,
        "seq_lens": batch.seq_cpu.tolist(),
        "attention_reference": (
            "sglang 0.5.23 Triton decode_attention_fwd, all layers of one forward, bf16"
            if attention is not None else f"unavailable: {attn_error}"
        ),
        "timing": f"median of {args.repeats}; CUDA graph of {args.replays} probe calls "
                  "(attention: replays/10 forwards) per measurement",
    }
    write_results(args.out, meta, results, checks)


if __name__ == "__main__":
    main()
