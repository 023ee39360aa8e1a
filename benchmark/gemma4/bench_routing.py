"""Gemma-4 MoE router: sglang 0.5.23's fused kernel vs the series' kernels vs the torch path.

"patched" is what the patched ``gemma4_fused_routing`` runs: ``gemma4_routing_network`` of
sglang.kernels.ops.moe.gemma4_routing_network (the network kernel for topk <= 8); "rounds" is the
module's other kernel (topk > 8), timed alongside through ``gemma4_routing_forced_launch``. The
kernel module is loaded from its file in this checkout (``--kernel-file``), so the numbers belong to
the commit they are stamped with, whatever engine is installed; the installed engine's copy of the
file is compared with it and the result recorded.

Each variant is timed per launch by replaying a CUDA graph that holds many launches back to back, so
the graph-launch cost is spread over all of them and the numbers show kernel time. Two input modes:

* cold: the launches of one graph cycle through distinct logits buffers whose total size is at least
  three times the L2 cache, so the logits come from HBM (the memory floor in the usual sense);
* hot: every launch reads the same logits, which then sit in L2 (as right after the router GEMM).

The floor of a launch is the time the same GPU needs to move the same bytes (logits read, weights and
ids written): ``floor_bw_us`` from the peak device-to-device copy bandwidth measured on 1 GiB, and
``floor_copy_us`` from a copy of the same number of bytes timed exactly like the kernels (graph of many
launches, same cold/hot mode), which includes the fixed cost of a launch inside a graph.

Usage (GPU machine, repo root; torch and triton are all the kernels need):
    python benchmark/gemma4/bench_routing.py --out DIR [--dtypes bfloat16,float32] [--sweep]
        [--commit SHA] [--upstream-file PATH] [--gpu-tests TEST_FILE ...]

Writes DIR/routing_<gpu>.json and .md (bf16; other dtypes get a _fp32 / _fp16 suffix), each
naming device, date and commit. With --gpu-tests it then runs the GPU-marked tests of those files
under this interpreter (so against the engine it has installed) and writes DIR/gpu_tests_<gpu>.txt,
stamped the same way. sglang 0.5.23's gemma4_routing.py comes from --upstream-file, else
$GEMMA4_UPSTREAM_ROUTING, else build/upstream_gemma4_routing.py (``make bench-tree``), else the
upstream wheel that ``make engine`` fetched and checked into build/upstream/.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)
from graph_timing import graph_time_us  # noqa: E402

import torch

REPO = Path(__file__).resolve().parents[2]
KERNEL_FILE = Path("python/sglang/kernels/ops/moe/gemma4_routing_network.py")
UPSTREAM_MEMBER = "sglang/kernels/ops/moe/gemma4_routing.py"  # inside the 0.5.23 wheel
UPSTREAM_ENV = "GEMMA4_UPSTREAM_ROUTING"
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 12289, 16384)
SWEEP_TOKENS = (1, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)
# Network kernel: groups of 8 keys per lane. Rounds kernel: (block_t, num_warps, chunks).
SWEEP_GROUPS = (1, 2, 4, 8)
SWEEP_SHAPES = ((1, 1, 1), (4, 1, 2), (8, 1, 4), (16, 2, 4))
L2_BYTES = 50 * 2**20  # H100/H200; only sets how many buffers the cold mode cycles through
DTYPE_SUFFIX = {"bfloat16": "", "float32": "_fp32", "float16": "_fp16"}


# ----------------------------------------------------------------------------------------------
# The code under test and the 0.5.23 baseline.


def _load_file_module(name: str, path: Path):
    """Imports a single-file module by path (Triton reads kernel sources from the file)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upstream_routing_source(path: Path | None = None) -> tuple[str, str]:
    """(text, where it came from) of sglang 0.5.23's kernels/ops/moe/gemma4_routing.py: ``path``,
    else $GEMMA4_UPSTREAM_ROUTING, else build/upstream_gemma4_routing.py, else the upstream
    wheel."""
    named = path if path is not None else os.environ.get(UPSTREAM_ENV) or None
    if named is not None:
        if not Path(named).is_file():
            raise FileNotFoundError(f"sglang 0.5.23's gemma4_routing.py: no file at {named}")
        source = "--upstream-file" if path is not None else f"${UPSTREAM_ENV}"
        return Path(named).read_text(), source
    extracted = REPO / "build/upstream_gemma4_routing.py"
    if extracted.is_file():
        return extracted.read_text(), str(extracted.relative_to(REPO))
    for wheel in sorted(glob.glob(str(REPO / "build/upstream/sglang-0.5.23-*.whl"))):
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(UPSTREAM_MEMBER).decode(), f"{Path(wheel).name}:{UPSTREAM_MEMBER}"
    raise FileNotFoundError(
        "sglang 0.5.23's gemma4_routing.py not found: pass --upstream-file, set "
        f"{UPSTREAM_ENV}=PATH (e.g. the stock engine's sglang/{UPSTREAM_MEMBER[len('sglang/'):]}), "
        "run `make bench-tree` (writes build/upstream_gemma4_routing.py) or `make engine` (fetches "
        "the upstream wheel into build/upstream/)"
    )


