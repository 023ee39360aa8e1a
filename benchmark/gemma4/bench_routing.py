"""Gemma-4 MoE router: upstream fused kernel vs the patched kernels vs the torch path.

"patched" is what the patched ``gemma4_fused_routing`` runs (the network kernel for topk <= 8);
"rounds" is the series' other kernel (any topk), timed alongside for reference.

Each variant is timed per launch by replaying a CUDA graph that holds many launches back to back, so
the graph-launch cost is spread over all of them and the numbers show kernel time. Two input modes:

* cold: the launches of one graph cycle through distinct logits buffers whose total size is at least
  three times the L2 cache, so the logits come from HBM (the memory floor in the usual sense);
* hot: every launch reads the same logits, which then sit in L2 (as right after the router GEMM).

The floor of a launch is the time the same GPU needs to move the same bytes (logits read, weights and
ids written): ``floor_bw_us`` from the peak device-to-device copy bandwidth measured on 1 GiB, and
``floor_copy_us`` from a copy of the same number of bytes timed exactly like the kernels (graph of many
launches, same cold/hot mode), which includes the fixed cost of a launch inside a graph.

Usage (on a GPU machine; sglang needs only its pure-Python files):
    python benchmark/gemma4/bench_routing.py --upstream-file PRISTINE/sglang/kernels/ops/moe/gemma4_routing.py \
        [--patched-root DIR_WITH_sglang] [--sweep] --out benchmark/gemma4/results
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 12289, 16384)
SWEEP_TOKENS = (1, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)
# Network kernel: groups of 8 keys per lane. Rounds kernel: (block_t, num_warps, chunks).
SWEEP_GROUPS = (1, 2, 4, 8)
SWEEP_SHAPES = ((1, 1, 1), (4, 1, 2), (8, 1, 4), (16, 2, 4))
L2_BYTES = 50 * 2**20  # H100/H200; only sets how many buffers the cold mode cycles through


def _load_file_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_routing(gating_output, per_expert_scale, topk):
    """The torch path of Gemma4MoE's routing function (top-k, softmax, scale, casts)."""
    topk_logits, topk_ids = torch.topk(gating_output, k=topk, dim=-1)
    topk_weights = torch.softmax(topk_logits, dim=-1)
    topk_weights = topk_weights * per_expert_scale[topk_ids].to(topk_weights.dtype)
    return topk_weights.to(torch.float32), topk_ids.to(torch.int32)


