"""The tail of a Gemma-4 decoder layer with per-layer embeddings (E2B, E4B), in two kernels.

sglang 0.5.23 runs the tail as nine launches per layer (gemma4_causal.py ``_next_stream``): the
post-feed-forward RMSNorm, the residual add, the gate GEMM, GELU (tanh), the product with the
layer's per-layer input, the projection GEMM, the per-layer-input RMSNorm, the second add and the
layer-scalar product.  With x the dense MLP output, r the residual, p the layer's per-layer input:

    h   = rmsnorm(x, w_ff) + r
    g   = gelu_tanh(h @ W_gate^T) * p                 W_gate: [P, H]
    c   = g @ W_proj^T                                W_proj: [H, P]
    out = (h + rmsnorm(c, w_ple)) * layer_scalar

Here it takes two launches:

* ``_ple_gate_kernel``, grid (row blocks, blocks of the P gate columns): each program normalises its
  rows of x (a first pass over H for the sum of squares), builds h block by block and multiplies it
  with its slice of W_gate; the programs of the first column block also write h.  GELU and the
  product with p are applied to the accumulator, and g is written.
* ``_ple_project_kernel``, grid (row blocks, blocks of the H output columns): each program computes
  its block of c = g @ W_proj^T, writes it into ``out`` and the block's row sums of squares into a
  partial-sums buffer, then takes a ticket from its row block's counter.  The program that draws
  the last ticket (all partial sums of that row block are written) finishes the row block: the
  norm of c from the partial sums, the add of h and the layer scalar, in place over ``out``; it
  then sets the counter back to zero for the next launch.  The counters are one int32 per row
  block, kept per device and stream (a CUDA graph bakes the buffer of its capture stream), so the
  kernel needs no memset and no third launch.

Every intermediate is rounded to the activation dtype where the upstream sequence of ops rounds it
(after each norm, add, GEMM, GELU and product), so the two paths differ only by the order of the
GEMMs' fp32 accumulations.  ``reference_ple_tail`` is that upstream sequence in torch.

The two GEMMs are small (E2B: H 1536, P 256, 0.75 MB of weights each), so a decode step is bound
by launches, not bytes: the fused tail replaces nine launches a layer with two.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

_SQRT_2_OVER_PI = 0.7978845608028654
_GELU_CUBIC = 0.044715

FUSED_DTYPES = (torch.bfloat16, torch.float16)


# EMULATE (set for CPU tensors, i.e. Triton's interpreter) works around two gaps of the interpreter
# (triton 3.8) so that it computes what the GPU computes: its bf16 dot returns garbage, and its fp32 ->
# bf16 cast truncates where the GPU rounds to nearest even.  Products of two bf16 / fp16 values are
# exact in fp32, so a dot of upcast operands sums the same products; on the GPU the operands stay
# 16-bit for the tensor cores.


@triton.jit
def _dot(a, b, acc, EMULATE: tl.constexpr):
    if EMULATE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _rnd(x, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """x (fp32) rounded to dtype, to nearest even (finite values)."""
    if EMULATE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _ple_gate_kernel(
    x_ptr,  # [T, H] dense MLP output
    r_ptr,  # [T, H] residual
    wff_ptr,  # [H] post-feed-forward norm weight
    wg_ptr,  # [P, H] gate weight
    p_ptr,  # [T, P] per-layer input (row stride given)
    h_ptr,  # [T, H] out: rmsnorm(x) + r
    g_ptr,  # [T, P] out: gelu(h @ Wg^T) * p
    T,
    H,
    P,
    stride_x,
    stride_r,
    stride_wg,
    stride_p,
    stride_h,
    stride_g,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EMULATE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    dtype = h_ptr.dtype.element_ty
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < T
    ks = tl.arange(0, BLOCK_K)

    sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        cols = k0 + ks
        m = row_ok[:, None] & (cols < H)[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        sq += tl.sum(x * x, axis=1)
    rrms = tl.rsqrt(sq / H + eps)

    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < P
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        cols = k0 + ks
        col_ok = cols < H
        m = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + rows[:, None] * stride_r + cols[None, :], mask=m, other=0.0).to(tl.float32)
        w = tl.load(wff_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        normed = _rnd(x * rrms[:, None] * w[None, :], dtype, EMULATE)
        h = _rnd(normed.to(tl.float32) + r, dtype, EMULATE)
        tl.store(h_ptr + rows[:, None] * stride_h + cols[None, :], h, mask=m & (pid_n == 0))
        wg = tl.load(
            wg_ptr + ns[None, :].to(tl.int64) * stride_wg + cols[:, None],
            mask=col_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = _dot(h, wg.to(dtype), acc, EMULATE)

    gate = _rnd(acc, dtype, EMULATE).to(tl.float32)
    inner = _SQRT_2_OVER_PI * (gate + _GELU_CUBIC * gate * gate * gate)
    tanh = 1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)
    act = _rnd(0.5 * gate * (1.0 + tanh), dtype, EMULATE).to(tl.float32)
    m = row_ok[:, None] & n_ok[None, :]
    p = tl.load(p_ptr + rows[:, None] * stride_p + ns[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(g_ptr + rows[:, None] * stride_g + ns[None, :], _rnd(act * p, dtype, EMULATE), mask=m)


@triton.jit
def _ple_project_kernel(
    g_ptr,  # [T, P]
    wp_ptr,  # [H, P] projection weight
    wn_ptr,  # [H] per-layer-input norm weight
    h_ptr,  # [T, H]
    scalar_ptr,  # [1] layer scalar
    out_ptr,  # [T, H] out (holds c until its row block is finished)
    part_ptr,  # [T, N_BLOCKS] fp32 partial sums of squares of c
    count_ptr,  # [row blocks] int32 tickets, zero between launches
    T,
    H,
    P,
    stride_g,
    stride_wp,
    stride_h,
    stride_out,
    eps,
    scale_shift,
    N_BLOCKS: tl.constexpr,
    N_BLOCKS_P2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EMULATE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    dtype = out_ptr.dtype.element_ty
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < T
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < H
    ks = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, P, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < P
        g = tl.load(g_ptr + rows[:, None] * stride_g + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wp = tl.load(
            wp_ptr + ns[None, :].to(tl.int64) * stride_wp + kk[:, None],
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = _dot(g, wp.to(dtype), acc, EMULATE)
    c = _rnd(acc, dtype, EMULATE)
    m = row_ok[:, None] & n_ok[None, :]
    tl.store(out_ptr + rows[:, None] * stride_out + ns[None, :], c, mask=m)
    cf = tl.where(m, c.to(tl.float32), 0.0)
    tl.store(part_ptr + rows * N_BLOCKS + pid_n, tl.sum(cf * cf, axis=1), mask=row_ok)

    # Every thread's stores above happen before the ticket (release); the last ticket holder reads
    # them after it (acquire), bypassing L1.
    tl.debug_barrier()
    ticket = tl.atomic_add(count_ptr + pid_m, 1, sem="acq_rel")
    if ticket == N_BLOCKS - 1:
        bs = tl.arange(0, N_BLOCKS_P2)
        parts = tl.load(
            part_ptr + rows[:, None] * N_BLOCKS + bs[None, :],
            mask=row_ok[:, None] & (bs < N_BLOCKS)[None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        rrms = tl.rsqrt(tl.sum(parts, axis=1) / H + eps)
        s = tl.load(scalar_ptr).to(tl.float32)
        for n0 in range(0, H, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < H
            mm = row_ok[:, None] & col_ok[None, :]
            cc = tl.load(
                out_ptr + rows[:, None] * stride_out + cols[None, :], mask=mm, other=0.0, cache_modifier=".cg"
            ).to(tl.float32)
            hh = tl.load(h_ptr + rows[:, None] * stride_h + cols[None, :], mask=mm, other=0.0).to(tl.float32)
            w = tl.load(wn_ptr + cols, mask=col_ok, other=0.0).to(tl.float32) + scale_shift
            normed = _rnd(cc * rrms[:, None] * w[None, :], dtype, EMULATE)
            summed = _rnd(hh + normed.to(tl.float32), dtype, EMULATE)
            tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], _rnd(summed.to(tl.float32) * s, dtype, EMULATE), mask=mm)
        tl.store(count_ptr + pid_m, 0)


# The tickets: one zeroed int32 buffer per (device, stream), grown (outside graph capture) when a
# launch has more row blocks than it holds.
_TICKETS: Dict[Tuple[str, int], torch.Tensor] = {}
_MIN_TICKETS = 4096


def _tickets(device: torch.device, blocks: int) -> torch.Tensor:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    buf = _TICKETS.get(key)
    if buf is None or buf.numel() < blocks:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"gemma4_ple_tail: {blocks} row blocks need a larger ticket buffer than the "
                f"{0 if buf is None else buf.numel()} allocated before CUDA-graph capture; run one "
                "eager forward of this size first"
            )
        buf = torch.zeros(max(blocks, _MIN_TICKETS), dtype=torch.int32, device=device)
        _TICKETS[key] = buf
    return buf


def launch_shape(tokens: int) -> Dict[str, int]:
    """Block sizes by the number of rows: small row blocks and narrow column blocks for decode
    batches (more programs share the weight reads), wider ones for prefill chunks."""
    if tokens <= 32:
        return dict(block_m=16, gate_n=16, proj_n=64, num_warps=4)
    if tokens <= 256:
        return dict(block_m=32, gate_n=32, proj_n=64, num_warps=4)
    return dict(block_m=64, gate_n=64, proj_n=128, num_warps=4)


def _check(name: str, t: torch.Tensor, shape: Tuple[int, ...], dtype: torch.dtype, device) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"gemma4_ple_tail: {name} has shape {tuple(t.shape)}, expected {shape}")
    if t.dtype != dtype:
        raise ValueError(f"gemma4_ple_tail: {name} is {t.dtype}, expected {dtype} like the MLP output")
    if t.device != device:
        raise ValueError(f"gemma4_ple_tail: {name} is on {t.device}, the MLP output on {device}")
    if t.dim() and t.stride(-1) != 1:
        raise ValueError(f"gemma4_ple_tail: {name} needs a contiguous last dimension (stride {t.stride(-1)})")


def gemma4_ple_tail(
    x: torch.Tensor,
    residual: torch.Tensor,
    ff_norm_weight: torch.Tensor,
    ff_eps: float,
    gate_weight: torch.Tensor,
    per_layer_input: torch.Tensor,
    proj_weight: torch.Tensor,
    ple_norm_weight: torch.Tensor,
    ple_eps: float,
    layer_scalar: torch.Tensor,
    *,
    ple_norm_shift: float = 0.0,
    shape: Optional[Dict[str, int]] = None,
) -> torch.Tensor:
    """``(h + rmsnorm(gelu_tanh(h @ gate_weight^T) * per_layer_input @ proj_weight^T)) * layer_scalar``
    with ``h = rmsnorm(x, ff_norm_weight) + residual``, in two launches; a new [T, H] tensor.

    x, residual: [T, H]; gate_weight: [P, H]; per_layer_input: [T, P] (any row stride);
    proj_weight: [H, P]; norm weights [H]; layer_scalar: one element.  bf16 or fp16 throughout.
    ``ple_norm_shift`` is added to ple_norm_weight (Gemma4RMSNorm's scale_shift).  ``shape``
    overrides the launch shape (benchmarks and tests)."""
    if x.dim() != 2:
        raise ValueError(f"gemma4_ple_tail: x must be [tokens, hidden], got shape {tuple(x.shape)}")
    if x.dtype not in FUSED_DTYPES:
        raise ValueError(f"gemma4_ple_tail: dtype {x.dtype} is not fused (bf16 / fp16 only)")
    if x.stride(-1) != 1:
        raise ValueError("gemma4_ple_tail: x needs a contiguous last dimension")
    T, H = x.shape
    if gate_weight.dim() != 2:
        raise ValueError(f"gemma4_ple_tail: gate_weight must be [P, H], got {tuple(gate_weight.shape)}")
    P = gate_weight.shape[0]
    dev, dt = x.device, x.dtype
    _check("residual", residual, (T, H), dt, dev)
    _check("ff_norm_weight", ff_norm_weight, (H,), ff_norm_weight.dtype, dev)
    _check("gate_weight", gate_weight, (P, H), dt, dev)
    _check("per_layer_input", per_layer_input, (T, P), dt, dev)
    _check("proj_weight", proj_weight, (H, P), dt, dev)
    _check("ple_norm_weight", ple_norm_weight, (H,), ple_norm_weight.dtype, dev)
    if layer_scalar.numel() != 1 or layer_scalar.device != dev:
        raise ValueError(
            f"gemma4_ple_tail: layer_scalar must be one element on {dev}, got {tuple(layer_scalar.shape)} "
            f"on {layer_scalar.device}"
        )

    out = torch.empty((T, H), dtype=dt, device=dev)
    if T == 0:
        return out
    s = dict(launch_shape(T), **(shape or {}))
    bm, gate_n, proj_n = s["block_m"], s["gate_n"], s["proj_n"]
    h = torch.empty((T, H), dtype=dt, device=dev)
    g = torch.empty((T, P), dtype=dt, device=dev)
    m_blocks = triton.cdiv(T, bm)
    emulate = dev.type != "cuda"  # CPU tensors: Triton's interpreter
    _ple_gate_kernel[(m_blocks, triton.cdiv(P, gate_n))](
        x, residual, ff_norm_weight, gate_weight, per_layer_input, h, g,
        T, H, P,
        x.stride(0), residual.stride(0), gate_weight.stride(0), per_layer_input.stride(0),
        h.stride(0), g.stride(0),
        ff_eps,
        BLOCK_M=bm, BLOCK_N=gate_n, BLOCK_K=s.get("gate_k", 128), EMULATE=emulate,
        num_warps=s["num_warps"],
    )
    n_blocks = triton.cdiv(H, proj_n)
    part = torch.empty((T, n_blocks), dtype=torch.float32, device=dev)
    _ple_project_kernel[(m_blocks, n_blocks)](
        g, proj_weight, ple_norm_weight, h, layer_scalar, out, part, _tickets(dev, m_blocks),
        T, H, P,
        g.stride(0), proj_weight.stride(0), h.stride(0), out.stride(0),
        ple_eps, float(ple_norm_shift),
        N_BLOCKS=n_blocks, N_BLOCKS_P2=triton.next_power_of_2(n_blocks),
        BLOCK_M=bm, BLOCK_N=proj_n, BLOCK_K=s.get("proj_k", min(128, triton.next_power_of_2(P))),
        EMULATE=emulate, num_warps=s["num_warps"],
    )
    return out


def reference_ple_tail(
    x: torch.Tensor,
    residual: torch.Tensor,
    ff_norm_weight: torch.Tensor,
    ff_eps: float,
    gate_weight: torch.Tensor,
    per_layer_input: torch.Tensor,
    proj_weight: torch.Tensor,
    ple_norm_weight: torch.Tensor,
    ple_eps: float,
    layer_scalar: torch.Tensor,
    *,
    ple_norm_shift: float = 0.0,
) -> torch.Tensor:
    """The upstream sequence of ops (one rounding to the activation dtype after each), in torch."""

    def rmsnorm(t: torch.Tensor, w: torch.Tensor, eps: float, shift: float = 0.0) -> torch.Tensor:
        f = t.float()
        return (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + eps) * (w.float() + shift)).to(t.dtype)

    h = rmsnorm(x, ff_norm_weight, ff_eps) + residual
    gate = torch.nn.functional.gelu(h @ gate_weight.t(), approximate="tanh")
    c = (gate * per_layer_input) @ proj_weight.t()
    return (h + rmsnorm(c, ple_norm_weight, ple_eps, ple_norm_shift)) * layer_scalar.reshape(()).to(x.dtype)
