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
"""Gemma-4 image pixels travel as the resized uint8 image, not as float32.

transformers' Gemma-4 image processor resizes every image to uint8, then
rescales (and optionally normalises) it to float32, patchifies it and pads it
to ``max_soft_tokens * k * k`` patches: 2520 x 768 float32 = 7.7 MB per image,
4x the bytes of the uint8 pixels they are computed from.  sglang copies that
tensor into shared memory, hashes it (sha256) on the scheduler's main thread
and copies it to the GPU, once per image.

Here the same HF processor call runs with ``do_rescale=False,
do_normalize=False``: resize, patchify and padding are unchanged (they are the
processor's own code) and the patches stay uint8.  The skipped step is
elementwise per channel, so it is a table: ``pixel_lut(...)[c, v]`` is the
float32 value the processor gives a pixel of value ``v`` in channel ``c``.  The
table is measured once per processor configuration by running the processor
itself, with and without the step, on a small image holding every value in
every channel, and is shipped with each image (3 x 256 float32).  On the model
side ``restore_pixel_values`` looks the uint8 patches up in that table (on the
device the features are on) and zeroes the padding patches, which gives the
float32 pixel values the processor would have produced, bit for bit.

Only ``Gemma4SGLangProcessor`` (model ``Gemma4ForConditionalGeneration``,
whose ``get_image_feature`` calls ``restore_pixel_values``) uses it, only for
images (videos keep float32), and only when the processor's output really is
uint8 and the table is exact; otherwise the float32 path runs unchanged.
``SGLANG_GEMMA4_UINT8_PIXELS=0`` (registered in sglang.srt.environ) turns it off.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from sglang.srt.models.gemma4_vision_batching import FINITE_PIXELS_ATTR

LUT_ATTR = "pixel_values_lut"
MODEL_CLASS = "Gemma4ForConditionalGeneration"
# kwargs that define the elementwise step; a caller or --mm-process-config that
# sets one of them keeps the float32 path (the table would describe other values)
STEP_KWARGS = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
CHANNELS = 3
LEVELS = 256

_lut_cache: Dict[tuple, Optional[torch.Tensor]] = {}
_lut_lock = threading.Lock()


def enabled() -> bool:
    from sglang.srt.environ import envs

    return bool(envs.SGLANG_GEMMA4_UINT8_PIXELS.get())


# ---------------------------------------------------------------------------
# Tokenizer side
# ---------------------------------------------------------------------------


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return repr(value)


def _probe_image(side: int) -> np.ndarray:
    """[side, side, 3] uint8 with every value 0..255 in every channel."""
    y, x = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    base = y * side + x
    return np.stack([(base + 85 * c) % LEVELS for c in range(CHANNELS)], axis=-1).astype(np.uint8)


def _patchify(image_hwc: np.ndarray, patch: int) -> np.ndarray:
    """The processor's patch layout: patches row-major, (ky, kx, channel) inside."""
    h, w, c = image_hwc.shape
    p = image_hwc.reshape(h // patch, patch, w // patch, patch, c).transpose(0, 2, 1, 3, 4)
    return p.reshape((h // patch) * (w // patch), patch * patch * c)


def _measure_lut(image_processor) -> Optional[torch.Tensor]:
    from PIL import Image

    patch = int(image_processor.patch_size)
    k = int(image_processor.pooling_kernel_size)
    side = patch * k
    while side * side < LEVELS:
        side += patch * k
    probe = _probe_image(side)
    img = Image.fromarray(probe)
    ref = image_processor(images=[img], do_resize=False, return_tensors="pt")
    raw = image_processor(images=[img], do_resize=False, do_rescale=False, do_normalize=False,
                          return_tensors="pt")
    pv, u8 = ref["pixel_values"], raw["pixel_values"]
    if pv.dtype != torch.float32 or u8.dtype != torch.uint8 or pv.shape != u8.shape:
        return None
    pos = ref["image_position_ids"][0]
    valid = (pos != -1).any(-1)
    n = int(valid.sum())
    if not bool(valid[:n].all()) or bool(pv[0][~valid].ne(0).any()):
        return None  # valid patches are not a prefix, or padding is not zero
    expected = torch.from_numpy(_patchify(probe, patch))
    if not torch.equal(u8[0, :n], expected):
        return None  # not the layout restore_pixel_values assumes
    vals, codes = pv[0, :n], u8[0, :n].long()
    chan = torch.arange(vals.shape[-1]) % CHANNELS
    lut = torch.full((CHANNELS, LEVELS), float("nan"), dtype=torch.float32)
    lut[chan.expand_as(codes), codes] = vals
    if bool(lut.isnan().any()) or not torch.equal(lut[chan.expand_as(codes), codes], vals):
        return None  # a value the probe did not cover, or not elementwise per channel
    return lut


def pixel_lut(image_processor) -> Optional[torch.Tensor]:
    """``[3, 256]`` float32: the value ``image_processor`` gives a uint8 pixel
    ``v`` of channel ``c`` after its rescale / normalise step; ``None`` when
    that step is not an exact per-channel table of the uint8 image."""
    attrs = {name: getattr(image_processor, name, None)
             for name in STEP_KWARGS + ("patch_size", "pooling_kernel_size", "max_soft_tokens")}
    key = (type(image_processor).__module__, type(image_processor).__qualname__, _freeze(attrs))
    with _lut_lock:
        if key in _lut_cache:
            return _lut_cache[key]
    try:
        lut = _measure_lut(image_processor)
    except Exception:
        lut = None
    with _lut_lock:
        _lut_cache[key] = lut
    return lut


def _applies(mm_processor) -> bool:
    return any(getattr(m, "__name__", "") == MODEL_CLASS for m in getattr(type(mm_processor), "models", ()))


def process_mm_data(mm_processor, call: Callable[..., Any], input_text, images=None, **kwargs):
    """``call(input_text, images=..., **kwargs)`` (the base ``process_mm_data``)
    with uint8 image patches plus their table, when that is exact; else the
    call unchanged."""
    if not images or not enabled() or not _applies(mm_processor):
        return call(input_text, images=images, **kwargs)
    asked = dict(kwargs.get("images_kwargs") or {})
    asked.update(getattr(mm_processor, "image_config", None) or {})
    hf = kwargs.get("processor") or mm_processor._processor
    image_processor = getattr(hf, "image_processor", None)
    if image_processor is None or any(k in asked for k in STEP_KWARGS):
        return call(input_text, images=images, **kwargs)
    lut = pixel_lut(image_processor)
    if lut is None:
        return call(input_text, images=images, **kwargs)
    kwargs["images_kwargs"] = {**(kwargs.get("images_kwargs") or {}), "do_rescale": False, "do_normalize": False}
    ret = call(input_text, images=images, **kwargs)
    pv = ret.get("pixel_values") if hasattr(ret, "get") else None
    if isinstance(pv, torch.Tensor) and pv.dtype == torch.uint8:
        from sglang.srt.managers.schedule_batch import Modality

        mm_processor.ATTR_NAME_TO_MODALITY.setdefault(LUT_ATTR, Modality.IMAGE)
        # [1, 3, 256]: dim 0 never equals a bundle's image count (> 1), so the
        # per-image split copies the table to every image item
        ret[LUT_ATTR] = lut.unsqueeze(0)
    return ret


# ---------------------------------------------------------------------------
# Model side
# ---------------------------------------------------------------------------


class _Restored:
    """An item whose ``feature`` is replaced; every other attribute is the item's.
    ``FINITE_PIXELS_ATTR`` names the tensors rebuilt from uint8 through a finite
    table, which the vision batching need not scan for NaN / inf."""

    __slots__ = ("_item", "feature", FINITE_PIXELS_ATTR)

    def __init__(self, item, feature, finite=()):
        object.__setattr__(self, "_item", item)
        object.__setattr__(self, "feature", feature)
        object.__setattr__(self, FINITE_PIXELS_ATTR, tuple(finite))

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "_item"), name)


def _restore_tensor(pixels: torch.Tensor, positions, lut: torch.Tensor, where: str) -> torch.Tensor:
    if lut.numel() != CHANNELS * LEVELS:
        raise ValueError(f"{where}: {LUT_ATTR} has {lut.numel()} values, expected {CHANNELS} x {LEVELS}")
    if not bool(torch.isfinite(lut).all()):
        raise ValueError(f"{where}: {LUT_ATTR} holds non-finite values (NaN or inf)")
    if pixels.shape[-1] % CHANNELS:
        raise ValueError(f"{where}: {pixels.shape[-1]} values per patch is not a multiple of {CHANNELS}")
    if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != tuple(pixels.shape[:-1]) + (2,):
        got = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"{where}: uint8 pixels {tuple(pixels.shape)} need image_position_ids of shape "
                         f"{tuple(pixels.shape[:-1]) + (2,)}, got {got}")
    dev = pixels.device
    table = lut.to(dev, torch.float32).reshape(-1)
    chan = torch.arange(pixels.shape[-1], device=dev) % CHANNELS
    out = table[pixels.long() + chan * LEVELS]
    padding = (positions == -1).all(-1).to(dev)
    return out.masked_fill_(padding.unsqueeze(-1), 0.0)


