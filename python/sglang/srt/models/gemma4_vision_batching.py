# Copyright 2026 The Gemma-4 series maintainers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================
"""Packed, batched encoding of Gemma-4 images and video frames.

``Gemma4ForConditionalGeneration.get_image_feature`` / ``get_video_feature``
receive every cache-missing image (or video) of every request of a prefill
batch in one call.  This module encodes all of them with as few vision-tower
calls as possible and one ``embed_vision`` call, in four stages:

1. plan (host only, ``plan_items``): validate every item, find the valid
   (non-padding) patches of each image / frame from its positions, the soft
   token each valid patch is pooled into, and where each segment's soft tokens
   sit in the batch (``VisionSegment.token_offset``, computed once here).
   Malformed items (wrong shapes, empty images, items without images,
   NaN / inf pixel values) raise one ``ValueError`` naming every bad item
   before any device work starts.
2. tower calls (``plan_tower_calls``): the segments cut into calls by a byte
   budget that every rank of the tower's tensor-parallel group agrees on (one
   all-reduce MIN per encoder call), so all ranks make the same calls and
   their collectives match.  Backends that take variable-length batches (fa3,
   fa4, triton_attn) get the valid patches of any mix of resolutions packed
   into one stream with ``cu_seqlens``; other backends (sdpa) get one call per
   group of equal valid length, which needs no padding mask.
3. encode and pool: ``Gemma4VisionEncoder.forward_packed`` runs the patch
   embedder (position embeddings gathered from the table rows) and the
   transformer on the valid patches only; each ``k x k`` cell is averaged in
   float32 straight into its rows of the batch's soft-token matrix, then
   scaled and standardized as transformers' ``Gemma4VisionModel`` does.
   Padding patches never reach a soft token.
4. project: one ``embed_vision`` call over all soft tokens, then one tensor
   per item, in item order, each owning its storage (precomputed embeddings
   are copied too, as 0.5.23 did, so a cache entry never aliases a borrowed
   input buffer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

# Byte budget of the transient activations of one vision-tower call.
BUDGET_ENV = "SGLANG_GEMMA4_VISION_ENCODER_BUDGET_MB"
DEFAULT_BUDGET_MB = 512

# Vision attention backends that take packed variable-length batches via
# ``cu_seqlens``.  Any other backend is fed groups of equal-length images.
VARLEN_BACKENDS = frozenset({"fa3", "fa4", "triton_attn"})

# Where a MultimodalDataItem keeps the patch positions of each modality.
POSITION_ATTR = {"image": "image_position_ids", "video": "video_position_ids"}

# ``group`` default of the budget agreement: the tower's tensor-parallel group.
TOWER_TP_GROUP = "tower-tp-group"

# An item may name (by identity) pixel tensors already known to be finite, e.g.
# float32 rebuilt from uint8 patches through a finite value table
# (gemma4_pixel_transport); ``plan_items`` does not scan those for NaN / inf.
FINITE_PIXELS_ATTR = "finite_pixel_values"


# ---------------------------------------------------------------------------
# Position embeddings
# ---------------------------------------------------------------------------


def position_embeddings(
    table: torch.Tensor,
    positions: torch.Tensor,
    padding: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sum of the x and y rows of a ``[2, size, hidden]`` position table.

    Exactly what ``one_hot(positions) @ table`` summed over the two axes gives
    (one non-zero per row), without the ``[..., 2, size]`` one-hot transient.
    ``positions`` is ``[..., 2]`` with ``-1`` marking padding; rows where
    ``padding`` is True are zero.
    """
    clamped = positions.clamp(min=0)
    emb = F.embedding(clamped[..., 0], table[0]) + F.embedding(clamped[..., 1], table[1])
    if padding is not None:
        emb = emb.masked_fill(padding.unsqueeze(-1), 0.0)
    return emb


