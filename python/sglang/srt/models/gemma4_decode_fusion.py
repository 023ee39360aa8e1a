"""Gemma-4 decoder-layer fusions: when a layer may take the fused kernels instead of 0.5.23's ops.

One switch, ``SGLANG_GEMMA4_FUSED_PLE_TAIL`` (registered in sglang.srt.environ, default on; 0 runs
0.5.23's nine ops), decides for the per-layer-embedding tail of E2B / E4B layers
(sglang.kernels.ops.layernorm.gemma4_ple_tail: three elementwise kernels around the layer's own gate
and projection linears).  A layer takes the fused tail when

* its norms are the plain ones the kernels implement: the post-feed-forward RMSNorm with a weight, no
  variance override, no HF cast, no fused input quantisation; the per-layer-input norm with a scale;
  a one-element layer scalar (decided once per layer, on its first call), and
* the call's tensors allow it: CUDA, bf16 / fp16, [tokens, hidden] with a contiguous last dimension,
  a per-layer input of [tokens, hidden_size_per_layer_input] in the same dtype; batch-invariant mode off.

Otherwise ``ple_tail`` returns None and the layer runs 0.5.23's ops (CPU and other devices too).
The linears are called as the layer calls them, so every weight format they serve keeps working.
"""

from __future__ import annotations

from typing import Optional

import torch

_PLAN_ATTR = "_gemma4_ple_tail_fusable"


def fused_ple_tail_enabled() -> bool:
    from sglang.srt.environ import envs

    return bool(envs.SGLANG_GEMMA4_FUSED_PLE_TAIL.get())


def layer_fusable(layer) -> bool:
    """The module-level conditions above, for one Gemma4DecoderLayer."""
    gate, proj = layer.per_layer_input_gate, layer.per_layer_projection
    ff, ple = layer.post_feedforward_layernorm, layer.post_per_layer_input_norm
    if gate is None or proj is None or ple is None or not getattr(layer, "hidden_size_per_layer_input", 0):
        return False
    if getattr(ff, "cast_x_before_out_mul", False) or getattr(ff, "variance_size_override", None) is not None:
        return False
    if getattr(ff, "_quant_linear", None) is not None or not getattr(ff, "has_weight", True):
        return False
    if not getattr(ple, "with_scale", True):
        return False
    return layer.layer_scalar.numel() == 1


def _batch_invariant() -> bool:
    try:
        from sglang.srt.batch_invariant_ops.batch_invariant_ops import is_batch_invariant_mode_enabled
    except ImportError:  # pragma: no cover - the module ships with 0.5.23
        return False
    return bool(is_batch_invariant_mode_enabled())


def ple_tail(
    layer,
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    per_layer_input: Optional[torch.Tensor],
) -> Optional[torch.Tensor]:
    """The layer's output through the fused tail, or None where 0.5.23's ops must run."""
    if per_layer_input is None or not isinstance(hidden_states, torch.Tensor):
        return None
    from sglang.kernels.ops.layernorm.gemma4_ple_tail import FUSED_DTYPES, gemma4_ple_tail

    x = hidden_states
    if not (x.is_cuda and x.dim() == 2 and x.dtype in FUSED_DTYPES and x.stride(-1) == 1):
        return None
    if not isinstance(residual, torch.Tensor) or residual.shape != x.shape or residual.dtype != x.dtype:
        return None
    plan = layer.__dict__.get(_PLAN_ATTR)
    if plan is None:
        plan = fused_ple_tail_enabled() and layer_fusable(layer)
        layer.__dict__[_PLAN_ATTR] = plan
    if not plan or _batch_invariant():
        return None
    if per_layer_input.shape != (x.shape[0], layer.hidden_size_per_layer_input):
        return None
    if per_layer_input.dtype != x.dtype or per_layer_input.stride(-1) != 1 or residual.stride(-1) != 1:
        return None
    ff, ple = layer.post_feedforward_layernorm, layer.post_per_layer_input_norm
    return gemma4_ple_tail(
        x,
        residual,
        ff.weight.data,
        ff.variance_epsilon,
        None,
        per_layer_input,
        None,
        ple.weight.data,
        ple.eps,
        layer.layer_scalar,
        ple_norm_shift=ple.scale_shift,
        gate=lambda t: layer.per_layer_input_gate(t)[0],
        proj=lambda t: layer.per_layer_projection(t)[0],
    )


