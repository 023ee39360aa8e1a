"""Language-model image mask scope (patch 0011, sglang/srt/models/gemma4_mm_mask_scope.py).

Checked against transformers' Gemma-4 mask semantics: ``create_masks_for_vision_model`` gives the
sliding-layer and full-layer masks when ``use_bidirectional_attention == "vision"``; otherwise every
layer is causal.  The sglang side is ``Gemma4ForConditionalGeneration.prepare_attn_masks`` on a Triton
(custom mask) and an FA4 (image token ranges) prefill backend, with the backend's ``forward_extend``
recording what each layer type sees.
"""

import types

import pytest
import torch

L = 20
WINDOW = 8
# token spans: image [3, 6], video frames [9, 11] and [12, 13] (touching: one block), audio [15, 16]
IMAGE, VIDEO, AUDIO = [(3, 6)], [(9, 11), (12, 13)], [(15, 16)]


def _items():
    from sglang.srt.managers.schedule_batch import Modality, MultimodalDataItem

    return [
        MultimodalDataItem(modality=Modality.IMAGE, offsets=list(IMAGE)),
        MultimodalDataItem(modality=Modality.VIDEO, offsets=list(VIDEO)),
        MultimodalDataItem(modality=Modality.AUDIO, offsets=list(AUDIO)),
    ]


def hf_masks(use_bidirectional_attention):
    """transformers' per-layer-type boolean masks [L, L] for the sequence above (True = attend)."""
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import (
        create_masks_for_vision_model,
        get_block_sequence_ids_for_mask,
    )

    causal = torch.ones(L, L, dtype=torch.bool).tril()
    if use_bidirectional_attention != "vision":
        return {"sliding_attention": causal & _window(), "full_attention": causal}
    cfg = Gemma4TextConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=16,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=WINDOW,
        use_bidirectional_attention="vision",
    )
    cfg._attn_implementation = "sdpa"
    types_ = torch.zeros(1, L, dtype=torch.long)
    for code, spans in ((1, IMAGE), (2, VIDEO), (3, AUDIO)):
        for b, e in spans:
            types_[0, b : e + 1] = code
    masks = create_masks_for_vision_model(
        config=cfg,
        inputs_embeds=torch.zeros(1, L, 16),
        attention_mask=torch.ones(1, L, dtype=torch.long),
        past_key_values=None,
        position_ids=torch.arange(L)[None],
        block_sequence_ids=get_block_sequence_ids_for_mask(types_, torch.device("cpu")),
    )
    return {k: causal if v is None else v[0, 0] for k, v in masks.items()}


def _window():
    q = torch.arange(L)[:, None]
    kv = torch.arange(L)[None, :]
    return kv > q - WINDOW  # what the kernel's sliding window keeps (transformers' overlay)


class Recorder:
    """forward_extend of a prefill backend: records the mask each layer would read."""

    def __init__(self, backend):
        self.backend = backend
        self.seen = []

    def __call__(self, q, k, v, layer, forward_batch, *args, **kwargs):
        md = self.backend.forward_metadata
        self.seen.append((getattr(md, "custom_mask", None), getattr(md, "image_token_ranges", None)))
        if kwargs.get("fail"):
            raise RuntimeError("kernel failed")
        return "out"


def _triton_backend():
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    backend = object.__new__(TritonAttnBackend)
    backend.forward_metadata = types.SimpleNamespace(custom_mask=None, mask_indptr=None)
    backend.recorder = backend.forward_extend = Recorder(backend)
    return backend


def _fa4_backend():
    backend = types.SimpleNamespace(fa_impl_ver=4)
    backend.forward_metadata = types.SimpleNamespace(image_token_ranges=None)
    backend.recorder = backend.forward_extend = Recorder(backend)
    return backend


