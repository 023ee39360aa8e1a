"""Semantics of the Gemma-4 MoE router of the installed engine (``gemma4_fused_routing``).

Contract: ids = the top-k experts by logit, largest first, equal logits by lower expert id, under
IEEE totalOrder of the logit widened to fp32 (so +NaN ranks first, like torch.topk, and +0.0 above
-0.0); weights = softmax(logits[ids]) * per_expert_scale[ids] as fp32; ids int32.

The router's kernels live in gemma4_routing_network: the network kernel (topk <= 8) and the rounds
kernel (topk > 8); gemma4_routing_forced_launch runs either with any launch shape. The CPU tests
run the installed kernels under Triton's interpreter (CPU tensors) and force every launch shape of
both on small batches; the GPU-marked tests run the same checks compiled, on large batches too, and
compare with sglang 0.5.23's one-token-per-program kernel bit for bit on the ids (its
gemma4_routing.py, loaded as benchmark/gemma4/bench_routing.py loads it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROUTING = "sglang.kernels.ops.moe.gemma4_routing"
NETWORK = "sglang.kernels.ops.moe.gemma4_routing_network"
BENCH = Path(__file__).resolve().parents[2] / "benchmark/gemma4/bench_routing.py"

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Rounds kernel: launch shapes (block_t, num_warps, chunks) that choose_launch_shape can return,
# plus others.
FORCED_SHAPES = ((1, 1, 1), (8, 4, 1), (8, 1, 4), (4, 1, 2), (32, 4, 4), (2, 1, 1), (16, 2, 2))
# Network kernel: groups of 8 keys per lane.
NETWORK_GROUPS = (1, 2, 4, 8)


# ----------------------------------------------------------------------------------------------
# Independent reference (torch only, exact integer ordering).


def _total_order_key(values_fp32: torch.Tensor) -> torch.Tensor:
    """int64 that orders like IEEE totalOrder on fp32 values (bit patterns, NaN signs included)."""
    bits = values_fp32.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def reference_routing(logits: torch.Tensor, scale: torch.Tensor, topk: int):
    x = logits.detach().to("cpu", torch.float32)
    num_experts = x.shape[1]
    expert = torch.arange(num_experts, dtype=torch.int64)
    composite = _total_order_key(x) * 2048 + (2047 - expert)  # unique per row
    ids = torch.topk(composite, topk, dim=1, largest=True, sorted=True).indices
    picked = torch.gather(x, 1, ids)
    weights = torch.softmax(picked, dim=1) * scale.detach().to("cpu", torch.float32)[ids]
    return weights, ids.to(torch.int32)


def assert_matches_reference(weights, ids, logits, scale, topk):
    ref_w, ref_ids = reference_routing(logits, scale, topk)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert tuple(weights.shape) == tuple(ids.shape) == (logits.shape[0], topk)
    got_ids = ids.cpu()
    bad = (got_ids != ref_ids).any(dim=1).nonzero().flatten().tolist()
    assert not bad, (
        f"ids differ from the reference in rows {bad[:5]}: got {got_ids[bad[:1]].tolist()}, "
        f"want {ref_ids[bad[:1]].tolist()}"
    )
    torch.testing.assert_close(weights.cpu(), ref_w, rtol=1e-6, atol=0.0, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# Inputs.


def _bits_to(dtype: torch.dtype, bits: int) -> torch.Tensor:
    int_dtype = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    width = 32 if dtype == torch.float32 else 16
    if bits >= 1 << (width - 1):
        bits -= 1 << width
    return torch.tensor([bits], dtype=int_dtype[dtype]).view(dtype)


def special_logits(num_tokens: int, num_experts: int, dtype: torch.dtype, seed: int = 0):
    """Random logits with the hard rows first: ties, -inf, NaN, +inf, signed zeros, negative NaN."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, num_experts, generator=gen).to(dtype)
    e = num_experts
    rows = [
        lambda r: r.fill_(0.5),  # all tied: ids 0..k-1
        lambda r: r.copy_(torch.randint(-2, 3, (e,), generator=gen).to(dtype)),  # many ties
        lambda r: r.fill_(float("-inf")),  # all -inf: NaN weights, ids 0..k-1
        lambda r: r.__setitem__(slice(0, e // 2), float("-inf")),  # half -inf
        lambda r: r.__setitem__(e // 3, float("nan")),  # one +NaN: ranks first, NaN weights
        lambda r: r.__setitem__(e - 1, float("inf")),  # +inf: NaN weights (softmax)
        lambda r: (r.fill_(-1.0), r.__setitem__(slice(1, None, 2), 0.0),
                   r.__setitem__(slice(0, None, 2), -0.0)),  # +0.0 above -0.0
        lambda r: (r.__setitem__(0, _bits_to(dtype, 0xFFC00000 if dtype == torch.float32
                                              else 0xFE00 if dtype == torch.float16 else 0xFFC0)[0]),
                   r.__setitem__(slice(1, None), float("-inf"))),  # -NaN ranks last, below -inf
        lambda r: r.fill_(float("nan")),
    ]
    for i, make in enumerate(rows[: num_tokens]):
        make(x[i])
    return x


def _scale(num_experts: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(num_experts, generator=gen) * 1.5 + 0.25


# ----------------------------------------------------------------------------------------------
# CPU: the installed kernels under Triton's interpreter.


@pytest.fixture(scope="module")
def interp():
    """(routing module, network module) of the installed engine, re-imported in interpreter mode.

    Triton decides at decoration time whether a kernel is compiled or interpreted, so both modules
    are reloaded with TRITON_INTERPRET=1 and reloaded again afterwards for later tests.
    """
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        network = importlib.reload(importlib.import_module(NETWORK))
        routing = importlib.reload(importlib.import_module(ROUTING))
        yield routing, network
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
        importlib.reload(importlib.import_module(NETWORK))
        importlib.reload(importlib.import_module(ROUTING))


class _GuardedTorch:
    """``torch`` as the interpreted network module sees it: ``torch.empty`` (the router's output
    allocation) returns the head of a longer buffer whose tail holds a sentinel. Under the interpreter
    the kernels store through raw host pointers, so a store past the [T, K] outputs (a store mask
    wider than K) would corrupt the heap and abort the whole pytest run; here it lands in the tail,
    and the test fails cleanly, naming the output."""

    def __init__(self):
        self.buffers = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *size, dtype=None, device=None):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        count = 1
        for dim in shape:
            count *= int(dim)
        dtype = dtype or torch.get_default_dtype()
        sentinel = -1234.5 if dtype.is_floating_point else -7
        # A row spills at most BLOCK_K (<= 1024) slots, a program at most BLOCK_T (<= 32) rows.
        buffer = torch.full((2 * count + 4096,), sentinel, dtype=dtype, device=device)
        self.buffers.append((shape, dtype, count, buffer, sentinel))
        return buffer[:count].view(shape)

    def spills(self):
        out = []
        for shape, dtype, count, buffer, sentinel in self.buffers:
            written = int((buffer[count:] != sentinel).sum())
            if written:
                out.append(f"{written} value(s) written past the {dtype} output of shape {list(shape)}")
        return out


@pytest.fixture(autouse=True)
def _outputs_guarded_under_interpreter(request):
    """Interpreter tests (those using ``interp``) run with _GuardedTorch in the network module and
    fail, after the test, if a kernel wrote past its outputs."""
    if "interp" not in request.fixturenames:
        yield
        return
    _, network = request.getfixturevalue("interp")
    guarded, saved = _GuardedTorch(), network.torch
    network.torch = guarded
    try:
        yield
    finally:
        network.torch = saved
    spills = guarded.spills()
    if spills:
        pytest.fail("kernel stores outside the router outputs: " + "; ".join(spills[:5]))


def test_installed_router_calls_the_network_module(interp):
    routing, network = interp
    x = special_logits(7, 128, torch.bfloat16)
    s = _scale(128)
    w_hook, i_hook = routing.gemma4_fused_routing(x, s, 8)
    w_net, i_net = network.gemma4_routing_network(x, s, 8)
    assert torch.equal(i_hook, i_net)
    torch.testing.assert_close(w_hook, w_net, rtol=0, atol=0, equal_nan=True)
    assert_matches_reference(w_hook, i_hook, x, s, 8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_experts", (8, 128, 256, 1024))
@pytest.mark.parametrize("topk", (1, 8))
@pytest.mark.parametrize("num_tokens", (0, 1, 7))
def test_matches_reference_cpu(interp, dtype, num_experts, topk, num_tokens):
    routing, _ = interp
    x = special_logits(num_tokens, num_experts, dtype, seed=num_experts + topk)
    s = _scale(num_experts)
    weights, ids = routing.gemma4_fused_routing(x, s, topk)
    assert_matches_reference(weights, ids, x, s, topk)


def test_large_batch_cpu(interp):
    """T=4096 takes the prefill shape of the network kernel (32 keys per lane). One dtype here, as
    the interpreter takes about a minute per dtype; the GPU twin runs all three at 4096 and 4097,
    and test_every_network_shape_cpu runs G=4 on all three with a partial last program."""
    routing, network = interp
    assert network.choose_network_groups(4096, 128) == network.choose_network_groups(4097, 128) == 4
    x = special_logits(4096, 128, torch.bfloat16, seed=3)
    s = _scale(128)
    weights, ids = routing.gemma4_fused_routing(x, s, 8)
    assert_matches_reference(weights, ids, x, s, 8)


@pytest.mark.parametrize("shape", FORCED_SHAPES, ids=lambda s: "bt%d_w%d_c%d" % s)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_launch_shape_cpu(interp, shape, dtype):
    """Each launch shape on a small batch, including a partial last tile (T not a multiple)."""
    _, network = interp
    block_t, num_warps, chunks = shape
    num_tokens = 2 * block_t + 3
    x = special_logits(num_tokens, 128, dtype, seed=block_t)
    s = _scale(128)
    weights, ids = network.gemma4_routing_forced_launch(
        x, s, 8, block_t=block_t, num_warps=num_warps, chunks=chunks
    )
    assert_matches_reference(weights, ids, x, s, 8)


@pytest.mark.parametrize("groups", NETWORK_GROUPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_network_shape_cpu(interp, groups, dtype):
    """Each network shape on a small batch with a partial last program (32 / L tokens each)."""
    _, network = interp
    lanes = 128 // (8 * groups)
    num_tokens = 2 * (32 // lanes) + 3
    x = special_logits(num_tokens, 128, dtype, seed=groups)
    s = _scale(128)
    weights, ids = network.gemma4_routing_forced_launch(x, s, 8, groups=groups)
    assert_matches_reference(weights, ids, x, s, 8)


@pytest.mark.parametrize(
    "num_experts,topk,groups",
    [(5, 5, 1), (8, 8, 1), (30, 7, 2), (100, 8, 4), (100, 3, 8), (1000, 8, 4), (1000, 2, 8),
     (1024, 8, 4), (256, 1, 1), (64, 6, 8), (2, 1, 1)],
)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
def test_network_odd_expert_counts_cpu(interp, num_experts, topk, groups, dtype):
    """E below 8 or not a power of two (padding keys), every K <= 8, odd E (no 32-bit words)."""
    _, network = interp
    x = special_logits(11, num_experts, dtype, seed=num_experts + topk)
    s = _scale(num_experts)
    weights, ids = network.gemma4_routing_forced_launch(x, s, topk, groups=groups)
    assert_matches_reference(weights, ids, x, s, topk)


def test_default_kernel_by_topk_cpu(interp, monkeypatch):
    """The served entry runs the network kernel for topk <= 8 and the rounds kernel for topk > 8;
    the forced entry runs either kernel."""
    _, network = interp
    calls = []
    for name in ("_network_launch", "_rounds_launch"):
        real = getattr(network, name)
        monkeypatch.setattr(
            network, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1]
        )
    x, s = special_logits(9, 64, torch.bfloat16), _scale(64)
    for topk, method, want in ((8, None, "_network_launch"), (9, None, "_rounds_launch"),
                               (8, "rounds", "_rounds_launch"), (1, "network", "_network_launch")):
        calls.clear()
        if method is None:
            weights, ids = network.gemma4_routing_network(x, s, topk)
        else:
            weights, ids = network.gemma4_routing_forced_launch(x, s, topk, method=method)
        assert calls == [want], (topk, method, calls)
        assert_matches_reference(weights, ids, x, s, topk)


@pytest.mark.parametrize(
    "num_experts,topk",
    [(24, 5), (1000, 8), (1000, 20), (64, 64), (128, 17), (3, 3), (1024, 1)],
)
@pytest.mark.parametrize("shape", ((1, 1, 1), (4, 1, 2), (8, 1, 4)), ids=lambda s: "bt%d_w%d_c%d" % s)
def test_odd_expert_counts_and_large_k_cpu(interp, num_experts, topk, shape):
    """E not a power of two (masked lanes), K > 16 (rolled loop), K == E."""
    _, network = interp
    block_t, num_warps, chunks = shape
    block_e = 1 << (num_experts - 1).bit_length()
    block_k = 1 << (topk - 1).bit_length()
    while chunks > 1 and block_e // chunks < block_k:
        chunks //= 2
    x = special_logits(block_t + 2, num_experts, torch.bfloat16, seed=num_experts)
    s = _scale(num_experts)
    weights, ids = network.gemma4_routing_forced_launch(
        x, s, topk, block_t=block_t, num_warps=num_warps, chunks=chunks
    )
    assert_matches_reference(weights, ids, x, s, topk)


def test_strided_inputs_cpu(interp):
    routing, _ = interp
    wide = torch.randn(9, 300).to(torch.bfloat16)
    rows_strided = wide[:, 10:138]  # row stride 300
    cols_strided = torch.randn(128, 9).to(torch.bfloat16).t()  # column stride 9
    scale = _scale(256)[::2]  # non-contiguous scale
    odd_start = wide[:, 11:139]  # rows start 2 bytes off a 32-bit word: 16-bit loads
    odd_stride = torch.randn(9, 301).to(torch.float16)[:, 1:129]  # odd row stride
    for x in (rows_strided, cols_strided, odd_start, odd_stride):
        weights, ids = routing.gemma4_fused_routing(x, scale, 8)
        assert_matches_reference(weights, ids, x, scale, 8)


def test_scale_dtypes_cpu(interp):
    routing, _ = interp
    x = torch.randn(5, 128).to(torch.bfloat16)
    for scale_dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        s = _scale(128).to(scale_dtype)
        weights, ids = routing.gemma4_fused_routing(x, s, 8)
        assert_matches_reference(weights, ids, x, s, 8)


def test_ties_pick_lower_ids_first_cpu(interp):
    routing, _ = interp
    x = torch.zeros(2, 16)
    x[0, [3, 7, 11]] = 2.0
    x[1, :] = 1.0
    x[1, [9, 2]] = 4.0
    weights, ids = routing.gemma4_fused_routing(x, torch.ones(16), 4)
    assert ids.tolist() == [[3, 7, 11, 0], [2, 9, 0, 1]]
    e2 = torch.exp(torch.tensor(2.0))
    torch.testing.assert_close(weights[0, 0], e2 / (3 * e2 + 1), rtol=1e-6, atol=0)


def test_launch_shape_choice():
    network = importlib.import_module(NETWORK)
    shapes = {t: network.choose_launch_shape(t, 128, 8)
              for t in (1, 64, 1024, 1025, 4096, 4097, 16384)}
    assert shapes[1] == shapes[64] == shapes[1024] == (1, 1, 1)
    assert shapes[1025] == shapes[4096] == shapes[4097] == shapes[16384] == (8, 1, 4)
    for block_t, num_warps, chunks in shapes.values():
        assert block_t & (block_t - 1) == 0 and num_warps & (num_warps - 1) == 0
    # Pieces hold >= max(BLOCK_K, 8) experts; about 16 / 32 logits per thread at any E.
    assert network.choose_launch_shape(16384, 8, 1) == (8, 1, 1)
    assert network.choose_launch_shape(16384, 64, 32) == (8, 1, 2)
    assert network.choose_launch_shape(16384, 256, 8) == (4, 1, 4)
    assert network.choose_launch_shape(16384, 1024, 8) == (1, 1, 4)
    assert network.choose_launch_shape(2000, 1024, 8) == (1, 1, 4)
    assert network.choose_launch_shape(2000, 16, 8) == (8, 1, 2)  # pieces of >= 8 experts


def test_network_groups_choice():
    network = importlib.import_module(NETWORK)
    groups = {t: network.choose_network_groups(t, 128) for t in (1, 32, 33, 2048, 2049, 16384)}
    assert groups == {1: 1, 32: 1, 33: 2, 2048: 2, 2049: 4, 16384: 4}
    # A token spans at most 32 lanes and a lane holds at least one group of 8.
    assert network.choose_network_groups(1, 1024) == 4  # 32 lanes of 32 keys
    assert network.choose_network_groups(16384, 1024) == 4
    assert network.choose_network_groups(16384, 16) == 2
    assert network.choose_network_groups(16384, 5) == 1  # padded to 8 keys
    # fp32 logits (64-bit keys): the short-chain shapes stay longer.
    fp32 = {t: network.choose_network_groups(t, 128, 64) for t in (1, 1024, 1025, 4096, 4097, 8193)}
    assert fp32 == {1: 1, 1024: 1, 1025: 2, 4096: 2, 4097: 4, 8193: 8}
    with pytest.raises(ValueError, match="key_bits must be 32 or 64"):
        network.choose_network_groups(1, 128, 16)
    assert network.network_group_choices(1024) == (4, 8)
    assert network.network_group_choices(128) == (1, 2, 4, 8)
    assert network.network_group_choices(30) == (1, 2, 4)
    assert network.network_group_choices(5) == (1,)
    # The wrapper's default, as the benchmark labels it.
    assert network.default_launch(64, 128, 8, torch.float32) == ("network", {"groups": 1})
    assert network.default_launch(64, 128, 8, torch.bfloat16) == ("network", {"groups": 2})
    assert network.default_launch(5000, 128, 9, torch.bfloat16) == (
        "rounds", {"block_t": 8, "num_warps": 1, "chunks": 4})
    for t, e, bits in ((t, e, bits) for t in (1, 600, 5000, 9000) for bits in (32, 64)
                       for e in (1, 8, 30, 128, 256, 1000, 1024)):
        g = network.choose_network_groups(t, e, bits)
        block_e = max(8, 1 << (e - 1).bit_length())
        assert g in (1, 2, 4, 8) and 8 * g <= block_e and block_e // (8 * g) <= 32


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((torch.randn(128), torch.ones(128), 8), ValueError, r"2-D router logits \[T, E\]"),
        ((torch.randn(2, 3, 128), torch.ones(128), 8), ValueError, "2-D router logits"),
        ((torch.randn(4, 128).double(), torch.ones(128), 8), TypeError, "float64"),
        ((torch.randint(0, 9, (4, 128)), torch.ones(128), 8), TypeError, "int64"),
        ((torch.randn(4, 128), torch.ones(64), 8), ValueError, r"per_expert_scale must have shape"),
        ((torch.randn(4, 128), torch.ones(1, 128), 8), ValueError, "per_expert_scale"),
        ((torch.randn(4, 128), torch.ones(128, dtype=torch.int32), 8), TypeError, "floating"),
        ((torch.randn(4, 128), torch.ones(128), 0), ValueError, r"topk must be in \[1, E=128\]"),
        ((torch.randn(4, 128), torch.ones(128), 129), ValueError, "topk must be in"),
        ((torch.randn(4, 128), torch.ones(128), 8.0), TypeError, "topk must be an int"),
        ((torch.randn(4, 128), torch.ones(128), True), TypeError, "topk must be an int"),
        ((torch.randn(4, 2048), torch.ones(2048), 8), ValueError, "at most 1024 experts"),
        (([[1.0] * 8], torch.ones(8), 2), TypeError, "gating_output must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(args, exc, match):
    routing = importlib.import_module(ROUTING)
    with pytest.raises(exc, match=match):
        routing.gemma4_fused_routing(*args)


def test_bad_launch_overrides_raise():
    network = importlib.import_module(NETWORK)
    x, s = torch.randn(4, 128), torch.ones(128)
    with pytest.raises(ValueError, match="block_t must be a power of two"):
        network.gemma4_routing_forced_launch(x, s, 8, block_t=3)
    with pytest.raises(ValueError, match="num_warps must be a power of two"):
        network.gemma4_routing_forced_launch(x, s, 8, num_warps=0)
    with pytest.raises(ValueError, match="chunks"):
        network.gemma4_routing_forced_launch(x, s, 8, chunks=32)
    with pytest.raises(ValueError, match="groups must be 1, 2, 4 or 8"):
        network.gemma4_routing_forced_launch(x, s, 8, groups=3)
    with pytest.raises(ValueError, match="groups must be 1, 2, 4 or 8"):
        # 32 keys for 16 experts
        network.gemma4_routing_forced_launch(x[:, :16], s[:16], 8, groups=4)
    with pytest.raises(ValueError, match="at most 8 experts per token"):
        network.gemma4_routing_forced_launch(x, s, 9, method="network")
    with pytest.raises(ValueError, match="method must be"):
        network.gemma4_routing_forced_launch(x, s, 8, method="sort")
    with pytest.raises(ValueError, match="apply to method='rounds' only"):
        network.gemma4_routing_forced_launch(x, s, 8, method="network", block_t=8)
    with pytest.raises(ValueError, match="groups applies to method='network' only"):
        network.gemma4_routing_forced_launch(x, s, 8, method="rounds", groups=2)


def test_empty_batch_returns_typed_empty_outputs():
    routing = importlib.import_module(ROUTING)
    weights, ids = routing.gemma4_fused_routing(torch.randn(0, 128), torch.ones(128), 8)
    assert weights.shape == ids.shape == (0, 8)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32


# ----------------------------------------------------------------------------------------------
# GPU: compiled kernels, large batches, and sglang 0.5.23's kernel as a second reference.


@pytest.fixture(scope="module")
def upstream_routing():
    """sglang 0.5.23's gemma4_routing module (its one-token-per-program kernel), found and loaded
    by the router benchmark's loader: $GEMMA4_UPSTREAM_ROUTING, build/upstream_gemma4_routing.py
    (make bench-tree) or the upstream wheel in build/upstream/ (make engine)."""
    spec = importlib.util.spec_from_file_location("gemma4_bench_routing", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    try:
        return bench.load_upstream_routing()
    except (FileNotFoundError, ValueError) as err:
        pytest.fail(str(err))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_experts", (8, 128, 256, 1024))
@pytest.mark.parametrize("topk", (1, 8))
@pytest.mark.parametrize("num_tokens", (0, 1, 7, 1500, 4096, 4097, 16384))
def test_matches_reference_gpu(dtype, num_experts, topk, num_tokens):
    routing = importlib.import_module(ROUTING)
    x = special_logits(num_tokens, num_experts, dtype, seed=num_experts + topk).cuda()
    s = _scale(num_experts).cuda()
    weights, ids = routing.gemma4_fused_routing(x, s, topk)
    assert weights.is_cuda and ids.is_cuda
    assert_matches_reference(weights, ids, x, s, topk)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", FORCED_SHAPES, ids=lambda s: "bt%d_w%d_c%d" % s)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_launch_shape_gpu(shape, dtype):
    network = importlib.import_module(NETWORK)
    block_t, num_warps, chunks = shape
    x = special_logits(4096 + 3, 128, dtype, seed=block_t).cuda()
    s = _scale(128).cuda()
    weights, ids = network.gemma4_routing_forced_launch(
        x, s, 8, block_t=block_t, num_warps=num_warps, chunks=chunks
    )
    assert_matches_reference(weights, ids, x, s, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("groups", NETWORK_GROUPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_experts", (30, 128, 256, 1024))
def test_every_network_shape_gpu(groups, dtype, num_experts):
    network = importlib.import_module(NETWORK)
    if groups not in network.network_group_choices(num_experts):
        pytest.skip(f"groups={groups} is not a shape for E={num_experts}")
    x = special_logits(4096 + 3, num_experts, dtype, seed=groups).cuda()
    for s in (_scale(num_experts).cuda(), _scale(num_experts).cuda().bfloat16()):
        weights, ids = network.gemma4_routing_forced_launch(x, s, 8, groups=groups)
        assert_matches_reference(weights, ids, x, s, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens", (1, 7, 64, 4096, 16384))
def test_same_ids_as_upstream_kernel_gpu(upstream_routing, dtype, num_tokens):
    """Bit for bit on the ids, 1e-6 relative on the weights, for finite rows and +NaN ties."""
    routing = importlib.import_module(ROUTING)
    gen = torch.Generator().manual_seed(num_tokens)
    x = torch.randn(num_tokens, 128, generator=gen).to(dtype)
    x[::5] = torch.randint(-3, 4, (x[::5].shape), generator=gen).to(dtype)  # heavy ties
    x = x.cuda()
    s = _scale(128).cuda()
    w_new, i_new = routing.gemma4_fused_routing(x, s, 8)
    w_old, i_old = upstream_routing.gemma4_fused_routing(x, s, 8)
    assert torch.equal(i_new, i_old)
    torch.testing.assert_close(w_new, w_old, rtol=1e-6, atol=0.0)


def _compiled_variants(kernel) -> int:
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:  # triton >= 3.2: device -> (kernel cache, ...)
        return sum(len(entry[0]) for entry in caches.values())
    return sum(len(c) for c in kernel.cache.values())


@pytest.mark.gpu
@pytest.mark.parametrize("method,kernel", [("network", "_gemma4_routing_network_kernel"),
                                           ("rounds", "_gemma4_routing_rounds_kernel")])
def test_no_recompile_for_new_token_counts_gpu(method, kernel):
    network = importlib.import_module(NETWORK)
    kernel = getattr(network, kernel)
    s = _scale(128).cuda()
    counts = []
    for num_tokens in (8193, 9000, 12289, 16384, 16001):
        x = torch.randn(num_tokens, 128, device="cuda").bfloat16()
        network.gemma4_routing_forced_launch(x, s, 8, method=method)
        counts.append(_compiled_variants(kernel))
    assert counts[-1] == counts[0], f"compiled variants grew with T: {counts}"


# ----------------------------------------------------------------------------------------------
# CPU, in a child process: writes outside the [T, K] outputs.

# The kernels write into caller-owned [T, K] views of longer buffers whose tails hold sentinels; a
# kernel that stores past K slots of a row (e.g. the rounds kernel's store mask widened from K to
# BLOCK_K) writes into the tail instead of over the heap. Run as a file (Triton reads kernel sources
# from files) with TRITON_INTERPRET=1, in a child process: an out-of-bounds store through the public
# entry (below the guarded calls) corrupts the interpreter's heap, which aborts the process; the test
# then reports the exit status and stderr instead of losing the whole pytest run.
_GUARDED_OUTPUTS_CHECK = """
import importlib.util
import sys

import torch

network_path, test_dir = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("gemma4_routing_network_interp", network_path)
network = importlib.util.module_from_spec(spec)
spec.loader.exec_module(network)
sys.path.insert(0, test_dir)
from test_gemma4_routing import _scale, reference_routing, special_logits

GUARD = 64  # > the BLOCK_K (<= 32) or L * SPL (<= 16) slots a row of these cases could spill
W_SENTINEL, I_SENTINEL = -1234.5, -7
# (kernel, E, K, T, launch): K below BLOCK_K (rounds: unrolled 8 and 4, rolled 32) or below the
# lanes' 8 slots (network: 16 lanes of one slot each at G=1, 4 lanes of two at G=2).
CASES = [
    ("rounds", 24, 5, 11, (4, 1, 2)),
    ("rounds", 128, 3, 9, (1, 1, 1)),
    ("rounds", 128, 17, 5, (2, 1, 1)),
    ("network", 128, 5, 7, 1),
    ("network", 30, 7, 9, 2),
]
problems = []
for kind, num_experts, topk, num_tokens, launch in CASES:
    x = special_logits(num_tokens, num_experts, torch.bfloat16, seed=num_experts + topk)
    s = _scale(num_experts)
    n = num_tokens * topk
    w = torch.full((n + GUARD,), W_SENTINEL, dtype=torch.float32)
    i = torch.full((n + GUARD,), I_SENTINEL, dtype=torch.int32)
    weights, ids = w[:n].view(num_tokens, topk), i[:n].view(num_tokens, topk)
    if kind == "rounds":
        network._rounds_launch(x, s, topk, *launch, weights, ids)
    else:
        network._network_launch(x, s, topk, launch, weights, ids)
    name = f"{kind} E={num_experts} K={topk} T={num_tokens} launch={launch}"
    spilled = int((w[n:] != W_SENTINEL).sum()) + int((i[n:] != I_SENTINEL).sum())
    if spilled:
        problems.append(f"{name}: {spilled} value(s) written past the [T, K] outputs")
    ref_w, ref_ids = reference_routing(x, s, topk)
    if not torch.equal(ids, ref_ids):
        problems.append(f"{name}: ids differ from the reference")
    else:
        bad = (~torch.isclose(weights, ref_w, rtol=1e-6, atol=0.0, equal_nan=True)).nonzero().tolist()
        if bad:
            t, k = bad[0]
            problems.append(f"{name}: {len(bad)} weights differ from the reference, e.g. [{t}, {k}]: "
                            f"got {weights[t, k].item()!r}, want {ref_w[t, k].item()!r}")
    print(name, "checked", flush=True)
for problem in problems:
    print("PROBLEM", problem, flush=True)
# The same cases through the public entry (outputs it allocates itself).
for kind, num_experts, topk, num_tokens, launch in CASES:
    x = special_logits(num_tokens, num_experts, torch.bfloat16, seed=num_experts + topk)
    s = _scale(num_experts)
    if kind == "rounds":
        block_t, num_warps, chunks = launch
        out = network.gemma4_routing_forced_launch(x, s, topk, block_t=block_t,
                                                    num_warps=num_warps, chunks=chunks)
    else:
        out = network.gemma4_routing_forced_launch(x, s, topk, groups=launch)
    ref_w, ref_ids = reference_routing(x, s, topk)
    if not (torch.equal(out[1], ref_ids)
            and torch.allclose(out[0], ref_w, rtol=1e-6, atol=0.0, equal_nan=True)):
        print("PROBLEM", kind, num_experts, topk, "differs from the reference (public entry)",
              flush=True)
        problems.append(kind)
print("ok" if not problems else "FAILED")
sys.exit(1 if problems else 0)
"""


def test_outputs_stay_inside_their_rows_cpu(tmp_path):
    """Both kernels with K below their padded slot count write exactly the [T, K] outputs and match
    the reference, under the interpreter in a child process (a crash there fails this test with the
    child's exit status and stderr)."""
    # The installed file, found without importing sglang (its package import takes seconds).
    (package_dir,) = importlib.util.find_spec("sglang").submodule_search_locations
    network_path = Path(package_dir, *NETWORK.split(".")[1:]).with_suffix(".py")
    assert network_path.is_file(), network_path
    script = tmp_path / "routing_guarded_outputs.py"
    script.write_text(_GUARDED_OUTPUTS_CHECK)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(network_path), str(Path(__file__).resolve().parent)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"child exited with status {proc.returncode}"
        + (f" (signal {-proc.returncode})" if proc.returncode < 0 else "")
        + f"\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )


# ----------------------------------------------------------------------------------------------
# Memory safety: the rounds kernel runs BLOCK_K rounds; with E < BLOCK_K the rounds past E pick no expert,
# and their scale fetch must stay inside the E scales. The scales end just before a PROT_NONE page, so a
# read past them is a segmentation fault (in a subprocess, under the interpreter).

_GUARD_PAGE = r"""
import ctypes, mmap
import torch
from sglang.kernels.ops.moe import gemma4_routing_network as rn

E, K = 10, 9  # BLOCK_K = 16: rounds 10..15 pick no expert
page = mmap.PAGESIZE
buf = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(ctypes.c_void_p(addr + page), page, 0) == 0
scale = torch.frombuffer(buf, dtype=torch.float32, count=E, offset=page - 4 * E)
scale.copy_(torch.linspace(0.5, 1.5, E))
logits = torch.randn(5, E, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
w, ids = rn.gemma4_routing_forced_launch(logits, scale, K, method="rounds")
want = torch.topk(logits.float(), K, dim=-1).indices
assert torch.equal(ids.long().sort(-1).values, want.sort(-1).values), (ids, want)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available() or not sys.platform.startswith("linux"),
                    reason="CPU (interpreter) test on Linux: mprotect guard page")
def test_rounds_kernel_never_reads_past_the_scales(tmp_path):
    script = tmp_path / "guard_page.py"
    script.write_text(_GUARD_PAGE)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.returncode, proc.stderr[-2000:])
