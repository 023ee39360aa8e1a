"""decode_profile on the GPU: one_batch's decode step at exact batch sizes with CUDA graphs, profiled per step,
with the run sized to the card; and the selfcheck that graph-replayed kernels are traced step by step."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import shlex
import statistics
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import stamp
from benchkit.dp_floor import BF16, ModelGeom, load_geometry, parameter_counts
from benchkit.flags import get_flag
from benchkit.dp_report import result_commit, write_result
from benchkit.dp_trace import (MODULE_PREFIX, PHASE_PREFIX, STEP_PREFIX, analyze_events, annotate, compact_trace,
                               short_name)

DEFAULT_SERVER_ARGS = (
    "--load-format dummy --attention-backend triton --sampling-backend pytorch --mm-attention-backend triton_attn "
    "--disable-prefill-cuda-graph --swa-full-tokens-ratio 1.0 --context-length 4096"
)
# Why each: dummy weights time like real ones (no parity needed); triton is Gemma-4's Hopper default, named so
# both engines surely run it; flashinfer is not installed on the GPU machine; the vision tower's default fa3 ops
# are missing there too; the prefill graph only costs start-up time; one_batch never evicts SWA tokens outside
# the window (no tree cache), so the SWA pool must hold every token (ratio 1.0); a short declared context keeps
# the request table small (raised by size_run for a longer --context).  --mem-fraction-static is chosen by
# size_run from the card, the weights, the KV the batch needs and the one-shot prefill's activations (a fixed
# 0.8 ran out of memory on an H100 in E2B's 80 x 1500-token prefill).  None of these changes a decode-step kernel.
WARMUP_STEPS = 3
TIMED_STEPS = 10
GIB = 1 << 30
MAX_MEM_FRACTION = 0.88


def _weight_bytes(geom: ModelGeom) -> float:
    """bf16 bytes of the text model's weights (every expert, the PLE table included)."""
    n = sum(parameter_counts(geom).values())
    if geom.ple_dim:
        n += geom.vocab * geom.num_layers * geom.ple_dim
    return n * BF16


def _kv_bytes_per_token(geom: ModelGeom) -> float:
    """K and V of every layer (stock sglang 0.5.23 allocates KV-shared layers too; SWA ratio 1.0)."""
    return float(sum(2 * layer.n_kv * layer.head_dim * BF16 for layer in geom.layers))


def _prefill_bytes_per_token(geom: ModelGeom) -> float:
    """Transient activations of the one-shot prefill per token, with a 1.5x margin: the MLP / MoE
    intermediates (gate-up output and its activation), the per-layer inputs, a few hidden-size buffers."""
    inter = max(max(layer.mlp_intermediate for layer in geom.layers), geom.moe_top_k * 2 * geom.moe_intermediate)
    return 1.5 * BF16 * (4 * inter + 2 * geom.num_layers * geom.ple_dim + 8 * geom.hidden)