def _forward_batch(prefix=0, items=None):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    return types.SimpleNamespace(
        forward_mode=ForwardMode.EXTEND,
        batch_size=1,
        extend_seq_lens=torch.tensor([L - prefix]),
        extend_prefix_lens=torch.tensor([prefix]),
        extend_seq_lens_cpu=[L - prefix],
        extend_prefix_lens_cpu=[prefix],
        mm_inputs=[types.SimpleNamespace(mm_items=_items() if items is None else items)],
    )


def _prepare(monkeypatch, backend, use_bidirectional_attention, prefix=0):
    from sglang.srt.models import gemma4_mm

    monkeypatch.setattr(gemma4_mm, "get_attn_backend", lambda: backend)
    text_config = types.SimpleNamespace(use_bidirectional_attention=use_bidirectional_attention)
    fake_model = types.SimpleNamespace(config=types.SimpleNamespace(text_config=text_config))
    gemma4_mm.Gemma4ForConditionalGeneration.prepare_attn_masks(
        fake_model, _forward_batch(prefix), torch.zeros(L - prefix, dtype=torch.long), mask_dtype=torch.bool
    )


SLIDING = types.SimpleNamespace(sliding_window_size=WINDOW - 1)
FULL = types.SimpleNamespace(sliding_window_size=-1)


def _effective(backend, layer, prefix=0):
    """The mask a layer of this type attends with on the Triton backend: its custom mask (causal
    when none), and the kernel's window on sliding layers."""
    backend.forward_extend(None, None, None, layer, None)
    custom, _ = backend.recorder.seen[-1]
    ext = L - prefix
    if custom is None:
        mask = torch.ones(ext, L, dtype=torch.bool).tril(diagonal=prefix)
    else:
        mask = custom.view(ext, L).bool()
    if layer is SLIDING:
        mask = mask & _window()[prefix:]
    return mask


def test_policy_follows_the_config():
    from transformers import Gemma4TextConfig

    from sglang.srt.models.gemma4_mm_mask_scope import wants_vision_bidirectional

    assert Gemma4TextConfig().use_bidirectional_attention is None  # E2B / E4B style
    assert not wants_vision_bidirectional(Gemma4TextConfig())
    assert wants_vision_bidirectional(Gemma4TextConfig(use_bidirectional_attention="vision"))
    assert not wants_vision_bidirectional(Gemma4TextConfig(use_bidirectional_attention="all"))
    assert not wants_vision_bidirectional(types.SimpleNamespace())


def test_vision_spans_merge_touching_blocks_and_skip_audio():
    from sglang.srt.models.gemma4_mm_mask_scope import vision_spans

    assert vision_spans(types.SimpleNamespace(mm_items=_items())) == [(3, 6), (9, 13)]
    assert vision_spans(None) == []


@pytest.mark.parametrize("setting", [None, "vision"])
def test_triton_masks_match_transformers_per_layer_type(monkeypatch, setting):
    backend = _triton_backend()
    _prepare(monkeypatch, backend, setting)
    ref = hf_masks(setting)
    assert torch.equal(_effective(backend, SLIDING), ref["sliding_attention"])
    assert torch.equal(_effective(backend, FULL), ref["full_attention"])
    if setting is None:
        # no dense mask is built at all for checkpoints that do not ask for one
        assert backend.forward_metadata.custom_mask is None


def test_triton_mask_with_cached_prefix(monkeypatch):
    # the image starts after a 2-token cached prefix: rows are the extend tokens only
    backend = _triton_backend()
    _prepare(monkeypatch, backend, "vision", prefix=2)
    ref = hf_masks("vision")
    assert torch.equal(_effective(backend, SLIDING, prefix=2), ref["sliding_attention"][2:])
    assert torch.equal(_effective(backend, FULL, prefix=2), ref["full_attention"][2:])


def test_full_layers_see_no_image_mask_and_it_is_restored(monkeypatch):
    backend = _triton_backend()
    _prepare(monkeypatch, backend, "vision")
    mask = backend.forward_metadata.custom_mask
    assert mask is not None
    seen = backend.recorder.seen
    backend.forward_extend(None, None, None, FULL, None)
    backend.forward_extend(None, None, None, SLIDING, None)
    assert seen[-2][0] is None and seen[-1][0] is mask
    assert backend.forward_metadata.custom_mask is mask  # restored after the full layer
    with pytest.raises(RuntimeError):
        backend.forward_extend(None, None, None, FULL, None, fail=True)
    assert backend.forward_metadata.custom_mask is mask  # restored on error too


