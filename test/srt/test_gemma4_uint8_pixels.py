"""Gemma-4 images as uint8 patches plus a value table (sglang/srt/multimodal/gemma4_pixel_transport.py).

The float32 pixel values the vision tower receives must be bit-identical to transformers' Gemma-4 image
processor output (both backends sglang exposes, PIL and torchvision; sizes with and without padding, non-square,
up- and down-scaled), the soft tokens of the tower unchanged, and the real sglang tokenizer path (processor
built as the tokenizer manager builds it, shared-memory transport, msgpack, scheduler hashing, per-image split)
must carry the table to every image item.  SGLANG_GEMMA4_UINT8_PIXELS=0 gives transformers' float32 output.
"""

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch

import gemma4_tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [(480, 480), (300, 700), (1000, 200), (768, 768), (64, 64), (37, 1200)]


def _image(h, w, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def _processors(**geometry):
    from transformers.models.gemma4.image_processing_gemma4 import Gemma4ImageProcessor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    kw = dict(patch_size=16, pooling_kernel_size=3, max_soft_tokens=280, resample=3)
    kw.update(geometry)
    return {"torchvision": Gemma4ImageProcessor(**kw), "pil": Gemma4ImageProcessorPil(**kw)}


@pytest.fixture(scope="module")
def gpt():
    from sglang.srt.multimodal import gemma4_pixel_transport

    return gemma4_pixel_transport


def _restore(gpt, ip, img):
    raw = ip(images=[img], do_rescale=False, do_normalize=False, return_tensors="pt")
    item = types.SimpleNamespace(feature=raw["pixel_values"], image_position_ids=raw["image_position_ids"])
    setattr(item, gpt.LUT_ATTR, gpt.pixel_lut(ip).unsqueeze(0))
    return raw, gpt.restore_pixel_values([item])[0]


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize("size", SIZES)
def test_pixel_values_bit_identical_to_transformers(gpt, backend, size):
    ip = _processors()[backend]
    img = _image(*size, seed=size[0] * 7 + size[1])
    ref = ip(images=[img], return_tensors="pt")
    raw, restored = _restore(gpt, ip, img)
    assert raw["pixel_values"].dtype == torch.uint8
    assert ref["pixel_values"].dtype == torch.float32
    assert torch.equal(restored.feature, ref["pixel_values"])
    assert torch.equal(restored.image_position_ids, ref["image_position_ids"])
    # the other attributes are the item's own
    assert restored.image_position_ids is raw["image_position_ids"]


def test_sizes_cover_padding_and_exact_fit(gpt):
    ip = _processors()["torchvision"]
    valid = {}
    for size in SIZES:
        pos = ip(images=[_image(*size, seed=0)], return_tensors="pt")["image_position_ids"][0]
        valid[size] = int((pos != -1).any(-1).sum())
    assert all(v < 2520 for v in valid.values())  # every size has padding patches
    assert len(set(valid.values())) >= 4  # and different patch grids (aspect ratios)
    exact = _processors(max_soft_tokens=70)["torchvision"]  # 70 x 9 = 630 patches: 30 x 21 fills exactly
    pos = exact(images=[_image(336, 480, seed=1)], return_tensors="pt")["image_position_ids"][0]
    assert bool((pos != -1).all())
    ref = exact(images=[_image(336, 480, seed=1)], return_tensors="pt")["pixel_values"]
    _, restored = _restore(gpt, exact, _image(336, 480, seed=1))
    assert torch.equal(restored.feature, ref)


def test_table_is_the_backends_own_step(gpt):
    ps = _processors()
    tv, pil = gpt.pixel_lut(ps["torchvision"]), gpt.pixel_lut(ps["pil"])
    scale = ps["torchvision"].rescale_factor
    assert tv.shape == (3, 256) and tv.dtype == torch.float32
    assert torch.equal(tv, (torch.arange(256, dtype=torch.uint8) * scale).expand(3, 256))
    assert torch.equal(pil, torch.from_numpy((np.arange(256, dtype=np.float64) * scale).astype(np.float32))
                       .expand(3, 256))
    # float32(v) * scale and float32(float64(v) * scale) differ in the last bit for many v: one table for both
    # backends would not be bit-identical
    assert int((tv != pil).sum()) > 100


def test_normalising_processor_gets_its_own_table(gpt):
    ip = _processors(do_normalize=True, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])["torchvision"]
    lut = gpt.pixel_lut(ip)
    assert not torch.equal(lut[0], lut[1])  # per channel
    img = _image(300, 700, seed=3)
    _, restored = _restore(gpt, ip, img)
    assert torch.equal(restored.feature, ip(images=[img], return_tensors="pt")["pixel_values"])


