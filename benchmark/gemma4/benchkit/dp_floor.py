"""decode_profile's floor arithmetic: a Gemma-4 config's layer geometry, and the bytes and FLOPs one decode
step must move per kernel family (the floor at a bandwidth and a peak)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

from benchkit.dp_families import FAMILIES

# H200 figures this workplace measured (see the device notes, KINDS.md): a device-to-device copy moved about
# 4.3 TB/s counting bytes read plus bytes written; an 8192^3 bf16 matrix product ran at about 790 TFLOP/s.
H200_COPY_BYTES_PER_S = 4.3e12
H200_BF16_FLOP_PER_S = 790e12
BF16 = 2
FP32 = 4
INT32 = 4


@dataclasses.dataclass(frozen=True)
class LayerGeom:
    index: int
    full: bool  # full (global) attention, else sliding window
    head_dim: int
    n_q: int
    n_kv: int
    kv_shared: bool  # reads another layer's KV cache, owns none (E2B/E4B last layers)
    owner: int  # the layer whose KV cache it reads (itself when not shared)
    k_eq_v: bool  # V projection is K's (no v_proj weight): 26B-A4B / 31B full layers
    mlp_intermediate: int


@dataclasses.dataclass(frozen=True)
class ModelGeom:
    name: str
    hidden: int
    vocab: int
    window: int
    layers: Tuple[LayerGeom, ...]
    ple_dim: int  # hidden_size_per_layer_input, 0 = no per-layer embeddings
    moe_experts: int  # 0 = no MoE block
    moe_top_k: int
    moe_intermediate: int
    layer_types: Tuple[str, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _req(t: Dict[str, Any], key: str, name: str) -> Any:
    v = t.get(key)
    if v is None:
        raise ValueError(f"{name}: the config has no text_config.{key}, which the decode floor needs")
    return v


def geometry(cfg: Dict[str, Any], name: str = "model") -> ModelGeom:
    """Per-layer decode geometry from a Gemma-4 config.json (top level with text_config, or a text config)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{name}: config must be a JSON object, found {type(cfg).__name__}")
    t = cfg.get("text_config", cfg)
    hidden = int(_req(t, "hidden_size", name))
    n_layers = int(_req(t, "num_hidden_layers", name))
    types = list(_req(t, "layer_types", name))
    if len(types) != n_layers:
        raise ValueError(f"{name}: layer_types has {len(types)} entries for {n_layers} layers")
    bad = sorted({x for x in types if x not in ("full_attention", "sliding_attention")})
    if bad:
        raise ValueError(f"{name}: unknown layer type(s) {bad} in layer_types")
    n_q = int(_req(t, "num_attention_heads", name))
    n_kv = int(_req(t, "num_key_value_heads", name))
    d_sliding = int(_req(t, "head_dim", name))
    d_full = int(t.get("global_head_dim") or d_sliding)
    n_kv_full = int(t.get("num_global_key_value_heads") or n_kv)
    k_eq_v = bool(t.get("attention_k_eq_v"))
    shared = int(t.get("num_kv_shared_layers") or 0)
    first_shared = n_layers - shared
    inter = int(_req(t, "intermediate_size", name))
    double_wide = bool(t.get("use_double_wide_mlp"))
    vocab = int(_req(t, "vocab_size", name))
    window = int(_req(t, "sliding_window", name))
    ple = int(t.get("hidden_size_per_layer_input") or 0)
    if t.get("enable_moe_block"):
        experts = int(_req(t, "num_experts", name))
        top_k = int(_req(t, "top_k_experts", name))
        moe_inter = int(_req(t, "moe_intermediate_size", name))
        if not 0 < top_k <= experts:
            raise ValueError(f"{name}: top_k_experts={top_k} must be in 1..num_experts={experts}")
    else:
        experts = top_k = moe_inter = 0
    layers = []
    for i, lt in enumerate(types):
        full = lt == "full_attention"
        is_shared = shared > 0 and i >= first_shared
        owner = i
        if is_shared:
            owners = [j for j in range(first_shared) if types[j] == lt]
            if not owners:
                raise ValueError(f"{name}: KV-shared layer {i} ({lt}) has no earlier {lt} layer to read from")
            owner = owners[-1]
        layers.append(LayerGeom(
            index=i, full=full, head_dim=d_full if full else d_sliding, n_q=n_q,
            n_kv=n_kv_full if full else n_kv, kv_shared=is_shared, owner=owner, k_eq_v=k_eq_v and full,
            mlp_intermediate=inter * (2 if double_wide and is_shared else 1),
        ))
    return ModelGeom(name=name, hidden=hidden, vocab=vocab, window=window, layers=tuple(layers), ple_dim=ple,
                     moe_experts=experts, moe_top_k=top_k, moe_intermediate=moe_inter, layer_types=tuple(types))