def restore_pixel_values(items: Sequence[Any], position_attr: str = "image_position_ids") -> List[Any]:
    """Items whose uint8 pixels (with a table) are replaced by the float32 pixel
    values the HF processor would have produced; other items as they are.
    An item with fewer position tensors than pixel tensors is an error."""
    out = []
    for idx, item in enumerate(items):
        feature = getattr(item, "feature", None)
        lut = getattr(item, LUT_ATTR, None) if isinstance(feature, (torch.Tensor, list, tuple)) else None
        if lut is None:
            out.append(item)
            continue
        where = f"image item {idx}"
        if not isinstance(lut, torch.Tensor):
            raise ValueError(f"{where}: {LUT_ATTR} is {type(lut).__name__}, not a tensor")
        positions = getattr(item, position_attr, None)
        if isinstance(feature, torch.Tensor):
            feats, poss, single = [feature], [positions], True
        else:
            feats = list(feature)
            poss = list(positions) if isinstance(positions, (list, tuple)) else [positions] * len(feats)
            single = False
            if len(poss) < len(feats):
                raise ValueError(f"{where}: {len(feats)} pixel tensors but {len(poss)} {position_attr} "
                                 "tensors (count mismatch; one per pixel tensor expected)")
        restored, finite = [], []
        for t_idx, (f, p) in enumerate(zip(feats, poss)):
            if isinstance(f, torch.Tensor) and f.dtype == torch.uint8:
                f = _restore_tensor(f, p, lut, where if single else f"{where} tensor {t_idx}")
                finite.append(f)
            restored.append(f)
        out.append(_Restored(item, restored[0] if single else restored, finite))
    return out
