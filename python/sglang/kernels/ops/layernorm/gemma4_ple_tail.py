"""The tail of a Gemma-4 decoder layer with per-layer embeddings (E2B, E4B): the elementwise ops fused.

sglang 0.5.23 runs the tail as nine launches per layer (gemma4_causal.py ``_next_stream``): the
post-feed-forward RMSNorm, the residual add, the gate GEMM, GELU (tanh), the product with the
layer's per-layer input, the projection GEMM, the per-layer-input RMSNorm, the second add and the
layer-scalar product.  With x the dense MLP output, r the residual, p the layer's per-layer input:

    h   = rmsnorm(x, w_ff) + r                        ple_pre   (one launch)
    a   = h @ W_gate^T                                the layer's own gate linear (cuBLAS)
    g   = gelu_tanh(a) * p                            ple_gate  (one launch)
    c   = g @ W_proj^T                                the layer's own projection linear (cuBLAS)
    out = (h + rmsnorm(c, w_ple)) * layer_scalar      ple_post  (one launch)

Five launches instead of nine.  The GEMMs stay the layer's own modules (any weight format they
serve), so the only differences to the upstream ops are inside the elementwise kernels: every
intermediate is rounded to the activation dtype where the upstream op rounds it, with the same fp32
formulas (norm as (x * rrms) * w, GELU as torch writes it); what can differ is the order of the
fp32 sum of squares in the norms, i.e. rarely one rounding step of the output.

Measured before this design: two kernels that fused the GEMMs too (row blocks x column blocks,
tl.dot, a ticket-counted finish of the norm) ran 0.67-0.93x the speed of the nine upstream ops at
1..8192 rows on an H100 (benchmark/gemma4/results/ple_tail_h100.md): too few programs stream the
weights at decode batch sizes, and cuBLAS is faster than tl.dot at prefill sizes.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

FUSED_DTYPES = (torch.bfloat16, torch.float16)

# torch's GELU (tanh approximation): 0.5 * x * (1 + tanh(sqrt(2) * 2/sqrt(pi) * 0.5 * (x + 0.044715 x^3)))
_GELU_BETA = tl.constexpr(0.7978845608028654)
_GELU_KAPPA = tl.constexpr(0.044715)


# EMULATE is set for CPU tensors, i.e. Triton's interpreter, which (triton 3.8) truncates fp32 -> bf16
# where the GPU rounds to nearest even, and has no libdevice.  On the GPU both branches fold away.


@triton.jit
def _rnd(x, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """x (fp32) rounded to dtype, to nearest even (finite values)."""
    if EMULATE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _tanh(x, EMULATE: tl.constexpr):
    if EMULATE:
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    return libdevice.tanh(x)


@triton.jit
def _rms_normed(x, w, H, eps, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """rmsnorm of one fp32 row as sglang's RMSNorm kernels compute it, (x * rrms) * w, rounded to dtype
    and handed back as fp32."""
    rrms = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    return _rnd(x * rrms * w, dtype, EMULATE).to(tl.float32)


@triton.jit
def _ple_pre_kernel(x_ptr, r_ptr, w_ptr, h_ptr, H, stride_x, stride_r, stride_h, eps,
                    BLOCK: tl.constexpr, EMULATE: tl.constexpr):
    """h = rmsnorm(x, w) + r for one row (the norm's output rounded, then the sum)."""
    row = tl.program_id(0).to(tl.int64)
    dtype = h_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)
    m = cols < H
    x = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + row * stride_r + cols, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    normed = _rms_normed(x, w, H, eps, dtype, EMULATE)
    tl.store(h_ptr + row * stride_h + cols, _rnd(normed + r, dtype, EMULATE), mask=m)


@triton.jit
def _ple_gate_kernel(a_ptr, p_ptr, g_ptr, P, stride_a, stride_p, stride_g,
                     BLOCK: tl.constexpr, EMULATE: tl.constexpr):
    """g = gelu_tanh(a) * p for one row (GELU's output rounded, then the product)."""
    row = tl.program_id(0).to(tl.int64)
    dtype = g_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)
    m = cols < P
    a = tl.load(a_ptr + row * stride_a + cols, mask=m, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + row * stride_p + cols, mask=m, other=0.0).to(tl.float32)
    cube = a * a * a
    inner = _GELU_BETA * (a + _GELU_KAPPA * cube)
    act = _rnd(0.5 * a * (1.0 + _tanh(inner, EMULATE)), dtype, EMULATE).to(tl.float32)
    tl.store(g_ptr + row * stride_g + cols, _rnd(act * p, dtype, EMULATE), mask=m)


@triton.jit
def _ple_post_kernel(c_ptr, h_ptr, w_ptr, s_ptr, out_ptr, H, stride_c, stride_h, stride_o, eps, shift,
                     BLOCK: tl.constexpr, EMULATE: tl.constexpr):
    """out = (h + rmsnorm(c, w + shift)) * s for one row (norm, sum and product each rounded)."""
    row = tl.program_id(0).to(tl.int64)
    dtype = out_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)
    m = cols < H
    c = tl.load(c_ptr + row * stride_c + cols, mask=m, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + row * stride_h + cols, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32) + shift
    s = tl.load(s_ptr).to(tl.float32)
    normed = _rms_normed(c, w, H, eps, dtype, EMULATE)
    summed = _rnd(h + normed, dtype, EMULATE).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, _rnd(summed * s, dtype, EMULATE), mask=m)


def _num_warps(width: int) -> int:
    return 4 if width <= 2048 else 8


