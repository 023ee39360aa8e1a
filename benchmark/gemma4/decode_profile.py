"""Gemma-4 text decode: measured device time per kernel family against each family's byte / FLOP floor.

Four subcommands, one file:

    floor     CPU.  Bytes and FLOPs one decode step must move, per kernel family, from the config files in
              benchmark/gemma4/configs; writes decode_floor.md / .json (the committed arithmetic).
    run       GPU.  The real engine's decode step (sglang 0.5.23, stock or patched, whichever the interpreter
              has installed), CUDA graphs on, at 1 / 16 / 80 running requests with ~1500-token contexts,
              profiled with torch.profiler; device time per kernel family per step, next to that family's
              floor at the measured context.  Writes JSON + markdown (+ the compact event list, so `analyze`
              can redo the attribution on a CPU).
    analyze   CPU.  Redo the attribution of a `run` from its saved events.
    selfcheck GPU.  A 5 s check that torch.profiler reports the kernels inside a CUDA-graph replay and that
              this file attributes them to steps (the assumption everything above rests on).

Why the engine is driven through sglang.benchmark.one_batch (0.5.23's bench_one_batch: the module moved there
from sglang/bench_one_batch.py; only bench_one_batch_server.py is left at the top) and not a server's
/start_profile:
* one_batch builds the same ModelRunner a server's scheduler builds (weights, KV pools, attention backends,
  CUDA graphs captured for the batch sizes asked for) and calls the same extend / decode / sample code, in
  this process, with no scheduler, tokenizer or HTTP process.  `run` calls one_batch's own `main` (so its
  server-argument resolution and CUDA-graph sizing are the engine's, not a copy) with its worker function
  replaced by ours, and ours calls one_batch's load_model / extend / decode.
* The batch is exact: every step has exactly b running requests of known context.  Under /start_profile the
  running batch changes from step to step, prefill batches of arriving requests land inside the profile
  window, and the overlap scheduler's CPU work interleaves; a family's time per step would have to be
  untangled from all that.
* Module names are reachable: one extra *eager* decode step is profiled with a record_function range around
  every module's forward, which names the module of every kernel.  Kernels replayed from a CUDA graph carry
  no CPU ranges, so each graph step's kernel sequence is aligned by name with the eager step's (difflib) and
  takes its module labels from it.  A server process cannot be hooked like that.
* Cost: one model load and one graph capture for all three batch sizes; one_batch's own `--profile` option
  only dumps a trace and a key_averages table, with no module attribution.

Kernel family = classify(kernel name, module label, phase), an ordered rule table (RULES below, printed in
every result) that the tests check against real kernel names of the installed sglang / sgl_kernel.
Attention kernels are split into full / sliding layers by the layer index in their module label, or, where a
kernel has no label, by their order in the step (the k-th decode-attention launch of a step is layer k).

Usage (repository root of a copy of the project, GPU machine):

    /tmp/py-patched benchmark/gemma4/make_model_dir.py dir e2b /tmp/models/e2b
    /tmp/py-patched benchmark/gemma4/decode_profile.py selfcheck
    /tmp/py-upstream benchmark/gemma4/decode_profile.py run --model /tmp/models/e2b --out /tmp/res
    /tmp/py-patched  benchmark/gemma4/decode_profile.py run --model /tmp/models/e2b --out /tmp/res
    python3 benchmark/gemma4/decode_profile.py floor            # CPU, writes benchmark/gemma4/results/decode_floor.*

Only the standard library is needed for `floor` and `analyze`; `run` and `selfcheck` need torch and sglang.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import gzip
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIGS_DIR = os.path.join(HERE, "configs")
RESULTS_DIR = os.path.join(HERE, "results")

# H200 figures this workplace measured (see the device notes, KINDS.md): a device-to-device copy moved about
# 4.3 TB/s counting bytes read plus bytes written; an 8192^3 bf16 matrix product ran at about 790 TFLOP/s.
H200_COPY_BYTES_PER_S = 4.3e12
H200_BF16_FLOP_PER_S = 790e12
BF16 = 2
FP32 = 4
INT32 = 4

DEFAULT_BATCH_SIZES = (1, 16, 80)
DEFAULT_CONTEXT = 1500
FLOOR_MODELS = ("e2b", "26b-a4b", "e4b", "31b")

# The kernel families, in report order.  attn_core kernels are split into attn_full / attn_sliding.
FAMILIES = (
    "attn_full", "attn_sliding", "attn_proj", "attn_aux", "mlp", "moe_experts", "router", "norms",
    "ple_tail", "ple_entry", "embed", "lm_head", "sampling", "gemm_unattributed", "attn_unassigned", "other",
)
FAMILY_DOC = {
    "attn_full": "decode-attention kernels of full-attention layers (global, head_dim 512): read K and V of "
                 "every context token",
    "attn_sliding": "decode-attention kernels of sliding-window layers (head_dim 256): read K and V of the window",
    "attn_proj": "q/k/v and o projection GEMMs",
    "attn_aux": "rotary embedding, KV-cache write, other ops of the attention block (dummy K of KV-shared layers)",
    "mlp": "dense MLP: gate_up GEMM, GELU-and-mul, down GEMM",
    "moe_experts": "MoE experts: token sort / align, the fused expert GEMMs, activation, weighted sum",
    "router": "MoE router: router RMSNorm, router GEMM, top-k routing kernel",
    "norms": "RMSNorms of the residual stream and q/k/v norms (fused or not)",
    "ple_tail": "per-layer-embedding tail of each decoder layer (E2B/E4B): gate GEMM, GELU, mul, projection "
                "GEMM, norm, adds, layer scalar",
    "ple_entry": "per-layer-embedding inputs at the model entry: PLE table rows, model projection GEMM, its norm",
    "embed": "token embedding lookup (and its scale)",
    "lm_head": "LM head GEMM (tied embedding), logit soft-cap and logits processing",
    "sampling": "sampling kernels (outside the CUDA graph; pytorch sampling backend)",
    "gemm_unattributed": "GEMM kernels with no module label (only when the eager template did not align)",
    "attn_unassigned": "decode-attention kernels that could not be given a layer",
    "other": "everything else: host-to-device batch copies, attention metadata, graph-replay input copies, "
             "unlabelled elementwise",
}

# --------------------------------------------------------------------------------------------------------
# Kernel name -> family.  Ordered; the first rule whose every given pattern matches wins.
#   phase: the step phase the kernel ran in (prepare / forward / sample)
#   label: the module whose forward launched it (qualified name inside the model), "" when none
#   name:  the kernel name as torch.profiler reports it (demangled CUDA name or Triton function name)
# --------------------------------------------------------------------------------------------------------
ATTN_PRIMARY = r"_fwd_(grouped_)?kernel_stage1|_lean_attention_decode_kernel"
ATTN_SECONDARY = r"_fwd_kernel_stage2"
ATTN_CORE = ATTN_PRIMARY + "|" + ATTN_SECONDARY
NORM_NAME = r"rms_?norm|RMSNorm|layer_?norm|LayerNorm"
GEMM_NAME = r"nvjet|gemm|gemv|cutlass|xmma|splitKreduce|cublas|matmul"

RULES: Tuple[Tuple[str, Dict[str, str]], ...] = (
    ("sampling", {"phase": r"^sample$"}),
    ("other", {"phase": r"^prepare$"}),
    # names that say what they are, whatever launched them
    ("attn_core", {"name": ATTN_CORE}),
    ("router", {"name": r"gemma4?_routing"}),
    ("moe_experts", {"name": r"fused_moe_kernel|moe_align_block_size|count_and_sort_expert_tokens|moe_sum_reduce"}),
    # module labels
    ("router", {"label": r"(^|\.)router(\.|$)|(^|\.)moe\.topk(\.|$)"}),
    ("moe_experts", {"label": r"(^|\.)moe(\.|$)"}),
    ("mlp", {"label": r"(^|\.)mlp(\.|$)"}),
    ("attn_proj", {"label": r"(^|\.)self_attn\.(qkv_proj|o_proj|q_proj|k_proj|v_proj)(\.|$)"}),
    ("ple_tail", {"label": r"(^|\.)layers\.\d+\."
                           r"(per_layer_input_gate|per_layer_projection|post_per_layer_input_norm)(\.|$)"}),
    ("ple_entry", {"label": r"(^|\.)"
                            r"(embed_tokens_per_layer|per_layer_model_projection|per_layer_projection_norm)(\.|$)"}),
    ("lm_head", {"label": r"(^|\.)(logits_processor|lm_head)(\.|$)"}),
    ("embed", {"label": r"(^|\.)embed_tokens$"}),
    ("norms", {"name": NORM_NAME}),
    ("norms", {"label": r"(layernorm(_\d+)?|(^|\.)norm|_norm)$"}),
    ("attn_aux", {"label": r"(^|\.)self_attn(\.|$)"}),
    # the decoder layer's own body (no submodule): the PLE tail on E2B/E4B (gemma4_causal.py's non-fused path)
    ("ple_tail", {"label": r"(^|\.)layers\.\d+$", "ple": r"^1$"}),
    # no module label: fall back on names
    ("attn_aux", {"label": r"^$", "name": r"rotary|rope|RoPE|set_kv_buffer|store_kv|store_cache|kv_cache_store"}),
    ("gemm_unattributed", {"label": r"^$", "name": GEMM_NAME}),
    ("other", {}),
)
_RULES_COMPILED = [(fam, {k: re.compile(v) for k, v in pats.items()}) for fam, pats in RULES]
_ATTN_PRIMARY_RE = re.compile(ATTN_PRIMARY)
_ATTN_CORE_RE = re.compile(ATTN_CORE)
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")
_LAYER_SUB = re.compile(r"(^|\.)layers\.\d+")


def classify(name: str, label: Optional[str] = None, phase: Optional[str] = None, has_ple: bool = False) -> str:
    """The family of one kernel (see RULES).  attn_core is returned for decode-attention kernels; the caller
    splits it by layer type (attention_family)."""
    fields = {"name": name or "", "label": label or "", "phase": phase or "", "ple": "1" if has_ple else "0"}
    for fam, pats in _RULES_COMPILED:
        if all(p.search(fields[k]) for k, p in pats.items()):
            return fam
    return "other"  # unreachable: the last rule matches everything


def layer_of_label(label: Optional[str]) -> Optional[int]:
    m = _LAYER_RE.search(label or "")
    return int(m.group(1)) if m else None


def attention_family(layer: Optional[int], layer_types: Sequence[str]) -> str:
    if layer is None or not 0 <= layer < len(layer_types):
        return "attn_unassigned"
    return "attn_full" if layer_types[layer] == "full_attention" else "attn_sliding"


# --------------------------------------------------------------------------------------------------------
# Geometry and the floor arithmetic
# --------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------
# Traces: torch.profiler's chrome trace -> a compact event list -> kernels with step, phase and module label
# --------------------------------------------------------------------------------------------------------
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
STEP_PREFIX = "dp:step#"
PHASE_PREFIX = "dp:"
MODULE_PREFIX = "mod:"


def compact_trace(obj: Dict[str, Any]) -> Dict[str, Any]:
    """Keep what the attribution needs from a chrome trace (a dict with traceEvents): GPU activities, the CPU
    launch events they correlate with, and our record_function ranges (dp:..., mod:...)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("traceEvents"), list):
        raise ValueError("not a chrome trace: expected an object with a traceEvents list")
    names: Dict[str, int] = {}
    kernels, launches, ranges = [], {}, []
    for e in obj["traceEvents"]:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat, args = e.get("cat"), e.get("args") or {}
        if cat in GPU_CATS:
            n = str(e.get("name", ""))
            idx = names.setdefault(n, len(names))
            kernels.append([idx, float(e["ts"]), float(e.get("dur", 0.0)), args.get("correlation"), args.get("stream")])
        elif cat in LAUNCH_CATS and args.get("correlation") is not None:
            launches[int(args["correlation"])] = [float(e["ts"]), e.get("tid")]
        elif cat == "user_annotation":
            n = str(e.get("name", ""))
            if n.startswith(PHASE_PREFIX) or n.startswith(MODULE_PREFIX):
                ranges.append([n, float(e["ts"]), float(e.get("dur", 0.0)), e.get("tid")])
    used = {k[3] for k in kernels if k[3] is not None}
    launches = {c: v for c, v in launches.items() if c in used}
    return {"names": sorted(names, key=names.get), "kernels": kernels,
            "launches": {str(c): v for c, v in launches.items()}, "ranges": ranges}


