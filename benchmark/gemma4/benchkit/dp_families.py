"""decode_profile's kernel families: the ordered rule table that maps a kernel (name, module label, phase) to
its family, and the split of decode attention into full and sliding layers."""

from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

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
ATTN_PRIMARY_RE = re.compile(ATTN_PRIMARY)
_ATTN_CORE_RE = re.compile(ATTN_CORE)
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")
LAYER_SUB = re.compile(r"(^|\.)layers\.\d+")


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
