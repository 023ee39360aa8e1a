"""The KV budget the CPU planner assumes for a card (the engine measures its own).

The engine's Gemma-4 split is decided from the budget KVCacheConfigurator measures after the weights
load; a planner without a GPU needs an estimate of that number. It follows
``KVCacheConfigurator._profile_available_bytes``: free memory after the weights minus the non-static
slack ``pre_model_load_memory * (1 - mem_fraction_static)`` minus the multimodal reservation, with the
weights counted from the config (or a local safetensors index). Planner-only: nothing in the engine
imports this module.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from typing import Any, Dict, Optional, Tuple

# Memory the CUDA context, cuBLAS/NCCL workspaces take before the weights load
# (the part of the card that `pre_model_load_memory` never sees).
CUDA_CONTEXT_BYTES = 1 << 30


# The MTP deployment every Gemma-4 benchmark serves and plans for: the assistant as sglang's NEXTN draft
# (promoted to FROZEN_KV_MTP for a Gemma-4 assistant), 3 steps, topk 1, 4 draft tokens.
MTP_STEPS, MTP_TOPK, MTP_DRAFT_TOKENS = 3, 1, 4


def mtp_args(draft: str) -> list:
    """sglang server arguments for that MTP deployment with the assistant at ``draft``."""
    return ["--speculative-algorithm", "NEXTN", "--speculative-draft-model-path", draft,
            "--speculative-num-steps", str(MTP_STEPS), "--speculative-eagle-topk", str(MTP_TOPK),
            "--speculative-num-draft-tokens", str(MTP_DRAFT_TOKENS)]


# Modules of sglang 0.5.23 that read the card size through their own name for get_device_memory_capacity.
_CAPACITY_READERS = ("sglang.srt.utils.common", "sglang.srt.arg_groups.memory_hook",
                     "sglang.srt.arg_groups.kv_shard_hook")


@contextlib.contextmanager
def device_capacity(mib: Optional[float]):
    """Make sglang's argument resolution see a card of ``mib`` MiB (None: no GPU visible)."""
    saved = []
    for name in _CAPACITY_READERS:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "get_device_memory_capacity"):
            saved.append((mod, mod.get_device_memory_capacity))
            mod.get_device_memory_capacity = lambda *a, **k: mib
    try:
        yield
    finally:
        for mod, f in saved:
            mod.get_device_memory_capacity = f


def text_config_of(hf_config: Any) -> Any:
    text = _get(hf_config, "text_config", None)
    return text if text is not None else hf_config


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _attention_shapes(text: Any) -> Dict[str, Tuple[int, int]]:
    """``{layer kind: (head_dim, kv heads)}`` of a Gemma-4 text config.

    Reads sglang's loaded config (full-attention values in ``head_dim`` /
    ``num_key_value_heads``, sliding ones in ``swa_*``) or a raw config.json
    dict (sliding values in ``head_dim`` / ``num_key_value_heads``, full ones in
    ``global_head_dim`` / ``num_global_key_value_heads``).
    """
    if _get(text, "swa_head_dim", None) is not None:
        return {
            "full_attention": (int(_get(text, "head_dim")), int(_get(text, "num_key_value_heads"))),
            "sliding_attention": (
                int(_get(text, "swa_head_dim")),
                int(_get(text, "swa_num_key_value_heads")),
            ),
        }
    if isinstance(text, dict):
        head_dim = int(text.get("head_dim", 256))
        kv = int(text["num_key_value_heads"])
        global_kv = text.get("num_global_key_value_heads")
        use_global_kv = global_kv is not None and text.get("attention_k_eq_v", True)
        return {
            "full_attention": (
                int(text.get("global_head_dim") or head_dim),
                int(global_kv) if use_global_kv else kv,
            ),
            "sliding_attention": (head_dim, kv),
        }
    raise ValueError(
        "weight estimate needs sglang's loaded Gemma-4 config (with swa_head_dim) "
        f"or a raw config.json dict, got {type(text).__name__}"
    )


