"""Gemma-4 MoE router: the sorting-network kernel (and the rounds kernel for topk > 8).

For router logits ``x`` [T, E] (bf16, fp16 or fp32, E <= 1024) and a per-expert scale ``s`` [E]:

    ids[t]     = the ``topk`` experts with the largest logits, largest first; equal logits are
                 ordered by expert id, lower id first                                   (int32)
    weights[t] = softmax(x[t, ids[t]]) * s[ids[t]]                                      (float32)

This is the contract of ``gemma4_fused_routing`` (sglang.kernels.ops.moe.gemma4_routing), which calls
``gemma4_routing_network`` here. sglang 0.5.23's kernel ran one single-warp program per token and
sorted all E packed (key, id) pairs with a 64-bit bitonic sort: at prefill sizes the sort, not
memory, was the cost (24 us for 16384 tokens on H100/H200 against a copy of the same bytes in under
3 us).

Every logit becomes one unsigned integer key: the logit's bits mapped so that integer order is IEEE
totalOrder of the value widened to fp32, then ``1023 - expert id`` in the low 10 bits. Keys are
unique, so "largest key" is "largest logit, lower id on ties"; bf16 and fp16 keys fit 32 bits, fp32
keys take 64. Two kernels select on these keys:

* the network kernel (topk <= 8, the Gemma-4 case): one warp per program holds 32 // L tokens, each
  token spread over L lanes with 8 * G keys per lane (G "groups" of 8). A lane sorts each of its
  groups with a 19-comparator network, merges its groups pairwise into its own top 8 (the larger of
  a[i] and b[7 - i] is a bitonic sequence holding the top 8 of two sorted lists; a 12-comparator
  bitonic merge sorts it), then the L lanes merge the same way across butterfly shuffles, so every
  lane of a token ends with the token's sorted top 8. Only min / max on integers: about 73 SASS
  instructions per token at E=128 with bf16 logits (G=4, L=4), and no shared memory. Lane q then
  writes slots q * 8 / L ...; the softmax denominator is a sum over the token's lanes. G is chosen
  from T and the key width (``choose_network_groups``): fewer keys per lane (more lanes, a shorter
  chain per warp) for small batches, 32 keys per lane (fewest instructions per token) for prefill;
* the rounds kernel (topk > 8): k rounds of "largest key not above the previous one" over a tile of
  tokens (one subtraction and one unsigned min per logit, then a reduction over the lanes holding the
  row), launch shape from ``choose_launch_shape``.

``gemma4_routing_network`` is the served entry point: it takes only the router's inputs and
launches what ``default_launch`` picks. ``gemma4_routing_forced_launch`` runs a chosen kernel and
launch shape, for tests and benchmarks.

Both kernels take T and E at run time: token counts share compiled kernels, one per launch shape
(the network kernel has at most four per logits dtype), and E only picks the power-of-two tile. The
network kernel also compiles per topk (a model has one); the rounds kernel takes it at run time.

Ordering is IEEE-754 totalOrder of the logit widened to fp32, as in 0.5.23's kernel:
-NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN, so the positive NaNs torch produces rank first,
as in ``torch.topk``. Weights follow ``torch.softmax`` over the selected logits: a row whose selected
logits include a NaN or +inf, or are all -inf, gets NaN weights (0.5.23's kernel returned a mix of
NaN and unnormalised values for such rows). On finite rows the ids equal 0.5.23's kernel's bit for
bit and the weights agree to under 1e-6 relative (benchmark/gemma4/results/routing_*.md).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MAX_EXPERTS = 1024  # the expert id lives in the low 10 bits of a key
SUPPORTED_LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NETWORK_MAX_TOPK = 8  # the network kernel keeps the top 8 of every token
# The scale gather's PTX inline asm needs compiled kernels (Triton fixes interpreted vs compiled when
# a kernel is decorated, i.e. at import) on an NVIDIA target (ROCm builds of torch set version.hip).
_PTX_ASM = os.environ.get("TRITON_INTERPRET", "0") != "1" and torch.version.hip is None

# Token count up to which the rounds kernel uses one token per warp (H100 sweeps in
# benchmark/gemma4/results/routing_h100.md and routing_h100_a128c3d.md).
_ONE_TOKEN_MAX = 1024

# Network kernel: (largest token count, groups of 8 keys per lane), by key width (H200 sweeps in
# benchmark/gemma4/results/routing_h200.md and routing_h200_fp32.md). 64-bit keys (fp32 logits) make
# every min / max several instructions, so the short-chain shapes stay best up to larger batches.
_NETWORK_GROUPS_32BIT = ((32, 1), (2048, 2), (None, 4))
_NETWORK_GROUPS_64BIT = ((1024, 1), (4096, 2), (8192, 4), (None, 8))


# ----------------------------------------------------------------------------------------------
# Keys, shared by both kernels.


@triton.jit
def _make_keys(x, experts, valid, KEY_MODE: tl.constexpr):
    """Unique integer key per logit: order-mapped logit bits on top, 1023 - expert id below (lower
    id wins ties); 0 where ``valid`` is false (below every real key but key 0).

    The map is IEEE totalOrder on the fp32 value: negative values get all bits flipped, others the
    top bit set. bf16 and fp16 widen exactly to fp32, so their 16 bits order like the fp32 value (and
    keep the sign of a NaN, whatever the widening instruction does with it).
    """
    tag = 1023 - experts
    if KEY_MODE == 2:
        raw = x.to(tl.uint32, bitcast=True)
        ordered = tl.where(raw >= 0x80000000, raw ^ 0xFFFFFFFF, raw | 0x80000000)
        key = (ordered.to(tl.uint64) << 10) | tag.to(tl.uint64)
    else:
        b = x.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended
        ordered = b ^ ((b >> 31) | 0x8000)  # 16-bit result
        key = ((ordered << 16) | tag).to(tl.uint32, bitcast=True)
    return tl.where(valid, key, 0)


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


# ----------------------------------------------------------------------------------------------
# Network kernel.


@triton.jit
def _cx(a, b):
    """Compare-exchange: (larger, smaller)."""
    return tl.maximum(a, b), tl.minimum(a, b)


@triton.jit
def _sort8(x0, x1, x2, x3, x4, x5, x6, x7):
    """Sorts eight tensors elementwise, largest first (19 comparators, depth 6)."""
    x0, x2 = _cx(x0, x2)
    x1, x3 = _cx(x1, x3)
    x4, x6 = _cx(x4, x6)
    x5, x7 = _cx(x5, x7)
    x0, x4 = _cx(x0, x4)
    x1, x5 = _cx(x1, x5)
    x2, x6 = _cx(x2, x6)
    x3, x7 = _cx(x3, x7)
    x0, x1 = _cx(x0, x1)
    x2, x3 = _cx(x2, x3)
    x4, x5 = _cx(x4, x5)
    x6, x7 = _cx(x6, x7)
    x2, x4 = _cx(x2, x4)
    x3, x5 = _cx(x3, x5)
    x1, x4 = _cx(x1, x4)
    x3, x6 = _cx(x3, x6)
    x1, x2 = _cx(x1, x2)
    x3, x4 = _cx(x3, x4)
    x5, x6 = _cx(x5, x6)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _bitonic8(x0, x1, x2, x3, x4, x5, x6, x7):
    """Sorts a bitonic sequence of eight, largest first (12 comparators)."""
    x0, x4 = _cx(x0, x4)
    x1, x5 = _cx(x1, x5)
    x2, x6 = _cx(x2, x6)
    x3, x7 = _cx(x3, x7)
    x0, x2 = _cx(x0, x2)
    x1, x3 = _cx(x1, x3)
    x4, x6 = _cx(x4, x6)
    x5, x7 = _cx(x5, x7)
    x0, x1 = _cx(x0, x1)
    x2, x3 = _cx(x2, x3)
    x4, x5 = _cx(x4, x5)
    x6, x7 = _cx(x6, x7)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _top8_of_pairs(x0, x1, x2, x3, x4, x5, x6, x7):
    """x_i: [P, 2, ...], two sorted lists per pair along axis 1 -> [P, ...], their sorted top 8."""
    odd = (tl.arange(0, 2) == 1)[None, :, None, None]
    c0 = tl.max(tl.where(odd, x7, x0), axis=1)
    c1 = tl.max(tl.where(odd, x6, x1), axis=1)
    c2 = tl.max(tl.where(odd, x5, x2), axis=1)
    c3 = tl.max(tl.where(odd, x4, x3), axis=1)
    c4 = tl.max(tl.where(odd, x3, x4), axis=1)
    c5 = tl.max(tl.where(odd, x2, x5), axis=1)
    c6 = tl.max(tl.where(odd, x1, x6), axis=1)
    c7 = tl.max(tl.where(odd, x0, x7), axis=1)
    return _bitonic8(c0, c1, c2, c3, c4, c5, c6, c7)


@triton.jit
def _group_merge(x0, x1, x2, x3, x4, x5, x6, x7, G: tl.constexpr, BT: tl.constexpr,
                 L: tl.constexpr):
    """[G, BT, L] sorted lists (per lane, in registers) -> [G // 2, BT, L]."""
    shape: tl.constexpr = [G // 2, 2, BT, L]
    return _top8_of_pairs(
        tl.reshape(x0, shape), tl.reshape(x1, shape), tl.reshape(x2, shape),
        tl.reshape(x3, shape), tl.reshape(x4, shape), tl.reshape(x5, shape),
        tl.reshape(x6, shape), tl.reshape(x7, shape),
    )


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _partner(x, BT: tl.constexpr, L: tl.constexpr, S: tl.constexpr):
    """The value held by the lane of the same token whose position along L differs in bit S.

    A two-element xor reduction over that bit is one butterfly shuffle; x ^ (x ^ y) = y. The shape
    (and so the layout) stays [BT, L], with L along the lanes.
    """
    h = tl.reshape(x, [BT, L // (2 * S), 2, S])
    return tl.reshape(h ^ tl.reduce(h, 2, _xor, keep_dims=True), [BT, L])


@triton.jit
def _lane_merge(x0, x1, x2, x3, x4, x5, x6, x7, BT: tl.constexpr, L: tl.constexpr,
                S: tl.constexpr):
    """Both lanes of each pair (bit S of the lane position) end with the sorted top 8 of their
    two lists (the second lane's bitonic sequence is the first's reversed)."""
    c0 = tl.maximum(x0, _partner(x7, BT, L, S))
    c1 = tl.maximum(x1, _partner(x6, BT, L, S))
    c2 = tl.maximum(x2, _partner(x5, BT, L, S))
    c3 = tl.maximum(x3, _partner(x4, BT, L, S))
    c4 = tl.maximum(x4, _partner(x3, BT, L, S))
    c5 = tl.maximum(x5, _partner(x2, BT, L, S))
    c6 = tl.maximum(x6, _partner(x1, BT, L, S))
    c7 = tl.maximum(x7, _partner(x0, BT, L, S))
    return _bitonic8(c0, c1, c2, c3, c4, c5, c6, c7)


@triton.jit
def _pick(i: tl.constexpr, x0, x1, x2, x3, x4, x5, x6, x7):
    if i == 0:
        return x0
    elif i == 1:
        return x1
    elif i == 2:
        return x2
    elif i == 3:
        return x3
    elif i == 4:
        return x4
    elif i == 5:
        return x5
    elif i == 6:
        return x6
    else:
        return x7


@triton.jit
def _own_slot(j: tl.constexpr, q, SPL: tl.constexpr, NQ: tl.constexpr,
              x0, x1, x2, x3, x4, x5, x6, x7):
    """Key of slot q * SPL + j for the lane at position q (< NQ) along L."""
    v = _pick(j, x0, x1, x2, x3, x4, x5, x6, x7)
    for qq in tl.static_range(1, NQ):
        v = tl.where(q == qq, _pick(qq * SPL + j, x0, x1, x2, x3, x4, x5, x6, x7), v)
    return v


@triton.jit
def _load_scale(ptrs, SCALE_MODE: tl.constexpr, ASM_LOAD: tl.constexpr):
    """per_expert_scale[ids] as fp32, in the layout ``ptrs`` already has.

    A tl.load of a gather lets the compiler pick a load layout of its own and shuffle into and out
    of it; an elementwise asm load keeps the ids' layout (about 0.1 us at 4096 tokens on H200).
    The interpreter has no inline asm and AMD targets no PTX, so there it is a tl.load.
    """
    if not ASM_LOAD:
        return tl.load(ptrs).to(tl.float32)
    elif SCALE_MODE == 0:
        return tl.inline_asm_elementwise("ld.global.nc.b32 $0, [$1];", "=r,l", [ptrs],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        raw = tl.inline_asm_elementwise("ld.global.nc.b16 $0, [$1];", "=h,l", [ptrs],
                                        dtype=tl.int16, is_pure=True, pack=1)
        if SCALE_MODE == 1:
            return raw.to(tl.bfloat16, bitcast=True).to(tl.float32)
        else:
            return raw.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit(do_not_specialize=["T"])
def _gemma4_routing_network_kernel(
    logits_ptr,  # [T, E] fp16 / bf16 / fp32, unit stride along E
    scale_ptr,  # [E] fp32 / bf16 / fp16
    weights_ptr,  # [T, K] fp32 out, contiguous
    ids_ptr,  # [T, K] int32 out, contiguous
    T,
    E,
    stride_t,
    K: tl.constexpr,  # experts kept per token, <= 8
    BLOCK_E: tl.constexpr,  # next power of two >= max(E, 8)
    G: tl.constexpr,  # groups of 8 keys per lane
    KEY_MODE: tl.constexpr,  # 0: bf16, 1: fp16 (32-bit keys), 2: fp32 (64-bit keys)
    PACKED: tl.constexpr,  # 16-bit logits read as 32-bit words (E even, rows 4-byte aligned)
    EVEN_E: tl.constexpr,  # E == BLOCK_E
    SCALE_MODE: tl.constexpr,  # 0: fp32, 1: bf16, 2: fp16
    ASM_LOAD: tl.constexpr,
):
    W: tl.constexpr = BLOCK_E // G  # experts of one group index across a token's lanes
    L: tl.constexpr = W // 8  # lanes per token
    BT: tl.constexpr = 32 // L  # tokens per program (one warp)
    first_row = tl.program_id(0).to(tl.int64) * BT
    logits_ptr += first_row * stride_t
    weights_ptr += first_row * K
    ids_ptr += first_row * K
    rows_left = (T - first_row).to(tl.int32)

    # The tile is loaded as [G * BT, W]: tile row s is group s // BT of token s % BT, spread over
    # L lanes of 8 contiguous experts (16 bytes for 16-bit logits). The lanes and warp are filled by
    # the BT * L = 32 (token, lane) pairs, so the G groups of a lane wrap into its registers.
    sub = tl.arange(0, G * BT)
    sub_row = sub % BT
    row_ok = (sub_row < rows_left)[:, None]
    if PACKED:
        # Two logits per 32-bit word: _make_keys' order map on both halves at once (flip all 16
        # bits of a negative half, only the sign bit of the others), then split into two keys.
        W2: tl.constexpr = W // 2
        word = (sub // BT * W2)[:, None] + tl.arange(0, W2)[None, :]
        wptrs = (logits_ptr.to(tl.pointer_type(tl.uint32))
                 + (sub_row * (stride_t // 2))[:, None] + word)
        if EVEN_E:
            wmask = row_ok
        else:
            wmask = row_ok & (2 * word < E)
        w = tl.load(wptrs, mask=wmask, other=0, eviction_policy="evict_first")
        w = w ^ ((((w >> 15) & 0x00010001) * 0x7FFF) | 0x80008000)
        lo = 2 * word
        key_lo = (w << 16) | (1023 - lo).to(tl.uint32)
        key_hi = (w & 0xFFFF0000) | (1022 - lo).to(tl.uint32)
        if not EVEN_E:
            key_lo = tl.where(lo < E, key_lo, 0)
            key_hi = tl.where(lo + 1 < E, key_hi, 0)
        key = tl.reshape(tl.join(key_lo, key_hi), [G * BT, W])
    else:
        experts = (sub // BT * W)[:, None] + tl.arange(0, W)[None, :]
        if EVEN_E:
            col_ok = experts < BLOCK_E  # all true, known at compile time
        else:
            col_ok = experts < E
        ptrs = logits_ptr + (sub_row * stride_t)[:, None] + experts
        x = tl.load(ptrs, mask=row_ok & col_ok, other=0.0, eviction_policy="evict_first")
        key = _make_keys(x, experts, col_ok, KEY_MODE)

    # Eight tensors [G, BT, L], one per position inside a group (which expert sits where does not
    # matter: a key carries its id).
    key = tl.reshape(key, [G, BT, L, 2, 2, 2])
    a, b = tl.split(key)
    a0, a1 = tl.split(a)
    b0, b1 = tl.split(b)
    x0, x1 = tl.split(a0)
    x2, x3 = tl.split(a1)
    x4, x5 = tl.split(b0)
    x6, x7 = tl.split(b1)
    x0, x1, x2, x3, x4, x5, x6, x7 = _sort8(x0, x1, x2, x3, x4, x5, x6, x7)
    if G >= 8:
        x0, x1, x2, x3, x4, x5, x6, x7 = _group_merge(x0, x1, x2, x3, x4, x5, x6, x7, G, BT, L)
    if G >= 4:
        x0, x1, x2, x3, x4, x5, x6, x7 = _group_merge(
            x0, x1, x2, x3, x4, x5, x6, x7, 4, BT, L)
    if G >= 2:
        x0, x1, x2, x3, x4, x5, x6, x7 = _group_merge(x0, x1, x2, x3, x4, x5, x6, x7, 2, BT, L)
    x0 = tl.reshape(x0, [BT, L])
    x1 = tl.reshape(x1, [BT, L])
    x2 = tl.reshape(x2, [BT, L])
    x3 = tl.reshape(x3, [BT, L])
    x4 = tl.reshape(x4, [BT, L])
    x5 = tl.reshape(x5, [BT, L])
    x6 = tl.reshape(x6, [BT, L])
    x7 = tl.reshape(x7, [BT, L])
    for s in tl.static_range(5):
        if (1 << s) < L:
            x0, x1, x2, x3, x4, x5, x6, x7 = _lane_merge(
                x0, x1, x2, x3, x4, x5, x6, x7, BT, L, 1 << s)

    # Every lane of a token holds its eight largest keys, x0 first. Lane q (< NQ) writes slots
    # q * SPL .. q * SPL + SPL - 1, contiguous in its registers.
    SPL: tl.constexpr = 8 // L if L < 8 else 1
    NQ: tl.constexpr = L if L < 8 else 8
    q = tl.arange(0, L)[None, :]
    k0 = _own_slot(0, q, SPL, NQ, x0, x1, x2, x3, x4, x5, x6, x7)
    if SPL == 8:
        kk = tl.join(tl.join(tl.join(x0, x4), tl.join(x2, x6)),
                     tl.join(tl.join(x1, x5), tl.join(x3, x7)))
    elif SPL == 4:
        k1 = _own_slot(1, q, SPL, NQ, x0, x1, x2, x3, x4, x5, x6, x7)
        k2 = _own_slot(2, q, SPL, NQ, x0, x1, x2, x3, x4, x5, x6, x7)
        k3 = _own_slot(3, q, SPL, NQ, x0, x1, x2, x3, x4, x5, x6, x7)
        kk = tl.join(tl.join(k0, k2), tl.join(k1, k3))
    elif SPL == 2:
        kk = tl.join(k0, _own_slot(1, q, SPL, NQ, x0, x1, x2, x3, x4, x5, x6, x7))
    else:
        kk = tl.reshape(k0, [BT, L, 1])
    kk = tl.reshape(kk, [BT, L, SPL])
    slot = tl.reshape(tl.arange(0, L * SPL), [1, L, SPL])
    rows = tl.arange(0, BT)[:, None, None]
    keep = (slot < K) & (rows < rows_left)

    # Softmax over the first K slots; its max is slot 0 (a NaN there stays a NaN, tl.max would
    # drop it). -0.0 is the additive identity, so slots beyond K add nothing.
    ids, vals = _decode_keys(kk, KEY_MODE)
    _, top = _decode_keys(x0, KEY_MODE)
    ex = tl.where(slot < K, tl.exp(vals - tl.reshape(top, [BT, L, 1])), -0.0)
    denom = tl.sum(tl.sum(ex, axis=2), axis=1, keep_dims=True)
    scale = _load_scale(scale_ptr + tl.where(keep, ids, 0), SCALE_MODE, ASM_LOAD)
    weights = ex * tl.reshape(1.0 / denom, [BT, 1, 1]) * scale

    # Stored as [BT, 8]-like rows so each lane writes its SPL slots as one vector.
    slot2 = tl.arange(0, L * SPL)[None, :]
    rows2 = tl.arange(0, BT)[:, None]
    out = rows2 * K + slot2
    keep = (slot2 < K) & (rows2 < rows_left)
    tl.store(weights_ptr + out, tl.reshape(weights, [BT, L * SPL]), mask=keep)
    tl.store(ids_ptr + out, tl.reshape(ids, [BT, L * SPL]), mask=keep)


# ----------------------------------------------------------------------------------------------
# Rounds kernel.


@triton.jit(do_not_specialize=["T"])
def _gemma4_routing_rounds_kernel(
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

    key = _make_keys(x, experts, col_ok, KEY_MODE)
    if KEY_MODE == 2:
        limit = tl.full([BLOCK_T], -1, tl.int64).to(tl.uint64, bitcast=True)
    else:
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
            # Fetch the expert's scale now, so its latency hides behind the next rounds. Rounds past
            # E (E < BLOCK_K) pick no expert: their id is masked, never read past the scales.
            eid = (1023 - (best & 1023)).to(tl.int32)
            scale_j = tl.load(scale_ptr + eid, mask=eid < E, other=0.0).to(tl.float32)
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
            eid = (1023 - (best & 1023)).to(tl.int32)
            scale_j = tl.load(scale_ptr + eid, mask=eid < E, other=0.0).to(tl.float32)
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


# ----------------------------------------------------------------------------------------------
# Launch choices and the entry point.


def _network_block_e(num_experts: int) -> int:
    """The network kernel's tile width: a power of two, at least one group of 8."""
    return max(8, triton.next_power_of_2(num_experts))


def network_group_choices(num_experts: int) -> tuple[int, ...]:
    """The G values the network kernel can run for E experts: a lane holds at least one group of 8
    and a token spans at most 32 lanes (one warp)."""
    block_e = _network_block_e(num_experts)
    return tuple(g for g in (1, 2, 4, 8) if 8 * g <= block_e and block_e // (8 * g) <= 32)


def choose_network_groups(num_tokens: int, num_experts: int, key_bits: int = 32) -> int:
    """Groups of 8 keys per lane for the network kernel (8 * G keys per lane, L = BLOCK_E / 8G
    lanes and 32 / L tokens per warp). key_bits: 32 for bf16 / fp16 logits, 64 for fp32.

    bf16 / fp16, E=128 (H200):
    * up to 32 tokens: G=1 (16 lanes per token): the shortest chain per warp, which is all a batch
      of a few programs waits for (1.45 against 1.49 us for G=2 at T=1);
    * up to 2048: G=2 (8 lanes per token);
    * beyond: G=4 (4 lanes per token): the fewest instructions per token, 2.32 us at 4096 tokens
      against 2.35 (G=2) and 2.94 (G=8); G=8 only ties at 16384.
    fp32: G=1 up to 1024 tokens, G=2 up to 4096, G=4 up to 8192, then G=8.

    G is then clamped into ``network_group_choices(num_experts)``.
    """
    if key_bits not in (32, 64):
        raise ValueError(f"key_bits must be 32 or 64, got {key_bits}")
    table = _NETWORK_GROUPS_32BIT if key_bits == 32 else _NETWORK_GROUPS_64BIT
    groups = next(g for limit, g in table if limit is None or num_tokens <= limit)
    choices = network_group_choices(num_experts)
    return max(choices[0], min(groups, choices[-1]))


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


def _key_mode(logits_dtype: torch.dtype) -> int:
    """KEY_MODE of both kernels: 0 bf16, 1 fp16 (32-bit keys), 2 fp32 (64-bit keys)."""
    return {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}[logits_dtype]


def default_launch(num_tokens: int, num_experts: int, topk: int,
                   logits_dtype: torch.dtype) -> tuple[str, dict]:
    """(method, launch arguments) that ``gemma4_routing_network`` launches, e.g.
    ("network", {"groups": 4}) or ("rounds", {"block_t": 8, "num_warps": 1, "chunks": 4})."""
    if topk > NETWORK_MAX_TOPK:
        block_t, num_warps, chunks = choose_launch_shape(num_tokens, num_experts, topk)
        return "rounds", {"block_t": block_t, "num_warps": num_warps, "chunks": chunks}
    key_bits = 64 if _key_mode(logits_dtype) == 2 else 32
    return "network", {"groups": choose_network_groups(num_tokens, num_experts, key_bits)}


def _scale_mode(per_expert_scale: torch.Tensor) -> tuple[torch.Tensor, int]:
    if per_expert_scale.dtype == torch.float32:
        return per_expert_scale, 0
    if per_expert_scale.dtype == torch.bfloat16:
        return per_expert_scale, 1
    if per_expert_scale.dtype == torch.float16:
        return per_expert_scale, 2
    return per_expert_scale.float(), 0  # float64 and other floating types: E values, once


def _network_launch(gating_output, per_expert_scale, topk, groups, weights, ids) -> None:
    num_tokens, num_experts = gating_output.shape
    block_e = _network_block_e(num_experts)
    lanes = block_e // (8 * groups)
    key_mode = _key_mode(gating_output.dtype)
    packed = (
        key_mode < 2
        and num_experts % 2 == 0
        and gating_output.stride(0) % 2 == 0
        and gating_output.data_ptr() % 4 == 0
    )
    scale, scale_mode = _scale_mode(per_expert_scale)
    grid = (triton.cdiv(num_tokens, 32 // lanes),)
    _gemma4_routing_network_kernel[grid](
        gating_output,
        scale,
        weights,
        ids,
        num_tokens,
        num_experts,
        gating_output.stride(0),
        K=topk,
        BLOCK_E=block_e,
        G=groups,
        KEY_MODE=key_mode,
        PACKED=packed,
        EVEN_E=num_experts == block_e,
        SCALE_MODE=scale_mode,
        ASM_LOAD=_PTX_ASM and gating_output.is_cuda,
        num_warps=1,
    )


def _rounds_launch(gating_output, per_expert_scale, topk, block_t, num_warps, chunks, weights,
                   ids) -> None:
    num_tokens, num_experts = gating_output.shape
    block_e = triton.next_power_of_2(num_experts)
    grid = (triton.cdiv(num_tokens, block_t),)
    _gemma4_routing_rounds_kernel[grid](
        gating_output,
        per_expert_scale,
        weights,
        ids,
        num_tokens,
        num_experts,
        topk,
        gating_output.stride(0),
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        BLOCK_K=triton.next_power_of_2(topk),
        CHUNKS=chunks,
        KEY_MODE=_key_mode(gating_output.dtype),
        EVEN_E=num_experts == block_e,
        num_warps=num_warps,
    )


def _route(gating_output, per_expert_scale, topk, method, launch):
    """Allocates the outputs and runs ``method`` with the resolved ``launch`` arguments."""
    num_tokens = gating_output.shape[0]
    topk_weights = torch.empty(
        (num_tokens, topk), dtype=torch.float32, device=gating_output.device
    )
    topk_ids = torch.empty((num_tokens, topk), dtype=torch.int32, device=gating_output.device)
    if num_tokens == 0:
        return topk_weights, topk_ids
    if gating_output.stride(1) != 1:
        gating_output = gating_output.contiguous()
    per_expert_scale = per_expert_scale.contiguous()
    if method == "network":
        _network_launch(gating_output, per_expert_scale, topk, launch["groups"], topk_weights,
                        topk_ids)
    else:
        _rounds_launch(gating_output, per_expert_scale, topk, launch["block_t"],
                       launch["num_warps"], launch["chunks"], topk_weights, topk_ids)
    return topk_weights, topk_ids


def gemma4_routing_network(
    gating_output: torch.Tensor,
    per_expert_scale: torch.Tensor,
    topk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma-4 router: top-k experts, softmax over their logits, times per_expert_scale[id].

    Args:
        gating_output: [T, E] router logits, fp16 / bf16 / fp32, E <= 1024.
        per_expert_scale: [E] per-expert scale, any floating dtype, same device.
        topk: experts kept per token, 1 <= topk <= E.

    Returns:
        (topk_weights [T, topk] float32, topk_ids [T, topk] int32).

    Runs the network kernel for topk <= 8 and the rounds kernel beyond, with the launch shape
    ``default_launch`` picks for T.
    """
    _check_inputs(gating_output, per_expert_scale, topk)
    num_tokens, num_experts = gating_output.shape
    method, launch = default_launch(num_tokens, num_experts, topk, gating_output.dtype)
    return _route(gating_output, per_expert_scale, topk, method, launch)


def _power_of_two(value) -> bool:
    return value >= 1 and value & (value - 1) == 0


def _forced_launch(num_tokens, num_experts, topk, logits_dtype, method, groups, block_t,
                   num_warps, chunks) -> tuple[str, dict]:
    """The (method, launch arguments) that gemma4_routing_forced_launch runs; what is not
    forced comes from default_launch / choose_launch_shape."""
    rounds_args = (block_t, num_warps, chunks)
    default_method, default_args = default_launch(num_tokens, num_experts, topk, logits_dtype)
    if method is None:
        method = "rounds" if any(a is not None for a in rounds_args) else default_method
    if method not in ("network", "rounds"):
        raise ValueError(f"method must be 'network' or 'rounds', got {method!r}")
    if method == "network":
        if topk > NETWORK_MAX_TOPK:
            raise ValueError(
                f"the network kernel keeps at most {NETWORK_MAX_TOPK} experts per token, "
                f"got topk={topk}; use method='rounds'"
            )
        if any(a is not None for a in rounds_args):
            raise ValueError("block_t / num_warps / chunks apply to method='rounds' only")
        if groups is None:
            groups = default_args["groups"]  # topk <= 8: the default is the network kernel
        elif groups not in network_group_choices(num_experts):
            raise ValueError(
                f"groups must be 1, 2, 4 or 8 with 8 <= BLOCK_E / groups <= 256, got groups={groups} "
                f"for E={num_experts} (BLOCK_E={_network_block_e(num_experts)})"
            )
        return "network", {"groups": groups}
    if groups is not None:
        raise ValueError("groups applies to method='network' only")
    default_block_t, default_warps, default_chunks = choose_launch_shape(
        num_tokens, num_experts, topk
    )
    block_t = default_block_t if block_t is None else block_t
    num_warps = default_warps if num_warps is None else num_warps
    chunks = default_chunks if chunks is None else chunks
    if not _power_of_two(block_t):
        raise ValueError(f"block_t must be a power of two, got {block_t}")
    if not _power_of_two(num_warps):
        raise ValueError(f"num_warps must be a power of two, got {num_warps}")
    block_e = triton.next_power_of_2(num_experts)
    block_k = triton.next_power_of_2(topk)
    if not _power_of_two(chunks) or block_e // chunks < block_k:
        raise ValueError(
            f"chunks must be a power of two with BLOCK_E // chunks >= BLOCK_K, got chunks={chunks} "
            f"for E={num_experts}, topk={topk}"
        )
    return "rounds", {"block_t": block_t, "num_warps": num_warps, "chunks": chunks}


def gemma4_routing_forced_launch(
    gating_output: torch.Tensor,
    per_expert_scale: torch.Tensor,
    topk: int,
    *,
    method: str | None = None,
    groups: int | None = None,
    block_t: int | None = None,
    num_warps: int | None = None,
    chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gemma4_routing_network`` with a chosen kernel and launch shape, for tests and benchmarks
    (the served path never forces one).

    Args (besides the router's three):
        method: "network" (topk <= 8) or "rounds"; by default "rounds" when a rounds argument is
            given, else what default_launch picks.
        groups: network kernel only: groups of 8 keys per lane (1, 2, 4 or 8); by default
            ``choose_network_groups``.
        block_t, num_warps, chunks: rounds kernel only: tokens per program, warps per program,
            pieces per row (powers of two); by default ``choose_launch_shape``.
    """
    _check_inputs(gating_output, per_expert_scale, topk)
    num_tokens, num_experts = gating_output.shape
    method, launch = _forced_launch(num_tokens, num_experts, topk, gating_output.dtype, method,
                                    groups, block_t, num_warps, chunks)
    return _route(gating_output, per_expert_scale, topk, method, launch)