def test_non_elementwise_step_has_no_table(gpt):
    from transformers.models.gemma4.image_processing_gemma4 import Gemma4ImageProcessor

    class Dithered(Gemma4ImageProcessor):
        def rescale(self, image, scale, **kwargs):
            ramp = torch.arange(image.shape[-1], dtype=torch.float32) * 1e-3
            return image * scale + ramp

    assert gpt.pixel_lut(Dithered(patch_size=16, pooling_kernel_size=3, max_soft_tokens=280)) is None


class _FakeModel:
    pass


def _fake_mm_processor(gpt, ip, model_name="Gemma4ForConditionalGeneration", image_config=None):
    """What process_mm_data reads of a Gemma4SGLangProcessor, with the base call reduced to the HF image
    processor call base_processor.process_mm_data makes."""
    model = type(model_name, (), {})
    cls = type("P", (), {"models": [model]})
    proc = cls()
    proc._processor = types.SimpleNamespace(image_processor=ip)
    proc.image_config = image_config or {}
    proc.ATTR_NAME_TO_MODALITY = {}

    def call(input_text, images=None, **kwargs):
        kw = dict(kwargs.get("images_kwargs") or {})
        kw.update(proc.image_config)
        return dict(ip(images=images, return_tensors="pt", **kw))

    return proc, call


def test_kill_switch_and_scope(gpt, monkeypatch):
    ip = _processors()["torchvision"]
    imgs = [_image(480, 480, 0), _image(300, 700, 1)]
    ref = ip(images=imgs, return_tensors="pt")["pixel_values"]
    proc, call = _fake_mm_processor(gpt, ip)
    monkeypatch.setenv("SGLANG_GEMMA4_UINT8_PIXELS", "1")
    on = gpt.process_mm_data(proc, call, "x", images=imgs)
    assert on["pixel_values"].dtype == torch.uint8 and on[gpt.LUT_ATTR].shape == (1, 3, 256)
    from sglang.srt.managers.schedule_batch import Modality

    assert proc.ATTR_NAME_TO_MODALITY[gpt.LUT_ATTR] == Modality.IMAGE
    monkeypatch.setenv("SGLANG_GEMMA4_UINT8_PIXELS", "0")
    off = gpt.process_mm_data(proc, call, "x", images=imgs)
    assert torch.equal(off["pixel_values"], ref) and gpt.LUT_ATTR not in off
    monkeypatch.setenv("SGLANG_GEMMA4_UINT8_PIXELS", "1")
    # another model's processor (e.g. the encoder-free Gemma4Unified) keeps float32
    other, call2 = _fake_mm_processor(gpt, ip, model_name="Gemma4UnifiedForConditionalGeneration")
    assert torch.equal(gpt.process_mm_data(other, call2, "x", images=imgs)["pixel_values"], ref)
    # a user --mm-process-config that sets the rescale step keeps float32 (its values, not the table's)
    user, call3 = _fake_mm_processor(gpt, ip, image_config={"rescale_factor": 1 / 127.5})
    got = gpt.process_mm_data(user, call3, "x", images=imgs)
    assert got["pixel_values"].dtype == torch.float32 and gpt.LUT_ATTR not in got
    assert torch.allclose(got["pixel_values"], ref * 2, atol=1e-6)
    # no images: the call unchanged
    assert gpt.process_mm_data(proc, lambda t, images=None, **k: "same", "x", images=None) == "same"


def test_real_processor_classes_scope(gpt):
    from sglang.srt.multimodal.processors.gemma4 import Gemma4SGLangProcessor
    from sglang.srt.multimodal.processors.gemma4_unified import Gemma4UnifiedSGLangProcessor

    assert gpt._applies(object.__new__(Gemma4SGLangProcessor))
    assert not gpt._applies(object.__new__(Gemma4UnifiedSGLangProcessor))


