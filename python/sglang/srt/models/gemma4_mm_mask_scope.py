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
"""Where the Gemma-4 language model attends bidirectionally within an image.

transformers' Gemma-4 family uses plain causal attention on every layer unless
``text_config.use_bidirectional_attention == "vision"``.  When it is set,
tokens of one vision block (a maximal run of image or video soft tokens,
``mm_token_type_ids`` 1 or 2) also see each other, on these layers:

* gemma4 (``Gemma4Model.forward`` / ``create_masks_for_vision_model``): the
  sliding-window layers only; full-attention layers stay causal.  The 26B-A4B
  and 31B checkpoints set the flag, E2B / E4B leave it unset.
* gemma4_unified (``Gemma4UnifiedModel.forward``) and diffusion_gemma
  (``DiffusionGemmaEncoderModel.create_masks_for_generate``): every layer, via
  ``create_masks_for_generate(block_sequence_ids=...)``, the mask sglang 0.5.23
  builds.  Their configs default to "vision" (unified) and unset (diffusion).

sglang 0.5.23 installs the image mask for every variant and the Triton and FA4
prefill backends apply it to every layer.  This module decides whether the
mask is wanted and on which layers, lists the vision blocks of a request, and
limits an installed mask to sliding-window layers where the family asks for
that: the prefill backend's ``forward_extend`` hides exactly the mask tensors
installed here while it runs a full-attention layer (``sliding_window_size``
< 0), so those layers take the plain causal path.  Other masks (e.g.
speculative-decoding trees) are never touched.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, List, Optional, Tuple

# attributes of a backend's forward metadata that carry the image mask
_MASK_ATTRS = ("custom_mask", "image_token_ranges")
_INSTALLED = "_gemma4_image_mask_scope"


# Layers that get the vision-block mask, per model family (config.model_type),
# when its text config asks for it.  Families not listed follow gemma4.
SLIDING_LAYERS, ALL_LAYERS = "sliding", "all"
_LAYERS_BY_MODEL_TYPE = {
    "gemma4": SLIDING_LAYERS,
    "gemma4_unified": ALL_LAYERS,
    "diffusion_gemma": ALL_LAYERS,
}


def wants_vision_bidirectional(text_config: Any) -> bool:
    """True when the checkpoint asks for bidirectional attention within images."""
    return getattr(text_config, "use_bidirectional_attention", None) == "vision"


def vision_mask_layers(config: Any) -> Optional[str]:
    """Where a model with this (composite) config attends bidirectionally within
    vision blocks: None (causal everywhere), ``"sliding"`` or ``"all"``."""
    if not wants_vision_bidirectional(getattr(config, "text_config", None)):
        return None
    model_type = getattr(config, "model_type", None)
    return _LAYERS_BY_MODEL_TYPE.get(model_type, SLIDING_LAYERS)


def vision_spans(mm_inputs: Any) -> List[Tuple[int, int]]:
    """Inclusive ``(begin, end)`` token spans of the vision blocks of one request:
    the offsets of its image and video items, sorted, touching spans merged (as
    transformers groups contiguous vision tokens into one block)."""
    if mm_inputs is None:
        return []
    spans = sorted(
        (int(b), int(e))
        for item in mm_inputs.mm_items
        if item.is_image() or item.is_video()
        for b, e in item.offsets
    )
    merged: List[Tuple[int, int]] = []
    for b, e in spans:
        if merged and b <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((b, e))
    return merged


def is_sliding_layer(layer: Any) -> bool:
    size = getattr(layer, "sliding_window_size", None)
    return size is not None and size > -1


def scope_to_sliding_layers(backend: Any, **installed: Optional[Any]) -> None:
    """Record the mask tensors just installed on ``backend.forward_metadata``
    (``custom_mask=...`` and/or ``image_token_ranges=...``) and make
    ``backend.forward_extend`` hide them from full-attention layers."""
    unknown = set(installed) - set(_MASK_ATTRS)
    if unknown:
        raise ValueError(f"unknown image-mask attributes: {sorted(unknown)}")
    state = backend.__dict__.get(_INSTALLED)
    if state is None:
        state = {}
        original = backend.forward_extend

        @functools.wraps(original)
        def forward_extend(q, k, v, layer, forward_batch, *args, **kwargs):
            if is_sliding_layer(layer) or not state:
                return original(q, k, v, layer, forward_batch, *args, **kwargs)
            metadata = backend.forward_metadata
            hidden = []
            for attr, ref in state.items():
                tensor = ref()
                if tensor is not None and getattr(metadata, attr, None) is tensor:
                    hidden.append((attr, tensor))
                    setattr(metadata, attr, None)
            try:
                return original(q, k, v, layer, forward_batch, *args, **kwargs)
            finally:
                for attr, tensor in hidden:
                    setattr(metadata, attr, tensor)

        backend.forward_extend = forward_extend
        setattr(backend, _INSTALLED, state)
    state.clear()
    # weak references: a finished batch's mask is not kept alive here
    state.update({k: weakref.ref(v) for k, v in installed.items() if v is not None})