# ---------------------------------------------------------------------------
# Planning (host side)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionSegment:
    """One image or one video frame to encode."""

    pixels: torch.Tensor  # [P, patch_pixels], wherever the caller put it
    valid_rows: Optional[torch.Tensor]  # CPU int64 rows of valid patches; None = a prefix
    positions: torch.Tensor  # [n, 2] CPU int64 positions of the valid patches
    token_of_patch: torch.Tensor  # [n] CPU int64 soft token of each valid patch, 0-based
    num_tokens: int
    token_offset: int  # row of this segment's first soft token in the batch

    @property
    def num_valid(self) -> int:
        return self.positions.shape[0]

    @property
    def token_stop(self) -> int:
        return self.token_offset + self.num_tokens


@dataclass(frozen=True)
class PrecomputedEmbeds:
    """A precomputed embedding passed through (copied) into the item's result."""

    embeds: torch.Tensor


@dataclass(frozen=True)
class EncodedTokens:
    """Rows ``[token_start, token_stop)`` of the batch's projected soft tokens."""

    token_start: int
    token_stop: int


ItemPiece = Union[PrecomputedEmbeds, EncodedTokens]


@dataclass
class VisionBatchPlan:
    """Validated inputs: segments to encode and, per item, its pieces in order."""

    segments: List[VisionSegment] = field(default_factory=list)
    items: List[List[ItemPiece]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return self.segments[-1].token_stop if self.segments else 0


def _flatten(value) -> list:
    if isinstance(value, (list, tuple)):
        return [leaf for sub in value for leaf in _flatten(sub)]
    return [value]


def _plan_segment(
    pixels: torch.Tensor,
    positions: torch.Tensor,
    *,
    k: int,
    table_size: int,
    where: str,
) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor, int]:
    """Valid patches of one image and the soft token each one is pooled into.

    Follows transformers' Gemma4VisionPooler: a patch at (x, y) goes to cell
    ``x // k + (max_x // k) * (y // k)``, where ``max_x`` is one past the
    largest x; soft tokens are the cells that receive a patch, in cell order.
    """
    num_patches = pixels.shape[0]
    k2 = k * k
    if num_patches < k2 or num_patches % k2:
        raise ValueError(
            f"{where}: {num_patches} patches cannot be pooled by a {k}x{k} kernel "
            f"(the patch count must be a positive multiple of {k2})"
        )
    pos = positions.to("cpu", torch.int64)
    valid = (pos != -1).any(dim=-1)
    valid_rows = valid.nonzero().squeeze(1)
    n = valid_rows.numel()
    if n == 0:
        raise ValueError(f"{where}: all {num_patches} patches are padding (positions -1)")
    prefix = bool(valid[:n].all())
    pos = pos[:n] if prefix else pos.index_select(0, valid_rows)
    if (pos < 0).any() or (pos >= table_size).any():
        raise ValueError(
            f"{where}: patch positions must lie in [0, {table_size}) or be (-1, -1) "
            f"for padding; got range [{int(pos.min())}, {int(pos.max())}]"
        )
    cells_per_row = (int(pos[:, 0].max()) + 1) // k
    cell = pos[:, 0] // k + cells_per_row * (pos[:, 1] // k)
    if int(cell.max()) >= num_patches // k2:
        raise ValueError(
            f"{where}: patch positions span more pooled cells than the "
            f"{num_patches // k2} soft tokens its {num_patches} patches allow"
        )
    cells, token_of_patch, counts = torch.unique(
        cell, sorted=True, return_inverse=True, return_counts=True
    )
    if int(counts.max()) > k2:
        raise ValueError(
            f"{where}: a {k}x{k} pooling cell holds {int(counts.max())} patches "
            "(duplicate patch positions)"
        )
    return (None if prefix else valid_rows), pos, token_of_patch, cells.numel()


