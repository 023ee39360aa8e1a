"""Packed Gemma-4 vision encoding (patch 0010, sglang/srt/models/gemma4_vision_batching.py).

A tiny Gemma4ForConditionalGeneration is built on CPU (float32) with the same random weights as
transformers' Gemma4ForConditionalGeneration; its image / video features are checked against
transformers (images with padding patches), against the 0.5.23 per-image path (images without
padding), for call counts, chunking, item order, storage ownership and bad-input errors.
The packed variable-length path runs with the real triton_attn vision backend under Triton's
interpreter in a subprocess (CPU twin of the GPU path).
"""

import os
import subprocess
import sys
import types

import pytest
import torch

import gemma4_tiny

TOL = 2e-5


# The tiny model of benchmark/gemma4/make_model_dir.py, in float32 (numerics compared to 2e-5), with the
# standardize stage of the 26B / 31B towers on (the small tower of the tiny geometry has none; the packed path
# must keep it) and 4x4-pixel patches (test images of a few patches each).
VISION_OVERRIDES = dict(standardize=True, patch_size=4)
CONFIG = dict(vision_overrides=VISION_OVERRIDES, dtype="float32")


class _Models:
    """sglang and transformers Gemma-4 models sharing random float32 weights."""

    def __init__(self):
        import transformers

        self._cpu = gemma4_tiny.sglang_on_cpu()
        self._cpu.__enter__()
        from sglang.srt.models import gemma4_mm

        cfg = gemma4_tiny.sglang_config(**CONFIG)
        torch.manual_seed(0)
        self.hf = transformers.Gemma4ForConditionalGeneration(gemma4_tiny.hf_config(**CONFIG))
        gemma4_tiny.randomize_(self.hf.eval())
        self.sg = gemma4_mm.Gemma4ForConditionalGeneration(cfg)
        self.sg.load_weights(list(self.hf.state_dict().items()))
        self.sg.eval()
        self.cfg = cfg
        self.calls = {"encoder": 0, "embed": 0}
        self.sg.vision_tower.encoder.register_forward_hook(lambda *a: self._count("encoder"))
        self.sg.embed_vision.register_forward_hook(lambda *a: self._count("embed"))

    def _count(self, key):
        self.calls[key] += 1

    def reset_calls(self):
        self.calls.update(encoder=0, embed=0)

    def close(self):
        self._cpu.__exit__(None, None, None)


@pytest.fixture(scope="module")
def models():
    m = _Models()
    yield m
    m.close()


_VISION = dict(gemma4_tiny.vision(), **VISION_OVERRIDES)
TEXT_HIDDEN = gemma4_tiny.text()["hidden_size"]
POSITIONS = _VISION["position_embedding_size"]  # position ids per axis: [0, POSITIONS)
POOL = _VISION["pooling_kernel_size"] ** 2  # patches pooled into one soft token
PATCH_PIXELS = 3 * _VISION["patch_size"] ** 2
MAX_PATCHES = 9 * POOL  # 9 soft tokens


