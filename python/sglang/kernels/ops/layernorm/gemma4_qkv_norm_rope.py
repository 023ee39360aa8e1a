"""Gemma-4 attention input: the per-head q/k/v RMSNorms and the rotary embedding of q and k in one launch.

sglang 0.5.23 prepares a Gemma-4 attention's q, k, v in two launches (three on KV-shared layers):
gemma_qkv_rmsnorm (q and k scaled by their norm weights, v by none, in place), then the layer's
rotary embedding over q and k (neox style over the whole head: Gemma-4's partial rotary is carried by
zero frequencies in the cos/sin cache); a KV-shared layer has no k, so it first fills a dummy k with
zeros for the rotary kernel.  Here one program per (token, head) does both steps for its head:

    y = round((x * rsqrt(mean(x^2) + eps)) * w)          w = 1 for v
    q/k:  out[:D/2] = round(y1 * cos - y2 * sin),  out[D/2:] = round(y2 * cos + y1 * sin)
    v:    out = y

with y1, y2 the halves of y and cos, sin the cache row at the token's position (cache[:, :D/2] and
cache[:, D/2:], read in the cache's dtype).  Every value is rounded where the upstream kernels round
it; the fp32 sum of squares may be summed in another order, i.e. rarely one rounding step of an
output element.  In place, on the q/k/v views of the QKV projection's output.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sglang.kernels.ops.layernorm.gemma4_ple_tail import FUSED_DTYPES, _rnd


@triton.jit
def _norm_rope_head(x_ptr, w_ptr, cs_ptr, pos, HALF: tl.constexpr, eps,
                    HAS_WEIGHT: tl.constexpr, ROPE: tl.constexpr, EMULATE: tl.constexpr):
    offs = tl.arange(0, HALF)
    dtype = x_ptr.dtype.element_ty
    x1 = tl.load(x_ptr + offs).to(tl.float32)
    x2 = tl.load(x_ptr + HALF + offs).to(tl.float32)
    rrms = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / (2 * HALF) + eps)
    y1 = x1 * rrms
    y2 = x2 * rrms
    if HAS_WEIGHT:
        y1 = y1 * tl.load(w_ptr + offs).to(tl.float32)
        y2 = y2 * tl.load(w_ptr + HALF + offs).to(tl.float32)
    y1 = _rnd(y1, dtype, EMULATE).to(tl.float32)
    y2 = _rnd(y2, dtype, EMULATE).to(tl.float32)
    if ROPE:
        cos = tl.load(cs_ptr + pos * (2 * HALF) + offs).to(tl.float32)
        sin = tl.load(cs_ptr + pos * (2 * HALF) + HALF + offs).to(tl.float32)
        o1 = y1 * cos - y2 * sin
        o2 = y2 * cos + y1 * sin
        y1 = o1
        y2 = o2
    tl.store(x_ptr + offs, _rnd(y1, dtype, EMULATE))
    tl.store(x_ptr + HALF + offs, _rnd(y2, dtype, EMULATE))


@triton.jit
def _qkv_norm_rope_kernel(q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, cs_ptr, pos_ptr,
                          stride_q, stride_k, stride_v, eps,
                          NQ: tl.constexpr, NKV: tl.constexpr, HALF: tl.constexpr,
                          HAS_KV: tl.constexpr, EMULATE: tl.constexpr):
    t = tl.program_id(0)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    t64 = t.to(tl.int64)
    if h < NQ:
        _norm_rope_head(q_ptr + t64 * stride_q + h * (2 * HALF), qw_ptr, cs_ptr, pos, HALF, eps,
                        True, True, EMULATE)
    elif HAS_KV:
        if h < NQ + NKV:
            _norm_rope_head(k_ptr + t64 * stride_k + (h - NQ) * (2 * HALF), kw_ptr, cs_ptr, pos, HALF, eps,
                            True, True, EMULATE)
        else:
            _norm_rope_head(v_ptr + t64 * stride_v + (h - NQ - NKV) * (2 * HALF), qw_ptr, cs_ptr, pos, HALF,
                            eps, False, False, EMULATE)


def _check_rows(name: str, t: torch.Tensor, rows: int, width: int, like: torch.Tensor) -> None:
    if t.dim() != 2 or t.shape[0] != rows or t.shape[1] != width:
        raise ValueError(f"{name}: expected [{rows}, {width}], got {list(t.shape)}")
    if t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{name}: expected {like.dtype} on {like.device}, got {t.dtype} on {t.device}")
    if t.stride(1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride {t.stride(1)})")


def gemma4_qkv_norm_rope(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    v: Optional[torch.Tensor],
    q_weight: torch.Tensor,
    k_weight: Optional[torch.Tensor],
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
) -> None:
    """In place: q and k normalised (with their weights) and rotated, v normalised (no weight).

    q: [T, num_q_heads * head_dim]; k, v: [T, num_kv_heads * head_dim] or both None (KV-shared layer);
    views with a contiguous last dimension (e.g. the splits of the QKV output).  cos_sin_cache:
    [positions, head_dim] (cos | sin), contiguous; positions: [T] integer, each below the cache's rows
    (not checked on the device, as in the upstream rotary kernels).
    """
    if q.dtype not in FUSED_DTYPES:
        raise ValueError(f"q: dtype {q.dtype} not supported (expected one of {FUSED_DTYPES})")
    if head_dim < 2 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 2, got {head_dim}")
    if (k is None) != (v is None):
        raise ValueError("k and v must both be given or both be None (KV-shared layer)")
    T = q.shape[0] if q.dim() == 2 else -1
    _check_rows("q", q, T, num_q_heads * head_dim, q)
    has_kv = k is not None
    if has_kv:
        _check_rows("k", k, T, num_kv_heads * head_dim, q)
        _check_rows("v", v, T, num_kv_heads * head_dim, q)
        if k_weight is None or k_weight.shape != (head_dim,):
            raise ValueError(f"k_weight: expected [{head_dim}], got "
                             f"{None if k_weight is None else list(k_weight.shape)}")
    if q_weight.shape != (head_dim,):
        raise ValueError(f"q_weight: expected [{head_dim}], got {list(q_weight.shape)}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != head_dim or not cos_sin_cache.is_contiguous():
        raise ValueError(f"cos_sin_cache: expected a contiguous [positions, {head_dim}] tensor, got "
                         f"{list(cos_sin_cache.shape)}")
    if positions.shape != (T,) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions: expected [{T}] int32/int64, got {list(positions.shape)} {positions.dtype}")
    for name, t in (("q_weight", q_weight), ("k_weight", k_weight), ("cos_sin_cache", cos_sin_cache),
                    ("positions", positions)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name}: on {t.device}, q on {q.device}")
    if T == 0:
        return
    heads = num_q_heads + (2 * num_kv_heads if has_kv else 0)
    _qkv_norm_rope_kernel[(T, heads)](
        q, k if has_kv else q, v if has_kv else q, q_weight, k_weight if has_kv else q_weight,
        cos_sin_cache, positions, q.stride(0), k.stride(0) if has_kv else 0, v.stride(0) if has_kv else 0,
        eps, NQ=num_q_heads, NKV=num_kv_heads if has_kv else 0, HALF=head_dim // 2, HAS_KV=has_kv,
        EMULATE=q.device.type == "cpu", num_warps=4 if head_dim >= 512 else 2,
    )


def reference_qkv_norm_rope(q, k, v, q_weight, k_weight, cos_sin_cache, positions, *, num_q_heads,
                            num_kv_heads, head_dim, eps):
    """The upstream steps in torch (out of place): per-head RMSNorm rounded to the dtype, then the neox
    rotation of q and k in fp32 with the cache row of each position, rounded."""
    dt = q.dtype

    def norm(x, heads, w):
        x = x.float().unflatten(-1, (heads, head_dim))
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if w is not None:
            y = y * w.float()
        return y.to(dt)

    def rope(y):
        cs = cos_sin_cache.index_select(0, positions.long()).float()[:, None, :]
        cos, sin = cs[..., : head_dim // 2], cs[..., head_dim // 2:]
        y1, y2 = y.float()[..., : head_dim // 2], y.float()[..., head_dim // 2:]
        return torch.cat((y1 * cos - y2 * sin, y2 * cos + y1 * sin), dim=-1).to(dt).flatten(-2)

    q_out = rope(norm(q, num_q_heads, q_weight))
    if k is None:
        return q_out, None, None
    return q_out, rope(norm(k, num_kv_heads, k_weight)), norm(v, num_kv_heads, None).flatten(-2)