def estimate_text_params(text: Any) -> int:
    """Parameter count of a Gemma-4 text stack (embeddings tied with the LM head)."""
    hidden = int(_get(text, "hidden_size"))
    vocab = int(_get(text, "vocab_size", 262144))
    layer_types = list(_get(text, "layer_types") or [])
    num_layers = int(_get(text, "num_hidden_layers", len(layer_types)))
    if len(layer_types) < num_layers:
        raise ValueError("estimate_text_params needs layer_types for every layer")
    heads = int(_get(text, "num_attention_heads"))
    shapes = _attention_shapes(text)
    k_eq_v = bool(_get(text, "attention_k_eq_v", False))
    inter = int(_get(text, "intermediate_size"))
    num_shared = int(_get(text, "num_kv_shared_layers", 0) or 0)
    double_wide = bool(_get(text, "use_double_wide_mlp", False))
    moe = bool(_get(text, "enable_moe_block", False))
    experts = int(_get(text, "num_experts", 0) or 0)
    moe_inter = int(_get(text, "moe_intermediate_size", 0) or 0)
    ple = int(_get(text, "hidden_size_per_layer_input", 0) or 0)
    ple_vocab = int(_get(text, "vocab_size_per_layer_input", 0) or 0)

    params = vocab * hidden
    first_shared = num_layers - num_shared
    for i in range(num_layers):
        full = layer_types[i] == "full_attention"
        hd, kvh = shapes[layer_types[i]]
        params += hidden * heads * hd * 2  # q, o
        params += hidden * kvh * hd * (1 if (full and k_eq_v) else 2)  # k (, v)
        layer_inter = inter * (2 if (double_wide and num_shared and i >= first_shared) else 1)
        params += 3 * hidden * layer_inter
        if moe and experts:
            params += experts * 3 * hidden * moe_inter + hidden * experts
        if ple:
            params += 2 * hidden * ple
    if ple:
        params += ple_vocab * num_layers * ple + hidden * num_layers * ple
    return params


def estimate_tower_params(tower: Any) -> int:
    """Parameter count of a vision/audio encoder (attention + MLP blocks)."""
    if tower is None:
        return 0
    hidden = int(_get(tower, "hidden_size"))
    layers = int(_get(tower, "num_hidden_layers"))
    inter = int(_get(tower, "intermediate_size", 4 * hidden) or 4 * hidden)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    # 2-D position table of the patch embedder (vision only).
    positions = int(_get(tower, "position_embedding_size", 0) or 0)
    return layers * per_layer + 2 * positions * hidden


def estimate_weight_bytes(hf_config: Any, bytes_per_param: float = 2.0) -> int:
    """Bytes of the weights sglang loads for a Gemma-4 (or assistant) config."""
    text = text_config_of(hf_config)
    params = estimate_text_params(text)
    params += estimate_tower_params(_get(hf_config, "vision_config", None))
    params += estimate_tower_params(_get(hf_config, "audio_config", None))
    backbone = _get(hf_config, "backbone_hidden_size", None)
    if backbone:  # assistant: pre/post projections between target and draft widths
        params += 3 * int(backbone) * int(_get(text, "hidden_size"))
    return int(params * bytes_per_param)


def checkpoint_weight_bytes(model_path: Optional[str]) -> Optional[int]:
    """``total_size`` from a local safetensors index, if the checkpoint has one."""
    if not model_path:
        return None
    index = os.path.join(str(model_path), "model.safetensors.index.json")
    try:
        with open(index) as f:
            total = json.load(f).get("metadata", {}).get("total_size")
    except (OSError, ValueError):
        return None
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


def estimate_kv_budget_bytes(
    *,
    gpu_memory_bytes: int,
    mem_fraction_static: float,
    weight_bytes: int,
    mm_reservation_bytes: int = 0,
    context_bytes: int = CUDA_CONTEXT_BYTES,
) -> int:
    """KV budget as KVCacheConfigurator._profile_available_bytes computes it.

    free after weights - pre_model_load_memory * (1 - mem_fraction_static)
    - multimodal reservation, with pre_model_load_memory = card - context and
    free after weights = pre_model_load_memory - weights.
    """
    pre_load = gpu_memory_bytes - context_bytes
    return int(pre_load * mem_fraction_static - weight_bytes - mm_reservation_bytes)


