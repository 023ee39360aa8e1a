"""The Triton decode KV-split cap for Gemma-4 models (gemma4_decode_splits, hook in triton_backend).

The cap is raised only for Gemma-4 architectures, never below the configured one, and a bad switch
value is an error naming the variable.  The premise is checked on 0.5.23's own split scheduler
(get_num_kv_splits_triton, under Triton's interpreter on CPU): with Gemma-4's one KV head a single
request gets the cap's split count, while a batch that fills the device keeps the count it had.  The
decode kernels must give the same attention at the raised cap: under the interpreter on small
contexts (CPU), and compiled at E2B's head dims 256 / 512 on the GPU, against a float32 reference.
"""

from __future__ import annotations

import inspect
import math
import types

import pytest
import torch

from sglang.srt.layers.attention import gemma4_decode_splits as splits

ENV = "SGLANG_GEMMA4_TRITON_KV_SPLITS"


def _cfg(*archs):
    return types.SimpleNamespace(hf_config=types.SimpleNamespace(architectures=list(archs)))


@pytest.mark.parametrize(
    "arch",
    [
        "Gemma4ForConditionalGeneration",
        "Gemma4ForCausalLM",
        "Gemma4UnifiedForConditionalGeneration",
        "Gemma4AssistantForCausalLM",
        "Gemma4UnifiedAssistantForCausalLM",
    ],
)
def test_gemma4_architectures_get_the_cap(monkeypatch, arch):
    monkeypatch.setenv(ENV, "40")
    assert splits.max_kv_splits(_cfg(arch), 8) == 40


@pytest.mark.parametrize(
    "archs",
    [("LlamaForCausalLM",), ("Gemma3ForCausalLM",), ("DiffusionGemmaForBlockDiffusion",), ()],
)
def test_other_models_keep_the_configured_cap(monkeypatch, archs):
    monkeypatch.setenv(ENV, "40")
    assert splits.max_kv_splits(_cfg(*archs), 8) == 8
    assert splits.max_kv_splits(types.SimpleNamespace(), 8) == 8