def _graph_time_us(make_launch, buffers, launches: int, trials: int) -> float:
    """Median per-launch time of a CUDA graph of ``launches`` launches cycling through buffers."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for b in buffers[:3]:
            make_launch(b)  # compile / warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(launches):
            make_launch(buffers[i % len(buffers)])
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(trials):
        start.record()
        graph.replay()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / (2 * launches))
    del graph
    return statistics.median(times)


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


def launch_label(tiled, num_tokens, num_experts, topk, dtype) -> str:
    """What the patched router launches by default, e.g. "network G=4"."""
    method, args = tiled.default_launch(num_tokens, num_experts, topk, dtype)
    if method == "network":
        return f"network G={args['groups']}"
    return f"rounds ({args['block_t']}, {args['num_warps']}, {args['chunks']})"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except Exception:
        return "unknown"


def check_correctness(upstream, patched, tiled, dtype, num_experts, topk):
    """ids bit for bit and weights within 1e-6 (relative) between upstream and patched."""
    out = {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for num_tokens in (1, 7, 64, 4096, 16384):
        x = torch.randn(num_tokens, num_experts, device="cuda", generator=gen).to(dtype)
        x[::3] = torch.randint(-3, 4, x[::3].shape, device="cuda", generator=gen).to(dtype)
        s = torch.rand(num_experts, device="cuda", generator=gen) + 0.5
        w_up, i_up = upstream.gemma4_fused_routing(x, s, topk)
        w_p, i_p = patched.gemma4_fused_routing(x, s, topk)
        rel = ((w_p - w_up).abs() / w_up.abs().clamp_min(1e-30)).max().item()
        w_t, i_t = torch_routing(x, s, topk)
        same_values = torch.equal(torch.gather(x, 1, i_p.long()), torch.gather(x, 1, i_t.long()))
        out[num_tokens] = {
            "ids_equal_upstream": bool(torch.equal(i_up, i_p)),
            "max_rel_weight_diff_upstream": rel,
            "selected_logits_equal_torch_topk": bool(same_values),
            "max_abs_weight_diff_torch": (w_p - w_t).abs().max().item(),
        }
    forced = {f"network_g{g}": {"groups": g} for g in SWEEP_GROUPS}
    forced.update({f"rounds_{bt}_{nw}_{ch}": {"block_t": bt, "num_warps": nw, "chunks": ch}
                   for bt, nw, ch in SWEEP_SHAPES})
    for name, kwargs in forced.items():
        x = torch.randn(4099, num_experts, device="cuda", generator=gen).to(dtype)
        x[::3] = torch.randint(-3, 4, x[::3].shape, device="cuda", generator=gen).to(dtype)
        s = torch.rand(num_experts, device="cuda", generator=gen) + 0.5
        w_up, i_up = upstream.gemma4_fused_routing(x, s, topk)
        w_p, i_p = tiled.gemma4_routing_tiled(x, s, topk, **kwargs)
        rel = ((w_p - w_up).abs() / w_up.abs().clamp_min(1e-30)).max().item()
        out[name] = {"ids_equal_upstream": bool(torch.equal(i_up, i_p)),
                     "max_rel_weight_diff_upstream": rel}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream-file", type=Path,
                    default=REPO / "build/pristine/sglang/kernels/ops/moe/gemma4_routing.py",
                    help="the unpatched sglang 0.5.23 gemma4_routing.py")
    ap.add_argument("--patched-root", type=Path, default=None,
                    help="directory holding a patched `sglang` package (default: the installed one)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmark/gemma4/results")
    ap.add_argument("--name", default=None,
                    help="result file stem (default: routing_<gpu>, e.g. routing_h200)")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--launches", type=int, default=100, help="launches per CUDA graph")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--sweep", action="store_true", help="also time every forced launch shape")
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_routing.py needs a CUDA GPU")

    if args.patched_root is not None:
        sys.path.insert(0, str(args.patched_root))
    patched = importlib.import_module("sglang.kernels.ops.moe.gemma4_routing")
    tiled = importlib.import_module("sglang.kernels.ops.moe.gemma4_routing_tiled")
    upstream = _load_file_module("upstream_gemma4_routing", args.upstream_file)
    if hasattr(upstream, "gemma4_routing_tiled"):
        raise SystemExit(f"{args.upstream_file} is already patched")

    dtype = getattr(torch, args.dtype)
    E, K = args.experts, args.topk
    elem = torch.tensor([], dtype=dtype).element_size()
    torch.manual_seed(0)
    scale = (torch.rand(E, device="cuda") + 0.5).contiguous()
    peak = peak_copy_gbps()
    print(f"device {torch.cuda.get_device_name()}, peak copy {peak:.0f} GB/s", flush=True)

    variants = {
        "torch": lambda x: torch_routing(x, scale, K),
        "upstream": lambda x: upstream.gemma4_fused_routing(x, scale, K),
        "patched": lambda x: patched.gemma4_fused_routing(x, scale, K),
        "rounds": lambda x: tiled.gemma4_routing_tiled(x, scale, K, method="rounds"),
    }
    rows = []
    for mode in ("cold", "hot"):
        for T in TOKENS:
            read, write = T * E * elem, T * K * 8
            moved = read + write + E * 4
            logits = _buffers(read, mode == "cold", args.launches,
                              lambda: torch.randn(T, E, device="cuda").to(dtype))
            row = {"mode": mode, "tokens": T, "bytes_moved": moved,
                   "launch_shape": launch_label(tiled, T, E, K, dtype)}
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
            print(f"{mode} T={T:6d} torch {row['torch_us']:7.2f} upstream {row['upstream_us']:7.2f} "
                  f"patched {row['patched_us']:6.2f} rounds {row['rounds_us']:6.2f} us  "
                  f"x{row['speedup_vs_upstream']:.2f}  "
                  f"copy-floor {row['floor_copy_us']:5.2f} bw-floor {row['floor_bw_us']:5.2f}",
                  flush=True)
            del logits, srcs, dst

    sweep = []
    if args.sweep:
        for T in SWEEP_TOKENS:
            logits = _buffers(T * E * elem, True, args.launches,
                              lambda: torch.randn(T, E, device="cuda").to(dtype))
            entry = {"tokens": T}
            for g in (g for g in SWEEP_GROUPS if g in tiled.network_group_choices(E)):
                fn = lambda x, g=g: tiled.gemma4_routing_tiled(x, scale, K, groups=g)
                entry[f"network_g{g}"] = _graph_time_us(fn, logits, args.launches, args.trials)
            for bt, nw, ch in SWEEP_SHAPES:
                fn = (lambda x, bt=bt, nw=nw, ch=ch:
                      tiled.gemma4_routing_tiled(x, scale, K, block_t=bt, num_warps=nw, chunks=ch))
                entry[f"rounds_{bt}_{nw}_{ch}"] = _graph_time_us(fn, logits, args.launches,
                                                                 args.trials)
            sweep.append(entry)
            best = min((v, k) for k, v in entry.items() if k != "tokens")
            print(f"sweep T={T}: best {best[1]} {best[0]:.2f} us", flush=True)
            del logits

    checks = check_correctness(upstream, patched, tiled, dtype, E, K)
    result = {
        "benchmark": "gemma4 MoE routing, per launch inside a CUDA graph",
        "device": torch.cuda.get_device_name(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "commit": args.commit or _git_commit(),
        "python": platform.python_version(), "torch": torch.__version__,
        "triton": importlib.import_module("triton").__version__,
        "experts": E, "topk": K, "dtype": args.dtype,
        "launches_per_graph": args.launches, "trials": args.trials,
        "peak_copy_gbps": peak, "rows": rows, "sweep": sweep, "checks": checks,
    }
    if args.name is None:
        gpu = torch.cuda.get_device_name().lower()
        args.name = "routing_" + next((g for g in ("h200", "h100", "a100", "b200", "l40s")
                                        if g in gpu), "gpu")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(render_markdown(result))
    print(f"wrote {args.out / args.name}.json and .md")
    return 0


def render_markdown(r: dict) -> str:
    lines = [
        f"# Gemma-4 MoE router: upstream vs patched vs torch ({r['device']})",
        "",
        f"Date {r['date']}, commit {r['commit']}, torch {r['torch']}, triton {r['triton']}. "
        f"E={r['experts']}, K={r['topk']}, {r['dtype']} logits. Per launch inside a CUDA graph of "
        f"{r['launches_per_graph']} launches, median of {r['trials']} trials. Peak device copy "
        f"{r['peak_copy_gbps']:.0f} GB/s (1 GiB). floor bw = bytes moved / peak copy; floor copy = "
        "a copy of the same bytes timed like the kernels. cold = logits from HBM (buffers cycle "
        "through 3x L2), hot = the same logits every launch (L2).",
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