def load_upstream_routing(path: Path | None = None):
    """sglang 0.5.23's gemma4_routing module, loaded from a private copy of its file; refuses a
    patched file. ``.source`` says where it came from, ``.sha256`` what it is."""
    text, source = upstream_routing_source(path)
    if "_gemma4_routing_kernel" not in text or "gemma4_routing_network" in text:
        raise ValueError(f"{source}: not sglang 0.5.23's gemma4_routing.py (patched or other)")
    copy = Path(tempfile.mkdtemp(prefix="upstream_routing_")) / "upstream_gemma4_routing.py"
    copy.write_text(text)
    module = _load_file_module("upstream_gemma4_routing", copy)
    module.source = source
    module.sha256 = hashlib.sha256(text.encode()).hexdigest()
    return module


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def installed_engine(kernel_file: Path) -> dict:
    """The sglang this interpreter imports (found, not imported): its version (None for a
    package without metadata) and whether its router kernel file is the one measured here."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        return {"sglang": None, "router_kernel_file_matches_this_checkout": None}
    root = Path(list(spec.submodule_search_locations)[0])
    try:
        version = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        version = None
    installed = root / KERNEL_FILE.relative_to("python/sglang")
    return {
        "sglang": version,
        "router_kernel_file_matches_this_checkout": (
            installed.is_file() and _sha256(installed) == _sha256(kernel_file)
        ),
    }


def gpu_tag() -> str:
    gpu = torch.cuda.get_device_name().lower()
    return next((g for g in ("h200", "h100", "a100", "b200", "l40s") if g in gpu), "gpu")


def result_stamp(commit: str) -> dict:
    return {
        "device": stamp.device_name(torch, cuda=True),
        "date": stamp.utc_now(),
        "commit": commit,
        "python": platform.python_version(), "torch": torch.__version__,
        "triton": importlib.import_module("triton").__version__,
    }


# ----------------------------------------------------------------------------------------------
# Timing.


def torch_routing(gating_output, per_expert_scale, topk):
    """The torch path of Gemma4MoE's routing function (top-k, softmax, scale, casts)."""
    topk_logits, topk_ids = torch.topk(gating_output, k=topk, dim=-1)
    topk_weights = torch.softmax(topk_logits, dim=-1)
    topk_weights = topk_weights * per_expert_scale[topk_ids].to(topk_weights.dtype)
    return topk_weights.to(torch.float32), topk_ids.to(torch.int32)


def _graph_time_us(make_launch, buffers, launches: int, trials: int) -> float:
    """Median per-launch time of a CUDA graph of ``launches`` launches cycling through buffers."""
    return graph_time_us(torch, lambda i: make_launch(buffers[i % len(buffers)]), launches,
                         warmup=min(3, len(buffers)), trials=trials, replays_per_trial=2)