def test_other_masks_are_never_hidden(monkeypatch):
    backend = _triton_backend()
    _prepare(monkeypatch, backend, "vision")
    tree_mask = torch.ones(4, dtype=torch.bool)  # e.g. a speculative-decoding tree mask
    backend.forward_metadata.custom_mask = tree_mask
    backend.forward_extend(None, None, None, FULL, None)
    assert backend.recorder.seen[-1][0] is tree_mask


def test_reinstall_tracks_the_latest_mask(monkeypatch):
    backend = _triton_backend()
    _prepare(monkeypatch, backend, "vision")
    wrapped = backend.forward_extend
    _prepare(monkeypatch, backend, "vision")
    assert backend.forward_extend is wrapped  # wrapped once
    latest = backend.forward_metadata.custom_mask
    backend.forward_extend(None, None, None, FULL, None)
    assert backend.recorder.seen[-1][0] is None
    assert backend.forward_metadata.custom_mask is latest


def test_fa4_ranges_only_on_sliding_layers(monkeypatch):
    backend = _fa4_backend()
    _prepare(monkeypatch, backend, "vision")
    ranges = backend.forward_metadata.image_token_ranges
    assert ranges is not None
    # video blocks are bidirectional too, as one block across touching frames
    assert ranges[10].tolist() == [9, 13] and ranges[4].tolist() == [3, 6]
    assert ranges[15].tolist() == [-1, -1]  # audio stays causal
    backend.forward_extend(None, None, None, FULL, None)
    backend.forward_extend(None, None, None, SLIDING, None)
    seen = backend.recorder.seen
    assert seen[-2][1] is None and seen[-1][1] is ranges


def test_fa4_nothing_installed_without_the_flag(monkeypatch):
    backend = _fa4_backend()
    _prepare(monkeypatch, backend, None)
    assert backend.forward_metadata.image_token_ranges is None
    assert backend.forward_extend is backend.recorder  # not wrapped


# --------------------------------------------------------------------------- diffusion and unified models
# gemma4_unified.py inherits prepare_attn_masks; gemma4_diffusion.py calls
# Gemma4ForConditionalGeneration.prepare_attn_masks(self, ...) with its own model as self.


def _image_items():
    from sglang.srt.managers.schedule_batch import Modality, MultimodalDataItem

    return [
        MultimodalDataItem(modality=Modality.IMAGE, offsets=list(IMAGE)),
        MultimodalDataItem(modality=Modality.AUDIO, offsets=list(AUDIO)),
    ]


def upstream_0523_masks():
    """sglang 0.5.23's image mask, which its backends apply to every layer: causal OR same image span."""
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    for b, e in IMAGE:
        mask[b : e + 1, b : e + 1] = True
    return {"sliding_attention": mask & _window(), "full_attention": mask}


def hf_block_masks_all_layers():
    """transformers' create_masks_for_generate with block_sequence_ids (what Gemma4UnifiedModel.forward and
    DiffusionGemmaEncoderModel.create_masks_for_generate build for "vision"): the overlay on every layer type."""
    from transformers import Gemma4TextConfig
    from transformers.masking_utils import create_masks_for_generate
    from transformers.models.gemma4.modeling_gemma4 import get_block_sequence_ids_for_mask

    cfg = Gemma4TextConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1, head_dim=16,
        layer_types=["sliding_attention", "full_attention"], sliding_window=WINDOW,
        use_bidirectional_attention="vision",
    )
    cfg._attn_implementation = "sdpa"
    types_ = torch.zeros(1, L, dtype=torch.long)
    for code, spans in ((1, IMAGE), (3, AUDIO)):
        for b, e in spans:
            types_[0, b : e + 1] = code
    masks = create_masks_for_generate(
        config=cfg, inputs_embeds=torch.zeros(1, L, 16), attention_mask=torch.ones(1, L, dtype=torch.long),
        past_key_values=None, position_ids=torch.arange(L)[None],
        block_sequence_ids=get_block_sequence_ids_for_mask(types_, torch.device("cpu")),
    )
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return {k: causal if v is None else v[0, 0] for k, v in masks.items()}