def test_restore_errors_name_the_problem(gpt):
    u8 = torch.zeros(1, 18, 48, dtype=torch.uint8)
    pos = torch.zeros(1, 18, 2, dtype=torch.long)
    bad_lut = types.SimpleNamespace(feature=u8, image_position_ids=pos, pixel_values_lut=torch.zeros(1, 3, 255))
    with pytest.raises(ValueError, match="image item 0: pixel_values_lut has 765 values"):
        gpt.restore_pixel_values([bad_lut])
    no_pos = types.SimpleNamespace(feature=u8, image_position_ids=None, pixel_values_lut=torch.zeros(1, 3, 256))
    with pytest.raises(ValueError, match="need image_position_ids of shape"):
        gpt.restore_pixel_values([no_pos])
    not_tensor = types.SimpleNamespace(feature=u8, image_position_ids=pos, pixel_values_lut=[0.0] * 768)
    with pytest.raises(ValueError, match="pixel_values_lut is list"):
        gpt.restore_pixel_values([not_tensor])
    # items without a table (float pixels, precomputed embeddings) pass through as they are
    plain = types.SimpleNamespace(feature=torch.zeros(1, 18, 48), image_position_ids=pos)
    assert gpt.restore_pixel_values([plain])[0] is plain


def test_restore_pixel_position_count_mismatch_names_the_item(gpt):
    # two uint8 pixel tensors, one position tensor: zip used to drop the second image silently
    u8 = torch.zeros(1, 18, 48, dtype=torch.uint8)
    pos = torch.zeros(1, 18, 2, dtype=torch.long)
    lut = torch.zeros(1, 3, 256)
    plain = types.SimpleNamespace(feature=torch.zeros(1, 18, 48), image_position_ids=pos)
    for positions in ([pos], (pos,)):
        bad = types.SimpleNamespace(feature=[u8, u8.clone()], image_position_ids=positions, pixel_values_lut=lut)
        with pytest.raises(ValueError) as exc:
            gpt.restore_pixel_values([plain, bad])
        msg = str(exc.value)
        assert "image item 1: 2 pixel tensors but 1 image_position_ids tensors (count mismatch" in msg, msg
    # one position tensor per pixel tensor (or one shared tensor) still restores every image
    for positions in ([pos, pos], pos):
        ok = types.SimpleNamespace(feature=[u8, u8.clone()], image_position_ids=positions, pixel_values_lut=lut)
        restored = gpt.restore_pixel_values([ok])[0].feature
        assert len(restored) == 2 and all(r.dtype == torch.float32 for r in restored)


def test_non_finite_table_is_refused(gpt):
    # a table holding NaN / inf would rebuild non-finite pixels that the tower then skips scanning
    u8 = torch.zeros(1, 18, 48, dtype=torch.uint8)
    pos = torch.zeros(1, 18, 2, dtype=torch.long)
    for value in (float("nan"), float("inf")):
        lut = torch.zeros(1, 3, 256)
        lut[0, 1, 0] = value
        item = types.SimpleNamespace(feature=u8, image_position_ids=pos, pixel_values_lut=lut)
        with pytest.raises(ValueError, match="image item 0: pixel_values_lut holds non-finite values"):
            gpt.restore_pixel_values([item])


# ------------------------------------------------------------------ soft tokens of a tiny tower (CPU)


TINY_VISION = gemma4_tiny.vision()
# the processor for the tiny tower: its patch size and pooling, at most 70 soft tokens (630 patches) an image
TINY_GEOMETRY = dict(patch_size=TINY_VISION["patch_size"], pooling_kernel_size=TINY_VISION["pooling_kernel_size"],
                     max_soft_tokens=70)


@pytest.fixture(scope="module")
def tiny_model():
    with gemma4_tiny.sglang_on_cpu():
        from sglang.srt.models import gemma4_mm

        torch.manual_seed(0)
        # float32: equal soft tokens then mean equal pixels, not pixels equal after a bfloat16 rounding
        model = gemma4_mm.Gemma4ForConditionalGeneration(gemma4_tiny.sglang_config(dtype="float32"))
        yield gemma4_tiny.randomize_(model.eval())