def _innermost(ranges: List[Tuple[float, float, str]], points: List[float]) -> List[Optional[str]]:
    """For each point (time), the name of the innermost range containing it; ranges must nest."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    rs = sorted(ranges, key=lambda r: (r[0], -r[1]))
    out: List[Optional[str]] = [None] * len(points)
    stack: List[Tuple[float, float, str]] = []
    j = 0
    for i in order:
        t = points[i]
        while j < len(rs) and rs[j][0] <= t:
            while stack and stack[-1][1] < rs[j][0]:
                stack.pop()
            stack.append(rs[j])
            j += 1
        while stack and stack[-1][1] < t:
            stack.pop()
        out[i] = stack[-1][2] if stack else None
    return out


@dataclasses.dataclass
class KernelRec:
    name: str
    ts: float
    dur: float
    step: Optional[int]
    phase: Optional[str]
    label: Optional[str]  # module qualified name ("<root>" for the model itself), None when no module range


def annotate(trace: Dict[str, Any]) -> List[KernelRec]:
    """Each GPU activity with its step, phase and module label, in GPU time order.

    The CPU time that places a kernel is its launch call's (found by correlation id; a kernel replayed from a
    CUDA graph correlates with the cudaGraphLaunch); a kernel whose launch is missing is placed by its own
    start time (the steps synchronise at every phase end, so a kernel runs inside its phase's CPU range)."""
    names = trace["names"]
    launches = {int(c): v for c, v in trace["launches"].items()}
    by_kind: Dict[str, Dict[Any, List[Tuple[float, float, str]]]] = {"step": {}, "phase": {}, "mod": {}}
    for n, ts, dur, tid in trace["ranges"]:
        if n.startswith(STEP_PREFIX):
            kind, val = "step", n[len(STEP_PREFIX):]
        elif n.startswith(MODULE_PREFIX):
            kind, val = "mod", n[len(MODULE_PREFIX):]
        else:
            kind, val = "phase", n[len(PHASE_PREFIX):]
        by_kind[kind].setdefault(tid, []).append((ts, ts + dur, val))

    def lookup(kind: str, pts: List[Tuple[float, Any]], any_thread: bool) -> List[Optional[str]]:
        res: List[Optional[str]] = [None] * len(pts)
        groups: Dict[Any, List[int]] = {}
        for i, (_, tid) in enumerate(pts):
            groups.setdefault(None if any_thread else tid, []).append(i)
        for tid, idxs in groups.items():
            rs = [r for rl in by_kind[kind].values() for r in rl] if tid is None else by_kind[kind].get(tid, [])
            if not rs:
                continue
            for i, v in zip(idxs, _innermost(rs, [pts[i][0] for i in idxs])):
                res[i] = v
        return res

    ks = sorted(trace["kernels"], key=lambda k: k[1])
    at_launch: List[Tuple[float, Any]] = []
    has_launch: List[bool] = []
    for k in ks:
        lau = launches.get(int(k[3])) if k[3] is not None else None
        has_launch.append(lau is not None)
        at_launch.append((lau[0], lau[1]) if lau else (k[1], None))
    step_l = lookup("step", at_launch, any_thread=True)
    phase_l = lookup("phase", at_launch, any_thread=True)
    mod_l = lookup("mod", at_launch, any_thread=False)
    out = []
    for i, k in enumerate(ks):
        step = int(step_l[i]) if step_l[i] is not None and step_l[i].isdigit() else None
        label = mod_l[i] if has_launch[i] else None  # "<root>" for the model's own forward body
        out.append(KernelRec(names[k[0]], k[1], k[2], step, phase_l[i], label))
    return out


def template_from(kernels: List[KernelRec]) -> List[Tuple[str, Optional[str]]]:
    """(name, module label) of the forward-phase kernels of a labelled (eager) step, in GPU order."""
    return [(k.name, k.label) for k in kernels if k.phase == "forward"]


def align_labels(template: List[Tuple[str, Optional[str]]], names: List[str]) -> Tuple[List[Optional[str]], int]:
    """Module labels for a kernel-name sequence, taken from the template where the sequences align:
    equal runs map one to one, equal-length replaced runs (same op, another kernel variant) map position by
    position.  Returns the labels (None where unmatched) and how many kernels got one."""
    ids: Dict[str, int] = {}
    a = [ids.setdefault(n, len(ids)) for n, _ in template]
    b = [ids.setdefault(n, len(ids)) for n in names]
    labels: List[Optional[str]] = [None] * len(names)
    matched = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for di in range(j2 - j1):
                labels[j1 + di] = template[i1 + di][1]
                matched += 1
    return labels, matched


def attribute(graph_kernels: List[KernelRec], template: Optional[List[Tuple[str, Optional[str]]]],
              layer_types: Sequence[str], has_ple: bool) -> Dict[str, Any]:
    """Family of every kernel of the profiled graph steps; per-step totals per family."""
    steps: Dict[int, List[KernelRec]] = {}
    unplaced_us = 0.0
    for k in graph_kernels:
        if k.step is None:
            unplaced_us += k.dur
        else:
            steps.setdefault(k.step, []).append(k)
    if not steps:
        raise ValueError("no kernel of the profile lies inside a dp:step range: the profiler recorded no GPU "
                         "activity for the decode steps (is CUPTI available, did the steps run on the GPU?)")
    per_step: Dict[int, Dict[str, List[float]]] = {}
    kernel_rows: Dict[Tuple[str, str, str], List[float]] = {}
    align = {"template_forward_kernels": len(template or []), "forward_kernels": 0, "labelled": 0,
             "labelled_us": 0.0, "forward_us": 0.0}
    attn_by = {"label": 0, "order": 0}
    for s, ks in sorted(steps.items()):
        ks.sort(key=lambda k: k.ts)
        fwd = [k for k in ks if k.phase == "forward"]
        labels: Dict[int, Optional[str]] = {}
        if template:
            lab, _ = align_labels(template, [k.name for k in fwd])
            labels = {id(k): lab[i] for i, k in enumerate(fwd)}
        acc: Dict[str, List[float]] = {}
        primaries = 0
        for k in ks:
            label = labels.get(id(k)) if k.phase == "forward" else k.label
            if k.phase == "forward":
                align["forward_kernels"] += 1
                align["forward_us"] += k.dur
                if label is not None:
                    align["labelled"] += 1
                    align["labelled_us"] += k.dur
            fam = classify(k.name, label, k.phase, has_ple)
            if fam == "attn_core":
                is_primary = bool(_ATTN_PRIMARY_RE.search(k.name))
                layer = layer_of_label(label)
                if layer is not None:
                    attn_by["label"] += 1
                else:
                    layer = primaries if is_primary else primaries - 1
                    attn_by["order"] += 1
                if is_primary:
                    primaries += 1
                fam = attention_family(layer, layer_types)
            a = acc.setdefault(fam, [0.0, 0])
            a[0] += k.dur
            a[1] += 1
            where = _LAYER_SUB.sub(r"\1layers.N", label) if label is not None else "-"
            row = kernel_rows.setdefault((fam, _short(k.name), where), [0.0, 0])
            row[0] += k.dur
            row[1] += 1
        per_step[s] = acc
    n = len(per_step)
    fams: Dict[str, Dict[str, float]] = {}
    for f in FAMILIES:
        vals = [per_step[s].get(f, [0.0, 0]) for s in per_step]
        if not any(v[1] for v in vals):
            continue
        us = [v[0] for v in vals]
        fams[f] = {"us_per_step": sum(us) / n, "us_min": min(us), "us_max": max(us),
                   "kernels_per_step": sum(v[1] for v in vals) / n}
    total = sum(v["us_per_step"] for v in fams.values())
    for v in fams.values():
        v["share"] = v["us_per_step"] / total if total else 0.0
    phases: Dict[str, float] = {}
    spans: List[float] = []
    for s, ks in steps.items():
        for k in ks:
            phases[k.phase or "none"] = phases.get(k.phase or "none", 0.0) + k.dur / n
        fwd = [k for k in ks if k.phase == "forward"]
        if fwd:
            spans.append(max(k.ts + k.dur for k in fwd) - min(k.ts for k in fwd))
    top = sorted(kernel_rows.items(), key=lambda kv: -kv[1][0])
    return {
        "steps": n, "families": fams, "kernel_us_per_step": total,
        "kernels_per_step": sum(v["kernels_per_step"] for v in fams.values()),
        "phase_us_per_step": phases, "forward_span_us": statistics.median(spans) if spans else None,
        "unplaced_us": unplaced_us, "alignment": align, "attention_layer_by": attn_by,
        "top_kernels": [{"family": f, "kernel": nm, "module": lab, "us_per_step": v[0] / n,
                         "launches_per_step": v[1] / n} for (f, nm, lab), v in top[:30]],
    }


def _short(name: str, limit: int = 90) -> str:
    """A kernel name without its argument list, at most `limit` characters."""
    n = name.split("(", 1)[0] if not name.startswith("Memcpy") else name
    n = re.sub(r"^void ", "", n)
    return n if len(n) <= limit else n[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------
def _commit() -> str:
    return stamp.commit(paths=("benchmark/gemma4/decode_profile.py",))


def _fmt_bytes(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.3f} GB"
    if x >= 1e6:
        return f"{x / 1e6:.1f} MB"
    return f"{x / 1e3:.1f} kB"


def _rules_markdown() -> List[str]:
    lines = ["| # | family | phase | module label | kernel name |", "|---|---|---|---|---|"]
    for i, (fam, pats) in enumerate(RULES, 1):
        cell = lambda k: ("`" + pats[k].replace("|", "\\|") + "`") if k in pats else ""
        fam_cell = fam + (" (PLE models)" if pats.get("ple") == r"^1$" else "")
        lines.append(f"| {i} | {fam_cell} | {cell('phase')} | {cell('label')} | {cell('name')} |")
    lines.append("")
    lines.append("`attn_core` becomes `attn_full` or `attn_sliding` by the layer in its module label "
                 "(`layers.N.`), or by its order among the step's decode-attention launches when it has none.")
    return lines


def floor_report(models: Sequence[str], batch_sizes: Sequence[int], context: int, configs_dir: str,
                 bw: float, peak: float) -> Tuple[Dict[str, Any], str]:
    data: Dict[str, Any] = {
        "date": stamp.utc_now(), "commit": _commit(),
        "bandwidth_bytes_per_s": bw, "peak_bf16_flop_per_s": peak, "context": context,
        "batch_sizes": list(batch_sizes), "configs": "benchmark/gemma4/configs", "models": {},
    }
    geoms = {}
    for m in models:
        g = load_geometry(os.path.join(configs_dir, m), m)
        geoms[m] = g
        data["models"][m] = {"parameters": parameter_counts(g),
                             "floors": {str(b): model_floor(g, b, context, bw, peak) for b in batch_sizes}}
    L: List[str] = []
    L.append("# Gemma-4 text decode: bytes, FLOPs and floor time of one decode step (H200)")
    L.append("")
    L.append(f"Generated {data['date']} at commit {data['commit']} by `python3 benchmark/gemma4/decode_profile.py "
             f"floor` from the geometry in `benchmark/gemma4/configs/` (published config.json values). Context "
             f"{context} tokens per request (the KV of every request at the step, the new token included). "
             f"Bandwidth {bw / 1e12:.2f} TB/s: what a device-to-device copy moved on this workplace's H200, "
             f"counting bytes read plus bytes written; bf16 peak {peak / 1e12:.0f} TFLOP/s (8192^3 matrix "
             "product there). Floor = max((weights + KV) / bandwidth, FLOPs / peak), per family and for the "
             "step's totals. Activations are listed apart and are no part of the floor: a layer's intermediates "
             "are a few MB, live in the 60 MB L2 between producer and consumer, and a fused implementation never "
             "writes most of them; 'if activations hit HBM' is the floor of an implementation that sends each of "
             "them through HBM once. bf16 weights and KV, numbers per decode step.")
    L.append("")
    L.append("What a decode step must read (`weights` = parameters and the embedding-table rows of the batch's "
             "tokens, `KV` = KV cache, `activations` = intermediate tensors):")
    L.append("")
    for line in FLOOR_METHOD:
        L.append(f"- {line}")
    L.append("")
    L.append("## Step totals")
    L.append("")
    L.append("| model | batch | weights | KV | weights + KV | GFLOP | memory floor ms | FLOP floor ms | "
             "**step floor ms** | activations | floor if activations hit HBM ms |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        for b in batch_sizes:
            t = data["models"][m]["floors"][str(b)]["totals"]
            L.append(f"| {m} | {b} | {_fmt_bytes(t['weight_bytes'])} | {_fmt_bytes(t['kv_bytes'])} | "
                     f"{_fmt_bytes(t['floor_bytes'])} | {t['flops'] / 1e9:.1f} | {t['mem_us'] / 1e3:.3f} | "
                     f"{t['flop_us'] / 1e3:.3f} | **{t['floor_us'] / 1e3:.3f}** | {_fmt_bytes(t['act_bytes'])} | "
                     f"{t['floor_unfused_us'] / 1e3:.3f} |")
    L.append("")
    for m in models:
        g = geoms[m]
        L.append(f"## {m}: floor per kernel family (us per step; weights + KV in parentheses)")
        L.append("")
        extra = ""
        if g.moe_experts:
            ds = ", ".join(f"b={b}: {data['models'][m]['floors'][str(b)]['moe_distinct_experts']:.1f}"
                           for b in batch_sizes)
            extra = (f" Expected distinct experts touched per layer (top-{g.moe_top_k} of {g.moe_experts}, "
                     f"uniform): {ds}.")
        L.append(f"{g.num_layers} layers ({sum(x.full for x in g.layers)} full, {sum(not x.full for x in g.layers)} "
                 f"sliding, window {g.window}; {sum(x.kv_shared for x in g.layers)} KV-shared), hidden {g.hidden}."
                 + extra)
        L.append("")
        L.append("| family | " + " | ".join(f"b={b}" for b in batch_sizes) + " |")
        L.append("|---|" + "---|" * len(batch_sizes))
        fams = [f for f in FAMILIES if any(f in data["models"][m]["floors"][str(b)]["families"] for b in batch_sizes)]
        for f in fams + ["total"]:
            cells = []
            for b in batch_sizes:
                fl = data["models"][m]["floors"][str(b)]
                c = fl["totals"] if f == "total" else fl["families"].get(f)
                if c is None:
                    cells.append("-")
                    continue
                bound = " F" if c["flop_us"] > c["mem_us"] else ""
                cells.append(f"{c['floor_us']:.1f}{bound} ({_fmt_bytes(c['floor_bytes'])})")
            L.append(f"| {'**step**' if f == 'total' else f} | " + " | ".join(cells) + " |")
        L.append("")
        ex = data["models"][m]["floors"][str(batch_sizes[0])]["totals"]["engine_extra_bytes"]
        why = []
        if any(x.kv_shared for x in g.layers):
            why.append("the k and v projections of the KV-shared layers, which its fused QKV GEMM computes and drops")
        if any(x.k_eq_v for x in g.layers):
            why.append("the V shard that the K = V layers load with K's weights")
        fbound = any(c["flop_us"] > c["mem_us"] for b in batch_sizes
                     for c in data["models"][m]["floors"][str(b)]["families"].values())
        L.append(("F = FLOP-bound. " if fbound else "")
                 + (f"0.5.23 reads {_fmt_bytes(ex)} per step more than this floor: {' and '.join(why)}." if ex
                    else "0.5.23 reads no projection weights beyond this floor."))
        L.append("")
    L.extend(issue_check(data, geoms, context, bw))
    L.extend(hand_check(geoms, context))
    return data, "\n".join(L) + "\n"


FLOOR_METHOD = (
    "attention projections: q and o on every layer; k and v only on layers that own their KV (the KV-shared "
    "layers of E2B/E4B read another layer's cache); no v_proj on K = V layers (26B-A4B, 31B full layers); "
    "full layers use head_dim 512 and the global kv-head count",
    "attention core (`attn_full`, `attn_sliding`): each layer reads K and V of its cache (a KV-shared layer its "
    "owner's): full layers every context token, sliding layers min(context, window) tokens; K and V are both "
    "stored on K = V layers (V is v_norm(k) without RoPE); FLOPs 2 x heads x tokens x (d_k + d_v) per request",
    "MLP: gate_up and down weights of every layer, double width on E2B's 20 KV-shared layers",
    "MoE experts: the experts a batch touches, expected value for top-k of E with uniform routing, "
    "E (1 - (1 - k/E)^b); each touched expert's gate_up and down weights read once",
    "router: its norm weight, the hidden x E router weight, per-expert scales",
    "norms: every RMSNorm weight (input, post-attention, pre/post-FF, the MoE block's three, q/k norms, final)",
    "PLE (E2B/E4B): entry = the PLE table rows of the batch's tokens (layers x 256 per token) + the model "
    "projection hidden x (layers x 256) + its norm; tail = each layer's gate (hidden x 256) and projection "
    "(256 x hidden) + norm",
    "embedding: the rows of the batch's tokens; LM head: the tied vocab x hidden embedding, read once",
    "activations: every GEMM reads its input and writes its output once (bf16; logits fp32), every norm "
    "reads and writes its rows once, elementwise ops read and write theirs, the new token's K and V are "
    "written, sampling reads the fp32 logits once. Residual adds fused into norms are not counted twice",
    "not counted: KV of the other layers that could sit in L2 (60 MB), CUDA-graph launch and per-kernel "
    "latency (about 1-2 us per launch in a graph), host work between steps",
)


def issue_check(data: Dict[str, Any], geoms: Dict[str, ModelGeom], context: int, bw: float) -> List[str]:
    """The issue's figure for E2B at 80 requests, recomputed item by item."""
    if "e2b" not in data["models"] or "80" not in data["models"]["e2b"]["floors"]:
        return []
    g = geoms["e2b"]
    p = data["models"]["e2b"]["parameters"]
    floors = data["models"]["e2b"]["floors"]
    fl = floors["80"]
    t, fam = fl["totals"], fl["families"]
    kv = t["kv_bytes"]
    full_share = fam["attn_full"]["kv_bytes"] / kv
    logits = fam["lm_head"]["act_bytes"] + fam["sampling"]["act_bytes"]
    n_full = sum(x.full for x in g.layers)
    L = ["## Check of the issue's figure (E2B, 80 requests of about 1,500 tokens: about 1.75 ms)", ""]
    L.append(f"- Parameters per step. The issue: 1.56 B (MLP) + 0.3 B (attention) + 0.4 B (LM head). Recount: MLP "
             f"{p['mlp'] / 1e9:.3f} B and LM head {p['lm_head'] / 1e9:.3f} B are right. Attention is "
             f"{p['attention'] / 1e9:.3f} B: the issue's 0.30 B includes the {p['attention_engine_extra'] / 1e6:.1f} M "
             "k/v-projection parameters of the 20 KV-shared layers, which no output needs (0.5.23 reads them: its "
             "fused QKV GEMM computes k and v on those layers and drops them). The issue leaves out the "
             f"per-layer-embedding weights, {p['ple'] / 1e6:.1f} M (the model projection 1536 x 8960 and each "
             "layer's gate and projection), and the PLE-table rows of the 80 tokens "
             f"({_fmt_bytes(80 * g.num_layers * g.ple_dim * BF16)}). Net {t['weight_bytes'] / BF16 / 1e9:.3f} B, "
             f"{_fmt_bytes(t['weight_bytes'])}: the two errors almost cancel.")
    L.append(f"- KV: {_fmt_bytes(kv)} (issue: about 2.9 GB; right). All 35 layers read a cache, the 20 KV-shared "
             f"layers their owner's once more: {n_full} full layers x {context} tokens x 2 KiB + "
             f"{g.num_layers - n_full} sliding layers x {g.window} tokens x 1 KiB = {_fmt_bytes(kv / 80)} per "
             f"request. The full layers carry {full_share * 100:.0f}% of it; the sliding layers read their window "
             "whatever the context.")
    L.append(f"- Floor: weights + KV = {_fmt_bytes(t['floor_bytes'])} -> {t['floor_us'] / 1e3:.3f} ms at "
             f"{bw / 1e12:.1f} TB/s (issue: 7.5 GB, 1.75 ms). So the 1.75 ms is right, to "
             f"{abs(t['floor_us'] / 1e3 - 1.75) / 1.75 * 100:.0f}%. The step is memory-bound: "
             f"{t['flops'] / 1e9:.0f} GFLOP take {t['flop_us'] / 1e3:.3f} ms at the bf16 peak. At 1 and 16 requests "
             f"the floor is {floors['1']['totals']['floor_us'] / 1e3:.3f} and "
             f"{floors['16']['totals']['floor_us'] / 1e3:.3f} ms, "
             "set by the weights.")
    L.append(f"- Not in the issue's figure, and no part of a floor: activations, {_fmt_bytes(t['act_bytes'])} if each "
             f"went through HBM once ({t['floor_unfused_us'] / 1e3:.3f} ms). The fp32 logits are the one large "
             f"tensor: 80 x 262144 x 4 B written by the LM head, read and written by the soft-cap, read by "
             f"sampling, {_fmt_bytes(logits)} ({logits / bw * 1e6:.0f} us), more than L2 holds; 0.5.23 pays that, a "
             "soft-cap and arg-max fused into the LM-head epilogue would not.")
    L.append("- Where the issue's comparison is weak: the 5.47 ms it sets against the floor is bench_serving's median "
             "TPOT, which also carries the scheduler's host time and the prefill batches of arriving requests (chat "
             "1k/1k at 80 concurrent requests: about 80 prefills of 1,000 tokens during each request's 1,000 decode "
             "steps). 'About 3x from the floor' describes TPOT; the decode step itself is what `decode_profile.py "
             "run` measures.")
    L.append(f"- Bandwidth: {bw / 1e12:.1f} TB/s is a copy's read + write rate, and a decode step only reads. "
             "The H200's HBM3e is specified at 4.8 TB/s; at that rate the same bytes take "
             f"{t['floor_bytes'] / 4.8e12 * 1e3:.3f} ms. "
             "The floor uses the rate measured here.")
    L.append("")
    return L


def hand_check(geoms: Dict[str, ModelGeom], context: int) -> List[str]:
    """The arithmetic of single layers, spelled out (the tests check the same numbers)."""
    L = ["## One layer by hand (1 request, context 1500)", ""]
    if "e2b" in geoms:
        L += [
            "E2B layer 0 (sliding, owns its KV; head_dim 256, 8 q heads, 1 kv head, MLP 6144):",
            "- projections: q 1536 x 2048 + k 1536 x 256 + v 1536 x 256 + o 2048 x 1536 = 7,077,888 params "
            "= 14,155,776 B",
            "- KV read: 512 tokens (window) x 1 head x (256 + 256) x 2 B = 524,288 B",
            "- MLP: 3 x 1536 x 6144 = 28,311,552 params = 56,623,104 B",
            "",
            "E2B layer 34 (full, KV-shared: reads layer 14's cache; head_dim 512; double-wide MLP 12288):",
            "- projections: q 1536 x 4096 + o 4096 x 1536 = 12,582,912 params = 25,165,824 B (0.5.23 also "
            "reads k and v: 2 x 1536 x 512 x 2 B = 3,145,728 B)",
            f"- KV read: {context} tokens x 1 head x (512 + 512) x 2 B = {context * 1024 * 2:,} B",
            "- MLP: 3 x 1536 x 12288 = 56,623,104 params = 113,246,208 B",
            "",
        ]
    if "26b-a4b" in geoms:
        L += [
            "26B-A4B layer 5 (full, K = V; 16 q heads x 512, 2 kv heads x 512):",
            "- projections: q 2816 x 8192 + k 2816 x 1024 + o 8192 x 2816 = 49,020,928 params = 98,041,856 B "
            "(no v_proj; 0.5.23 loads K into a V shard and reads 5,767,168 B more)",
            f"- KV read: {context} tokens x 2 heads x (512 + 512) x 2 B = {context * 2 * 1024 * 2:,} B",
            "- dense MLP 3 x 2816 x 2112 = 17,842,176 params; one expert 3 x 2816 x 704 = 5,947,392 params; "
            "1 token touches 8 experts = 95,158,272 B; router 2816 x 128",
            "",
        ]
    return L


def profile_markdown(res: Dict[str, Any]) -> str:
    m = res["meta"]
    L = [f"# Gemma-4 decode step per kernel family: {m['model']} on {m['engine_label']} sglang "
         f"{m['engine_version']} ({m['device']})", ""]
    L.append(f"Date {m['date']}, commit {m['commit']}, torch {m['torch']}, triton {m['triton']}. "
             f"Model directory geometry `{m['model']}` ({m['load_format']} weights), attention backend "
             f"{m.get('attention_backend', '?')}, sampling backend {m.get('sampling_backend', '?')}, CUDA graphs "
             f"for batch sizes {m['batch_sizes']}. Series: {m.get('series') or 'none (stock)'}.")
    L.append("")
    tm = m["timings"]
    L.append(f"Timings: model load {tm.get('load_model_s', float('nan')):.1f} s, CUDA-graph capture "
             f"{tm.get('cuda_graph_capture_s', float('nan')):.1f} s, ModelRunner set-up in all "
             f"{tm.get('load_total_s', float('nan')):.1f} s, whole run {tm.get('run_total_s', float('nan')):.1f} s.")
    L.append("")
    L.append("Method: one_batch's ModelRunner; per batch size one prefill of b requests, then decode steps: "
             f"{m['warmup_steps']} warm-up, {m['timed_steps']} timed end to end (one_batch's decode: prepare + "
             f"forward + sample, host included), {m['timed_steps']} with CUDA events around the forward, "
             f"{m['profiled_steps']} under torch.profiler (each phase ends with a synchronize), then one eager step "
             "with a range per module that names the kernels of the graph steps (alignment by kernel name). "
             "Device time = sum of kernel durations per step. Floor: same arithmetic as decode_floor.md at the "
             "measured mean context.")
    L.append("")
    for r in res["batches"]:
        a = r["attribution"]
        L.append(f"## {r['batch_size']} running requests, context {r['context_mean']:.0f} tokens")
        L.append("")
        step_floor = r["floor"]["totals"]["floor_us"]
        g = "yes" if r["graph_used"] else "**NO (eager replay: not a CUDA-graph measurement)**"
        L.append(f"CUDA graph replayed: {g}. Step end to end {r['step_wall_ms_median']:.3f} ms (median), forward on "
                 f"device {r['forward_device_ms_median']:.3f} ms (CUDA events, no profiler), kernel time per profiled "
                 f"step {a['kernel_us_per_step'] / 1e3:.3f} ms in {a['kernels_per_step']:.0f} kernels (forward span "
                 f"{(a['forward_span_us'] or 0) / 1e3:.3f} ms). Step floor {step_floor / 1e3:.3f} ms: "
                 f"forward on device / floor = {r['forward_device_ms_median'] * 1e3 / step_floor:.2f}x. "
                 f"Prefill {r['prefill_s']:.2f} s.")
        al = a["alignment"]
        if al["forward_us"]:
            L.append(f"Module labels from the eager step: {al['labelled_us'] / al['forward_us'] * 100:.1f}% of forward "
                     f"kernel time ({al['template_forward_kernels']} kernels in the eager step); attention layers "
                     f"assigned by label {a['attention_layer_by']['label']}, by order "
                     f"{a['attention_layer_by']['order']}.")
        if r.get("template_error"):
            L.append(f"Eager template step failed ({r['template_error']}); families come from kernel names only.")
        L.append("")
        L.append("| family | us / step | kernels / step | us / kernel | share | floor us | measured / floor | "
                 "floor if activations hit HBM, us | weights + KV | GFLOP |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        fl = r["floor"]["families"]
        for f in FAMILIES:
            v = a["families"].get(f)
            c = fl.get(f)
            if v is None and c is None:
                continue
            us = v["us_per_step"] if v else 0.0
            n = v["kernels_per_step"] if v else 0.0
            share = v["share"] * 100 if v else 0.0
            floor_us = c["floor_us"] if c else 0.0
            ratio = f"{us / floor_us:.1f}x" if floor_us >= 0.5 and us > 0 else "-"
            per = f"{us / n:.1f}" if n else "-"
            unf = f"{c['floor_unfused_us']:.1f}" if c else "-"
            fb = _fmt_bytes(c["floor_bytes"]) if c else "-"
            gf = f"{c['flops'] / 1e9:.2f}" if c and c["flops"] else "-"
            L.append(f"| {f} | {us:.1f} | {n:.1f} | {per} | {share:.1f}% | {floor_us:.1f} | {ratio} | {unf} | "
                     f"{fb} | {gf} |")
        tt = r["floor"]["totals"]
        L.append(f"| **step** | {a['kernel_us_per_step']:.1f} | {a['kernels_per_step']:.0f} | "
                 f"{a['kernel_us_per_step'] / max(a['kernels_per_step'], 1):.1f} | 100% | {tt['floor_us']:.1f} | "
                 f"{a['kernel_us_per_step'] / tt['floor_us']:.1f}x | {tt['floor_unfused_us']:.1f} | "
                 f"{_fmt_bytes(tt['floor_bytes'])} | {tt['flops'] / 1e9:.2f} |")
        L.append("")
        L.append("Top kernels (us per step):")
        L.append("")
        L.append("| family | kernel | module (from the eager step) | us / step | launches / step |")
        L.append("|---|---|---|---|---|")
        for row in a["top_kernels"][:15]:
            kern, mod = row["kernel"].replace("|", "\\|"), row["module"].replace("|", "\\|")
            L.append(f"| {row['family']} | `{kern}` | `{mod}` | {row['us_per_step']:.1f} | "
                     f"{row['launches_per_step']:.1f} |")
        L.append("")
    L.append("## Kernel name -> family rules (first match wins)")
    L.append("")
    L.extend(_rules_markdown())
    L.append("")
    L.append("Family meanings: " + "; ".join(f"`{k}`: {v}" for k, v in FAMILY_DOC.items()) + ".")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------------------
# GPU: the run
# --------------------------------------------------------------------------------------------------------
DEFAULT_SERVER_ARGS = (
    "--load-format dummy --attention-backend triton --sampling-backend pytorch --mm-attention-backend triton_attn "
    "--disable-prefill-cuda-graph --swa-full-tokens-ratio 1.0 --context-length 4096"
)
# Why each: dummy weights time like real ones (no parity needed); triton is Gemma-4's Hopper default, named so
# both engines surely run it; flashinfer is not installed on the GPU machine; the vision tower's default fa3 ops
# are missing there too; the prefill graph only costs start-up time; one_batch never evicts SWA tokens outside
# the window (no tree cache), so the SWA pool must hold every token (ratio 1.0); a short declared context keeps
# the request table small (raised by size_run for a longer --context).  --mem-fraction-static is chosen by
# size_run from the card, the weights, the KV the batch needs and the one-shot prefill's activations (a fixed
# 0.8 ran out of memory on an H100 in E2B's 80 x 1500-token prefill).  None of these changes a decode-step kernel.
WARMUP_STEPS = 3
TIMED_STEPS = 10
GIB = 1 << 30
MAX_MEM_FRACTION = 0.88


def _weight_bytes(geom: ModelGeom) -> float:
    """bf16 bytes of the text model's weights (every expert, the PLE table included)."""
    n = sum(parameter_counts(geom).values())
    if geom.ple_dim:
        n += geom.vocab * geom.num_layers * geom.ple_dim
    return n * BF16


def _kv_bytes_per_token(geom: ModelGeom) -> float:
    """K and V of every layer (stock sglang 0.5.23 allocates KV-shared layers too; SWA ratio 1.0)."""
    return float(sum(2 * layer.n_kv * layer.head_dim * BF16 for layer in geom.layers))


def _prefill_bytes_per_token(geom: ModelGeom) -> float:
    """Transient activations of the one-shot prefill per token, with a 1.5x margin: the MLP / MoE
    intermediates (gate-up output and its activation), the per-layer inputs, a few hidden-size buffers."""
    inter = max(max(layer.mlp_intermediate for layer in geom.layers), geom.moe_top_k * 2 * geom.moe_intermediate)
    return 1.5 * BF16 * (4 * inter + 2 * geom.num_layers * geom.ple_dim + 8 * geom.hidden)


def size_run(geom: ModelGeom, sizes: Sequence[int], context: int, steps: int, card_bytes: float,
             mem_fraction: Optional[float] = None) -> Dict[str, Any]:
    """What one `run` can do on a card of card_bytes: the batch sizes that fit (largest dropped first, each
    with its reason), the --mem-fraction-static to load with (``mem_fraction``: the user's, kept) and the
    --context-length that holds a request.  one_batch prefills every request of a batch in one extend and
    its pools never evict, so a batch of b needs b whole requests of KV plus the prefill's activations
    outside the static part.  Raises SystemExit when not even the smallest batch fits, saying what to change."""
    per_req = context + steps + 8
    weights, kv_tok, act_tok = _weight_bytes(geom), _kv_bytes_per_token(geom), _prefill_bytes_per_token(geom)
    kept = sorted(set(sizes))
    skipped: Dict[int, str] = {}
    while kept:
        b = kept[-1]
        headroom = max(6 * GIB, b * context * act_tok)
        frac = mem_fraction if mem_fraction is not None else min(MAX_MEM_FRACTION, 1.0 - headroom / card_bytes)
        kv = kv_tok * b * per_req
        need = weights + 1.1 * kv + GIB
        room = mem_fraction is None or (1.0 - mem_fraction) * card_bytes >= headroom  # else frac leaves it
        if frac > 0 and need <= frac * card_bytes and room:
            ctx_len = max(4096, -(-(per_req + 64) // 1024) * 1024)
            return {"mem_fraction": round(frac, 3) if mem_fraction is None else mem_fraction, "kept": kept,
                    "skipped": skipped, "context_length": ctx_len, "weights_gib": weights / GIB,
                    "kv_gib": kv / GIB, "prefill_headroom_gib": headroom / GIB}
        skipped[b] = (f"{b} requests x {per_req} tokens need {weights / GIB:.1f} GiB of weights + "
                      f"{kv / GIB:.1f} GiB of KV in the static part and {headroom / GIB:.1f} GiB "
                      f"for the prefill outside it; the card has {card_bytes / GIB:.1f} GiB"
                      + (f" (mem fraction {mem_fraction} given)" if mem_fraction is not None else ""))
        kept.pop()
    raise SystemExit("decode_profile: no batch size fits this card: " + "; ".join(skipped.values())
                     + ". Use a shorter --context, smaller --batch-sizes or a card with more memory.")


def _need_cuda():
    try:
        import torch
    except ImportError:
        raise SystemExit("this subcommand needs torch with a CUDA device (run it on the GPU machine)") from None
    if not torch.cuda.is_available():
        raise SystemExit("this subcommand needs a CUDA device: torch.cuda.is_available() is False")
    return torch


def _export(prof) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "trace.json")
        prof.export_chrome_trace(p)
        with open(p, encoding="utf-8") as f:
            return compact_trace(json.load(f))


@contextlib.contextmanager
def _timed_methods(cls, names: Iterable[str], sink: Dict[str, float], keys: Dict[str, str]):
    """Time calls of cls.<name> into sink[keys[name]] (seconds, summed) while the context is open."""
    saved = {}
    for n in names:
        orig = getattr(cls, n, None)
        if orig is None:
            continue
        saved[n] = orig

        def wrap(self, *a, _orig=orig, _key=keys[n], **k):
            t0 = time.perf_counter()
            try:
                return _orig(self, *a, **k)
            finally:
                sink[_key] = sink.get(_key, 0.0) + time.perf_counter() - t0

        setattr(cls, n, wrap)
    try:
        yield
    finally:
        for n, orig in saved.items():
            setattr(cls, n, orig)


@contextlib.contextmanager
def _module_ranges(model, torch):
    """A record_function range 'mod:<qualified name>' around every module's forward."""
    handles, stack = [], []
    for name, mod in model.named_modules():
        label = MODULE_PREFIX + (name or "<root>")

        def pre(_m, _args, _label=label):
            rf = torch.autograd.profiler.record_function(_label)
            rf.__enter__()
            stack.append(rf)

        def post(_m, _args, _out):
            if stack:
                stack.pop().__exit__(None, None, None)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while stack:
            stack.pop().__exit__(None, None, None)


@contextlib.contextmanager
def _eager(model_runner):
    """Route decode forwards to the eager runner (the graph runner's can_run_graph is never asked)."""
    if not hasattr(model_runner, "decode_cuda_graph_runner"):
        raise RuntimeError("ModelRunner has no decode_cuda_graph_runner attribute: this sglang is not 0.5.23's layout")
    saved = model_runner.decode_cuda_graph_runner
    model_runner.decode_cuda_graph_runner = None
    try:
        yield
    finally:
        model_runner.decode_cuda_graph_runner = saved


def _split_step(ob, mr, batch, next_ids, torch, *, ranges: bool, events: bool):
    """one_batch's decode step, with each phase in its own range and ended by a synchronize."""
    rf = torch.autograd.profiler.record_function if ranges else (lambda _n: contextlib.nullcontext())
    with rf(PHASE_PREFIX + "prepare"):
        batch.input_ids = next_ids.to(torch.int64)
        batch.prepare_for_decode()
        mlp_sync = getattr(ob, "_maybe_prepare_mlp_sync_batch", None)
        if mlp_sync is not None:
            mlp_sync(batch, mr)
        fb = ob.ForwardBatch.init_new(batch, mr, return_hidden_states_before_norm=False)
        torch.cuda.synchronize()
    ms = None
    with rf(PHASE_PREFIX + "forward"):
        if events:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        out = mr.forward(fb)
        if events:
            e1.record()
        torch.cuda.synchronize()
        if events:
            ms = e0.elapsed_time(e1)
    with rf(PHASE_PREFIX + "sample"):
        nxt = mr.sample(out.logits_output, fb)
        torch.cuda.synchronize()
    return nxt, ms, bool(getattr(out, "can_run_graph", False))


def _profile_batch(ob, runner, geom: ModelGeom, bs: int, opts, torch) -> Dict[str, Any]:
    profile, ProfilerActivity = torch.profiler.profile, torch.profiler.ProfilerActivity
    mr = runner.torch_runner
    steps_before = WARMUP_STEPS + 2 * TIMED_STEPS
    input_len = max(16, int(round(opts.context - 1 - steps_before - (opts.steps - 1) / 2)))
    runner.clear()
    reqs = ob.prepare_synthetic_inputs_for_latency_test(bs, input_len)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    next_ids, _, batch = runner.extend(reqs)
    torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0
    for _ in range(WARMUP_STEPS):
        next_ids, _ = runner.decode(next_ids, batch)
    walls = []
    for _ in range(TIMED_STEPS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        next_ids, _ = runner.decode(next_ids, batch)
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
    fwd_ms, graph_flags = [], []
    for _ in range(TIMED_STEPS):
        next_ids, ms, used = _split_step(ob, mr, batch, next_ids, torch, ranges=False, events=True)
        fwd_ms.append(ms)
        graph_flags.append(used)
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=acts) as prof:
        for i in range(opts.steps):
            with torch.autograd.profiler.record_function(f"{STEP_PREFIX}{i}"):
                next_ids, _, used = _split_step(ob, mr, batch, next_ids, torch, ranges=True, events=False)
            graph_flags.append(used)
    graph_trace = _export(prof)
    template_trace, template_error = None, None
    try:
        with _eager(mr), _module_ranges(mr.model, torch), profile(activities=acts) as prof2:
            with torch.autograd.profiler.record_function(f"{STEP_PREFIX}0"):
                next_ids, _, used_eager = _split_step(ob, mr, batch, next_ids, torch, ranges=True, events=False)
        template_trace = _export(prof2)
        if used_eager:
            template_error = "the labelled step replayed the CUDA graph instead of running eagerly"
            template_trace = None
    except Exception as e:  # the graph measurement stands without labels; say why they are missing
        template_error = f"{type(e).__name__}: {e}"
    ctx_first = input_len + 1 + steps_before
    ctx_mean = ctx_first + (opts.steps - 1) / 2
    runner.cleanup(batch)
    return {"batch_size": bs, "input_len": input_len, "context_mean": ctx_mean, "prefill_s": prefill_s,
            "step_wall_ms_median": statistics.median(walls), "step_wall_ms": walls,
            "forward_device_ms_median": statistics.median(fwd_ms), "forward_device_ms": fwd_ms,
            "graph_used": all(graph_flags), "template_error": template_error,
            "_graph_trace": graph_trace, "_template_trace": template_trace}


def _engine_meta(torch) -> Dict[str, Any]:
    import importlib.metadata

    meta = {"engine_version": importlib.metadata.version("sglang"), "torch": torch.__version__}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = "none"
    try:
        from sglang.srt import gemma4_series

        meta["series"] = gemma4_series.summary_line()
    except ImportError:
        meta["series"] = None
    meta["device"] = stamp.device_name(torch, cuda=True)
    return meta


def _import_engine():
    try:
        from sglang.benchmark import one_batch as ob
        from sglang.srt.model_executor.model_runner import ModelRunner
        from sglang.srt.server_args import ServerArgs
    except ImportError as e:
        raise SystemExit(f"cannot import sglang's one_batch benchmark ({e}): run this with an interpreter that has "
                         "sglang 0.5.23 installed (/tmp/py-upstream or /tmp/py-patched)") from None
    return ob, ModelRunner, ServerArgs


def cmd_run(opts, engine: Optional[Tuple[Any, Any, Any, Any]] = None) -> int:
    """`engine` = (torch, one_batch, ModelRunner, ServerArgs); the installed ones when None (tests pass fakes)."""
    t_start = time.perf_counter()
    if not os.path.isfile(os.path.join(opts.model, "config.json")):
        raise SystemExit(f"--model {opts.model}: no config.json there "
                         "(make one with make_model_dir.py dir <variant> DIR)")
    if engine is None:
        torch = _need_cuda()
        ob, ModelRunner, ServerArgs = _import_engine()
    else:
        torch, ob, ModelRunner, ServerArgs = engine
    geom = load_geometry(opts.model, opts.name or os.path.basename(os.path.normpath(opts.model)))
    sizes = sorted(set(opts.batch_sizes))
    missing = [n for n in ("main", "latency_test", "load_model", "prepare_synthetic_inputs_for_latency_test",
                           "BenchArgs", "ForwardBatch", "publish", "SpawnRanks", "spawn_world_rank")
               if not hasattr(ob, n)]
    if missing:
        raise SystemExit(f"sglang.benchmark.one_batch lacks {missing}: this is not sglang 0.5.23's one_batch")
    argv = ["--model-path", opts.model] + shlex.split(opts.server_args)
    if opts.extra_server_args:
        argv += shlex.split(opts.extra_server_args)
    card = _card_bytes(torch)
    sizing = None
    if card is not None:
        given = _flag_value(argv, "--mem-fraction-static")
        sizing = size_run(geom, sizes, opts.context, opts.steps, card, float(given) if given else None)
        for b, why in sorted(sizing["skipped"].items()):
            print(f"decode_profile: batch size {b} left out: {why}", flush=True)
        sizes = sizing["kept"]
        if given is None:
            argv += ["--mem-fraction-static", str(sizing["mem_fraction"])]
        ctx = _flag_value(argv, "--context-length")
        if ctx is None or int(ctx) < sizing["context_length"]:
            argv += ["--context-length", str(sizing["context_length"])]
        print(f"decode_profile: batch sizes {sizes}, --mem-fraction-static {_flag_value(argv, '--mem-fraction-static')}"
              f" (weights {sizing['weights_gib']:.1f} GiB, KV {sizing['kv_gib']:.1f} GiB, prefill headroom "
              f"{sizing['prefill_headroom_gib']:.1f} GiB of {card / GIB:.1f} GiB)", flush=True)
    argv += ["--cuda-graph-bs-decode"] + [str(b) for b in sizes]
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    sargs = ServerArgs.from_cli_args(parser.parse_args(argv))
    if getattr(sargs, "tp_size", 1) != 1:
        raise SystemExit("decode_profile runs one GPU (tp 1)")
    bench_args = ob.BenchArgs(batch_size=tuple(sizes), input_len=(opts.context,), output_len=(opts.steps,))
    timings: Dict[str, float] = {}
    batches: List[Dict[str, Any]] = []
    meta: Dict[str, Any] = {}

    def worker(server_args, port_args, b_args, gpu_id, tp_rank):
        ob.publish(server_args, role="scheduler", ranks=ob.SpawnRanks(
            world_rank=ob.spawn_world_rank(server_args, tp_rank=tp_rank, pp_rank=0), gpu_id=gpu_id))
        init = getattr(ob, "_init_process_global_configs", None)
        if init is not None:
            init()
        t0 = time.perf_counter()
        with _timed_methods(ModelRunner, ("load_model", "init_cuda_graphs"), timings,
                            {"load_model": "load_model_s", "init_cuda_graphs": "cuda_graph_capture_s"}):
            runner, _tok = ob.load_model(server_args, port_args, gpu_id, tp_rank)
        timings["load_total_s"] = time.perf_counter() - t0
        mr = runner.torch_runner
        meta["attention_backend"] = type(getattr(mr, "attn_backend", None)).__name__
        meta["max_total_num_tokens"] = getattr(mr, "max_total_num_tokens", None)
        meta["sampling_backend"] = str(getattr(server_args, "sampling_backend", None))
        for bs in sizes:
            t1 = time.perf_counter()
            r = _profile_batch(ob, runner, geom, bs, opts, torch)
            r["seconds"] = time.perf_counter() - t1
            batches.append(r)
            print(f"decode_profile: b={bs} done in {r['seconds']:.1f} s (step {r['step_wall_ms_median']:.3f} ms, "
                  f"forward {r['forward_device_ms_median']:.3f} ms, graph {r['graph_used']})", flush=True)

    import logging

    logging.basicConfig(level=getattr(logging, str(getattr(sargs, "log_level", "info")).upper(), logging.INFO),
                        format="%(message)s")
    saved_worker = ob.latency_test
    ob.latency_test = worker  # one_batch.main resolves the server args, sizes the graphs, then calls this
    try:
        ob.main(sargs, bench_args)
    finally:
        ob.latency_test = saved_worker
    timings["run_total_s"] = time.perf_counter() - t_start
    meta.update(_engine_meta(torch))
    label = opts.engine_label or ("patched" if meta.get("series") and "none" not in meta["series"] else "stock")
    meta.update({
        "model": geom.name, "model_dir": os.path.basename(os.path.normpath(opts.model)), "engine_label": label,
        "date": stamp.utc_now(), "commit": _commit(),
        "load_format": _flag_value(argv, "--load-format") or "auto", "server_args": argv[2:],
        "batch_sizes": sizes, "context_target": opts.context, "warmup_steps": WARMUP_STEPS,
        "timed_steps": TIMED_STEPS, "profiled_steps": opts.steps, "timings": timings, "sizing": sizing,
        "bandwidth_bytes_per_s": opts.bw, "peak_bf16_flop_per_s": opts.peak,
    })
    events = {"meta": meta, "geometry_config": _config_of(opts.model),
              "batches": [{k: v for k, v in r.items()} for r in batches]}
    os.makedirs(opts.out, exist_ok=True)
    stem = f"decode_profile_{_slug(geom.name)}_{label}"
    with gzip.open(os.path.join(opts.out, stem + "_events.json.gz"), "wt", encoding="utf-8") as f:
        json.dump(events, f, default=str)
    res = analyze_events(events)
    _write_result(res, opts.out, stem)
    print(f"decode_profile: wrote {stem}.json / .md / _events.json.gz under {opts.out} "
          f"({timings['run_total_s']:.0f} s in all)", flush=True)
    return 0


def _flag_value(argv: List[str], flag: str) -> Optional[str]:
    """The last value given for flag (argparse keeps the last)."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def _card_bytes(torch) -> Optional[float]:
    """Total memory of CUDA device 0; None where the torch in hand has no such query (the tests' fakes)."""
    props = getattr(getattr(torch, "cuda", None), "get_device_properties", None)
    if props is None:
        return None
    return float(props(0).total_memory)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "model"


def _config_of(model_dir: str) -> Dict[str, Any]:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def analyze_events(events: Dict[str, Any]) -> Dict[str, Any]:
    """Attribution and floors from a run's saved events (CPU)."""
    meta = events["meta"]
    geom = geometry(events["geometry_config"], meta.get("model", "model"))
    bw = meta.get("bandwidth_bytes_per_s", H200_COPY_BYTES_PER_S)
    peak = meta.get("peak_bf16_flop_per_s", H200_BF16_FLOP_PER_S)
    out = {"meta": meta, "batches": []}
    for r in events["batches"]:
        graph = annotate(r["_graph_trace"])
        template = template_from(annotate(r["_template_trace"])) if r.get("_template_trace") else None
        att = attribute(graph, template, geom.layer_types, geom.ple_dim > 0)
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        row["attribution"] = att
        row["floor"] = model_floor(geom, r["batch_size"], int(round(r["context_mean"])), bw, peak)
        for f, v in att["families"].items():
            c = row["floor"]["families"].get(f)
            v["floor_us"] = c["floor_us"] if c else 0.0
        out["batches"].append(row)
    return out


def _write_result(res: Dict[str, Any], out_dir: str, stem: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(out_dir, stem + ".md"), "w", encoding="utf-8") as f:
        f.write(profile_markdown(res))


def cmd_analyze(opts) -> int:
    try:
        with gzip.open(opts.events, "rt", encoding="utf-8") as f:
            events = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read events file {opts.events}: {e}") from None
    res = analyze_events(events)
    stem = os.path.basename(opts.events)
    stem = stem[: -len("_events.json.gz")] if stem.endswith("_events.json.gz") else stem.split(".")[0]
    _write_result(res, opts.out, stem)
    print(f"wrote {stem}.json / .md under {opts.out}")
    return 0


def cmd_floor(opts) -> int:
    data, md = floor_report(opts.models, opts.batch_sizes, opts.context, opts.configs, opts.bw, opts.peak)
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "decode_floor.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(opts.out, "decode_floor.md"), "w", encoding="utf-8") as f:
        f.write(md)
    for m in opts.models:
        row = ", ".join(f"b={b}: {data['models'][m]['floors'][str(b)]['totals']['floor_us'] / 1e3:.3f} ms"
                        for b in opts.batch_sizes)
        print(f"{m}: {row}")
    print(f"wrote decode_floor.md / .json under {opts.out}")
    return 0


def selfcheck(torch, steps: int = 3) -> Dict[str, Any]:
    """Capture a small CUDA graph (matmul, add, softmax), replay it `steps` times inside dp:step ranges under
    torch.profiler, and attribute: every step must show the graph's kernels, inside the forward phase."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            y = torch.softmax(x @ w + 1.0, dim=-1)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = torch.softmax(x @ w + 1.0, dim=-1)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            with torch.autograd.profiler.record_function(f"{STEP_PREFIX}{i}"):
                with torch.autograd.profiler.record_function(PHASE_PREFIX + "forward"):
                    g.replay()
                    torch.cuda.synchronize()
    ks = annotate(_export(prof))
    per_step: Dict[Optional[int], int] = {}
    for k in ks:
        if k.phase == "forward":
            per_step[k.step] = per_step.get(k.step, 0) + 1
    ok = (set(per_step) == set(range(steps)) and len(set(per_step.values())) == 1
          and min(per_step.values()) >= 2)
    return {"ok": ok, "kernels_per_step": per_step, "names": sorted({_short(k.name) for k in ks}),
            "y": float(y.float().sum())}


def cmd_selfcheck(opts) -> int:
    torch = _need_cuda()
    r = selfcheck(torch)
    print(json.dumps({k: v for k, v in r.items() if k != "y"}, default=str))
    if not r["ok"]:
        print("selfcheck FAILED: the profiler did not report the replayed graph's kernels step by step",
              file=sys.stderr)
        return 1
    print("selfcheck ok: graph-replayed kernels are traced and placed in their steps")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def sizes(s: str) -> int:
        v = int(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"batch size must be positive, got {v}")
        return v

    def positive(s: str) -> int:
        v = int(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {v}")
        return v

    f = sub.add_parser("floor", help="bytes / FLOPs floor per family from the config files (CPU)")
    f.add_argument("--configs", default=CONFIGS_DIR)
    f.add_argument("--models", nargs="+", default=list(FLOOR_MODELS))
    f.add_argument("--batch-sizes", nargs="+", type=sizes, default=list(DEFAULT_BATCH_SIZES))
    f.add_argument("--context", type=positive, default=DEFAULT_CONTEXT)
    f.add_argument("--bw", type=float, default=H200_COPY_BYTES_PER_S, help="bytes/s (default: the H200 copy rate)")
    f.add_argument("--peak", type=float, default=H200_BF16_FLOP_PER_S, help="bf16 FLOP/s")
    f.add_argument("--out", default=RESULTS_DIR)
    r = sub.add_parser("run", help="profile the engine's decode step (GPU)")
    r.add_argument("--model", required=True, help="model directory (config.json, tokenizer; weights optional)")
    r.add_argument("--name", default=None, help="model name in the results (default: the directory name)")
    r.add_argument("--out", required=True)
    r.add_argument("--batch-sizes", nargs="+", type=sizes, default=list(DEFAULT_BATCH_SIZES))
    r.add_argument("--context", type=positive, default=DEFAULT_CONTEXT,
                   help="mean KV tokens per request while profiled")
    r.add_argument("--steps", type=positive, default=6, help="decode steps under the profiler per batch size")
    r.add_argument("--server-args", default=DEFAULT_SERVER_ARGS,
                   help="sglang server arguments (default: %(default)s); --cuda-graph-bs-decode is added")
    r.add_argument("--extra-server-args", default="", help="appended to --server-args")
    r.add_argument("--engine-label", default=None, help="stock | patched (default: from the installed sglang)")
    r.add_argument("--bw", type=float, default=H200_COPY_BYTES_PER_S)
    r.add_argument("--peak", type=float, default=H200_BF16_FLOP_PER_S)
    a = sub.add_parser("analyze", help="redo the attribution of a run from its _events.json.gz (CPU)")
    a.add_argument("--events", required=True)
    a.add_argument("--out", required=True)
    sub.add_parser("selfcheck", help="check that graph-replayed kernels are traced per step (GPU, seconds)")
    return ap


def main(argv: Optional[List[str]] = None, engine=None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        if opts.cmd == "floor":
            return cmd_floor(opts)
        if opts.cmd == "analyze":
            return cmd_analyze(opts)
        if opts.cmd == "selfcheck":
            return cmd_selfcheck(opts)
        if opts.context <= opts.steps + 2 * TIMED_STEPS + WARMUP_STEPS + 16:
            raise SystemExit(f"--context {opts.context} is too short for the {opts.steps} profiled and "
                             f"{2 * TIMED_STEPS + WARMUP_STEPS} other decode steps")
        return cmd_run(opts, engine)
    except ValueError as e:
        print(f"decode_profile: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    _rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # the engine may leave non-daemon threads behind after a run; the results are written and closed by now
    os._exit(_rc)