def make_image(rows, cols, num_patches=MAX_PATCHES, seed=0):
    """Pre-patchified image of rows x cols patches, padded to num_patches with (-1, -1)."""
    g = torch.Generator().manual_seed(seed)
    pv = torch.rand(num_patches, PATCH_PIXELS, generator=g)
    pos = torch.full((num_patches, 2), -1, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    n = rows * cols
    pos[:n, 0] = xs.reshape(-1)
    pos[:n, 1] = ys.reshape(-1)
    pv[n:] = 0.0
    return pv, pos


def image_item(images):
    pv = torch.stack([p for p, _ in images])
    pp = torch.stack([q for _, q in images])
    return types.SimpleNamespace(feature=pv, image_position_ids=pp)


def hf_image_features(models, images):
    with torch.no_grad():
        out = models.hf.model.get_image_features(
            torch.stack([p for p, _ in images]), torch.stack([q for _, q in images])
        )
    return list(out.pooler_output)


def per_image_reference(models, images):
    """The 0.5.23 get_image_feature algorithm: one tower call and one projection per image."""
    vt = models.sg.vision_tower
    outs = []
    with torch.no_grad():
        for pv, pp in images:
            pooled, mask = vt(pv[None], pp[None])
            outs.append(models.sg.embed_vision(inputs_embeds=pooled[0][mask[0]][None])[0])
    return outs


def assert_close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


# --------------------------------------------------------------------------- call counts


def test_same_size_images_one_encoder_call(models):
    images = [make_image(6, 9, seed=i) for i in range(6)]
    models.reset_calls()
    with torch.no_grad():
        out = models.sg.get_image_feature([image_item([im]) for im in images])
    assert models.calls == {"encoder": 1, "embed": 1}
    assert isinstance(out, list) and len(out) == 6
    for o, r in zip(out, hf_image_features(models, images)):
        assert_close(o, r)


def test_mixed_sizes_grouped_by_valid_length_on_sdpa(models):
    # sdpa takes no cu_seqlens: one call per distinct valid-patch count, never padding
    assert models.sg.vision_tower.encoder.layers[0].self_attn.backend_name == "sdpa"
    images = [make_image(6, 9, seed=1), make_image(3, 6, seed=2), make_image(6, 9, seed=3)]
    models.reset_calls()
    with torch.no_grad():
        out = models.sg.get_image_feature([image_item([im]) for im in images])
    assert models.calls == {"encoder": 2, "embed": 1}
    for o, r in zip(out, hf_image_features(models, images)):
        assert_close(o, r)


def test_chunking_under_small_budget(models):
    from sglang.srt.models import gemma4_vision_batching as vb

    images = [make_image(9, 9, seed=10 + i) for i in range(5)]
    items = [image_item([im]) for im in images]
    per_token = vb.encoder_bytes_per_token(models.cfg.vision_config, torch.float32)
    models.reset_calls()
    with torch.no_grad():
        out = vb.encode_vision_items(
            items,
            kind="image",
            vision_tower=models.sg.vision_tower,
            embed_vision=models.sg.embed_vision,
            text_hidden_size=TEXT_HIDDEN,
            dtype=torch.float32,
            # room for two full images (and their MAX_PATCHES-key scores) per call
            budget_bytes=2 * MAX_PATCHES * (per_token + 4 * 2 * MAX_PATCHES),
        )
    assert models.calls == {"encoder": 3, "embed": 1}
    for o, r in zip(out, per_image_reference(models, images)):
        assert_close(o, r)


def test_budget_from_environment(monkeypatch):
    from sglang.srt.models import gemma4_vision_batching as vb

    monkeypatch.setenv(vb.BUDGET_ENV, "3")
    assert vb.resolve_budget_bytes(torch.device("cpu")) == 3 << 20
    monkeypatch.setenv(vb.BUDGET_ENV, "-1")
    with pytest.raises(ValueError, match=vb.BUDGET_ENV):
        vb.resolve_budget_bytes(torch.device("cpu"))
    monkeypatch.delenv(vb.BUDGET_ENV)
    assert vb.resolve_budget_bytes(torch.device("cpu")) == vb.DEFAULT_BUDGET_MB << 20


def test_chunk_by_budget_keeps_order_and_oversized_alone():
    from sglang.srt.models.gemma4_vision_batching import chunk_by_budget

    assert chunk_by_budget([4, 4, 9, 1, 1], range(5), 8) == [[0, 1], [2], [3, 4]]
    assert chunk_by_budget([], range(0), 8) == []


def test_empty_input(models):
    models.reset_calls()
    out = models.sg.get_image_feature([])
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (0, TEXT_HIDDEN)
    assert models.calls == {"encoder": 0, "embed": 0}
    assert tuple(models.sg.get_video_feature([]).shape) == (0, TEXT_HIDDEN)


# --------------------------------------------------------------------------- order and storage


def test_order_with_interleaved_precomputed_embeddings(models):
    a, b, c, d = (make_image(6, 9, seed=20 + i) for i in range(4))
    pre1 = torch.randn(5, TEXT_HIDDEN)
    pre2 = torch.randn(1, 3, TEXT_HIDDEN)
    items = [
        image_item([a]),
        types.SimpleNamespace(feature=pre1, image_position_ids=None),
        image_item([b, c]),  # two images in one item
        types.SimpleNamespace(feature=[pre2, d[0]], image_position_ids=[None, d[1]]),
    ]
    models.reset_calls()
    with torch.no_grad():
        out = models.sg.get_image_feature(items)
    assert models.calls == {"encoder": 1, "embed": 1}
    ref = hf_image_features(models, [a, b, c, d])
    assert len(out) == 4
    assert_close(out[0], ref[0])
    assert torch.equal(out[1], pre1)
    # copied, as 0.5.23 did: a cache entry must not alias a (possibly borrowed) input buffer
    assert out[1].untyped_storage().data_ptr() != pre1.untyped_storage().data_ptr()
    assert_close(out[2], torch.cat([ref[1], ref[2]]))
    assert_close(out[3], torch.cat([pre2[0], ref[3]]))
    for o in out:
        # each result owns exactly its own bytes
        assert o.untyped_storage().nbytes() == o.numel() * o.element_size()


def test_single_item_result_is_not_copied(models):
    a = make_image(9, 9, seed=30)
    with torch.no_grad():
        out = models.sg.get_image_feature([image_item([a])])
    assert out[0].untyped_storage().nbytes() == out[0].numel() * out[0].element_size()


# --------------------------------------------------------------------------- numerics


def test_parity_with_per_image_path_without_padding(models):
    # full images (no padding patches): 0.5.23 per-image path is exact there
    images = [make_image(9, 9, seed=40), make_image(6, 6, 36, seed=41), make_image(9, 9, seed=42)]
    with torch.no_grad():
        out = models.sg.get_image_feature([image_item([im]) for im in images])
    for o, r in zip(out, per_image_reference(models, images)):
        assert_close(o, r)


def test_parity_with_transformers_on_padded_images(models):
    images = [make_image(r, c, seed=50 + r * c) for r, c in ((3, 3), (3, 6), (6, 9), (9, 6), (9, 9))]
    with torch.no_grad():
        out = models.sg.get_image_feature([image_item([im]) for im in images])
    ref = hf_image_features(models, images)
    for o, r in zip(out, ref):
        assert_close(o, r)
    # the 0.5.23 per-image path pools padding patches into soft token 0
    up = per_image_reference(models, images)
    assert (up[0][0] - ref[0][0]).abs().max() > 1e-3


def test_video_parity_with_transformers(models):
    frames_a = [make_image(6, 9, seed=60 + i) for i in range(3)]
    frames_b = [make_image(3, 6, seed=70 + i) for i in range(2)]
    items = [
        types.SimpleNamespace(
            feature=torch.stack([p for p, _ in fr])[None],  # [1, F, P, C]
            video_position_ids=torch.stack([q for _, q in fr])[None],
        )
        for fr in (frames_a, frames_b)
    ]
    models.reset_calls()
    with torch.no_grad():
        out = models.sg.get_video_feature(items)
    assert models.calls["embed"] == 1
    frames = frames_a + frames_b
    with torch.no_grad():
        ref = models.hf.model.get_video_features(
            torch.stack([p for p, _ in frames]),
            torch.stack([q for _, q in frames]),
            num_frames_per_video=torch.tensor([3, 2]),
        ).pooler_output
    assert len(out) == 2
    for o, r in zip(out, ref):
        assert_close(o, r)


def test_position_embeddings_gather_matches_one_hot():
    from sglang.srt.models.gemma4_vision_batching import position_embeddings

    g = torch.Generator().manual_seed(3)
    table = torch.randn(2, 40, 8, generator=g).to(torch.bfloat16)
    pos = torch.randint(0, 40, (2, 30, 2), generator=g)
    pos[:, 25:] = -1
    pad = (pos == -1).all(-1)
    one_hot = torch.nn.functional.one_hot(pos.clamp(min=0), 40).permute(0, 2, 1, 3).to(table)
    ref = (one_hot @ table).sum(dim=1).masked_fill(pad.unsqueeze(-1), 0.0)
    assert torch.equal(position_embeddings(table, pos, pad), ref)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (lambda pv, pp: dict(feature=pv[None], image_position_ids=None), "no matching image_position_ids"),
        (lambda pv, pp: dict(feature=pv[None, None], image_position_ids=pp[None, None]), "rank"),
        (lambda pv, pp: dict(feature=pv[None], image_position_ids=pp[None, :40]), "does not match"),
        (lambda pv, pp: dict(feature=torch.stack([pv, pv]), image_position_ids=pp[None]), "does not match"),
        (lambda pv, pp: dict(feature=pv[None, :, :40], image_position_ids=pp[None]), "values per patch"),
        (lambda pv, pp: dict(feature=pv[None], image_position_ids=(pp + POSITIONS)[None]), rf"\[0, {POSITIONS}\)"),
        (lambda pv, pp: dict(feature=pv[None], image_position_ids=torch.full_like(pp, -1)[None]), "padding"),
        (lambda pv, pp: dict(feature=pv[None, :MAX_PATCHES - 1], image_position_ids=pp[None, :MAX_PATCHES - 1]),
         f"multiple of {POOL}"),
        (lambda pv, pp: dict(feature=pv[None], image_position_ids=pp[None].float()), "integer"),
    ],
)
def test_bad_input_names_the_item(models, bad, pattern):
    good = image_item([make_image(6, 9, seed=80)])
    pv, pp = make_image(6, 9, seed=81)
    items = [good, types.SimpleNamespace(**bad(pv, pp))]
    models.reset_calls()
    with pytest.raises(ValueError, match=pattern) as exc:
        models.sg.get_image_feature(items)
    assert "image item 1" in str(exc.value) and "image item 0" not in str(exc.value)
    assert models.calls == {"encoder": 0, "embed": 0}  # nothing was encoded
    # the well-formed item alone still encodes
    with torch.no_grad():
        assert len(models.sg.get_image_feature([good])) == 1


