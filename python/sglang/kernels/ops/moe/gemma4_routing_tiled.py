"""Gemma-4 MoE router, several tokens per program.

For router logits ``x`` [T, E] (bf16, fp16 or fp32, E <= 1024) and a per-expert scale ``s`` [E]:

    ids[t]     = the ``topk`` experts with the largest logits, largest first; equal logits are
                 ordered by expert id, lower id first                                   (int32)
    weights[t] = softmax(x[t, ids[t]]) * s[ids[t]]                                      (float32)

This is the contract of ``gemma4_fused_routing`` (sglang.kernels.ops.moe.gemma4_routing), which calls
into this module. The previous kernel there runs one single-warp program per token and sorts all E
packed (key, id) pairs with a 64-bit bitonic sort: at prefill sizes the sort, not memory, is the cost
(24 us for 16384 tokens on H100 against a memory floor under 2 us). This kernel:

* selects the top-k in k rounds of "largest key not above the previous one". Keys are unique (the
  expert id is packed into the low bits), so a round is one subtraction and one unsigned min per
  logit plus a reduction over the lanes that hold the row; the logits tile is never rewritten;
* packs bf16 and fp16 logits into 32-bit keys (16 order-mapped value bits, then ``1023 - id``); only
  fp32 logits need 64-bit keys;
* chooses the launch shape from T (``choose_launch_shape``): one token per warp up to 1024 tokens,
  then several tokens per warp with each row loaded as 4 pieces held by the same lanes, so a round
  reduces over 4 lanes (at E=128) instead of 32;
* fetches each selected expert's scale during the rounds, hiding that load;
* takes T, E and K at run time: a new token count never recompiles; E and K only pick power-of-two
  tile sizes.

Ordering is IEEE-754 totalOrder of the logit widened to fp32, as in the previous kernel:
-NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN, so the positive NaNs torch produces rank first,
as in ``torch.topk``. Weights follow ``torch.softmax`` over the selected logits: a row whose selected
logits include a NaN or +inf, or are all -inf, gets NaN weights (the previous kernel returned a mix of
NaN and unnormalised values for such rows). On finite rows the ids equal the previous kernel's bit for
bit and the weights agree to about 4e-7 relative (benchmark/gemma4/results/routing_h100.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_EXPERTS = 1024  # the expert id lives in the low 10 bits of a key
SUPPORTED_LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Token count up to which the one-token launch shape is used (H100 sweeps in
# benchmark/gemma4/results/routing_h100.md and routing_h100_a128c3d.md).
_ONE_TOKEN_MAX = 1024


@triton.jit
def _decode_keys(chosen, KEY_MODE: tl.constexpr):
    """Packed keys -> (expert ids int32, fp32 logit values); the inverse of the key build."""
    ids = (1023 - (chosen & 1023)).to(tl.int32)
    if KEY_MODE == 2:
        ordered = (chosen >> 10).to(tl.uint32)
        bits = tl.where(ordered >= 0x80000000, ordered ^ 0x80000000, ordered ^ 0xFFFFFFFF)
        vals = bits.to(tl.float32, bitcast=True)
    else:
        ordered = (chosen >> 16).to(tl.int32)  # order-mapped 16-bit logit
        bits16 = tl.where(ordered >= 0x8000, ordered ^ 0x8000, ordered ^ 0xFFFF)
        if KEY_MODE == 0:
            vals = (bits16 << 16).to(tl.float32, bitcast=True)  # bf16 -> fp32 is a shift
        else:
            vals = bits16.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return ids, vals


@triton.jit(do_not_specialize=["T"])
def _gemma4_routing_tiled_kernel(
    logits_ptr,  # [T, E] fp16 / bf16 / fp32, unit stride along E
    scale_ptr,  # [E] per-expert scale, any float dtype
    weights_ptr,  # [T, K] fp32 out, contiguous
    ids_ptr,  # [T, K] int32 out, contiguous
    T,
    E,
    K,
    stride_t,
    BLOCK_T: tl.constexpr,  # tokens per program
    BLOCK_E: tl.constexpr,  # next power of two >= E
    BLOCK_K: tl.constexpr,  # next power of two >= K
    CHUNKS: tl.constexpr,  # a row is loaded as CHUNKS pieces of BLOCK_E // CHUNKS experts
    KEY_MODE: tl.constexpr,  # 0: bf16, 1: fp16 (32-bit keys), 2: fp32 (64-bit keys)
    EVEN_E: tl.constexpr,  # E == BLOCK_E
):
    # Piece c of a row holds experts c*W .. c*W+W-1 (W = BLOCK_E // CHUNKS).
    W: tl.constexpr = BLOCK_E // CHUNKS
    # 64-bit math only for the program's base pointers; offsets inside a tile are 32-bit.
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_T
    logits_ptr += first_row * stride_t
    weights_ptr += first_row * K
    ids_ptr += first_row * K
    rows_left = (T - first_row).to(tl.int32)

    rows = tl.arange(0, BLOCK_T)
    row_ok = rows < rows_left
    # Load the tile as [CHUNKS * BLOCK_T, W]: tile row s holds piece s // BLOCK_T of token
    # s % BLOCK_T. Triton spreads tile rows over lanes and warps first and wraps the rest into
    # registers, so when BLOCK_T covers the lanes and warps, the CHUNKS pieces of a token land in
    # the same thread and a token is reduced over W // (16 bytes) lanes only. (A 3-D load would
    # leave that choice to the layout heuristics, which differ between Triton releases.)
    sub = tl.arange(0, CHUNKS * BLOCK_T)
    sub_row = sub % BLOCK_T
    experts = (sub // BLOCK_T * W)[:, None] + tl.arange(0, W)[None, :]
    col_ok = experts < E
    if EVEN_E:
        col_ok = experts < BLOCK_E  # all true, known at compile time
    ptrs = logits_ptr + (sub_row * stride_t)[:, None] + experts
    x = tl.load(ptrs, mask=(sub_row < rows_left)[:, None] & col_ok, other=0.0)

    # Key = order-mapped logit bits on top, 1023 - expert id below (lower id wins ties). The map
    # is IEEE totalOrder on the fp32 value: negative values get all bits flipped, others the top
    # bit set.
    tag = 1023 - experts
    if KEY_MODE == 2:
        raw = x.to(tl.uint32, bitcast=True)
        ordered = tl.where(raw >= 0x80000000, raw ^ 0xFFFFFFFF, raw | 0x80000000)
        key = (ordered.to(tl.uint64) << 10) | tag.to(tl.uint64)
        key = tl.where(col_ok, key, 0)
        limit = tl.full([BLOCK_T], -1, tl.int64).to(tl.uint64, bitcast=True)
    else:
        # bf16 and fp16 widen exactly to fp32, so their 16 bits order like the fp32 value (and
        # keep the sign of a NaN, whatever the widening instruction does with it).
        b = x.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended
        ordered = b ^ ((b >> 31) | 0x8000)  # 16-bit result
        key = ((ordered << 16) | tag).to(tl.uint32, bitcast=True)
        key = tl.where(col_ok, key, 0)
        limit = tl.full([BLOCK_T], 0xFFFFFFFF, tl.uint32)
    key = tl.reshape(key, [CHUNKS, BLOCK_T, W])

    # acc[t, j] = key chosen in round j. With the rounds unrolled, column j of a thread's copy is
    # a fixed register, so filling it costs nothing.
    slot = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_T, BLOCK_K], dtype=key.dtype)
    scale_acc = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)

    # Round j picks the largest key <= limit: limit - key wraps to a huge value for keys above the
    # limit, so the smallest difference belongs to the wanted key. Keys are unique, so the next
    # limit is the chosen key minus one. The logits tile itself is never rewritten.
    if BLOCK_K <= 16:
        for j in tl.static_range(BLOCK_K):
            gap = limit[None, :, None] - key
            best = limit - tl.min(tl.min(gap, axis=0), axis=1)
            acc = tl.where(slot[None, :] == j, best[:, None], acc)
            # Fetch the expert's scale now, so its latency hides behind the next rounds.
            scale_j = tl.load(scale_ptr + (1023 - (best & 1023)).to(tl.int32)).to(tl.float32)
            scale_acc = tl.where(slot[None, :] == j, scale_j[:, None], scale_acc)
            if j == 0:
                top_key = best
            limit = best - 1
    else:
        top_key = limit
        for j in range(K):
            gap = limit[None, :, None] - key
            best = limit - tl.min(tl.min(gap, axis=0), axis=1)
            acc = tl.where(slot[None, :] == j, best[:, None], acc)
            scale_j = tl.load(scale_ptr + (1023 - (best & 1023)).to(tl.int32)).to(tl.float32)
            scale_acc = tl.where(slot[None, :] == j, scale_j[:, None], scale_acc)
            top_key = tl.where(j == 0, best, top_key)
            limit = best - 1

    ids, vals = _decode_keys(acc, KEY_MODE)
    _, vmax = _decode_keys(top_key, KEY_MODE)

    # Softmax over the selected logits, max = the first one (a NaN there stays a NaN; tl.max
    # would drop it). -0.0 is the additive identity, so the padding adds nothing.
    is_top = slot[None, :] < K
    ex = tl.where(is_top, tl.exp(vals - vmax[:, None]), -0.0)
    denom = tl.sum(ex, axis=1)
    weights = ex / denom[:, None]

    out_mask = row_ok[:, None] & is_top
    weights = weights * scale_acc

    out_off = rows[:, None] * K + slot[None, :]
    tl.store(weights_ptr + out_off, weights, mask=out_mask)
    tl.store(ids_ptr + out_off, ids, mask=out_mask)


def choose_launch_shape(num_tokens: int, num_experts: int, topk: int) -> tuple[int, int, int]:
    """(BLOCK_T, num_warps, chunks) for a batch of ``num_tokens`` tokens.

    * up to 1024 tokens: one token per single-warp program. The row spans the 32 lanes and each
      selection round is one warp-wide reduction: the shortest path per token;
    * beyond: rows loaded as 4 pieces (4 lanes per row at E=128, 8 tokens per warp): the fewest
      instructions per token. (2 pieces, 8 lanes per row, tie with 4 at 2048 tokens and lose at
      4096: 3.06 against 2.93 us on H100.)

    Single-warp programs of about 32 logits per thread at any E (fewer pieces when a piece would
    hold fewer than max(BLOCK_K, 8) experts).
    """
    if num_tokens <= _ONE_TOKEN_MAX:
        return 1, 1, 1
    block_e = triton.next_power_of_2(num_experts)
    block_k = triton.next_power_of_2(topk)
    chunks = 4
    while chunks > 1 and block_e // chunks < max(block_k, 8):
        chunks //= 2
    block_t = max(1, min(8, 256 * chunks // block_e))
    return block_t, 1, chunks


def _check_inputs(gating_output, per_expert_scale, topk) -> None:
    if not isinstance(gating_output, torch.Tensor):
        raise TypeError(
            f"gating_output must be a torch.Tensor, got {type(gating_output).__name__}"
        )
    if not isinstance(per_expert_scale, torch.Tensor):
        raise TypeError(
            f"per_expert_scale must be a torch.Tensor, got {type(per_expert_scale).__name__}"
        )
    if gating_output.dim() != 2:
        raise ValueError(
            f"gating_output must be 2-D router logits [T, E], got shape {tuple(gating_output.shape)}"
        )
    if gating_output.dtype not in SUPPORTED_LOGIT_DTYPES:
        raise TypeError(
            f"gating_output dtype {gating_output.dtype} is not supported; "
            "expected torch.float16, torch.bfloat16 or torch.float32"
        )
    num_experts = gating_output.shape[1]
    if per_expert_scale.dim() != 1 or per_expert_scale.shape[0] != num_experts:
        raise ValueError(
            f"per_expert_scale must have shape [E] = [{num_experts}] to match gating_output "
            f"{tuple(gating_output.shape)}, got shape {tuple(per_expert_scale.shape)}"
        )
    if not per_expert_scale.is_floating_point():
        raise TypeError(
            f"per_expert_scale must be a floating tensor, got dtype {per_expert_scale.dtype}"
        )
    if per_expert_scale.device != gating_output.device:
        raise ValueError(
            f"per_expert_scale is on {per_expert_scale.device} but gating_output is on "
            f"{gating_output.device}"
        )
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise TypeError(f"topk must be an int, got {type(topk).__name__}")
    if num_experts > MAX_EXPERTS:
        raise ValueError(
            f"gemma4 routing supports at most {MAX_EXPERTS} experts, got E={num_experts}"
        )
    if not 1 <= topk <= num_experts:
        raise ValueError(f"topk must be in [1, E={num_experts}], got {topk}")


def gemma4_routing_tiled(
    gating_output: torch.Tensor,
    per_expert_scale: torch.Tensor,
    topk: int,
    *,
    block_t: int | None = None,
    num_warps: int | None = None,
    chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma-4 router: top-k experts, softmax over their logits, times per_expert_scale[id].

    Args:
        gating_output: [T, E] router logits, fp16 / bf16 / fp32, E <= 1024.
        per_expert_scale: [E] per-expert scale, any floating dtype, same device.
        topk: experts kept per token, 1 <= topk <= E.
        block_t, num_warps, chunks: override the launch shape (tokens per program, warps per program,
            pieces per row; powers of two); by default chosen by ``choose_launch_shape``.

    Returns:
        (topk_weights [T, topk] float32, topk_ids [T, topk] int32).
    """
    _check_inputs(gating_output, per_expert_scale, topk)
    num_tokens, num_experts = gating_output.shape

    topk_weights = torch.empty(
        (num_tokens, topk), dtype=torch.float32, device=gating_output.device
    )
    topk_ids = torch.empty((num_tokens, topk), dtype=torch.int32, device=gating_output.device)
    if num_tokens == 0:
        return topk_weights, topk_ids

    default_block_t, default_warps, default_chunks = choose_launch_shape(
        num_tokens, num_experts, topk
    )
    block_t = default_block_t if block_t is None else block_t
    num_warps = default_warps if num_warps is None else num_warps
    if block_t < 1 or block_t & (block_t - 1):
        raise ValueError(f"block_t must be a power of two, got {block_t}")
    if num_warps < 1 or num_warps & (num_warps - 1):
        raise ValueError(f"num_warps must be a power of two, got {num_warps}")

    if gating_output.stride(1) != 1:
        gating_output = gating_output.contiguous()
    per_expert_scale = per_expert_scale.contiguous()

    block_e = triton.next_power_of_2(num_experts)
    block_k = triton.next_power_of_2(topk)
    chunks = chunks if chunks is not None else default_chunks
    if chunks < 1 or chunks & (chunks - 1) or block_e // chunks < block_k:
        raise ValueError(
            f"chunks must be a power of two with BLOCK_E // chunks >= BLOCK_K, got chunks={chunks} "
            f"for E={num_experts}, topk={topk}"
        )
    if gating_output.dtype == torch.bfloat16:
        key_mode = 0
    elif gating_output.dtype == torch.float16:
        key_mode = 1
    else:
        key_mode = 2

    grid = (triton.cdiv(num_tokens, block_t),)
    _gemma4_routing_tiled_kernel[grid](
        gating_output,
        per_expert_scale,
        topk_weights,
        topk_ids,
        num_tokens,
        num_experts,
        topk,
        gating_output.stride(0),
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        BLOCK_K=block_k,
        CHUNKS=chunks,
        KEY_MODE=key_mode,
        EVEN_E=num_experts == block_e,
        num_warps=num_warps,
    )
    return topk_weights, topk_ids