def test_default_raises_the_cap_and_zero_keeps_upstream(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    default = splits.max_kv_splits(_cfg("Gemma4ForCausalLM"), 8)
    assert default > 8, "the registry default must raise 0.5.23's cap of 8"
    monkeypatch.setenv(ENV, "0")
    assert splits.max_kv_splits(_cfg("Gemma4ForCausalLM"), 8) == 8


def test_a_larger_configured_cap_wins(monkeypatch):
    monkeypatch.setenv(ENV, "32")
    assert splits.max_kv_splits(_cfg("Gemma4ForCausalLM"), 64) == 64
    assert splits.max_kv_splits(_cfg("Gemma4ForCausalLM"), 32) == 32
    assert splits.max_kv_splits(_cfg("Gemma4ForCausalLM"), 31) == 32


@pytest.mark.parametrize("raw", ["-1", "257", "many", "3.5", ""])
def test_bad_switch_values_are_named_errors(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    with pytest.raises(ValueError, match=ENV):
        splits.max_kv_splits(_cfg("Gemma4ForCausalLM"), 8)
    # models the switch does not concern never read it
    assert splits.max_kv_splits(_cfg("LlamaForCausalLM"), 8) == 8


def test_the_triton_backend_takes_its_cap_from_the_hook():
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    src = inspect.getsource(TritonAttnBackend.__init__)
    hook = src.find("gemma4_decode_splits.max_kv_splits(")
    assert hook >= 0, "TritonAttnBackend.__init__ must size its splits through gemma4_decode_splits"
    assert "triton_attention_num_kv_splits" in src[hook : hook + 200]
    # before the deterministic tile size, which must still replace the cap
    assert hook < src.find("self.split_tile_size is not None")


# ---------------------------------------------------------------- 0.5.23's scheduler, the premise


def _scheduled_splits(seq_lens, cap, num_head=8, num_kv_head=1, cores=132):
    from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton

    lens = torch.tensor(seq_lens, dtype=torch.int32)
    out = torch.empty(len(seq_lens), dtype=torch.int32)
    get_num_kv_splits_triton[(1,)](
        out, lens, len(seq_lens), 1, num_head, num_kv_head, cap, cores, MAX_NUM_SEQ=256
    )
    return out.tolist()


def test_scheduler_gives_one_request_the_cap_and_a_full_batch_its_old_count():
    # E2B: 8 query heads on one KV head; one request at 1500 tokens
    assert _scheduled_splits([1500], 8) == [8]
    assert _scheduled_splits([1500], 32) == [32]
    # 80 requests already fill the device: the raised cap changes nothing
    assert _scheduled_splits([1500] * 80, 32) == _scheduled_splits([1500] * 80, 8)


# ---------------------------------------------------------------- the kernels at a raised cap


def _reference(q, k, v, lens, scale):
    out, start = [], 0
    for b, n in enumerate(lens):
        kk = k[start : start + n, 0].float()  # [n, D]
        vv = v[start : start + n, 0].float()
        s = (q[b].float() @ kk.T) * scale  # [H, n]
        out.append(torch.softmax(s, dim=-1) @ vv)
        start += n
    return torch.stack(out)


def _decode(q, k, v, lens, cap, scale, device):
    from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd_grouped

    B, H, _ = q.shape
    Dv = v.shape[-1]
    indptr = torch.zeros(B + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0)
    indices = torch.arange(int(indptr[-1]), dtype=torch.int64)
    num_kv_splits = torch.tensor(_scheduled_splits(lens, cap) if device == "cpu" else [0] * B, dtype=torch.int32)
    if device != "cpu":
        from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton

        num_kv_splits = num_kv_splits.to(device)
        get_num_kv_splits_triton[(1,)](
            num_kv_splits, torch.tensor(lens, dtype=torch.int32, device=device), B, 1, H, k.shape[1], cap,
            torch.cuda.get_device_properties(0).multi_processor_count, MAX_NUM_SEQ=256,
        )
    o = torch.empty(B, H, Dv, dtype=q.dtype, device=device)
    logits = torch.empty(B, H, cap, Dv, dtype=torch.float32, device=device)
    lse = torch.empty(B, H, cap, dtype=torch.float32, device=device)
    decode_attention_fwd_grouped(
        q, k, v, o, indptr.to(device), indices.to(device), logits, lse, num_kv_splits, cap, scale, 1.0
    )
    return o, num_kv_splits.cpu().tolist()


def _case(lens, H, D, device, seed=0):
    # bf16 as served on the GPU; fp16 under the interpreter, whose bf16 dots are wrong
    dtype = torch.float16 if device == "cpu" else torch.bfloat16
    g = torch.Generator().manual_seed(seed)
    n = sum(lens)
    q = torch.randn(len(lens), H, D, generator=g).to(dtype).to(device)
    k = torch.randn(n, 1, D, generator=g).to(dtype).to(device)
    v = torch.randn(n, 1, D, generator=g).to(dtype).to(device)
    return q, k, v


def _check(lens, H, D, caps, device):
    q, k, v = _case(lens, H, D, device)
    scale = 1.0 / math.sqrt(D)
    want = _reference(q.cpu(), k.cpu(), v.cpu(), lens, scale)
    seen = {}
    for cap in caps:
        got, used = _decode(q, k, v, lens, cap, scale, device)
        seen[cap] = used
        err = (got.float().cpu() - want).abs().max().item()
        assert err < 2e-2, f"cap {cap} (splits {used}): max error {err}"
    return seen


def test_decode_attention_is_unchanged_at_a_raised_cap_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU twin of the GPU test")
    # one request of 200 tokens: 8 splits at cap 8, more at cap 32 (splits of at least 32 keys)
    seen = _check([200], H=8, D=64, caps=(8, 32), device="cpu")
    assert seen[8] == [8] and seen[32][0] > 8


@pytest.mark.gpu
@pytest.mark.parametrize("D", [256, 512])
def test_decode_attention_at_gemma4_shapes_gpu(D):
    seen = _check([1500], H=8, D=D, caps=(8, 32, 64), device="cuda")
    assert seen[64][0] > seen[8][0]
    _check([37, 1500, 4000, 16000], H=8, D=D, caps=(8, 32, 64), device="cuda")