def _paired_items(gpt, ip, sizes, seed):
    """The same seeded images as two lists of items: float32 pixels as transformers makes them, and uint8
    patches with the processor's value table as the series sends them."""
    from sglang.srt.managers.schedule_batch import Modality, MultimodalDataItem

    lut = gpt.pixel_lut(ip).unsqueeze(0)
    float_items, uint8_items = [], []
    for i, size in enumerate(sizes):
        img = _image(*size, seed=seed + i)
        ref = ip(images=[img], return_tensors="pt")
        raw = ip(images=[img], do_rescale=False, do_normalize=False, return_tensors="pt")
        a = MultimodalDataItem(modality=Modality.IMAGE, feature=ref["pixel_values"])
        a.set("image_position_ids", ref["image_position_ids"])
        b = MultimodalDataItem(modality=Modality.IMAGE, feature=raw["pixel_values"])
        b.set("image_position_ids", raw["image_position_ids"])
        b.set(gpt.LUT_ATTR, lut)
        float_items.append(a)
        uint8_items.append(b)
    return float_items, uint8_items


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_soft_tokens_unchanged(gpt, tiny_model, backend):
    ip = _processors(**TINY_GEOMETRY)[backend]
    float_items, uint8_items = _paired_items(gpt, ip, [(96, 96), (40, 130), (150, 60), (84, 120)], seed=40)
    assert any(bool((it.image_position_ids == -1).any()) for it in float_items)  # padding present
    with torch.no_grad():
        want = tiny_model.get_image_feature(float_items)
        got = tiny_model.get_image_feature(uint8_items)
    assert len(got) == len(want) == 4
    for w, g in zip(want, got):
        assert w.shape == g.shape and torch.equal(w, g)
    # and the tower did not just see zeros: different images give different soft tokens
    assert not torch.equal(want[0][:4], want[1][:4])
    # the item keeps its uint8 pixels (the float32 copy lives only inside the call)
    assert uint8_items[0].feature.dtype == torch.uint8


