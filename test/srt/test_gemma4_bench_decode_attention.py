"""benchmark/gemma4/bench_decode_attention.py: the Gemma-4 decode-attention launch sweep.

The sweep calls 0.5.23's installed stage-1 kernel with its own launch parameters, so the argument plumbing is
what can break: under Triton's interpreter (CPU) every launch of a small sweep must give the float32
reference's attention, and the reference itself is checked against torch's SDPA.  The shapes come from the
published geometry, the floor counts K and V once, and bad arguments are named errors.  The GPU twin times a
one-case sweep.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmark", "gemma4"))
import bench_decode_attention as bda  # noqa: E402


def test_layer_shapes_follow_the_published_geometry():
    e2b = {s.kind: s for s in bda.layer_shapes("e2b")}
    assert (e2b["full"].q_heads, e2b["full"].kv_heads, e2b["full"].head_dim, e2b["full"].window) == (8, 1, 512, None)
    assert (e2b["sliding"].kv_heads, e2b["sliding"].head_dim, e2b["sliding"].window) == (1, 256, 512)
    moe = {s.kind: s for s in bda.layer_shapes("26b-a4b")}
    assert (moe["full"].q_heads, moe["full"].kv_heads, moe["full"].head_dim) == (16, 2, 512)  # global KV heads
    assert (moe["sliding"].kv_heads, moe["sliding"].window) == (8, 1024)
    assert e2b["sliding"].kv_len(16000) == 512 and e2b["full"].kv_len(16000) == 16000


def test_floor_counts_k_and_v_once_plus_q_and_output():
    full = bda.layer_shapes("e2b")[0]
    assert bda.floor_bytes(full, 80, 1500) == 2 * 80 * 1500 * 1 * 512 * 2 + 2 * 80 * 8 * 512 * 2
    sliding = bda.layer_shapes("e2b")[1]
    assert bda.floor_bytes(sliding, 1, 16000) == 2 * 512 * 256 * 2 + 2 * 8 * 256 * 2


def test_kv_copies_cover_four_l2_and_stay_bounded():
    full = bda.layer_shapes("e2b")[0]
    per = bda.floor_bytes(full, 1, 1500)
    n = bda.kv_copies(full, 1, 1500)
    assert n * per >= 4 * bda.L2_BYTES and (n - 1) * per < 4 * bda.L2_BYTES or n == 32
    assert bda.kv_copies(full, 80, 16000) == 1


@pytest.mark.parametrize("args, msg", [
    ((["e2b", "e9"], [1], [1500], 32), "unknown e9"),
    ((["e2b"], [0], [1500], 32), "--batch-sizes"),
    ((["e2b"], [1], [], 32), "--contexts"),
    ((["e2b"], [1], [1500], 0), "--cap"),
    ((["tiny"], [1], [1500], 32), "unknown tiny"),
])
def test_bad_arguments_are_named(args, msg):
    with pytest.raises(SystemExit, match=msg):
        bda.check_args(*args)


def _tiny_shape():
    return bda.LayerShape("tiny", "full", q_heads=8, kv_heads=2, head_dim=64, window=None)


def test_reference_is_softmax_attention():
    case = bda.make_case(torch, _tiny_shape(), batch=2, context=40, cap=8, copies=1, device="cpu",
                         dtype=torch.float32)
    want = bda.reference(torch, case)
    q, k, v = case["q"], case["k"][0], case["v"][0]
    for b in range(2):
        rows = case["kv_indices"][40 * b: 40 * (b + 1)]
        kb = k[rows].repeat_interleave(4, dim=1).transpose(0, 1)  # [heads, n, dim]
        vb = v[rows].repeat_interleave(4, dim=1).transpose(0, 1)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q[b][:, None], kb, vb)[:, 0]
        assert torch.allclose(want[b], sdpa, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU twin of the GPU test")
def test_every_launch_of_a_sweep_gives_the_reference_cpu():
    # fp16 under the interpreter (its bf16 dots are wrong); 100 tokens: several splits at cap 8
    case = bda.make_case(torch, _tiny_shape(), batch=2, context=100, cap=8, copies=2, device="cpu",
                         dtype=torch.float16)
    assert max(case["num_kv_splits"].tolist()) > 1
    for copy in (0, 1):
        want = bda.reference(torch, case, copy)
        for launch in (bda.UPSTREAM, bda.Launch(16, 8, 3), bda.Launch(64, 4, 1)):
            bda.run_launch(case, launch, copy)
            err = (case["o"].float() - want).abs().max().item()
            assert err < 5e-3, f"{launch.label} on copy {copy}: {err}"


def test_render_names_floor_best_and_failures():
    case = {"model": "e2b", "kind": "full", "q_heads": 8, "kv_heads": 1, "head_dim": 512, "kv_len": 1500,
            "batch": 80, "context": 1500, "splits": [8], "kv_copies": 1, "floor_us": 80.0, "upstream_us": 120.0,
            "best": "N64/w8/s3", "best_us": 100.0,
            "launches": [{"launch": "N32/w4/s2", "us": 120.0}, {"launch": "N64/w8/s4", "error": "OutOfResources"}]}
    meta = {"device": "H100", "date": "d", "commit": "c", "sglang": "0.5.23", "cap": 32, "sweep": "quick",
            "launches": 12, "bandwidth_bytes_per_s": 3.0e12}
    md = bda.render({"meta": meta, "cases": [case]})
    assert "| e2b | full | 8/1x512 | 80 | 1500 | 8 | 80.0 | 120.0 | 1.50x | N64/w8/s3 | 100.0 | 1.25x | 1.20x |" in md
    assert "3.00 TB/s" in md and "N64/w8/s4: OutOfResources" in md


@pytest.mark.gpu
def test_one_case_sweep_on_the_card_gpu():
    from benchkit.dp_run import measure_copy_bandwidth  # noqa: F401  (the script's import path)

    shape = bda.layer_shapes("e2b")[1]
    c = bda.bench_case(torch, shape, 16, 1500, 32, bda.SWEEPS["quick"][:3], bw=3.0e12)
    assert c["upstream_us"] and c["upstream_us"] > 0 and c["best_us"] <= c["upstream_us"]
    assert all("us" in r or "error" in r for r in c["launches"])