def test_every_bad_item_is_reported(models):
    pv, pp = make_image(6, 9, seed=90)
    items = [
        types.SimpleNamespace(feature=pv[None], image_position_ids=None),
        image_item([make_image(6, 9, seed=91)]),
        types.SimpleNamespace(feature=pv[None, :, :5], image_position_ids=pp[None]),
    ]
    with pytest.raises(ValueError) as exc:
        models.sg.get_image_feature(items)
    msg = str(exc.value)
    assert "image item 0" in msg and "image item 2" in msg and "image item 1" not in msg


def test_video_bad_rank(models):
    pv, pp = make_image(6, 9, seed=92)
    item = types.SimpleNamespace(feature=pv[None, None, None], video_position_ids=pp[None, None, None])
    with pytest.raises(ValueError, match="video item 0.*rank"):
        models.sg.get_video_feature([item])


def _assert_names_only_item_1(models, items, message):
    """get_image_feature refuses ``items`` with a ValueError holding ``message``, naming item 1 only,
    before any tower call; the good item 0 alone still encodes."""
    models.reset_calls()
    with pytest.raises(ValueError) as exc:
        models.sg.get_image_feature(items)
    msg = str(exc.value)
    assert message in msg and "image item 0" not in msg, msg
    assert models.calls == {"encoder": 0, "embed": 0}  # refused before any tensor work on the tower
    with torch.no_grad():
        assert len(models.sg.get_image_feature(items[:1])) == 1