def mm_reservation_bytes(is_multimodal: bool) -> int:
    """The multimodal embedding cache the KV budget leaves out (SGLANG_VLM_CACHE_SIZE_MB, 100 MB)."""
    if not is_multimodal:
        return 0
    raw = os.environ.get("SGLANG_VLM_CACHE_SIZE_MB", "").strip()
    mb = int(raw) if raw.isdigit() else 100
    return mb * (1 << 20)


def estimate_kv_budget_from_args(
    cfg: Any,
    hf_config: Any,
    *,
    is_multimodal: bool,
    draft_weight_bytes: int = 0,
) -> Optional[int]:
    """KV budget of one GPU for resolved (or resolving) arguments, or None.

    None when the card size or ``mem_fraction_static`` is unknown (no GPU
    visible) or the weights alone exceed the static budget.
    """
    from sglang.srt.utils import common

    gpu_mib = common.get_device_memory_capacity(getattr(cfg, "device", None))
    mfs = getattr(cfg, "mem_fraction_static", None)
    if not gpu_mib or not mfs:
        return None
    tp = max(1, int(getattr(cfg, "tp_size", 1) or 1))
    weights = checkpoint_weight_bytes(getattr(cfg, "model_path", None))
    if weights is None:
        weights = estimate_weight_bytes(hf_config)
    budget = estimate_kv_budget_bytes(
        gpu_memory_bytes=int(gpu_mib * (1 << 20)),
        mem_fraction_static=float(mfs),
        weight_bytes=weights // tp + draft_weight_bytes,
        mm_reservation_bytes=mm_reservation_bytes(is_multimodal),
    )
    return budget if budget > 0 else None


def kv_configurator(server_args: Any, *, device: str = "cuda", is_draft_worker: bool = False,
                    page_size: Optional[int] = None):
    """sglang's KVCacheConfigurator for resolved ServerArgs and no model, as the model runner builds it
    (TP 1, DP 1, PP 1, bf16 KV; page size: the resolved one unless given)."""
    import torch

    from sglang.srt.arg_groups.model_override_base import model_config_of, resolved_view
    from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator
    from sglang.srt.model_executor.model_runner_components.layer_setup import resolve_layer_indices
    from sglang.srt.model_executor.model_runner_components.spec_aux_hidden_state import (
        resolve_spec_aux_hidden_state_config,
    )
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    view = resolved_view(server_args)
    mc = model_config_of(server_args)
    algo = SpeculativeAlgorithm.from_string(view.speculative_algorithm)
    return KVCacheConfigurator(
        device=device, gpu_id=0, attn_dp_size=1, pp_size=1, pp_group=None, model=None, model_config=mc,
        server_args=server_args, kv_cache_dtype=torch.bfloat16, kv_cache_dtype_str="auto",
        model_dtype=torch.bfloat16, page_size=int(view.page_size) if page_size is None else page_size,
        sliding_window_size=int(text_config_of(mc.hf_config).sliding_window) - 1, spec_algorithm=algo,
        is_draft_worker=is_draft_worker, post_capture_kv_active=False,
        spec_aux_config=resolve_spec_aux_hidden_state_config(
            server_args=server_args, model_config=mc, spec_algorithm=algo, is_draft_worker=is_draft_worker),
        is_hybrid_swa=True, is_hybrid_swa_compress=mc.is_hybrid_swa_compress, use_mla_backend=False,
        layer_info=resolve_layer_indices(model=None, model_config=mc, is_draft_worker=is_draft_worker),
        forward_stream=None, req_to_token_pool=None, token_to_kv_pool_allocator=None, memory_pool_config=None,
    )
