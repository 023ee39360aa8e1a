"""Gemma-4 text decode: measured device time per kernel family against each family's byte / FLOP floor.

Four subcommands (their sections live in benchkit/dp_*.py: families, floor, trace, report, run):

    floor     CPU.  Bytes and FLOPs one decode step must move, per kernel family, from the config files in
              benchmark/gemma4/configs; writes decode_floor.md / .json (the committed arithmetic).
    run       GPU.  The real engine's decode step (sglang 0.5.23, stock or patched, whichever the interpreter
              has installed), CUDA graphs on, at 1 / 16 / 80 running requests with ~1500-token contexts,
              profiled with torch.profiler; device time per kernel family per step, next to that family's
              floor at the measured context.  Writes JSON + markdown (+ the compact event list, so `analyze`
              can redo the attribution on a CPU).
    analyze   CPU.  Redo the attribution of a `run` from its saved events.
    selfcheck GPU.  A 5 s check that torch.profiler reports the kernels inside a CUDA-graph replay and that
              this file attributes them to steps (the assumption everything above rests on).

Why the engine is driven through sglang.benchmark.one_batch (0.5.23's bench_one_batch: the module moved there
from sglang/bench_one_batch.py; only bench_one_batch_server.py is left at the top) and not a server's
/start_profile:
* one_batch builds the same ModelRunner a server's scheduler builds (weights, KV pools, attention backends,
  CUDA graphs captured for the batch sizes asked for) and calls the same extend / decode / sample code, in
  this process, with no scheduler, tokenizer or HTTP process.  `run` calls one_batch's own `main` (so its
  server-argument resolution and CUDA-graph sizing are the engine's, not a copy) with its worker function
  replaced by ours, and ours calls one_batch's load_model / extend / decode.
* The batch is exact: every step has exactly b running requests of known context.  Under /start_profile the
  running batch changes from step to step, prefill batches of arriving requests land inside the profile
  window, and the overlap scheduler's CPU work interleaves; a family's time per step would have to be
  untangled from all that.
* Module names are reachable: one extra *eager* decode step is profiled with a record_function range around
  every module's forward, which names the module of every kernel.  Kernels replayed from a CUDA graph carry
  no CPU ranges, so each graph step's kernel sequence is aligned by name with the eager step's (difflib) and
  takes its module labels from it.  A server process cannot be hooked like that.
* Cost: one model load and one graph capture for all three batch sizes; one_batch's own `--profile` option
  only dumps a trace and a key_averages table, with no module attribution.

Kernel family = classify(kernel name, module label, phase), an ordered rule table (RULES in dp_families, printed in
every result) that the tests check against real kernel names of the installed sglang / sgl_kernel.
Attention kernels are split into full / sliding layers by the layer index in their module label, or, where a
kernel has no label, by their order in the step (the k-th decode-attention launch of a step is layer k).

Usage (repository root of a copy of the project, GPU machine):

    /tmp/py-patched benchmark/gemma4/make_model_dir.py dir e2b /tmp/models/e2b
    /tmp/py-patched benchmark/gemma4/decode_profile.py selfcheck
    /tmp/py-upstream benchmark/gemma4/decode_profile.py run --model /tmp/models/e2b --out /tmp/res
    /tmp/py-patched  benchmark/gemma4/decode_profile.py run --model /tmp/models/e2b --out /tmp/res
    python3 benchmark/gemma4/decode_profile.py floor            # CPU, writes benchmark/gemma4/results/decode_floor.*

Only the standard library is needed for `floor` and `analyze`; `run` and `selfcheck` need torch and sglang.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# benchmark/gemma4/benchkit/dp_*: the sections of this tool, one module each. The names the tests use from
# decode_profile are re-exported here (marked F401).
from benchkit.dp_families import attention_family, classify, layer_of_label  # noqa: E402,F401
from benchkit.dp_floor import (  # noqa: E402,F401
    H200_BF16_FLOP_PER_S, H200_COPY_BYTES_PER_S, expected_distinct_experts, geometry, layer_floor, load_geometry,
    model_floor, parameter_counts)
from benchkit.dp_report import floor_report, write_result  # noqa: E402
from benchkit.dp_run import (  # noqa: E402,F401
    DEFAULT_SERVER_ARGS, GIB, TIMED_STEPS, WARMUP_STEPS, cmd_run, need_cuda, selfcheck, size_run)
from benchkit.dp_trace import (  # noqa: E402,F401
    _innermost, align_labels, analyze_events, annotate, attribute, compact_trace, template_from)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIGS_DIR = os.path.join(HERE, "configs")
RESULTS_DIR = os.path.join(HERE, "results")

DEFAULT_BATCH_SIZES = (1, 16, 80)
DEFAULT_CONTEXT = 1500
FLOOR_MODELS = ("e2b", "26b-a4b", "e4b", "31b")


def cmd_analyze(opts) -> int:
    try:
        with gzip.open(opts.events, "rt", encoding="utf-8") as f:
            events = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read events file {opts.events}: {e}") from None
    res = analyze_events(events)
    stem = os.path.basename(opts.events)
    stem = stem[: -len("_events.json.gz")] if stem.endswith("_events.json.gz") else stem.split(".")[0]
    write_result(res, opts.out, stem)
    print(f"wrote {stem}.json / .md under {opts.out}")
    return 0


def cmd_floor(opts) -> int:
    data, md = floor_report(opts.models, opts.batch_sizes, opts.context, opts.configs, opts.bw, opts.peak)
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "decode_floor.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(opts.out, "decode_floor.md"), "w", encoding="utf-8") as f:
        f.write(md)
    for m in opts.models:
        row = ", ".join(f"b={b}: {data['models'][m]['floors'][str(b)]['totals']['floor_us'] / 1e3:.3f} ms"
                        for b in opts.batch_sizes)
        print(f"{m}: {row}")
    print(f"wrote decode_floor.md / .json under {opts.out}")
    return 0


def cmd_selfcheck(opts) -> int:
    torch = need_cuda()
    r = selfcheck(torch)
    print(json.dumps({k: v for k, v in r.items() if k != "y"}, default=str))
    if not r["ok"]:
        print("selfcheck FAILED: the profiler did not report the replayed graph's kernels step by step",
              file=sys.stderr)
        return 1
    print("selfcheck ok: graph-replayed kernels are traced and placed in their steps")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def sizes(s: str) -> int:
        v = int(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"batch size must be positive, got {v}")
        return v

    def positive(s: str) -> int:
        v = int(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {v}")
        return v

    f = sub.add_parser("floor", help="bytes / FLOPs floor per family from the config files (CPU)")
    f.add_argument("--configs", default=CONFIGS_DIR)
    f.add_argument("--models", nargs="+", default=list(FLOOR_MODELS))
    f.add_argument("--batch-sizes", nargs="+", type=sizes, default=list(DEFAULT_BATCH_SIZES))
    f.add_argument("--context", type=positive, default=DEFAULT_CONTEXT)
    f.add_argument("--bw", type=float, default=H200_COPY_BYTES_PER_S, help="bytes/s (default: the H200 copy rate)")
    f.add_argument("--peak", type=float, default=H200_BF16_FLOP_PER_S, help="bf16 FLOP/s")
    f.add_argument("--out", default=RESULTS_DIR)
    r = sub.add_parser("run", help="profile the engine's decode step (GPU)")
    r.add_argument("--model", required=True, help="model directory (config.json, tokenizer; weights optional)")
    r.add_argument("--name", default=None, help="model name in the results (default: the directory name)")
    r.add_argument("--out", required=True)
    r.add_argument("--batch-sizes", nargs="+", type=sizes, default=list(DEFAULT_BATCH_SIZES))
    r.add_argument("--context", type=positive, default=DEFAULT_CONTEXT,
                   help="mean KV tokens per request while profiled")
    r.add_argument("--steps", type=positive, default=6, help="decode steps under the profiler per batch size")
    r.add_argument("--server-args", default=DEFAULT_SERVER_ARGS,
                   help="sglang server arguments (default: %(default)s); --cuda-graph-bs-decode is added")
    r.add_argument("--extra-server-args", default="", help="appended to --server-args")
    r.add_argument("--engine-label", default=None, help="stock | patched (default: from the installed sglang)")
    r.add_argument("--bw", type=float, default=None,
                   help="bytes/s for the floors (default: a device-to-device copy measured on the card at start)")
    r.add_argument("--peak", type=float, default=H200_BF16_FLOP_PER_S)
    a = sub.add_parser("analyze", help="redo the attribution of a run from its _events.json.gz (CPU)")
    a.add_argument("--events", required=True)
    a.add_argument("--out", required=True)
    sub.add_parser("selfcheck", help="check that graph-replayed kernels are traced per step (GPU, seconds)")
    return ap


def main(argv: Optional[List[str]] = None, engine=None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        if opts.cmd == "floor":
            return cmd_floor(opts)
        if opts.cmd == "analyze":
            return cmd_analyze(opts)
        if opts.cmd == "selfcheck":
            return cmd_selfcheck(opts)
        if opts.context <= opts.steps + 2 * TIMED_STEPS + WARMUP_STEPS + 16:
            raise SystemExit(f"--context {opts.context} is too short for the {opts.steps} profiled and "
                             f"{2 * TIMED_STEPS + WARMUP_STEPS} other decode steps")
        return cmd_run(opts, engine)
    except ValueError as e:
        print(f"decode_profile: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    _rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # the engine may leave non-daemon threads behind after a run; the results are written and closed by now
    os._exit(_rc)