def test_zero_size_image_is_a_clear_error(models):
    # pixel patches [1, 0, 48]: was a RuntimeError from a reshape inside plan_items
    good = image_item([make_image(6, 9, seed=93)])
    empty = types.SimpleNamespace(
        feature=torch.zeros(1, 0, PATCH_PIXELS), image_position_ids=torch.zeros(1, 0, 2, dtype=torch.long)
    )
    _assert_names_only_item_1(models, [good, empty], "image item 1: empty image (0 patches")


@pytest.mark.parametrize("alone", [True, False])
def test_item_without_images_is_a_clear_error(models, alone):
    # [0, P, C] pixel values: was None (item alone) or an empty embedding returned into the batch
    good = image_item([make_image(6, 9, seed=94)])
    none = types.SimpleNamespace(
        feature=torch.zeros(0, MAX_PATCHES, PATCH_PIXELS),
        image_position_ids=torch.zeros(0, MAX_PATCHES, 2, dtype=torch.long),
    )
    if alone:
        with pytest.raises(ValueError, match="image item 0: no images in the item"):
            models.sg.get_image_feature([none])
    else:
        _assert_names_only_item_1(models, [good, none], "image item 1: no images in the item")
    # an item with no pixel tensor at all is refused by the same collector, before encoding
    _assert_names_only_item_1(
        models,
        [good, types.SimpleNamespace(feature=[], image_position_ids=[])],
        "image item 1: no images in the item (no pixel values or embeddings)",
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_name_the_image(models, value):
    # NaN / inf pixels flowed into NaN soft tokens; now the image holding them is named
    good = image_item([make_image(6, 9, seed=95)])
    a, b = make_image(6, 9, seed=96), make_image(3, 6, seed=97)
    b[0][4, 7] = value
    items = [good, image_item([a, b])]
    _assert_names_only_item_1(models, items, "image item 1 image 1: non-finite pixel values (")
    with pytest.raises(ValueError) as exc:
        models.sg.get_image_feature(items)
    assert "image item 1 image 0" not in str(exc.value)
    kind = "NaN" if value != value else "inf"
    assert f"1 {kind}" in str(exc.value)
    # video frames are checked the same way
    frames = torch.stack([a[0], b[0]])[None]
    video = types.SimpleNamespace(feature=frames, video_position_ids=torch.stack([a[1], b[1]])[None])
    with pytest.raises(ValueError, match="video item 0 frame 1: non-finite pixel values"):
        models.sg.get_video_feature([video])


# --------------------------------------------------------------------------- packed varlen path


_VARLEN_SCRIPT = r"""
import sys, types, torch
sys.path.insert(0, sys.argv[1])
import test_gemma4_vision_batching as t
from sglang.srt.layers.attention.vision import QKV_BACKEND_IMPL
m = t._Models()
for layer in m.sg.vision_tower.encoder.layers:
    layer.self_attn.qkv_backend = QKV_BACKEND_IMPL["triton_attn"]()
    layer.self_attn.backend_name = "triton_attn"
images = [t.make_image(r, c, seed=100 + r * c) for r, c in ((6, 9), (3, 6), (9, 9), (3, 3), (6, 9))]
m.reset_calls()
with torch.no_grad():
    out = m.sg.get_image_feature([t.image_item([im]) for im in images])
assert m.calls == {"encoder": 1, "embed": 1}, m.calls
for o, r in zip(out, t.hf_image_features(m, images)):
    t.assert_close(o, r)
print("VARLEN_OK", len(out))
"""


def test_packed_varlen_mixed_sizes_one_call_triton_interpreter():
    """Real triton_attn vision backend (Triton interpreter on CPU): five images of four sizes
    in one packed encoder call, matching transformers."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", _VARLEN_SCRIPT, here],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "VARLEN_OK 5" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