def load_geometry(path: str, name: Optional[str] = None) -> ModelGeom:
    """`path` is a config.json or a directory holding one."""
    f = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(f):
        raise ValueError(f"no config.json at {path}")
    with open(f, encoding="utf-8") as fh:
        try:
            cfg = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not valid JSON: {e}") from None
    return geometry(cfg, name or os.path.basename(os.path.dirname(os.path.abspath(f))))


def expected_distinct_experts(experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts that b tokens touch when each picks top_k of E uniformly at
    random: each expert is missed by one token with probability 1 - k/E, by all b with (1 - k/E)^b."""
    if experts <= 0 or tokens <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


@dataclasses.dataclass
class Cost:
    weight: float = 0.0  # bytes of parameters (and embedding-table rows) a step must read
    kv: float = 0.0  # bytes of KV cache a step must read
    act: float = 0.0  # bytes of activations read and written (see floor_method)
    flops: float = 0.0
    extra: float = 0.0  # bytes 0.5.23 reads beyond `weight` (not part of the floor)

    def add(self, other: "Cost") -> "Cost":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def bytes(self) -> float:
        return self.weight + self.kv + self.act


def _gemm(b: int, k: int, n: int, out_bytes: int = BF16) -> Cost:
    """A [b, k] x [k, n] bf16 GEMM: weights read once, input read once, output written once."""
    return Cost(weight=k * n * BF16, act=b * k * BF16 + b * n * out_bytes, flops=2.0 * b * k * n)


def _norm(b: int, width: int, weighted: bool = True) -> Cost:
    """One RMSNorm pass over b rows of `width`: reads and writes each row once, reads its weight.  Its FLOPs
    (a few per element, on CUDA cores) are not counted: FLOPs here are tensor-core matrix work."""
    return Cost(weight=width * BF16 if weighted else 0, act=2 * b * width * BF16)


def layer_floor(geom: ModelGeom, layer: LayerGeom, batch: int, context: int) -> Dict[str, Cost]:
    """Bytes and FLOPs one decode step of `batch` tokens spends in one decoder layer, per family.

    context = tokens in each request's KV cache at this step, the new token included."""
    b, h, d = batch, geom.hidden, layer.head_dim
    q_width, kv_width = layer.n_q * d, layer.n_kv * d
    fam: Dict[str, Cost] = {f: Cost() for f in ("attn_full", "attn_sliding", "attn_proj", "attn_aux", "mlp",
                                                 "moe_experts", "router", "norms", "ple_tail")}
    # projections: q and o always; k and v only where the layer computes its own KV; no v_proj when K = V
    needs_k = not layer.kv_shared
    needs_v = needs_k and not layer.k_eq_v
    qkv_out = q_width + (kv_width if needs_k else 0) + (kv_width if needs_v else 0)
    proj = _gemm(b, h, qkv_out)
    proj.add(_gemm(b, q_width, h))
    # 0.5.23 computes the full fused QKV on KV-shared layers too (k, v discarded), and loads K into a V shard
    # on K = V layers; those weights are read every step although no result needs them
    proj.extra = (2 * h * kv_width * BF16 if layer.kv_shared else 0) + (
        h * kv_width * BF16 if layer.k_eq_v and needs_k else 0)
    fam["attn_proj"] = proj
    # attention core: every layer reads the K and V of its (owner's) cache; full layers all context tokens,
    # sliding layers the window (the new token included).  K and V are both stored also when K = V (V is
    # v_norm(k) without RoPE, K is k_norm(k) with RoPE)
    tokens = context if layer.full else min(context, geom.window)
    core = Cost(kv=b * tokens * layer.n_kv * (d + d) * BF16, act=2 * b * q_width * BF16,
                flops=2.0 * b * layer.n_q * tokens * (d + d))
    fam["attn_full" if layer.full else "attn_sliding"] = core
    # RoPE on q (and k), KV-cache write of the new token
    aux = Cost(act=2 * b * (q_width + (kv_width if needs_k else 0)) * BF16)
    if needs_k:
        aux.act += b * kv_width * 2 * BF16
    fam["attn_aux"] = aux
    # norms: input, post-attention, pre-FF, post-FF (+ the three extra of the MoE block); q, k, v norms
    norms = Cost()
    hidden_norms = 4 + (3 if geom.moe_experts else 0)
    for _ in range(hidden_norms):
        norms.add(_norm(b, h))
    norms.add(_norm(b, q_width, weighted=False))
    norms.weight += d * BF16  # q_norm weight (one head_dim vector)
    if needs_k:
        norms.add(_norm(b, kv_width, weighted=False))  # k_norm
        norms.weight += d * BF16
        norms.add(_norm(b, kv_width, weighted=False))  # v_norm (no weight)
    fam["norms"] = norms
    # dense MLP (double-wide on E2B's KV-shared layers)
    inter = layer.mlp_intermediate
    mlp = _gemm(b, h, 2 * inter)
    mlp.add(Cost(act=b * 2 * inter * BF16 + b * inter * BF16))  # GELU-tanh and mul
    mlp.add(_gemm(b, inter, h))
    fam["mlp"] = mlp
    if geom.moe_experts:
        e, k, mi = geom.moe_experts, geom.moe_top_k, geom.moe_intermediate
        touched = expected_distinct_experts(e, k, b)
        rows = b * k  # token-expert pairs
        moe = Cost(weight=touched * 3 * h * mi * BF16,
                   act=(rows * h + rows * 2 * mi) * BF16  # w13: gathered input in, gate_up out
                   + (rows * 2 * mi + rows * mi) * BF16  # activation
                   + (rows * mi + rows * h) * BF16  # w2
                   + (rows * h + b * h) * BF16,  # weighted sum over the k experts
                   flops=2.0 * rows * 3 * h * mi)
        fam["moe_experts"] = moe
        router = _norm(b, h)  # router RMSNorm (scale folded into its weight)
        router.add(_gemm(b, h, e))
        router.add(Cost(weight=e * BF16, act=b * e * BF16 + b * k * (FP32 + INT32)))  # top-k, per-expert scale
        fam["router"] = router
    if geom.ple_dim:
        p = geom.ple_dim
        tail = _gemm(b, h, p)  # per_layer_input_gate
        tail.add(Cost(act=2 * b * p * BF16 + 3 * b * p * BF16))  # GELU; gate * per-layer input
        tail.add(_gemm(b, p, h))  # per_layer_projection
        tail.add(_norm(b, h))  # post_per_layer_input_norm
        tail.add(Cost(act=3 * b * h * BF16 * 2))  # + residual, + contribution, * layer_scalar
        fam["ple_tail"] = tail
    return fam


def model_floor(geom: ModelGeom, batch: int, context: int, bw: float = H200_COPY_BYTES_PER_S,
                peak: float = H200_BF16_FLOP_PER_S) -> Dict[str, Any]:
    """Per-family bytes, FLOPs and floor time of one decode step of `batch` requests of `context` tokens."""
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if context <= 0:
        raise ValueError(f"context must be positive, got {context}")
    b, h, v = batch, geom.hidden, geom.vocab
    fam: Dict[str, Cost] = {f: Cost() for f in FAMILIES}
    for layer in geom.layers:
        for f, c in layer_floor(geom, layer, b, context).items():
            fam[f].add(c)
    fam["norms"].add(_norm(b, h))  # final norm
    fam["embed"] = Cost(weight=b * h * BF16, act=b * h * BF16 * 3)  # rows touched; scale multiply
    if geom.ple_dim:
        lp = geom.num_layers * geom.ple_dim
        entry = Cost(weight=b * lp * BF16, act=b * lp * BF16 * 2)  # PLE table rows touched (+ their scale)
        entry.add(_gemm(b, h, lp))  # per_layer_model_projection
        entry.add(_norm(b, lp))  # per_layer_projection_norm (per 256-wide row; same bytes)
        entry.add(Cost(act=3 * b * lp * BF16))  # (projection + per-layer input) * 1/sqrt(2)
        fam["ple_entry"] = entry
    fam["lm_head"] = _gemm(b, h, v, out_bytes=FP32)  # tied embedding as LM head; fp32 logits
    fam["lm_head"].act += 2 * b * v * FP32  # soft-cap pass
    fam["sampling"] = Cost(act=b * v * FP32 + b * 8)
    out: Dict[str, Any] = {"batch": b, "context": context, "families": {}}
    tot = Cost()
    for f in FAMILIES:
        c = fam[f]
        tot.add(c)
        if c.bytes == 0 and c.flops == 0 and c.extra == 0:
            continue
        out["families"][f] = _cost_dict(c, bw, peak)
    out["totals"] = _cost_dict(tot, bw, peak)
    out["totals"]["sum_of_family_floors_us"] = sum(x["floor_us"] for x in out["families"].values())
    if geom.moe_experts:
        out["moe_distinct_experts"] = expected_distinct_experts(geom.moe_experts, geom.moe_top_k, b)
    return out


def _cost_dict(c: Cost, bw: float, peak: float) -> Dict[str, float]:
    """floor_us: weights + KV from HBM, or the FLOPs, whichever takes longer.  Activations are kept apart:
    a layer's intermediates are a few MB and mostly live in the 60 MB L2 between producer and consumer, and
    a fused implementation never writes most of them, so they are no part of the floor;
    floor_unfused_us is the floor if every activation went through HBM once."""
    t_mem = (c.weight + c.kv) / bw * 1e6
    t_unfused = c.bytes / bw * 1e6
    t_flop = c.flops / peak * 1e6
    return {"weight_bytes": c.weight, "kv_bytes": c.kv, "floor_bytes": c.weight + c.kv, "act_bytes": c.act,
            "flops": c.flops, "engine_extra_bytes": c.extra, "mem_us": t_mem, "flop_us": t_flop,
            "floor_us": max(t_mem, t_flop), "floor_unfused_us": max(t_unfused, t_flop)}


def parameter_counts(geom: ModelGeom) -> Dict[str, float]:
    """Parameters a decode step reads whole (independent of batch): for the issue check."""
    h = geom.hidden
    attn = mlp = attn_extra = ple = 0.0
    for layer in geom.layers:
        qw, kvw = layer.n_q * layer.head_dim, layer.n_kv * layer.head_dim
        attn += 2 * h * qw
        if not layer.kv_shared:
            attn += h * kvw * (1 if layer.k_eq_v else 2)
        attn_extra += (2 * h * kvw if layer.kv_shared else 0) + (h * kvw if layer.k_eq_v and not layer.kv_shared else 0)
        mlp += 3 * h * layer.mlp_intermediate
        if geom.ple_dim:
            ple += 2 * h * geom.ple_dim
    if geom.ple_dim:
        ple += h * geom.num_layers * geom.ple_dim
    experts = geom.num_layers * geom.moe_experts * 3 * h * geom.moe_intermediate
    return {"attention": attn, "attention_engine_extra": attn_extra, "mlp": mlp, "ple": ple,
            "lm_head": float(geom.vocab * h), "moe_experts_all": float(experts),
            "router": float(geom.num_layers * h * geom.moe_experts)}