def _buffers(nbytes_each: int, cold: bool, launches: int, make):
    count = 1
    if cold:
        count = min(launches, max(2, math.ceil(3 * L2_BYTES / max(nbytes_each, 1))))
    return [make() for _ in range(count)]


def peak_copy_gbps() -> float:
    n = 2**30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000.0)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / best / 1e9


def launch_label(network, num_tokens, num_experts, topk, dtype) -> str:
    """What the patched router launches by default, e.g. "network G=4"."""
    method, args = network.default_launch(num_tokens, num_experts, topk, dtype)
    if method == "network":
        return f"network G={args['groups']}"
    return f"rounds ({args['block_t']}, {args['num_warps']}, {args['chunks']})"


def check_correctness(upstream, network, dtype, num_experts, topk):
    """ids bit for bit and weights within 1e-6 (relative) between upstream and patched."""
    out = {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for num_tokens in (1, 7, 64, 4096, 16384):
        x = torch.randn(num_tokens, num_experts, device="cuda", generator=gen).to(dtype)
        x[::3] = torch.randint(-3, 4, x[::3].shape, device="cuda", generator=gen).to(dtype)
        s = torch.rand(num_experts, device="cuda", generator=gen) + 0.5
        w_up, i_up = upstream.gemma4_fused_routing(x, s, topk)
        w_p, i_p = network.gemma4_routing_network(x, s, topk)
        rel = ((w_p - w_up).abs() / w_up.abs().clamp_min(1e-30)).max().item()
        w_t, i_t = torch_routing(x, s, topk)
        same_values = torch.equal(torch.gather(x, 1, i_p.long()), torch.gather(x, 1, i_t.long()))
        out[num_tokens] = {
            "ids_equal_upstream": bool(torch.equal(i_up, i_p)),
            "max_rel_weight_diff_upstream": rel,
            "selected_logits_equal_torch_topk": bool(same_values),
            "max_abs_weight_diff_torch": (w_p - w_t).abs().max().item(),
        }
    forced = {f"network_g{g}": {"groups": g} for g in SWEEP_GROUPS
              if g in network.network_group_choices(num_experts)}
    forced.update({f"rounds_{bt}_{nw}_{ch}": {"block_t": bt, "num_warps": nw, "chunks": ch}
                   for bt, nw, ch in SWEEP_SHAPES})
    for name, kwargs in forced.items():
        x = torch.randn(4099, num_experts, device="cuda", generator=gen).to(dtype)
        x[::3] = torch.randint(-3, 4, x[::3].shape, device="cuda", generator=gen).to(dtype)
        s = torch.rand(num_experts, device="cuda", generator=gen) + 0.5
        w_up, i_up = upstream.gemma4_fused_routing(x, s, topk)
        w_p, i_p = network.gemma4_routing_forced_launch(x, s, topk, **kwargs)
        rel = ((w_p - w_up).abs() / w_up.abs().clamp_min(1e-30)).max().item()
        out[name] = {"ids_equal_upstream": bool(torch.equal(i_up, i_p)),
                     "max_rel_weight_diff_upstream": rel}
    return out


def bench_dtype(upstream, network, dtype_name: str, args, peak: float) -> dict:
    dtype = getattr(torch, dtype_name)
    E, K = args.experts, args.topk
    elem = torch.tensor([], dtype=dtype).element_size()
    torch.manual_seed(0)
    scale = (torch.rand(E, device="cuda") + 0.5).contiguous()
    variants = {
        "torch": lambda x: torch_routing(x, scale, K),
        "upstream": lambda x: upstream.gemma4_fused_routing(x, scale, K),
        "patched": lambda x: network.gemma4_routing_network(x, scale, K),
        "rounds": lambda x: network.gemma4_routing_forced_launch(x, scale, K, method="rounds"),
    }
    rows = []
    for mode in ("cold", "hot"):
        for T in TOKENS:
            read, write = T * E * elem, T * K * 8
            moved = read + write + E * 4
            logits = _buffers(read, mode == "cold", args.launches,
                              lambda: torch.randn(T, E, device="cuda").to(dtype))
            row = {"mode": mode, "tokens": T, "bytes_moved": moved,
                   "launch_shape": launch_label(network, T, E, K, dtype)}
            for name, fn in variants.items():
                row[f"{name}_us"] = _graph_time_us(fn, logits, args.launches, args.trials)
            half = moved // 2
            srcs = _buffers(half, mode == "cold", args.launches,
                            lambda: torch.empty(half, dtype=torch.uint8, device="cuda"))
            dst = torch.empty(half, dtype=torch.uint8, device="cuda")
            row["floor_copy_us"] = _graph_time_us(lambda b: dst.copy_(b), srcs, args.launches,
                                                  args.trials)
            row["floor_bw_us"] = moved / (peak * 1e9) * 1e6
            row["patched_gbps"] = moved / (row["patched_us"] * 1e-6) / 1e9
            row["upstream_gbps"] = moved / (row["upstream_us"] * 1e-6) / 1e9
            row["speedup_vs_upstream"] = row["upstream_us"] / row["patched_us"]
            row["speedup_vs_torch"] = row["torch_us"] / row["patched_us"]
            row["patched_over_floor_copy"] = row["patched_us"] / row["floor_copy_us"]
            row["patched_over_floor_bw"] = row["patched_us"] / row["floor_bw_us"]
            rows.append(row)
            print(f"{dtype_name} {mode} T={T:6d} torch {row['torch_us']:7.2f} upstream "
                  f"{row['upstream_us']:7.2f} patched {row['patched_us']:6.2f} rounds "
                  f"{row['rounds_us']:6.2f} us  x{row['speedup_vs_upstream']:.2f}  copy-floor "
                  f"{row['floor_copy_us']:5.2f} bw-floor {row['floor_bw_us']:5.2f}", flush=True)
            del logits, srcs, dst

    sweep = []
    if args.sweep:
        for T in SWEEP_TOKENS:
            logits = _buffers(T * E * elem, True, args.launches,
                              lambda: torch.randn(T, E, device="cuda").to(dtype))
            entry = {"tokens": T}
            for g in (g for g in SWEEP_GROUPS if g in network.network_group_choices(E)):
                fn = lambda x, g=g: network.gemma4_routing_forced_launch(x, scale, K, groups=g)
                entry[f"network_g{g}"] = _graph_time_us(fn, logits, args.launches, args.trials)
            for bt, nw, ch in SWEEP_SHAPES:
                fn = (lambda x, bt=bt, nw=nw, ch=ch: network.gemma4_routing_forced_launch(
                    x, scale, K, block_t=bt, num_warps=nw, chunks=ch))
                entry[f"rounds_{bt}_{nw}_{ch}"] = _graph_time_us(fn, logits, args.launches,
                                                                 args.trials)
            sweep.append(entry)
            best = min((v, k) for k, v in entry.items() if k != "tokens")
            print(f"{dtype_name} sweep T={T}: best {best[1]} {best[0]:.2f} us", flush=True)
            del logits

    return {"experts": E, "topk": K, "dtype": dtype_name, "rows": rows, "sweep": sweep,
            "checks": check_correctness(upstream, network, dtype, E, K)}


# ----------------------------------------------------------------------------------------------
# GPU tests, logged with the same stamp.


def run_gpu_tests(test_files: list, out: Path, meta: dict) -> int:
    """The GPU-marked tests of ``test_files`` under this interpreter (its installed engine)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *test_files]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    engine = meta["installed_engine"]
    header = [
        f"GPU tests: {' '.join(test_files)} (pytest -m gpu)",
        f"device {meta['device']}, date {meta['date']}, commit {meta['commit']}",
        f"python {meta['python']}, torch {meta['torch']}, triton {meta['triton']}",
        f"installed engine: sglang {engine['sglang']}; its router kernel file matches this "
        f"checkout: {engine['router_kernel_file_matches_this_checkout']}",
        f"exit status {proc.returncode}, {time.time() - t0:.0f} s",
        "",
    ]
    log = out / f"gpu_tests_{gpu_tag()}.txt"
    log.write_text("\n".join(header) + proc.stdout + proc.stderr)
    print(f"wrote {log} (pytest exit status {proc.returncode})", flush=True)
    return proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmark/gemma4/results")
    ap.add_argument("--kernel-file", type=Path, default=REPO / KERNEL_FILE,
                    help="the series' router kernel module (default: this checkout's)")
    ap.add_argument("--upstream-file", type=Path, default=None,
                    help="sglang 0.5.23's gemma4_routing.py (default: see the module docstring)")
    ap.add_argument("--name", default=None,
                    help="result file stem (default: routing_<gpu>, e.g. routing_h200)")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--dtypes", default="bfloat16",
                    help="comma-separated logits dtypes: bfloat16, float32, float16")
    ap.add_argument("--launches", type=int, default=100, help="launches per CUDA graph")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--sweep", action="store_true", help="also time every forced launch shape")
    ap.add_argument("--commit", default=None, help="commit to stamp (default: git HEAD here)")
    ap.add_argument("--gpu-tests", nargs="+", default=None, metavar="TEST_FILE",
                    help="then run these files' GPU-marked tests and log them")
    args = ap.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPE_SUFFIX]
    if bad or not dtypes:
        raise SystemExit(f"--dtypes: {bad or args.dtypes!r} not in {sorted(DTYPE_SUFFIX)}")
    if not torch.cuda.is_available():
        raise SystemExit("bench_routing.py needs a CUDA GPU")
    commit = stamp.commit(args.commit, paths=(str(KERNEL_FILE), "benchmark/gemma4/bench_routing.py"),
                          required=True)
    try:
        upstream = load_upstream_routing(args.upstream_file)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err))
    network = _load_file_module("gemma4_routing_network_under_test", args.kernel_file)

    t0 = time.time()
    peak = peak_copy_gbps()
    meta = result_stamp(commit)
    meta.update({
        "kernel_file": (str(args.kernel_file.resolve().relative_to(REPO))
                        if args.kernel_file.resolve().is_relative_to(REPO)
                        else args.kernel_file.name),
        "kernel_sha256": _sha256(args.kernel_file),
        "upstream_source": upstream.source, "upstream_sha256": upstream.sha256,
        "installed_engine": installed_engine(args.kernel_file),
        "launches_per_graph": args.launches, "trials": args.trials,
        "peak_copy_gbps": peak,
    })
    print(f"device {meta['device']}, commit {commit}, peak copy {peak:.0f} GB/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"routing_{gpu_tag()}"
    for dtype_name in dtypes:
        start = time.time()
        result = {"benchmark": "gemma4 MoE routing, per launch inside a CUDA graph", **meta,
                  **bench_dtype(upstream, network, dtype_name, args, peak)}
        result["seconds"] = round(time.time() - start, 1)
        name = stem + DTYPE_SUFFIX[dtype_name]
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{name}.md").write_text(render_markdown(result))
        print(f"wrote {args.out / name}.json and .md ({result['seconds']:.0f} s)", flush=True)
    print(f"benchmark done in {time.time() - t0:.0f} s", flush=True)
    if args.gpu_tests:
        return run_gpu_tests(args.gpu_tests, args.out, meta)
    return 0


def render_markdown(r: dict) -> str:
    engine = r["installed_engine"]
    lines = [
        f"# Gemma-4 MoE router: upstream vs patched vs torch ({r['device']})",
        "",
        f"Date {r['date']}, commit {r['commit']}, torch {r['torch']}, triton {r['triton']}, "
        f"python {r['python']}. E={r['experts']}, K={r['topk']}, {r['dtype']} logits. Per launch "
        f"inside a CUDA graph of {r['launches_per_graph']} launches, median of {r['trials']} "
        f"trials. Peak device copy "
        f"{r['peak_copy_gbps']:.0f} GB/s (1 GiB). floor bw = bytes moved / peak copy; floor copy = "
        "a copy of the same bytes timed like the kernels. cold = logits from HBM (buffers cycle "
        "through 3x L2), hot = the same logits every launch (L2).",
        "",
        f"Kernels: `{r['kernel_file']}` (sha256 {r['kernel_sha256'][:12]}); upstream 0.5.23 "
        f"file from {r['upstream_source']} (sha256 {r['upstream_sha256'][:12]}). The engine "
        f"this interpreter imports: sglang {engine['sglang']}, its kernel file the same: "
        f"{engine['router_kernel_file_matches_this_checkout']}.",
        "",
    ]
    for mode in ("cold", "hot"):
        lines += [
            f"## {mode}",
            "",
            "| T | patched kernel | torch us | upstream us | patched us | rounds us | vs upstream |"
            " vs torch | patched GB/s | floor copy us | floor bw us | patched / floor copy |"
            " patched / floor bw |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in (x for x in r["rows"] if x["mode"] == mode):
            lines.append(
                f"| {row['tokens']} | {row['launch_shape']} | {row['torch_us']:.2f} | "
                f"{row['upstream_us']:.2f} | {row['patched_us']:.2f} | {row['rounds_us']:.2f} | "
                f"{row['speedup_vs_upstream']:.2f}x | {row['speedup_vs_torch']:.1f}x | "
                f"{row['patched_gbps']:.0f} | {row['floor_copy_us']:.2f} | {row['floor_bw_us']:.2f} | "
                f"{row['patched_over_floor_copy']:.2f} | {row['patched_over_floor_bw']:.2f} |"
            )
        lines.append("")
    if r["sweep"]:
        shapes = [k for k in r["sweep"][0] if k != "tokens"]
        lines += ["## Launch-shape sweep (cold, us per launch; network_gG = G groups of 8 keys per "
                  "lane, rounds_bt_warps_pieces)", "",
                  "| T | " + " | ".join(shapes) + " |", "|---|" + "---|" * len(shapes)]
        for e in r["sweep"]:
            lines.append(f"| {e['tokens']} | " + " | ".join(f"{e[s]:.2f}" for s in shapes) + " |")
        lines.append("")
    lines += ["## The bar", "",
              "| mode | min speedup vs upstream, T >= 4096 | max patched / floor copy, T >= 4096 | "
              "max patched / floor bw, T >= 4096 | min speedup vs upstream, T <= 64 |",
              "|---|---|---|---|---|"]
    for mode in ("cold", "hot"):
        big = [x for x in r["rows"] if x["mode"] == mode and x["tokens"] >= 4096]
        small = [x for x in r["rows"] if x["mode"] == mode and x["tokens"] <= 64]
        if big and small:
            lines.append(
                f"| {mode} | {min(x['speedup_vs_upstream'] for x in big):.2f}x | "
                f"{max(x['patched_over_floor_copy'] for x in big):.2f} | "
                f"{max(x['patched_over_floor_bw'] for x in big):.2f} | "
                f"{min(x['speedup_vs_upstream'] for x in small):.2f}x |")
    lines.append("")
    lines += ["## Correctness (patched vs upstream, random logits with many ties)", "",
              "| case | ids equal | max rel weight diff |", "|---|---|---|"]
    for case, c in r["checks"].items():
        lines.append(f"| {case} | {c['ids_equal_upstream']} | {c['max_rel_weight_diff_upstream']:.2e} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