# ---------------------------------------------------------------------------------------------------------
# Attention input: q/k/v RMSNorms and the rotary embedding in one launch (gemma4_qkv_norm_rope).
#
# One switch, ``SGLANG_GEMMA4_FUSED_QKV_NORM_ROPE`` (sglang.srt.environ; default off until measured on the
# GPU).  An attention takes it where 0.5.23 takes its own fused norm path (q/k norms without shift, v norm
# without scale) and its rotary embedding is the CUDA neox kernel over the whole head (rotary_dim ==
# head_size == head_dim, fp32 cos/sin cache, not the fallback or the native path); per call: CUDA, bf16 /
# fp16, 2-D q/k/v views with contiguous rows, one position per token.  Otherwise ``qkv_norm_rope``
# returns None and the attention runs 0.5.23's steps.

_QKV_PLAN_ATTR = "_gemma4_qkv_norm_rope_fusable"


def fused_qkv_norm_rope_enabled() -> bool:
    from sglang.srt.environ import envs

    return bool(envs.SGLANG_GEMMA4_FUSED_QKV_NORM_ROPE.get())


def attention_fusable(attn) -> bool:
    """The module-level conditions above, for one Gemma4Attention."""
    q_norm, k_norm, v_norm = attn.q_norm, attn.k_norm, attn.v_norm
    if getattr(q_norm, "scale_shift", None) != 0.0 or getattr(k_norm, "scale_shift", None) != 0.0:
        return False
    if getattr(v_norm, "with_scale", True):
        return False
    rope = attn.rotary_emb
    if getattr(rope, "use_fallback_kernel", True) or getattr(rope, "_force_native", True):
        return False
    if not getattr(rope, "is_neox_style", False):
        return False
    if not (rope.rotary_dim == rope.head_size == attn.head_dim):
        return False
    cache = getattr(rope, "cos_sin_cache", None)
    return isinstance(cache, torch.Tensor) and cache.dtype == torch.float32 and cache.dim() == 2


def qkv_norm_rope(attn, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(q, k, v) normalised and rotated in place, shaped as 0.5.23's steps leave them (q [T, heads *
    head_dim]; k, v [T, kv heads, head_dim], or None on a KV-shared layer), or None where 0.5.23's steps
    must run."""
    from sglang.kernels.ops.layernorm.gemma4_qkv_norm_rope import FUSED_DTYPES, gemma4_qkv_norm_rope

    if not (q.is_cuda and q.dim() == 2 and q.dtype in FUSED_DTYPES and q.stride(-1) == 1):
        return None
    if not (isinstance(positions, torch.Tensor) and positions.dim() == 1 and positions.shape[0] == q.shape[0]):
        return None
    plan = attn.__dict__.get(_QKV_PLAN_ATTR)
    if plan is None:
        plan = fused_qkv_norm_rope_enabled() and attention_fusable(attn)
        attn.__dict__[_QKV_PLAN_ATTR] = plan
    if not plan or _batch_invariant():
        return None
    cache = attn.rotary_emb.cos_sin_cache
    if cache.device != q.device or not cache.is_contiguous():
        return None
    shared = attn.is_kv_shared_layer and attn.kv_shared_layer_index is not None
    if not shared and (k.stride(-1) != 1 or v.stride(-1) != 1):
        return None
    gemma4_qkv_norm_rope(
        q,
        None if shared else k,
        None if shared else v,
        attn.q_norm.weight.data,
        None if shared else attn.k_norm.weight.data,
        cache,
        positions,
        num_q_heads=attn.num_heads,
        num_kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim,
        eps=attn.q_norm.eps,
    )
    if shared:
        return q, None, None
    return q, k.reshape(-1, attn.num_kv_heads, attn.head_dim), v.reshape(-1, attn.num_kv_heads, attn.head_dim)


def attend(attn, q: torch.Tensor, k, v, forward_batch) -> torch.Tensor:
    """The rest of Gemma4Attention.forward after the rotary embedding: attention and output projection."""
    q = q.unflatten(-1, (attn.num_heads, attn.head_dim))
    out = attn.attn(q, k, v, forward_batch=forward_batch, save_kv_cache=not attn.is_kv_shared_layer)
    if out.dim() == 3:
        out = out.flatten(-2, -1)
    output, _ = attn.o_proj(out)
    return output