def test_only_float_pixels_are_scanned_for_non_finite_values(gpt, tiny_model, monkeypatch):
    """uint8 pixels rebuilt through a finite table cannot be NaN / inf: they are not scanned (no extra pass or
    host sync on the default path); float32 pixels are, and NaN among them is a clear error."""
    from sglang.srt.models import gemma4_vision_batching as vb

    ip = _processors(**TINY_GEOMETRY)["torchvision"]
    float_items, uint8_items = _paired_items(gpt, ip, [(96, 96), (40, 130)], seed=60)
    scanned = []
    real = vb._non_finite_problems
    monkeypatch.setattr(vb, "_non_finite_problems", lambda checked: scanned.append(len(checked)) or real(checked))
    with torch.no_grad():
        got = tiny_model.get_image_feature(uint8_items)
        assert scanned == []
        want = tiny_model.get_image_feature(float_items)
        assert scanned == [2]
    assert all(torch.equal(w, g) for w, g in zip(want, got))
    float_items[1].feature = float_items[1].feature.clone()
    float_items[1].feature[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image item 1 image 0: non-finite pixel values"):
        tiny_model.get_image_feature(float_items)


# ------------------------------------------------------------------ the real sglang tokenizer -> scheduler path


_REAL_PATH = textwrap.dedent(
    """
    import asyncio, json, os, sys, types
    import torch
    model_dir = sys.argv[1]
    from sglang.srt import runtime_context as rc
    from sglang.srt.server_args import prepare_server_args
    sa = prepare_server_args(["--model-path", model_dir, "--device", "cpu", "--load-format", "dummy",
                              "--disable-radix-cache"])
    rc.reset_context(); rc.publish(sa, role="tokenizer")
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.managers.multimodal_processor import get_mm_processor, import_processors
    from sglang.srt.managers.tokenizer_manager import get_processor_wrapper
    from sglang.srt.multimodal.transport import determine_tensor_transport_mode
    from sglang.srt.managers.io_struct import msgpack_decode, msgpack_encode, TokenizedGenerateReqInput
    from sglang.srt.managers.mm_utils import unwrap_shm_features, wrap_shm_features
    from sglang.srt.managers.schedule_batch import MultimodalInputs
    from sglang.srt.sampling.sampling_params import SamplingParams
    from sglang.srt.multimodal import gemma4_pixel_transport as gpt
    from array import array
    import numpy as np
    from PIL import Image
    import io, base64
    mc = ModelConfig.from_server_args(sa)
    import_processors("sglang.srt.multimodal.processors")

    def jpeg(h, w, seed):
        rng = np.random.default_rng(seed)
        buf = io.BytesIO()
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buf, format="jpeg", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()

    requests = [[jpeg(480, 480, 1), jpeg(300, 700, 2), jpeg(1000, 200, 3)],  # 3 images: the table's 3 rows
                [jpeg(37, 1200, 4)],
                [jpeg(64, 64, s) for s in range(5, 11)]]
    out = {}
    loop = asyncio.new_event_loop()
    for backend in ("torchvision", "pil"):
        with rc.get_mm().override(image_processor_backend=backend):
            hf = get_processor_wrapper()
            proc = get_mm_processor(mc.hf_config, sa, hf, determine_tensor_transport_mode(), model_config=mc)
        res = []
        for imgs in requests:
            prompt = "<bos><|turn>user\\n" + "".join("<|image|>" for _ in imgs) + "describe<turn|>\\n<|turn>model\\n"
            os.environ["SGLANG_GEMMA4_UINT8_PIXELS"] = "0"
            ref = loop.run_until_complete(proc.process_mm_data_async(image_data=imgs, input_text=prompt,
                                                                     request_obj=types.SimpleNamespace(video_data=None)))
            os.environ["SGLANG_GEMMA4_UINT8_PIXELS"] = "1"
            got = loop.run_until_complete(proc.process_mm_data_async(image_data=imgs, input_text=prompt,
                                                                     request_obj=types.SimpleNamespace(video_data=None)))
            req = TokenizedGenerateReqInput(rid="r", input_text="", input_ids=array("q", got.input_ids),
                input_embeds=None, mm_inputs=got, token_type_ids=None, sampling_params=SamplingParams(),
                return_logprob=False, logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None,
                stream=False)
            req = wrap_shm_features(req)
            req.wrap_pickle_fields()
            sreq = msgpack_decode(msgpack_encode(req))
            sreq.unwrap_pickle_fields()
            unwrap_shm_features(sreq)
            mm = MultimodalInputs.from_processor_output(sreq.mm_inputs)
            restored = gpt.restore_pixel_values(mm.mm_items)
            res.append({
                "items": len(ref.mm_items), "got_items": len(mm.mm_items),
                "input_ids_same": ref.input_ids == got.input_ids,
                "ref_dtype": str(ref.mm_items[0].feature.dtype), "wire_dtype": str(mm.mm_items[0].feature.dtype),
                "identical": [torch.equal(a.feature, b.feature) for a, b in zip(ref.mm_items, restored)],
                "positions": [torch.equal(a.image_position_ids, b.image_position_ids)
                              for a, b in zip(ref.mm_items, mm.mm_items)],
                "lut_shapes": [list(getattr(it, gpt.LUT_ATTR).shape) for it in mm.mm_items],
                "hashes_distinct": len({it.hash for it in mm.mm_items}) == len(mm.mm_items),
                "wire_bytes": sum(it.feature.numel() * it.feature.element_size() for it in mm.mm_items),
                "ref_bytes": sum(it.feature.numel() * it.feature.element_size() for it in ref.mm_items),
            })
        out[backend] = res
        proc.shutdown()
    print("RESULT" + json.dumps(out))
    """
)


def test_real_tokenizer_to_scheduler_path(tmp_path):
    mmd = os.path.join(REPO, "benchmark", "gemma4", "make_model_dir.py")
    subprocess.run([sys.executable, mmd, "dir", "e2b", str(tmp_path / "e2b")], check=True, capture_output=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # local model dir: no hub lookups
    proc = subprocess.run([sys.executable, "-c", _REAL_PATH, str(tmp_path / "e2b")], capture_output=True,
                          text=True, env=env, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    for backend in ("torchvision", "pil"):
        for req, n in zip(out[backend], (3, 1, 6)):
            assert req["items"] == req["got_items"] == n
            assert req["input_ids_same"]
            assert req["ref_dtype"] == "torch.float32" and req["wire_dtype"] == "torch.uint8"
            assert all(req["identical"]) and all(req["positions"])
            assert req["lut_shapes"] == [[1, 3, 256]] * n
            assert req["hashes_distinct"]
            assert req["ref_bytes"] == 4 * req["wire_bytes"]


# ------------------------------------------------------------------ GPU twin


@pytest.mark.gpu
def test_cuda_processor_path_identical(gpt):
    """sglang runs the torchvision processor on the GPU (device=cuda): the table (measured on the CPU) must
    reproduce that path's float32 output too, restored on the GPU."""
    ip = _processors()["torchvision"]
    for size in SIZES:
        img = _image(*size, seed=size[1])
        ref = ip(images=[img], return_tensors="pt", device="cuda")
        raw = ip(images=[img], do_rescale=False, do_normalize=False, return_tensors="pt", device="cuda")
        item = types.SimpleNamespace(feature=raw["pixel_values"], image_position_ids=raw["image_position_ids"])
        setattr(item, gpt.LUT_ATTR, gpt.pixel_lut(ip).unsqueeze(0))
        got = gpt.restore_pixel_values([item])[0].feature
        assert got.is_cuda and torch.equal(got, ref["pixel_values"])
