"""SASS instruction counts of the router kernels, compiled offline for sm_90 (no GPU needed).

Compiles the network and rounds kernels of this checkout's router module
(python/sglang/kernels/ops/moe/gemma4_routing_network.py, as bench_routing.py times it) with
Triton's bundled ptxas for an H100/H200 target and prints, per launch shape, the SASS instructions
of one warp and the ones that matter for this kernel (integer min/max, shuffles, shared-memory
traffic and barriers, global loads and stores). routing_h200_design_notes.md quotes these counts (Triton
3.6); other Triton releases give somewhat different numbers.

    python benchmark/gemma4/routing_sass.py [--kernel-file PATH]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNEL_FILE = (Path(__file__).resolve().parents[2]
               / "python/sglang/kernels/ops/moe/gemma4_routing_network.py")

ALIGNED = ("logits_ptr", "scale_ptr", "weights_ptr", "ids_ptr", "stride_t")


def sass_counts(fn, signature: dict, constexprs: dict) -> collections.Counter:
    names = list(signature)
    # What the launcher specialises at run time for 16-byte aligned pointers and strides.
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ALIGNED if n in names}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            ops[m.group(1)] += 1
    return ops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel-file", type=Path, default=KERNEL_FILE)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("gemma4_routing_network_sass", args.kernel_file)
    network = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(network)
    sig = {"logits_ptr": "*bf16", "scale_ptr": "*fp32", "weights_ptr": "*fp32", "ids_ptr": "*i32",
           "T": "i32", "E": "i32", "stride_t": "i32"}
    rows = []
    for groups in (1, 2, 4, 8):
        ops = sass_counts(network._gemma4_routing_network_kernel, sig, dict(
            K=8, BLOCK_E=128, G=groups, KEY_MODE=0, PACKED=True, EVEN_E=True, SCALE_MODE=0,
            ASM_LOAD=True))
        rows.append((f"network G={groups} ({32 // (128 // (8 * groups))} tokens/warp)", ops))
    sig_rounds = {k: sig[k] for k in ("logits_ptr", "scale_ptr", "weights_ptr", "ids_ptr", "T", "E")}
    sig_rounds.update({"K": "i32", "stride_t": "i32"})
    for bt, chunks in ((1, 1), (8, 4)):
        ops = sass_counts(network._gemma4_routing_rounds_kernel, sig_rounds, dict(
            BLOCK_T=bt, BLOCK_E=128, BLOCK_K=8, CHUNKS=chunks, KEY_MODE=0, EVEN_E=True))
        rows.append((f"rounds block_t={bt} chunks={chunks} ({bt} tokens/warp)", ops))
    print(f"triton {triton.__version__}, sm_90, E=128, K=8, bf16 logits, fp32 scale, one warp")
    print("| kernel | SASS | int min/max | SHFL | LDS+STS | BAR | LDG | STG |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ops in rows:
        mnmx = sum(v for k, v in ops.items() if "MNMX" in k)
        print(f"| {name} | {sum(ops.values())} | {mnmx} | {ops['SHFL']} | "
              f"{ops['LDS'] + ops['STS']} | {ops['BAR']} | {ops['LDG']} | {ops['STG']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
