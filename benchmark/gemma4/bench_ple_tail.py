"""The per-layer-embedding tail of a Gemma-4 E2B / E4B layer: 0.5.23's nine ops against the fused tail.

Per layer, inside one CUDA graph of 35 launches (one per E2B layer, each with its own weights, so the
weights come from HBM as in a decode step rather than from L2), per row count T:
* upstream: the ops of gemma4_causal.py's unfused tail, with sglang's own modules where 0.5.23 has them
  (RMSNorm and Gemma4RMSNorm on their CUDA kernels), torch.nn.functional.linear for the two
  ReplicatedLinear GEMMs (what their unquantised method calls), torch gelu(tanh), adds and products;
* fused: sglang.kernels.ops.layernorm.gemma4_ple_tail.gemma4_ple_tail (three elementwise kernels
  around the same two GEMMs).
Both outputs are compared (max difference, share of equal elements).  The floor is the bytes each
layer must move (weights of both GEMMs, the two norm weights, x, residual, per-layer input read once,
the output written once) at the card's copy rate, given by --bw.

    /tmp/py-patched benchmark/gemma4/bench_ple_tail.py --out benchmark/gemma4/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stamp  # noqa: E402
from graph_timing import graph_time_us  # noqa: E402

MODELS = {"e2b": (1536, 256), "e4b": (2560, 256)}  # hidden, hidden_size_per_layer_input
ROWS = (1, 16, 80, 256, 1024, 8192)
LAYERS = 35
WEIGHTS = ("ff_norm_weight", "gate_weight", "proj_weight", "ple_norm_weight", "layer_scalar")
H100_COPY_BYTES_PER_S = 3.0e12


def _inputs(torch, T: int, H: int, P: int, seed: int = 0) -> Dict[str, Any]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf = torch.bfloat16

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(bf)

    return dict(
        x=rnd(T, H, scale=3.0), residual=rnd(T, H, scale=2.0),
        ff_norm_weight=(1 + 0.3 * torch.randn(H, generator=g, device="cuda")).to(bf), ff_eps=1e-6,
        gate_weight=rnd(P, H, scale=H ** -0.5), per_layer_input=rnd(T, 3, P)[:, 1, :],
        proj_weight=rnd(H, P, scale=P ** -0.5),
        ple_norm_weight=(1 + 0.3 * torch.randn(H, generator=g, device="cuda")).to(bf), ple_eps=1e-6,
        layer_scalar=torch.tensor([0.75], dtype=bf, device="cuda"),
    )


def _upstream(torch, layers: List[Dict[str, Any]], H: int):
    from sglang.srt.layers.layernorm import Gemma4RMSNorm, RMSNorm

    mods = []
    for inp in layers:
        ff = RMSNorm(H, eps=inp["ff_eps"]).to("cuda", torch.bfloat16)
        ff.weight.data.copy_(inp["ff_norm_weight"])
        ple = Gemma4RMSNorm(H, eps=inp["ple_eps"]).to("cuda", torch.bfloat16)
        ple.weight.data.copy_(inp["ple_norm_weight"])
        mods.append((ff, ple))
    F = torch.nn.functional

    def run(i: int):
        inp, (ff, ple) = layers[i], mods[i]
        h = ff(inp["x"])
        h = h + inp["residual"]
        gate = F.linear(h, inp["gate_weight"])
        gate = F.gelu(gate, approximate="tanh")
        gated = gate * inp["per_layer_input"]
        c = F.linear(gated, inp["proj_weight"])
        c = ple(c)
        h = h + c
        return h * inp["layer_scalar"]

    return run


def _floor_us(T: int, H: int, P: int, bw: float) -> float:
    weights = 2 * H * P * 2 + 2 * H * 2
    acts = T * (H * 2 * 2 + P * 2 + H * 2)  # x, residual, per-layer input read; output written
    return (weights + acts) / bw * 1e6


def _time(torch, fn, trials: int) -> float:
    """fn(i): the launch of layer i; per-launch microseconds."""
    return graph_time_us(torch, fn, LAYERS, warmup=2, trials=trials, replays_per_trial=10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", nargs="+", type=int, default=list(ROWS))
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--bw", type=float, default=H100_COPY_BYTES_PER_S, help="copy rate for the floor, bytes/s")
    ap.add_argument("--commit", default=None)
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_ple_tail needs a CUDA GPU")
    from sglang.kernels.ops.layernorm import gemma4_ple_tail as k

    rows: List[Dict[str, Any]] = []
    for model in args.models:
        H, P = MODELS[model]
        for T in args.rows:
            shared = _inputs(torch, T, H, P, seed=T)
            layers = [dict(shared, **{key: _inputs(torch, 1, H, P, seed=1000 + i)[key] for key in WEIGHTS})
                      for i in range(LAYERS)]
            up = _upstream(torch, layers, H)
            want, got = up(0), k.gemma4_ple_tail(**layers[0])
            torch.cuda.synchronize()
            diff = (got.float() - want.float()).abs()
            up_us = _time(torch, up, args.trials)
            fu_us = _time(torch, lambda i: k.gemma4_ple_tail(**layers[i]), args.trials)
            floor = _floor_us(T, H, P, args.bw)
            rows.append(dict(model=model, hidden=H, ple_dim=P, rows=T, upstream_us=up_us, fused_us=fu_us,
                             speedup=up_us / fu_us, floor_us=floor, fused_vs_floor=fu_us / floor,
                             max_abs_diff=diff.max().item(), mean_abs_out=want.float().abs().mean().item(),
                             equal_share=(got == want).float().mean().item()))
            print(json.dumps(rows[-1]), flush=True)
            del layers, up

    res = {
        "what": "Gemma-4 PLE tail per layer: 0.5.23's nine ops vs the fused tail, CUDA graph of 35 layers' launches",
        "device": stamp.device_name(torch), "date": stamp.utc_now(), "commit": stamp.commit(args.commit),
        "torch": torch.__version__, "bw_bytes_per_s": args.bw, "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = "ple_tail_" + stamp.device_slug(stamp.device_name(torch))
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"# {res['what']}", "", f"Device {res['device']}, {res['date']}, commit {res['commit']}, "
             f"torch {res['torch']}; floor at {args.bw / 1e12:.1f} TB/s.", "",
             "| model | rows | 0.5.23 ops us | fused us | speedup | floor us | fused / floor | max abs diff | equal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['rows']} | {r['upstream_us']:.2f} | {r['fused_us']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['floor_us']:.2f} | {r['fused_vs_floor']:.1f}x | "
                     f"{r['max_abs_diff']:.3g} (mean |out| {r['mean_abs_out']:.3g}) | {r['equal_share']:.1%} |")
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
