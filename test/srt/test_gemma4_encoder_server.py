"""Encoder disaggregation (``--encoder-only``) with the packed Gemma-4 vision path (patch 0012).

Since patch 0010, Gemma4ForConditionalGeneration.get_image_feature / get_video_feature return one tensor
per item, which sglang's DataEmbeddingFunc contract allows (mm_schedule flattens it).  The encoder server's
two forward paths, ``MMEncoder._encode_missing`` (global-cache misses) and
``MMEncoder._compute_direct_embedding``, called ``.ndim`` / ``.cpu()`` on the result.  Here both run as
they are in sglang, with the real get_image_feature / get_video_feature and the real packed encoder over a
small deterministic tower.
"""

import asyncio
import types

import pytest
import torch

TEXT_HIDDEN = 16


class FakeTower(torch.nn.Module):
    """A vision tower with the interface the packed encoder uses; its "transformer" is one linear map of the
    valid patches, so every soft token is a known function of its pixels."""

    def __init__(self):
        super().__init__()
        from transformers import Gemma4VisionConfig

        self.config = Gemma4VisionConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
            num_key_value_heads=1, head_dim=8, patch_size=2, pooling_kernel_size=2,
            position_embedding_size=16,
        )
        self.pooling_kernel_size = 2
        self.pooler = types.SimpleNamespace(root_hidden_size=1.0)
        self.standardize = False
        self.attention_backend = "triton_attn"
        self.weight = torch.nn.Parameter(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)))
        self.calls = 0

    @property
    def device(self):
        return self.weight.device

    def forward_packed(self, pixel_values, patch_positions, cu_seqlens=None, max_seqlen=None):
        self.calls += 1
        return pixel_values @ self.weight


class Host:
    """The real Gemma-4 feature methods on a model that holds only what they read."""

    def __init__(self):
        from sglang.srt.models.gemma4_mm import Gemma4ForConditionalGeneration as G

        self._methods = G
        self.vision_tower = FakeTower()
        proj = torch.randn(8, TEXT_HIDDEN, generator=torch.Generator().manual_seed(1))
        self.embed_vision = lambda inputs_embeds: inputs_embeds @ proj
        self.config = types.SimpleNamespace(text_config=types.SimpleNamespace(hidden_size=TEXT_HIDDEN))
        self.language_model = types.SimpleNamespace(dtype=lambda: torch.float32)

    def get_image_feature(self, items):
        return self._methods.get_image_feature(self, items)

    def get_video_feature(self, items):
        return self._methods.get_video_feature(self, items)

    def _encode_vision_items(self, items, kind):
        return self._methods._encode_vision_items(self, items, kind)


def _patches(rows, cols, total, seed):
    g = torch.Generator().manual_seed(seed)
    pv = torch.rand(total, 12, generator=g)
    pos = torch.full((total, 2), -1, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos[: rows * cols, 0], pos[: rows * cols, 1] = xs.reshape(-1), ys.reshape(-1)
    return pv, pos


def _item(modality, rows, cols, seed, frames=0):
    from sglang.srt.managers.schedule_batch import Modality, MultimodalDataItem

    if frames:
        pvs, poss = zip(*(_patches(rows, cols, 16, seed + f) for f in range(frames)))
        pv, pos, attr = torch.stack(pvs)[None], torch.stack(poss)[None], "video_position_ids"
    else:
        (pv, pos), attr = _patches(rows, cols, 16, seed), "image_position_ids"
        pv, pos = pv[None], pos[None]
    item = MultimodalDataItem(modality=getattr(Modality, modality), feature=pv)
    item.set(attr, pos)
    return item


@pytest.fixture
def server():
    import sglang.srt.disaggregation.encoder.server as srv
    from sglang.srt import runtime_context as rc

    override = rc._CONTEXT.override_server_args(device="cpu")
    override.install()
    enc = object.__new__(srv.MMEncoder)  # the real methods; no model loading, sockets or workers
    enc.model_type = "gemma4"
    yield srv, enc
    override.restore()


def _context(srv, host, modality, items, token_counts):
    from sglang.srt.disaggregation.encoder.preprocessor import EncoderPreprocessResult
    from sglang.srt.multimodal.encoder_preprocessing import EncoderPreprocessOutput

    mm_inputs = EncoderPreprocessOutput({}, mm_items=items)
    result = EncoderPreprocessResult(
        mm_inputs=mm_inputs, grid_thw=[[1, 1, 1]] * len(items), token_counts=token_counts
    )
    fn = host.get_image_feature if modality.name == "IMAGE" else host.get_video_feature
    return srv.EncodeContext(
        req_id="req-0", modality=modality, preprocess_result=result, get_feature_fn=fn, mm_feature=None,
        num_items=len(items), items_per_req=[len(items)], aux_data={}, str_mm_hashes=None,
        use_global_cache=False, is_health_check=False,
    )


def test_direct_embedding_takes_per_item_features(server):
    from sglang.srt.managers.schedule_batch import Modality

    srv, enc = server
    host = Host()
    items = [_item("IMAGE", 4, 4, 0), _item("IMAGE", 2, 4, 1), _item("IMAGE", 4, 2, 2)]
    with torch.no_grad():
        per_item = host.get_image_feature(items)
    assert isinstance(per_item, list) and [t.shape[0] for t in per_item] == [4, 2, 2]
    ctx = _context(srv, host, Modality.IMAGE, items, [4, 2, 2])
    out = asyncio.run(enc._compute_direct_embedding(ctx, keep_on_gpu=False))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (8, TEXT_HIDDEN)
    assert torch.allclose(out, torch.cat(per_item), atol=1e-6)
    # the soft tokens are what the tower computed: token 0 of image 0 pools its top-left 2x2 patches
    pv, pos = items[0].feature[0], items[0].image_position_ids[0]
    cell = (pos[:, 0] < 2) & (pos[:, 1] < 2) & (pos[:, 0] >= 0)
    expected = (pv[cell] @ host.vision_tower.weight).mean(0)
    assert torch.allclose(out[0], host.embed_vision(expected[None])[0], atol=1e-5)


def test_global_cache_misses_take_per_item_features(server):
    from sglang.srt.managers.schedule_batch import Modality

    srv, enc = server
    host = Host()
    items = [_item("IMAGE", 4, 4, 10), _item("IMAGE", 2, 4, 11), _item("IMAGE", 4, 4, 12)]
    with torch.no_grad():
        ref = host.get_image_feature(items)
    ctx = _context(srv, host, Modality.IMAGE, items, [4, 2, 4])
    host.vision_tower.calls = 0
    slices = enc._encode_missing(None, ctx.preprocess_result, [0, 2], Modality.IMAGE, ctx.get_feature_fn)
    assert host.vision_tower.calls == 1  # both misses in one packed tower call
    assert len(slices) == 2
    assert torch.allclose(slices[0], ref[0], atol=1e-6) and torch.allclose(slices[1], ref[2], atol=1e-6)


def test_video_direct_embedding(server):
    from sglang.srt.managers.schedule_batch import Modality

    srv, enc = server
    host = Host()
    items = [_item("VIDEO", 4, 4, 20, frames=3), _item("VIDEO", 2, 4, 30, frames=2)]
    ctx = _context(srv, host, Modality.VIDEO, items, [12, 4])
    out = asyncio.run(enc._compute_direct_embedding(ctx, keep_on_gpu=False))
    with torch.no_grad():
        ref = torch.cat(host.get_video_feature(items))
    assert tuple(out.shape) == (16, TEXT_HIDDEN) and torch.allclose(out, ref, atol=1e-6)
