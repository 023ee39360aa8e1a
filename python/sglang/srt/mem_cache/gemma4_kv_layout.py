"""Which Gemma-4 KV rows the target's pool must hold.

Two kinds of rows that 0.5.23 sizes but never uses:

* Draft rows for the FROZEN_KV MTP assistant. FROZEN_KV MTP counts as an
  EAGLE-family algorithm, so the hybrid SWA pool configurator reserves one row
  per full-pool token for each assistant layer (4 layers: +16 KiB per token on
  the 26B-A4B target, whose own full layers take 20 KiB). The assistant reads
  the target's KV through the target's layer ids and allocates only a dummy
  pool, so these rows are never written or read.
  ``target_reserves_draft_kv_rows`` says whether a draft needs them.

* Buffers of KV-shared layers (E2B: 20 of 35 layers, E4B: 18 of 42). A shared
  layer's attention is built with the owner's layer id
  (``RadixAttention(layer_id=kv_shared_layer_index)``) and runs with
  ``save_kv_cache=False``: every read goes to the owner's buffer and nothing is
  written. ``owning_attention_layer_ids`` drops them from the pool's layer
  lists; the pool's ``layers_mapping`` then still holds every owner.

The upstream call sites call these functions through this module
(``gemma4_kv_layout.fn(...)``), one line each.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

# Architectures whose decoder is sglang.srt.models.gemma4_causal (KV-shared
# layers attend through RadixAttention(layer_id=owner) and never write).
GEMMA4_TEXT_ARCHITECTURES = (
    "Gemma4ForConditionalGeneration",
    "Gemma4ForCausalLM",
)

_LAYER_KINDS = ("sliding_attention", "full_attention")


def target_reserves_draft_kv_rows(spec_algorithm: Any) -> bool:
    """Whether the target pool reserves KV rows per token for the draft's layers.

    EAGLE/STANDALONE drafts keep their own KV pool, sized like the target's, so
    the target budget pays for it. The FROZEN_KV MTP assistant owns no KV.
    """
    is_frozen = getattr(spec_algorithm, "is_frozen_kv_mtp", None)
    return not (callable(is_frozen) and is_frozen())


def text_config_of(hf_config: Any) -> Any:
    """The text sub-config of a Gemma-4 config (the config itself for text-only)."""
    if hf_config is None:
        raise ValueError("Gemma-4 pool sizing needs a model config, got None")
    text = getattr(hf_config, "text_config", None)
    return text if text is not None else hf_config


def layer_types_of(text_config: Any) -> List[str]:
    """``layer_types`` of a Gemma-4 text config, checked.

    Raises ValueError when it is missing, empty, shorter than
    ``num_hidden_layers`` or names a kind other than sliding/full attention:
    pool sizing cannot tell the two kinds apart without it.
    """
    layer_types = getattr(text_config, "layer_types", None)
    if not layer_types:
        raise ValueError(
            "Gemma-4 KV-pool sizing needs `layer_types` in the text config "
            "(one of 'sliding_attention'/'full_attention' per layer); the config "
            f"{type(text_config).__name__} has none"
        )
    layer_types = list(layer_types)
    num_layers = getattr(text_config, "num_hidden_layers", None)
    if num_layers is not None and len(layer_types) < int(num_layers):
        raise ValueError(
            f"`layer_types` lists {len(layer_types)} layers but num_hidden_layers is {num_layers}"
        )
    unknown = sorted({t for t in layer_types if t not in _LAYER_KINDS})
    if unknown:
        raise ValueError(
            f"`layer_types` has unknown layer kinds {unknown}; expected {list(_LAYER_KINDS)}"
        )
    if num_layers is not None:
        layer_types = layer_types[: int(num_layers)]
    return layer_types


def kv_shared_layer_owners(text_config: Any) -> Dict[int, int]:
    """``{shared layer id: owner layer id}`` of a Gemma-4 text config.

    The last ``num_kv_shared_layers`` layers are KV-shared; each reads the cache
    of the last earlier non-shared layer of the same kind, the same rule as
    ``Gemma4Attention`` (``kv_shared_layer_index``).
    """
    num_shared = int(getattr(text_config, "num_kv_shared_layers", 0) or 0)
    if num_shared <= 0:
        return {}
    layer_types = layer_types_of(text_config)
    num_layers = len(layer_types)
    if num_shared >= num_layers:
        raise ValueError(
            f"num_kv_shared_layers={num_shared} leaves no layer that owns KV "
            f"(num_hidden_layers={num_layers})"
        )
    first_shared = num_layers - num_shared
    owners: Dict[int, int] = {}
    for layer_id in range(first_shared, num_layers):
        kind = layer_types[layer_id]
        candidates = [i for i in range(first_shared) if layer_types[i] == kind]
        if not candidates:
            raise ValueError(
                f"KV-shared layer {layer_id} is '{kind}' but no layer of that kind "
                f"precedes the shared block (layers 0..{first_shared - 1})"
            )
        owners[layer_id] = candidates[-1]
    return owners


def drops_kv_shared_layers(model_config: Any) -> bool:
    """Whether the pool of this (target) model may leave KV-shared layers out."""
    hf_config = getattr(model_config, "hf_config", None)
    architectures = getattr(hf_config, "architectures", None) or []
    if not any(a in GEMMA4_TEXT_ARCHITECTURES for a in architectures):
        return False
    text = getattr(model_config, "hf_text_config", None) or text_config_of(hf_config)
    return int(getattr(text, "num_kv_shared_layers", 0) or 0) > 0


def owning_attention_layer_ids(
    model_config: Any,
    swa_layer_ids: Optional[List[int]],
    full_layer_ids: Optional[List[int]],
) -> Tuple[Optional[List[int]], Optional[List[int]]]:
    """The SWA and full layer ids that need a pool buffer.

    For Gemma-4 targets with KV-shared layers, the shared layers are dropped:
    their attention uses the owner's layer id for every cache read and never
    writes, so a buffer of their own is never touched. Every owner stays.
    Other models pass through unchanged.
    """
    if swa_layer_ids is None or full_layer_ids is None:
        return swa_layer_ids, full_layer_ids
    if not drops_kv_shared_layers(model_config):
        return swa_layer_ids, full_layer_ids
    text = getattr(model_config, "hf_text_config", None) or text_config_of(model_config.hf_config)
    owners = kv_shared_layer_owners(text)
    shared = set(owners)
    kept_swa = [i for i in swa_layer_ids if i not in shared]
    kept_full = [i for i in full_layer_ids if i not in shared]
    kept = set(kept_swa) | set(kept_full)
    # The owners of the shared layers this runner holds must be in its pool.
    missing = sorted(
        {owners[i] for i in shared if i in set(swa_layer_ids) | set(full_layer_ids)} - kept
    )
    if missing:
        raise ValueError(
            f"KV-shared layers read layers {missing}, which this runner's pool "
            "does not hold (pipeline stage boundary inside the KV-sharing block?)"
        )
    return kept_swa, kept_full