def _non_finite_problems(checked: Sequence[Tuple[str, str, torch.Tensor]]) -> List[str]:
    """One problem per image / frame of ``checked`` (``(where, unit, [N, P, C]
    pixels)``) holding NaN or inf.  When all are finite (the normal case) this
    costs one ``isfinite(...).all()`` per tensor and one host sync per device
    for the whole batch; only the error path looks at single images."""
    flags: dict = {}
    for _, _, pixels in checked:
        flags.setdefault(pixels.device, []).append(torch.isfinite(pixels).all())
    if all(bool(torch.stack(f).all()) for f in flags.values()):
        return []
    problems = []
    for where, unit, pixels in checked:
        bad = ~torch.isfinite(pixels).flatten(1).all(dim=1)
        for j in bad.nonzero().flatten().tolist():
            img = pixels[j]
            problems.append(
                f"{where} {unit} {j}: non-finite pixel values ({int(img.isnan().sum())} NaN, "
                f"{int(img.isinf().sum())} inf of {img.numel()} values)"
            )
    return problems


def plan_items(
    items: Sequence[Any],
    *,
    kind: str,
    text_hidden_size: int,
    patch_pixels: int,
    pooling_kernel_size: int,
    position_table_size: int,
) -> VisionBatchPlan:
    """Validate ``items`` and split them into per-image / per-frame segments.

    ``kind`` is "image" (pixel tensors ``[P, C]`` or ``[N, P, C]``) or "video"
    (``[F, P, C]`` or ``[V, F, P, C]``; a single ``[P, C]`` frame too); the
    positions are read from ``POSITION_ATTR[kind]``.  A 2-D or 3-D tensor whose
    last dimension is ``text_hidden_size`` is a precomputed embedding and is
    passed through.  An item without pixel values or embeddings, a pixel
    tensor holding no image / frame or images / frames of 0 patches, and
    float pixel values holding NaN or inf (except tensors the item lists in
    ``FINITE_PIXELS_ATTR``) are errors.  Every problem of every item is
    reported in one ``ValueError``; nothing is encoded when any item is
    malformed.
    """
    if kind not in POSITION_ATTR:
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    position_attr = POSITION_ATTR[kind]
    pixel_ranks = (2, 3) if kind == "image" else (2, 3, 4)
    unit = "image" if kind == "image" else "frame"
    plan = VisionBatchPlan()
    problems = []
    finite_checks: List[Tuple[str, str, torch.Tensor]] = []
    tokens = 0
    for item_idx, item in enumerate(items):
        pieces: List[ItemPiece] = []
        plan.items.append(pieces)
        features = _flatten([getattr(item, "feature", None)])
        positions = _flatten([getattr(item, position_attr, None)])
        known_finite = getattr(item, FINITE_PIXELS_ATTR, None) or ()
        if not features:
            problems.append(f"{kind} item {item_idx}: no {unit}s in the item (no pixel values or embeddings)")
        for t_idx, pv in enumerate(features):
            where = f"{kind} item {item_idx}" + (f" tensor {t_idx}" if len(features) > 1 else "")
            try:
                if not isinstance(pv, torch.Tensor):
                    raise ValueError(f"{where}: pixel values are {type(pv).__name__}, not a tensor")
                if pv.dim() in (2, 3) and pv.shape[-1] == text_hidden_size:
                    pieces.append(PrecomputedEmbeds(pv))
                    continue
                pp = positions[t_idx] if t_idx < len(positions) else None
                if not isinstance(pp, torch.Tensor):
                    raise ValueError(f"{where}: pixel values have no matching {position_attr}")
                if pv.dim() not in pixel_ranks:
                    raise ValueError(
                        f"{where}: pixel values must have rank {' or '.join(map(str, pixel_ranks))}"
                        f", got shape {tuple(pv.shape)}"
                    )
                if pv.shape[-1] != patch_pixels:
                    raise ValueError(
                        f"{where}: pixel values have {pv.shape[-1]} values per patch, expected "
                        f"{patch_pixels} (or {text_hidden_size} for a precomputed embedding)"
                    )
                if pv.shape[-2] == 0:
                    raise ValueError(
                        f"{where}: empty {unit} (0 patches; pixel values shape {tuple(pv.shape)})"
                    )
                if pv.numel() == 0:
                    raise ValueError(
                        f"{where}: no {unit}s in the "
                        + ("item" if len(features) == 1 else "tensor")
                        + f" (pixel values shape {tuple(pv.shape)})"
                    )
                if not pv.is_floating_point():
                    raise ValueError(f"{where}: pixel values must be floating point, got {pv.dtype}")
                if (
                    pp.dim() != pv.dim()
                    or tuple(pp.shape[:-1]) != tuple(pv.shape[:-1])
                    or pp.shape[-1] != 2
                ):
                    raise ValueError(
                        f"{where}: {position_attr} shape {tuple(pp.shape)} does not match pixel "
                        f"values shape {tuple(pv.shape)} (expected {tuple(pv.shape[:-1]) + (2,)})"
                    )
                if pp.is_floating_point() or pp.is_complex() or pp.dtype == torch.bool:
                    raise ValueError(f"{where}: {position_attr} must be integer, got {pp.dtype}")
                pv3 = pv.reshape(-1, pv.shape[-2], pv.shape[-1])
                pp3 = pp.reshape(-1, pp.shape[-2], 2)
                start = tokens
                for j in range(pv3.shape[0]):
                    sub = f"{where} {unit} {j}"
                    rows, pos, tok, ntok = _plan_segment(
                        pv3[j],
                        pp3[j],
                        k=pooling_kernel_size,
                        table_size=position_table_size,
                        where=sub,
                    )
                    plan.segments.append(VisionSegment(pv3[j], rows, pos, tok, ntok, tokens))
                    tokens += ntok
                pieces.append(EncodedTokens(start, tokens))
                if not any(pv is t for t in known_finite):
                    finite_checks.append((where, unit, pv3))
            except ValueError as exc:
                problems.append(str(exc))
        extra = len(positions) - len(features)
        if features and extra > 0 and any(isinstance(p, torch.Tensor) for p in positions[len(features):]):
            problems.append(
                f"{kind} item {item_idx}: {len(positions)} {position_attr} tensors for "
                f"{len(features)} pixel tensors"
            )
    if finite_checks:
        problems.extend(_non_finite_problems(finite_checks))
    if problems:
        raise ValueError(
            f"malformed Gemma-4 {kind} input ({len(problems)} problem(s); nothing was encoded): "
            + "; ".join(problems)
        )
    return plan