def size_run(geom: ModelGeom, sizes: Sequence[int], context: int, steps: int, card_bytes: float,
             mem_fraction: Optional[float] = None) -> Dict[str, Any]:
    """What one `run` can do on a card of card_bytes: the batch sizes that fit (largest dropped first, each
    with its reason), the --mem-fraction-static to load with (``mem_fraction``: the user's, kept) and the
    --context-length that holds a request.  one_batch prefills every request of a batch in one extend and
    its pools never evict, so a batch of b needs b whole requests of KV plus the prefill's activations
    outside the static part.  Raises SystemExit when not even the smallest batch fits, saying what to change."""
    per_req = context + steps + 8
    weights, kv_tok, act_tok = _weight_bytes(geom), _kv_bytes_per_token(geom), _prefill_bytes_per_token(geom)
    kept = sorted(set(sizes))
    skipped: Dict[int, str] = {}
    while kept:
        b = kept[-1]
        headroom = max(6 * GIB, b * context * act_tok)
        frac = mem_fraction if mem_fraction is not None else min(MAX_MEM_FRACTION, 1.0 - headroom / card_bytes)
        kv = kv_tok * b * per_req
        need = weights + 1.1 * kv + GIB
        room = mem_fraction is None or (1.0 - mem_fraction) * card_bytes >= headroom  # else frac leaves it
        if frac > 0 and need <= frac * card_bytes and room:
            ctx_len = max(4096, -(-(per_req + 64) // 1024) * 1024)
            return {"mem_fraction": round(frac, 3) if mem_fraction is None else mem_fraction, "kept": kept,
                    "skipped": skipped, "context_length": ctx_len, "weights_gib": weights / GIB,
                    "kv_gib": kv / GIB, "prefill_headroom_gib": headroom / GIB}
        skipped[b] = (f"{b} requests x {per_req} tokens need {weights / GIB:.1f} GiB of weights + "
                      f"{kv / GIB:.1f} GiB of KV in the static part and {headroom / GIB:.1f} GiB "
                      f"for the prefill outside it; the card has {card_bytes / GIB:.1f} GiB"
                      + (f" (mem fraction {mem_fraction} given)" if mem_fraction is not None else ""))
        kept.pop()
    raise SystemExit("decode_profile: no batch size fits this card: " + "; ".join(skipped.values())
                     + ". Use a shorter --context, smaller --batch-sizes or a card with more memory.")


def need_cuda():
    try:
        import torch
    except ImportError:
        raise SystemExit("this subcommand needs torch with a CUDA device (run it on the GPU machine)") from None
    if not torch.cuda.is_available():
        raise SystemExit("this subcommand needs a CUDA device: torch.cuda.is_available() is False")
    return torch


def _export(prof) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "trace.json")
        prof.export_chrome_trace(p)
        with open(p, encoding="utf-8") as f:
            return compact_trace(json.load(f))


@contextlib.contextmanager
def _timed_methods(cls, names: Iterable[str], sink: Dict[str, float], keys: Dict[str, str]):
    """Time calls of cls.<name> into sink[keys[name]] (seconds, summed) while the context is open."""
    saved = {}
    for n in names:
        orig = getattr(cls, n, None)
        if orig is None:
            continue
        saved[n] = orig

        def wrap(self, *a, _orig=orig, _key=keys[n], **k):
            t0 = time.perf_counter()
            try:
                return _orig(self, *a, **k)
            finally:
                sink[_key] = sink.get(_key, 0.0) + time.perf_counter() - t0

        setattr(cls, n, wrap)
    try:
        yield
    finally:
        for n, orig in saved.items():
            setattr(cls, n, orig)


@contextlib.contextmanager
def _module_ranges(model, torch):
    """A record_function range 'mod:<qualified name>' around every module's forward."""
    handles, stack = [], []
    for name, mod in model.named_modules():
        label = MODULE_PREFIX + (name or "<root>")

        def pre(_m, _args, _label=label):
            rf = torch.autograd.profiler.record_function(_label)
            rf.__enter__()
            stack.append(rf)

        def post(_m, _args, _out):
            if stack:
                stack.pop().__exit__(None, None, None)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while stack:
            stack.pop().__exit__(None, None, None)


@contextlib.contextmanager
def _eager(model_runner):
    """Route decode forwards to the eager runner (the graph runner's can_run_graph is never asked)."""
    if not hasattr(model_runner, "decode_cuda_graph_runner"):
        raise RuntimeError("ModelRunner has no decode_cuda_graph_runner attribute: this sglang is not 0.5.23's layout")
    saved = model_runner.decode_cuda_graph_runner
    model_runner.decode_cuda_graph_runner = None
    try:
        yield
    finally:
        model_runner.decode_cuda_graph_runner = saved


def _split_step(ob, mr, batch, next_ids, torch, *, ranges: bool, events: bool):
    """one_batch's decode step, with each phase in its own range and ended by a synchronize."""
    rf = torch.autograd.profiler.record_function if ranges else (lambda _n: contextlib.nullcontext())
    with rf(PHASE_PREFIX + "prepare"):
        batch.input_ids = next_ids.to(torch.int64)
        batch.prepare_for_decode()
        mlp_sync = getattr(ob, "_maybe_prepare_mlp_sync_batch", None)
        if mlp_sync is not None:
            mlp_sync(batch, mr)
        fb = ob.ForwardBatch.init_new(batch, mr, return_hidden_states_before_norm=False)
        torch.cuda.synchronize()
    ms = None
    with rf(PHASE_PREFIX + "forward"):
        if events:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        out = mr.forward(fb)
        if events:
            e1.record()
        torch.cuda.synchronize()
        if events:
            ms = e0.elapsed_time(e1)
    with rf(PHASE_PREFIX + "sample"):
        nxt = mr.sample(out.logits_output, fb)
        torch.cuda.synchronize()
    return nxt, ms, bool(getattr(out, "can_run_graph", False))


def _profile_batch(ob, runner, geom: ModelGeom, bs: int, opts, torch) -> Dict[str, Any]:
    profile, ProfilerActivity = torch.profiler.profile, torch.profiler.ProfilerActivity
    mr = runner.torch_runner
    steps_before = WARMUP_STEPS + 2 * TIMED_STEPS
    input_len = max(16, int(round(opts.context - 1 - steps_before - (opts.steps - 1) / 2)))
    runner.clear()
    reqs = ob.prepare_synthetic_inputs_for_latency_test(bs, input_len)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    next_ids, _, batch = runner.extend(reqs)
    torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0
    for _ in range(WARMUP_STEPS):
        next_ids, _ = runner.decode(next_ids, batch)
    walls = []
    for _ in range(TIMED_STEPS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        next_ids, _ = runner.decode(next_ids, batch)
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
    fwd_ms, graph_flags = [], []
    for _ in range(TIMED_STEPS):
        next_ids, ms, used = _split_step(ob, mr, batch, next_ids, torch, ranges=False, events=True)
        fwd_ms.append(ms)
        graph_flags.append(used)
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=acts) as prof:
        for i in range(opts.steps):
            with torch.autograd.profiler.record_function(f"{STEP_PREFIX}{i}"):
                next_ids, _, used = _split_step(ob, mr, batch, next_ids, torch, ranges=True, events=False)
            graph_flags.append(used)
    graph_trace = _export(prof)
    template_trace, template_error = None, None
    try:
        with _eager(mr), _module_ranges(mr.model, torch), profile(activities=acts) as prof2:
            with torch.autograd.profiler.record_function(f"{STEP_PREFIX}0"):
                next_ids, _, used_eager = _split_step(ob, mr, batch, next_ids, torch, ranges=True, events=False)
        template_trace = _export(prof2)
        if used_eager:
            template_error = "the labelled step replayed the CUDA graph instead of running eagerly"
            template_trace = None
    except Exception as e:  # the graph measurement stands without labels; say why they are missing
        template_error = f"{type(e).__name__}: {e}"
    ctx_first = input_len + 1 + steps_before
    ctx_mean = ctx_first + (opts.steps - 1) / 2
    runner.cleanup(batch)
    return {"batch_size": bs, "input_len": input_len, "context_mean": ctx_mean, "prefill_s": prefill_s,
            "step_wall_ms_median": statistics.median(walls), "step_wall_ms": walls,
            "forward_device_ms_median": statistics.median(fwd_ms), "forward_device_ms": fwd_ms,
            "graph_used": all(graph_flags), "template_error": template_error,
            "_graph_trace": graph_trace, "_template_trace": template_trace}


COPY_PROBE_BYTES = 1 << 30
COPY_PROBE_REPEATS = 10


def measure_copy_bandwidth(torch, nbytes: int = COPY_PROBE_BYTES, repeats: int = COPY_PROBE_REPEATS) -> float:
    """Bytes per second a device-to-device copy moves on CUDA device 0, counting bytes read plus bytes written
    (the convention of the floors), the median of ``repeats`` timed copies of ``nbytes`` after two warm-ups."""
    if nbytes < 1 or repeats < 1:
        raise ValueError(f"copy probe needs nbytes >= 1 and repeats >= 1, got {nbytes} and {repeats}")
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    del src, dst
    times.sort()
    seconds = times[len(times) // 2]
    if not seconds > 0:
        raise RuntimeError(f"copy probe timed {seconds} s for {nbytes} bytes: the CUDA events did not measure")
    return 2.0 * nbytes / seconds


def _engine_meta(torch) -> Dict[str, Any]:
    import importlib.metadata

    meta = {"engine_version": importlib.metadata.version("sglang"), "torch": torch.__version__}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = "none"
    try:
        from sglang.srt import gemma4_series

        meta["series"] = gemma4_series.summary_line()
    except ImportError:
        meta["series"] = None
    meta["device"] = stamp.device_name(torch, cuda=True)
    return meta


def _import_engine():
    try:
        from sglang.benchmark import one_batch as ob
        from sglang.srt.model_executor.model_runner import ModelRunner
        from sglang.srt.server_args import ServerArgs
    except ImportError as e:
        raise SystemExit(f"cannot import sglang's one_batch benchmark ({e}): run this with an interpreter that has "
                         "sglang 0.5.23 installed (/tmp/py-upstream or /tmp/py-patched)") from None
    return ob, ModelRunner, ServerArgs


def cmd_run(opts, engine: Optional[Tuple[Any, Any, Any, Any]] = None) -> int:
    """`engine` = (torch, one_batch, ModelRunner, ServerArgs); the installed ones when None (tests pass fakes)."""
    t_start = time.perf_counter()
    if not os.path.isfile(os.path.join(opts.model, "config.json")):
        raise SystemExit(f"--model {opts.model}: no config.json there "
                         "(make one with make_model_dir.py dir <variant> DIR)")
    if engine is None:
        torch = need_cuda()
        ob, ModelRunner, ServerArgs = _import_engine()
    else:
        torch, ob, ModelRunner, ServerArgs = engine
    geom = load_geometry(opts.model, opts.name or os.path.basename(os.path.normpath(opts.model)))
    bw_source = "--bw"
    if opts.bw is None:  # the floors at this card's own copy rate, measured before the engine takes the memory
        opts.bw, bw_source = measure_copy_bandwidth(torch), "device copy measured at start"
    sizes = sorted(set(opts.batch_sizes))
    missing = [n for n in ("main", "latency_test", "load_model", "prepare_synthetic_inputs_for_latency_test",
                           "BenchArgs", "ForwardBatch", "publish", "SpawnRanks", "spawn_world_rank")
               if not hasattr(ob, n)]
    if missing:
        raise SystemExit(f"sglang.benchmark.one_batch lacks {missing}: this is not sglang 0.5.23's one_batch")
    argv = ["--model-path", opts.model] + shlex.split(opts.server_args)
    if opts.extra_server_args:
        argv += shlex.split(opts.extra_server_args)
    card = _card_bytes(torch)
    sizing = None
    if card is not None:
        given = get_flag(argv, "--mem-fraction-static")
        sizing = size_run(geom, sizes, opts.context, opts.steps, card, float(given) if given else None)
        for b, why in sorted(sizing["skipped"].items()):
            print(f"decode_profile: batch size {b} left out: {why}", flush=True)
        sizes = sizing["kept"]
        if given is None:
            argv += ["--mem-fraction-static", str(sizing["mem_fraction"])]
        ctx = get_flag(argv, "--context-length")
        if ctx is None or int(ctx) < sizing["context_length"]:
            argv += ["--context-length", str(sizing["context_length"])]
        print(f"decode_profile: batch sizes {sizes}, --mem-fraction-static {get_flag(argv, '--mem-fraction-static')}"
              f" (weights {sizing['weights_gib']:.1f} GiB, KV {sizing['kv_gib']:.1f} GiB, prefill headroom "
              f"{sizing['prefill_headroom_gib']:.1f} GiB of {card / GIB:.1f} GiB)", flush=True)
    argv += ["--cuda-graph-bs-decode"] + [str(b) for b in sizes]
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    sargs = ServerArgs.from_cli_args(parser.parse_args(argv))
    if getattr(sargs, "tp_size", 1) != 1:
        raise SystemExit("decode_profile runs one GPU (tp 1)")
    bench_args = ob.BenchArgs(batch_size=tuple(sizes), input_len=(opts.context,), output_len=(opts.steps,))
    timings: Dict[str, float] = {}
    batches: List[Dict[str, Any]] = []
    meta: Dict[str, Any] = {}

    def worker(server_args, port_args, b_args, gpu_id, tp_rank):
        ob.publish(server_args, role="scheduler", ranks=ob.SpawnRanks(
            world_rank=ob.spawn_world_rank(server_args, tp_rank=tp_rank, pp_rank=0), gpu_id=gpu_id))
        init = getattr(ob, "_init_process_global_configs", None)
        if init is not None:
            init()
        t0 = time.perf_counter()
        with _timed_methods(ModelRunner, ("load_model", "init_cuda_graphs"), timings,
                            {"load_model": "load_model_s", "init_cuda_graphs": "cuda_graph_capture_s"}):
            runner, _tok = ob.load_model(server_args, port_args, gpu_id, tp_rank)
        timings["load_total_s"] = time.perf_counter() - t0
        mr = runner.torch_runner
        meta["attention_backend"] = type(getattr(mr, "attn_backend", None)).__name__
        meta["max_total_num_tokens"] = getattr(mr, "max_total_num_tokens", None)
        meta["sampling_backend"] = str(getattr(server_args, "sampling_backend", None))
        for bs in sizes:
            t1 = time.perf_counter()
            r = _profile_batch(ob, runner, geom, bs, opts, torch)
            r["seconds"] = time.perf_counter() - t1
            batches.append(r)
            print(f"decode_profile: b={bs} done in {r['seconds']:.1f} s (step {r['step_wall_ms_median']:.3f} ms, "
                  f"forward {r['forward_device_ms_median']:.3f} ms, graph {r['graph_used']})", flush=True)

    import logging

    logging.basicConfig(level=getattr(logging, str(getattr(sargs, "log_level", "info")).upper(), logging.INFO),
                        format="%(message)s")
    saved_worker = ob.latency_test
    ob.latency_test = worker  # one_batch.main resolves the server args, sizes the graphs, then calls this
    try:
        ob.main(sargs, bench_args)
    finally:
        ob.latency_test = saved_worker
    timings["run_total_s"] = time.perf_counter() - t_start
    meta.update(_engine_meta(torch))
    label = opts.engine_label or ("patched" if meta.get("series") and "none" not in meta["series"] else "stock")
    meta.update({
        "model": geom.name, "model_dir": os.path.basename(os.path.normpath(opts.model)), "engine_label": label,
        "date": stamp.utc_now(), "commit": result_commit(),
        "load_format": get_flag(argv, "--load-format") or "auto", "server_args": argv[2:],
        "batch_sizes": sizes, "context_target": opts.context, "warmup_steps": WARMUP_STEPS,
        "timed_steps": TIMED_STEPS, "profiled_steps": opts.steps, "timings": timings, "sizing": sizing,
        "switches": stamp.switches(os.environ),
        "bandwidth_bytes_per_s": opts.bw, "bandwidth_source": bw_source, "peak_bf16_flop_per_s": opts.peak,
    })
    events = {"meta": meta, "geometry_config": _config_of(opts.model),
              "batches": [{k: v for k, v in r.items()} for r in batches]}
    os.makedirs(opts.out, exist_ok=True)
    stem = f"decode_profile_{_slug(geom.name)}_{label}"
    with gzip.open(os.path.join(opts.out, stem + "_events.json.gz"), "wt", encoding="utf-8") as f:
        json.dump(events, f, default=str)
    res = analyze_events(events)
    write_result(res, opts.out, stem)
    print(f"decode_profile: wrote {stem}.json / .md / _events.json.gz under {opts.out} "
          f"({timings['run_total_s']:.0f} s in all)", flush=True)
    return 0


def _card_bytes(torch) -> Optional[float]:
    """Total memory of CUDA device 0; None where the torch in hand has no such query (the tests' fakes)."""
    props = getattr(getattr(torch, "cuda", None), "get_device_properties", None)
    if props is None:
        return None
    return float(props(0).total_memory)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "model"


def _config_of(model_dir: str) -> Dict[str, Any]:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def selfcheck(torch, steps: int = 3) -> Dict[str, Any]:
    """Capture a small CUDA graph (matmul, add, softmax), replay it `steps` times inside dp:step ranges under
    torch.profiler, and attribute: every step must show the graph's kernels, inside the forward phase."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            y = torch.softmax(x @ w + 1.0, dim=-1)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = torch.softmax(x @ w + 1.0, dim=-1)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            with torch.autograd.profiler.record_function(f"{STEP_PREFIX}{i}"):
                with torch.autograd.profiler.record_function(PHASE_PREFIX + "forward"):
                    g.replay()
                    torch.cuda.synchronize()
    ks = annotate(_export(prof))
    per_step: Dict[Optional[int], int] = {}
    for k in ks:
        if k.phase == "forward":
            per_step[k.step] = per_step.get(k.step, 0) + 1
    ok = (set(per_step) == set(range(steps)) and len(set(per_step.values())) == 1
          and min(per_step.values()) >= 2)
    return {"ok": ok, "kernels_per_step": per_step, "names": sorted({short_name(k.name) for k in ks}),
            "y": float(y.float().sum())}