def _family_config(family, setting="default"):
    from transformers import DiffusionGemmaConfig, Gemma4UnifiedConfig

    cls = {"unified": Gemma4UnifiedConfig, "diffusion": DiffusionGemmaConfig}[family]
    if setting == "default":
        return cls()
    return cls(text_config={"use_bidirectional_attention": setting})


def _prepare_family(monkeypatch, backend, family, config):
    from sglang.srt.models import gemma4_mm, gemma4_unified

    monkeypatch.setattr(gemma4_mm, "get_attn_backend", lambda: backend)
    model = types.SimpleNamespace(config=config)
    method = {
        "unified": gemma4_unified.Gemma4UnifiedForConditionalGeneration.prepare_attn_masks,
        "diffusion": gemma4_mm.Gemma4ForConditionalGeneration.prepare_attn_masks,  # as gemma4_diffusion calls it
    }[family]
    method(model, _forward_batch(items=_image_items()), torch.zeros(L, dtype=torch.long), torch.bool)


def test_family_defaults_of_the_configs():
    from sglang.srt.models.gemma4_mm_mask_scope import vision_mask_layers

    # what the real configs say by default: unified asks for the vision mask, diffusion does not
    assert vision_mask_layers(_family_config("unified")) == "all"
    assert vision_mask_layers(_family_config("diffusion")) is None
    assert vision_mask_layers(_family_config("diffusion", "vision")) == "all"
    from transformers import Gemma4Config

    assert vision_mask_layers(Gemma4Config(text_config={"use_bidirectional_attention": "vision"})) == "sliding"
    assert vision_mask_layers(Gemma4Config()) is None


@pytest.mark.parametrize("family, setting", [("unified", "default"), ("diffusion", "vision")])
def test_unified_and_diffusion_masks_equal_0523_when_the_config_asks(monkeypatch, family, setting):
    backend = _triton_backend()
    _prepare_family(monkeypatch, backend, family, _family_config(family, setting))
    up, hf = upstream_0523_masks(), hf_block_masks_all_layers()
    assert torch.equal(up["sliding_attention"], hf["sliding_attention"])
    assert torch.equal(up["full_attention"], hf["full_attention"])
    for layer, key in ((SLIDING, "sliding_attention"), (FULL, "full_attention")):
        assert torch.equal(_effective(backend, layer), up[key]), (family, key)
    assert backend.forward_extend is backend.recorder  # never scoped to sliding layers


@pytest.mark.parametrize("family", ["unified", "diffusion"])
def test_unified_and_diffusion_fa4_ranges_on_every_layer(monkeypatch, family):
    backend = _fa4_backend()
    _prepare_family(monkeypatch, backend, family, _family_config(family, "vision"))
    ranges = backend.forward_metadata.image_token_ranges
    assert ranges[4].tolist() == [3, 6] and ranges[15].tolist() == [-1, -1]
    backend.forward_extend(None, None, None, FULL, None)
    assert backend.recorder.seen[-1][1] is ranges


@pytest.mark.parametrize("family, setting", [("diffusion", "default"), ("unified", None)])
def test_unified_and_diffusion_causal_when_the_config_does_not_ask(monkeypatch, family, setting):
    # transformers builds no block overlay without "vision"; 0.5.23 applied the image mask regardless
    backend = _triton_backend()
    _prepare_family(monkeypatch, backend, family, _family_config(family, setting))
    assert backend.forward_metadata.custom_mask is None
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    assert torch.equal(_effective(backend, FULL), causal)