# ---------------------------------------------------------------------------
# Memory budget and tower calls
# ---------------------------------------------------------------------------


def encoder_bytes_per_token(
    vision_config: Any,
    act_dtype: torch.dtype,
    pixel_dtype: torch.dtype = torch.float32,
    *,
    attention_len: int = 0,
) -> int:
    """Peak transient bytes per patch token of one vision-tower call.

    Counted from the tower's geometry (hidden D, attention width A = heads x
    head_dim, KV width, MLP width I):
      * the residual stream, the normed layer input and the block output: 3 D;
      * the attention block, whichever is larger of attention and MLP: fused
        QKV output, the clamped/normed q/k/v, two RoPE temporaries for q and k,
        and the attention output: 4 (A + 2 A_kv) + 2 A;
      * the MLP block: fused gate/up (2 I), GELU(gate) and the product: 4 I;
      * float32 RoPE tables (angles, cos, sin and their cast: 4 head_dim);
      * packed pixels (source dtype and activation dtype) and the position /
        patch embeddings (2 D);
      * pooling: the float32 sum per patch (D) and the gathered rows (D);
      * ``attention_len`` > 0 adds the attention scores of a kernel that
        materialises them (the sdpa backend, whose math fallback holds float32
        scores of every head over that many keys: 4 x heads x attention_len).
        The fused varlen kernels (fa3, fa4, triton_attn) tile the scores and
        need no such term.
    """
    a = act_dtype.itemsize
    p = pixel_dtype.itemsize
    d = vision_config.hidden_size
    hd = vision_config.head_dim
    attn_w = vision_config.num_attention_heads * hd
    kv_w = getattr(vision_config, "num_key_value_heads", vision_config.num_attention_heads) * hd
    inter = vision_config.intermediate_size
    patch_pixels = 3 * vision_config.patch_size**2
    block = max(4 * (attn_w + 2 * kv_w) + 2 * attn_w, 4 * inter)
    act = a * (3 * d + block + 2 * d + d) + 4 * d
    rope = 4 * 4 * hd
    pixels = patch_pixels * (p + a)
    scores = 4 * vision_config.num_attention_heads * attention_len
    return int(act + rope + pixels + scores)