def _check_rows(name: str, t: torch.Tensor, rows: int, width: Optional[int], like: torch.Tensor) -> None:
    if t.dim() != 2 or t.shape[0] != rows or (width is not None and t.shape[1] != width):
        want = f"[{rows}, {width if width is not None else 'N'}]"
        raise ValueError(f"gemma4_ple_tail: {name} has shape {tuple(t.shape)}, expected {want}")
    if t.dtype != like.dtype:
        raise ValueError(f"gemma4_ple_tail: {name} is {t.dtype}, expected {like.dtype} like the MLP output")
    if t.device != like.device:
        raise ValueError(f"gemma4_ple_tail: {name} is on {t.device}, the MLP output on {like.device}")
    if t.shape[1] and t.stride(1) != 1:
        raise ValueError(f"gemma4_ple_tail: {name} needs a contiguous last dimension (stride {t.stride(1)})")


def _check_vector(name: str, t: torch.Tensor, width: int, like: torch.Tensor) -> None:
    if t.dim() != 1 or t.shape[0] != width or t.device != like.device:
        raise ValueError(f"gemma4_ple_tail: {name} must be [{width}] on {like.device}, got "
                         f"{tuple(t.shape)} on {t.device}")


def gemma4_ple_tail(
    x: torch.Tensor,
    residual: torch.Tensor,
    ff_norm_weight: torch.Tensor,
    ff_eps: float,
    gate_weight: Optional[torch.Tensor],
    per_layer_input: torch.Tensor,
    proj_weight: Optional[torch.Tensor],
    ple_norm_weight: torch.Tensor,
    ple_eps: float,
    layer_scalar: torch.Tensor,
    *,
    ple_norm_shift: float = 0.0,
    gate: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    proj: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """``(h + rmsnorm(gelu_tanh(gate(h)) * per_layer_input |> proj)) * layer_scalar`` with
    ``h = rmsnorm(x, ff_norm_weight) + residual``; a new [T, H] tensor.

    ``gate`` / ``proj`` are the two linear maps (the layer's modules); without them the weights
    (gate_weight [P, H], proj_weight [H, P]) go through torch.nn.functional.linear.  x, residual:
    [T, H]; per_layer_input: [T, P] (any row stride); norm weights [H]; layer_scalar one element.
    bf16 or fp16 activations.  ``ple_norm_shift`` is added to ple_norm_weight (Gemma4RMSNorm's
    scale_shift)."""
    if x.dim() != 2:
        raise ValueError(f"gemma4_ple_tail: x must be [tokens, hidden], got shape {tuple(x.shape)}")
    if x.dtype not in FUSED_DTYPES:
        raise ValueError(f"gemma4_ple_tail: dtype {x.dtype} is not fused (bf16 / fp16 only)")
    T, H = x.shape
    _check_rows("x", x, T, H, x)
    _check_rows("residual", residual, T, H, x)
    _check_vector("ff_norm_weight", ff_norm_weight, H, x)
    _check_vector("ple_norm_weight", ple_norm_weight, H, x)
    if layer_scalar.numel() != 1 or layer_scalar.device != x.device:
        raise ValueError(f"gemma4_ple_tail: layer_scalar must be one element on {x.device}, got "
                         f"{tuple(layer_scalar.shape)} on {layer_scalar.device}")
    if gate is None or proj is None:
        if gate_weight is None or proj_weight is None:
            raise ValueError("gemma4_ple_tail: give gate and proj, or gate_weight and proj_weight")
        _check_rows("gate_weight", gate_weight, gate_weight.shape[0], H, x)
        _check_rows("proj_weight", proj_weight, H, gate_weight.shape[0], x)
        gate_weight_, proj_weight_ = gate_weight, proj_weight
        gate = gate or (lambda t: torch.nn.functional.linear(t, gate_weight_))
        proj = proj or (lambda t: torch.nn.functional.linear(t, proj_weight_))
    emulate = x.device.type != "cuda"  # CPU tensors: Triton's interpreter
    block_h = triton.next_power_of_2(max(H, 1))

    h = torch.empty_like(x)
    if T:
        _ple_pre_kernel[(T,)](x, residual, ff_norm_weight, h, H, x.stride(0), residual.stride(0), h.stride(0),
                              ff_eps, BLOCK=block_h, EMULATE=emulate, num_warps=_num_warps(H))
    a = gate(h)
    _check_rows("gate output", a, T, None, x)
    _check_rows("per_layer_input", per_layer_input, T, None, x)
    P = a.shape[1]
    if per_layer_input.shape[1] != P:
        raise ValueError(f"gemma4_ple_tail: the gate output has width {P}, the per_layer_input "
                         f"{per_layer_input.shape[1]}")
    g = torch.empty_like(a)
    if T:
        _ple_gate_kernel[(T,)](a, per_layer_input, g, P, a.stride(0), per_layer_input.stride(0), g.stride(0),
                               BLOCK=triton.next_power_of_2(max(P, 1)), EMULATE=emulate, num_warps=_num_warps(P))
    c = proj(g)
    _check_rows("projection output", c, T, H, x)
    out = torch.empty_like(x)
    if T:
        _ple_post_kernel[(T,)](c, h, ple_norm_weight, layer_scalar, out, H, c.stride(0), h.stride(0), out.stride(0),
                               ple_eps, float(ple_norm_shift), BLOCK=block_h, EMULATE=emulate,
                               num_warps=_num_warps(H))
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
    gate = torch.nn.functional.gelu(torch.nn.functional.linear(h, gate_weight), approximate="tanh")
    c = torch.nn.functional.linear(gate * per_layer_input, proj_weight)
    return (h + rmsnorm(c, ple_norm_weight, ple_eps, ple_norm_shift)) * layer_scalar.reshape(()).to(x.dtype)