def configured_budget_bytes(budget_bytes: Optional[int] = None) -> int:
    """The explicit budget, else ``$SGLANG_GEMMA4_VISION_ENCODER_BUDGET_MB``
    (default 512 MiB)."""
    if budget_bytes is not None:
        return max(int(budget_bytes), 1)
    raw = os.environ.get(BUDGET_ENV, "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_BUDGET_MB
    except ValueError:
        raise ValueError(f"{BUDGET_ENV} must be a number of MiB, got {raw!r}") from None
    if mb <= 0:
        raise ValueError(f"{BUDGET_ENV} must be positive, got {raw!r}")
    return max(int(mb * (1 << 20)), 1)


def free_device_bytes(device: torch.device) -> Optional[int]:
    """Memory free on ``device`` right now (None where it is not a CUDA device)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def tower_tp_cpu_group():
    """The CPU (gloo) group of the ranks whose collectives the tower's
    row-parallel layers join (sglang's TP group), or None at TP size 1."""
    from sglang.srt.runtime_context import get_parallel

    try:
        group = get_parallel().tp_group
    except (RuntimeError, ValueError, AttributeError):
        return None
    if group is None or getattr(group, "world_size", 1) <= 1:
        return None
    return group.cpu_group


def agree_on_budget(budget_bytes: int, group) -> int:
    """The smallest budget of all ranks of ``group`` (a CPU process group; None
    = this rank alone).  Every rank of the tower's TP group must cut the same
    tower calls: the tower all-reduces in every layer, so one rank making an
    extra call would hang the others."""
    if group is None:
        return budget_bytes
    import torch.distributed as dist

    value = torch.tensor([budget_bytes], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return int(value.item())


def resolve_budget_bytes(
    device: torch.device,
    budget_bytes: Optional[int] = None,
    *,
    group=None,
) -> int:
    """The byte budget of one tower call, the same on every rank of ``group``:
    the configured budget (see ``configured_budget_bytes``), on CUDA never more
    than half of the memory free right now, then the minimum over ``group``."""
    budget = configured_budget_bytes(budget_bytes)
    free = free_device_bytes(device)
    if free is not None:
        budget = max(min(budget, free // 2), 1)
    return agree_on_budget(budget, group)


@dataclass(frozen=True)
class TowerCall:
    """One vision-tower call: segment indices, in order, and how they are fed."""

    segments: Tuple[int, ...]
    packed: bool  # one variable-length stream with cu_seqlens; else a [B, n] batch


def chunk_by_budget(
    lengths: Sequence[int], order: Sequence[int], max_tokens: int
) -> List[List[int]]:
    """Split ``order`` (segment indices) greedily into runs of at most
    ``max_tokens`` patches; a segment longer than that runs alone."""
    chunks: List[List[int]] = []
    cur: List[int] = []
    cur_len = 0
    for idx in order:
        n = lengths[idx]
        if cur and cur_len + n > max_tokens:
            chunks.append(cur)
            cur, cur_len = [], 0
        cur.append(idx)
        cur_len += n
    if cur:
        chunks.append(cur)
    return chunks


def plan_tower_calls(
    segments: Sequence[VisionSegment],
    *,
    varlen: bool,
    budget_bytes: int,
    vision_config: Any,
    act_dtype: torch.dtype,
    pixel_dtype: torch.dtype,
) -> List[TowerCall]:
    """Tower calls for ``segments`` under ``budget_bytes``.

    varlen: one packed stream, cut by the budget.  Otherwise: one group per
    distinct valid-patch count (no padding inside a group), each cut by the
    budget, which then also counts the attention scores of that length.
    """
    lengths = [s.num_valid for s in segments]
    if varlen:
        per_tok = encoder_bytes_per_token(vision_config, act_dtype, pixel_dtype)
        chunks = chunk_by_budget(lengths, range(len(segments)), max(budget_bytes // per_tok, 1))
        return [TowerCall(tuple(c), True) for c in chunks]
    groups: dict = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    calls = []
    for n, members in groups.items():
        per_tok = encoder_bytes_per_token(vision_config, act_dtype, pixel_dtype, attention_len=n)
        for c in chunk_by_budget(lengths, members, max(budget_bytes // per_tok, 1)):
            calls.append(TowerCall(tuple(c), False))
    return calls


def plan_encoder_calls(
    segments: Sequence[VisionSegment],
    *,
    vision_config: Any,
    backend: str,
    act_dtype: torch.dtype,
    device: torch.device,
    budget_bytes: Optional[int] = None,
    group=TOWER_TP_GROUP,
) -> List[TowerCall]:
    """The tower calls ``encode_segments`` makes: the budget agreed over
    ``group`` (default: the tower's TP group), then ``plan_tower_calls``."""
    if isinstance(group, str) and group == TOWER_TP_GROUP:
        group = tower_tp_cpu_group()
    budget = resolve_budget_bytes(device, budget_bytes, group=group)
    return plan_tower_calls(
        segments,
        varlen=backend in VARLEN_BACKENDS,
        budget_bytes=budget,
        vision_config=vision_config,
        act_dtype=act_dtype,
        pixel_dtype=segments[0].pixels.dtype,
    )


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def attention_backend_name(vision_tower) -> str:
    return getattr(vision_tower, "attention_backend", "")


def _gather_valid(seg: VisionSegment) -> torch.Tensor:
    if seg.valid_rows is None:
        return seg.pixels[: seg.num_valid]
    return seg.pixels.index_select(0, seg.valid_rows.to(seg.pixels.device))


def _pool_index(segs: Sequence[VisionSegment], k2: int) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """For one call: ``[tokens, k*k]`` rows of its output pooled into each of its
    soft tokens, the batch rows those soft tokens go to, and whether every cell
    is full.  Empty slots of partial cells point at one extra all-zero row
    (index = number of patches)."""
    num_patches = sum(s.num_valid for s in segs)
    local = torch.empty(num_patches, dtype=torch.int64)
    rows = []
    p0 = t0 = 0
    for s in segs:
        local[p0 : p0 + s.num_valid] = s.token_of_patch + t0
        rows.append(torch.arange(s.token_offset, s.token_stop))
        p0 += s.num_valid
        t0 += s.num_tokens
    counts = torch.bincount(local, minlength=t0)
    order = torch.argsort(local, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(num_patches) - starts[local[order]]
    index = torch.full((t0, k2), num_patches, dtype=torch.int64)
    index[local[order], slot] = order
    return index, torch.cat(rows), bool((counts == k2).all())


def _run_call(vision_tower, segs: Sequence[VisionSegment], call: TowerCall, device) -> torch.Tensor:
    """Last hidden state ``[patches, hidden]`` of one tower call."""
    pixels = torch.cat([_gather_valid(s) for s in segs], dim=0).to(device, non_blocking=True)
    positions = torch.cat([s.positions for s in segs], dim=0).to(device, non_blocking=True)
    if call.packed:
        lens = [s.num_valid for s in segs]
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0)
        out = vision_tower.forward_packed(
            pixels.unsqueeze(0),
            positions.unsqueeze(0),
            cu_seqlens=cu.to(device, non_blocking=True),
            max_seqlen=max(lens),
        )
    else:
        b, n = len(segs), segs[0].num_valid
        out = vision_tower.forward_packed(pixels.view(b, n, -1), positions.view(b, n, 2))
    return out.reshape(-1, out.shape[-1])


def encode_segments(
    vision_tower,
    segments: Sequence[VisionSegment],
    *,
    dtype: torch.dtype,
    budget_bytes: Optional[int] = None,
    group=TOWER_TP_GROUP,
) -> torch.Tensor:
    """Soft tokens (pooled, scaled, standardized; before ``embed_vision``) of
    all ``segments``, row ``VisionSegment.token_offset`` onwards for each."""
    device = vision_tower.device
    calls = plan_encoder_calls(
        segments,
        vision_config=vision_tower.config,
        backend=attention_backend_name(vision_tower),
        act_dtype=dtype,
        device=device,
        budget_bytes=budget_bytes,
        group=group,
    )
    k = vision_tower.pooling_kernel_size
    soft = None
    for call in calls:
        segs = [segments[i] for i in call.segments]
        out = _run_call(vision_tower, segs, call, device)
        index, rows, full = _pool_index(segs, k * k)
        if not full:
            out = torch.cat([out, out.new_zeros(1, out.shape[-1])], dim=0)
        # average in float32 as transformers does, rounded once to the tower dtype
        pooled = out[index.to(device, non_blocking=True)].sum(dim=1, dtype=torch.float32) / (k * k)
        tower_dtype = out.dtype
        del out
        if soft is None:
            total = segments[-1].token_stop
            soft = torch.empty(total, pooled.shape[-1], dtype=torch.float32, device=device)
        soft[rows.to(device, non_blocking=True)] = pooled.to(tower_dtype).float()
    # transformers scales and standardizes in float32, then casts back
    soft = soft * vision_tower.pooler.root_hidden_size
    if getattr(vision_tower, "standardize", False):
        soft = (soft - vision_tower.std_bias.float()) * vision_tower.std_scale.float()
    return soft.to(dtype)


def assemble(
    plan: VisionBatchPlan, embedded: Optional[torch.Tensor], device: torch.device
) -> List[torch.Tensor]:
    """One ``[tokens, hidden]`` tensor per item, in item order, each owning its
    storage: an item's encoded rows are copied out of the shared projection
    output unless the item takes all of it, and precomputed embeddings are
    always copied (they may be borrowed buffers, e.g. CUDA IPC handles)."""
    total = plan.num_tokens
    results = []
    for idx, pieces in enumerate(plan.items):
        if not pieces:
            raise ValueError(f"item {idx} has no pixel values or embeddings")
        if len(pieces) > 1:
            parts = [
                p.embeds.reshape(-1, p.embeds.shape[-1]).to(device)
                if isinstance(p, PrecomputedEmbeds)
                else embedded[p.token_start : p.token_stop]
                for p in pieces
            ]
            results.append(torch.cat(parts, dim=0))
            continue
        (piece,) = pieces
        if isinstance(piece, PrecomputedEmbeds):
            emb = piece.embeds
            results.append(emb.reshape(-1, emb.shape[-1]).to(device, copy=True))
        elif piece.token_stop - piece.token_start == total:
            results.append(embedded)
        else:
            results.append(embedded[piece.token_start : piece.token_stop].clone())
    return results


def encode_vision_items(
    items: Sequence[Any],
    *,
    kind: str,
    vision_tower,
    embed_vision,
    text_hidden_size: int,
    dtype: torch.dtype,
    budget_bytes: Optional[int] = None,
    group=TOWER_TP_GROUP,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Encode ``items`` (MultimodalDataItem-like: ``.feature`` and the positions
    named by ``POSITION_ATTR[kind]``) into one embedding tensor per item.

    Returns a list of ``[tokens_i, text_hidden]`` tensors in item order, or a
    ``(0, text_hidden)`` tensor when ``items`` is empty.  ``group`` is the
    process group the chunk budget is agreed on (default: the tower's TP group).
    """
    device = vision_tower.device
    if not items:
        return torch.empty(0, text_hidden_size, device=device, dtype=dtype)
    cfg = vision_tower.config
    plan = plan_items(
        items,
        kind=kind,
        text_hidden_size=text_hidden_size,
        patch_pixels=3 * cfg.patch_size**2,
        pooling_kernel_size=cfg.pooling_kernel_size,
        position_table_size=cfg.position_embedding_size,
    )
    embedded = None
    if plan.segments:
        soft = encode_segments(
            vision_tower, plan.segments, dtype=dtype, budget_bytes=budget_bytes, group=group
        )
        embedded = embed_vision(inputs_embeds=soft)
    return assemble(plan, embedded, device)
