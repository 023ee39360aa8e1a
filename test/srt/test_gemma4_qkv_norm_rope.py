"""The Gemma-4 attention input in one launch: q/k/v RMSNorms and the rotary embedding (gemma4_qkv_norm_rope,
its glue in gemma4_decode_fusion and the hook in Gemma4Attention.forward).

The kernel must give what 0.5.23's two steps give: per-head RMSNorm rounded to the activation dtype (q, k
with their weights, v without), then the neox rotation of q and k with the cos/sin cache row of each
token's position (``reference_qkv_norm_rope``, the same steps in torch).  The CPU tests run the installed
kernel under Triton's interpreter with the rotary modules Gemma-4 builds (the proportional full-layer rope
with its zero frequencies, the default sliding rope), KV-shared layers (q only), strided views and both
16-bit dtypes, and check named errors, the glue's conditions, the hook and an offline sm_90 compile; the
GPU-marked twins compare with 0.5.23's own gemma_qkv_rmsnorm + rotary kernels at E2B's shapes and inside
a CUDA graph.  Only the order of the fp32 sum of squares may differ: rarely one rounding step.
"""

from __future__ import annotations

import inspect
import types

import pytest
import torch

from sglang.kernels.ops.layernorm import gemma4_qkv_norm_rope as k
from sglang.srt.models import gemma4_decode_fusion as glue


def _dev():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _rope(kind: str, head_dim: int):
    """The rotary module Gemma-4 builds for a full (proportional, 1/4 rotated) or sliding layer."""
    from sglang.srt.layers.rotary_embedding import get_rope

    if kind == "full":
        r = get_rope(head_dim, rotary_dim=head_dim, max_position=4096, base=1_000_000.0,
                     rope_scaling={"rope_type": "proportional"}, partial_rotary_factor=0.25, is_neox_style=True)
    else:
        r = get_rope(head_dim, rotary_dim=head_dim, max_position=4096, base=10_000.0,
                     rope_scaling={"rope_type": "default"}, is_neox_style=True)
    return r


def _rope_cache(kind: str, head_dim: int, positions: int = 512) -> torch.Tensor:
    """The cos | sin cache Gemma-4's rotary modules hold (CPU tests: this machine's sglang cannot build the
    modules without a GPU): full layers rotate 1/4 of each half at base 1e6 (zero frequencies after),
    sliding layers all of it at base 1e4."""
    half = head_dim // 2
    if kind == "full":
        angles = head_dim // 8
        inv = 1.0 / (1_000_000.0 ** (torch.arange(0, 2 * angles, 2, dtype=torch.float) / head_dim))
        inv = torch.cat([inv, torch.zeros(half - angles)])
    else:
        inv = 1.0 / (10_000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.outer(torch.arange(positions, dtype=torch.float), inv)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def _inputs(T, nq, nkv, D, dtype, device, seed=0, cache=None):
    g = torch.Generator().manual_seed(seed)
    width = (nq + 2 * nkv) * D
    qkv = (torch.randn(T, width + 8, generator=g) * 2.0).to(dtype).to(device)[:, :width]  # strided rows
    q, kk, v = qkv.split([nq * D, nkv * D, nkv * D], dim=-1)
    qw = (1.0 + 0.3 * torch.randn(D, generator=g)).to(dtype).to(device)
    kw = (1.0 + 0.3 * torch.randn(D, generator=g)).to(dtype).to(device)
    if cache is None:
        cache = torch.randn(64, D, generator=g).float()
    positions = torch.randint(0, cache.shape[0], (T,), generator=g).to(device)
    return q, kk, v, qw, kw, cache.to(device).contiguous(), positions


def _check(got, want, dtype):
    assert got.shape == want.shape
    diff = (got.float() - want.float()).abs()
    scale = want.float().abs().clamp_min(1.0)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    assert (diff <= 2 * ulp * scale).all(), f"max {diff.max().item()}"
    assert (got == want).float().mean().item() >= 0.97


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind, D", [("full", 512), ("sliding", 256)])
@pytest.mark.parametrize("shared", [False, True])
def test_kernel_matches_the_upstream_steps(dtype, kind, D, shared):
    if torch.cuda.is_available():
        pytest.skip("CPU twin of the GPU test")
    q, kk, v, qw, kw, cache, pos = _inputs(5, 8, 1, D, dtype, "cpu", cache=_rope_cache(kind, D))
    args = dict(num_q_heads=8, num_kv_heads=1, head_dim=D, eps=1e-6)
    want = k.reference_qkv_norm_rope(q.clone(), None if shared else kk.clone(), None if shared else v.clone(),
                                     qw, None if shared else kw, cache, pos, **args)
    before = (kk.clone(), v.clone())
    k.gemma4_qkv_norm_rope(q, None if shared else kk, None if shared else v, qw, None if shared else kw,
                           cache, pos, **args)
    _check(q, want[0], dtype)
    if shared:
        assert torch.equal(kk, before[0]) and torch.equal(v, before[1])  # untouched
    else:
        _check(kk, want[1], dtype)
        _check(v, want[2], dtype)


def test_the_rotation_is_applied_and_the_nope_part_is_not_rotated():
    if torch.cuda.is_available():
        pytest.skip("CPU test")
    D = 512
    # 1/4 rotated: cos 1, sin 0 on the last 3/4 of each half
    q, kk, v, qw, kw, cache, pos = _inputs(3, 2, 1, D, torch.float16, "cpu", cache=_rope_cache("full", D))
    pos.copy_(torch.tensor([0, 7, 300]))
    dims = dict(num_q_heads=2, num_kv_heads=1, head_dim=D, eps=1e-6)
    normed = (q.clone(), kk.clone(), v.clone())  # the same kernel with an identity rotation: the norms alone
    k.gemma4_qkv_norm_rope(*normed, qw, kw, torch.cat([torch.ones(512, D // 2), torch.zeros(512, D // 2)], dim=1),
                           pos, **dims)
    k.gemma4_qkv_norm_rope(q, kk, v, qw, kw, cache, pos, **dims)
    heads = q.unflatten(-1, (2, D))
    ref = normed[0].unflatten(-1, (2, D))
    rot = D // 8  # rotated angles per half
    assert torch.equal(heads[0], ref[0])  # position 0: cos 1, sin 0
    assert not torch.equal(heads[1:, :, :rot], ref[1:, :, :rot])  # rotated dims move
    assert torch.equal(heads[:, :, rot: D // 2], ref[:, :, rot: D // 2])  # the nope dims do not
    assert torch.equal(heads[:, :, D // 2 + rot:], ref[:, :, D // 2 + rot:])
    assert torch.equal(v, normed[2])  # v: norm only


@pytest.mark.parametrize("change, msg", [
    (dict(dtype=torch.float32), "dtype"),
    (dict(head_dim=96), "power of two"),
    (dict(v=None), "both be given"),
    (dict(k_weight=None), "k_weight"),
    (dict(q_weight=torch.ones(8)), "q_weight"),
    (dict(cos_sin_cache=torch.ones(64, 32)), "cos_sin_cache"),
    (dict(positions=torch.zeros(4, dtype=torch.int64)), "positions"),
    (dict(positions=torch.zeros(3)), "positions"),
    (dict(k=torch.zeros(3, 32, dtype=torch.float16)), "k: expected"),
])
def test_named_errors(change, msg):
    q, kk, v, qw, kw, cache, pos = _inputs(3, 2, 1, 64, torch.float16, "cpu")
    args = dict(q=q, k=kk, v=v, q_weight=qw, k_weight=kw, cos_sin_cache=cache, positions=pos)
    dims = dict(num_q_heads=2, num_kv_heads=1, head_dim=64, eps=1e-6)
    if "dtype" in change:
        args["q"] = q.float()
    elif "head_dim" in change:
        dims["head_dim"] = 96
    else:
        args.update(change)
    with pytest.raises(ValueError, match=msg):
        k.gemma4_qkv_norm_rope(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("q_weight"),
                               args.pop("k_weight"), args.pop("cos_sin_cache"), args.pop("positions"), **dims)


# ------------------------------------------------------------------------------------------------ glue


def _attn(**over):
    rope = types.SimpleNamespace(use_fallback_kernel=False, _force_native=False, is_neox_style=True,
                                 rotary_dim=64, head_size=64, cos_sin_cache=torch.zeros(8, 64))
    a = types.SimpleNamespace(
        q_norm=types.SimpleNamespace(scale_shift=0.0, weight=torch.ones(64), eps=1e-6),
        k_norm=types.SimpleNamespace(scale_shift=0.0, weight=torch.ones(64)),
        v_norm=types.SimpleNamespace(with_scale=False), rotary_emb=rope, head_dim=64, num_heads=2,
        num_kv_heads=1, is_kv_shared_layer=False, kv_shared_layer_index=None)
    for key, value in over.items():
        obj, _, attr = key.rpartition(".")
        setattr(a if not obj else getattr(a, obj), attr, value)
    return a


def test_attention_fusable_follows_the_upstream_fused_path_and_the_cuda_rope():
    assert glue.attention_fusable(_attn())
    for over in ({"q_norm.scale_shift": 1.0}, {"k_norm.scale_shift": 1.0}, {"v_norm.with_scale": True},
                 {"rotary_emb.use_fallback_kernel": True}, {"rotary_emb._force_native": True},
                 {"rotary_emb.is_neox_style": False}, {"rotary_emb.rotary_dim": 32}, {"head_dim": 128},
                 {"rotary_emb.cos_sin_cache": torch.zeros(8, 64, dtype=torch.bfloat16)}):
        assert not glue.attention_fusable(_attn(**over)), over


def test_glue_steps_aside_on_cpu_and_when_switched_off(monkeypatch):
    q, kk, v, *_ = _inputs(3, 2, 1, 64, torch.bfloat16, "cpu")
    monkeypatch.setenv("SGLANG_GEMMA4_FUSED_QKV_NORM_ROPE", "1")
    assert glue.qkv_norm_rope(_attn(), torch.zeros(3, dtype=torch.int64), q, kk, v) is None  # CPU tensors
    monkeypatch.delenv("SGLANG_GEMMA4_FUSED_QKV_NORM_ROPE")
    assert glue.fused_qkv_norm_rope_enabled() is False  # off until measured on the GPU
    monkeypatch.setenv("SGLANG_GEMMA4_FUSED_QKV_NORM_ROPE", "1")
    assert glue.fused_qkv_norm_rope_enabled() is True


def test_the_hook_sits_right_after_the_qkv_split():
    from sglang.srt.models.gemma4_causal import Gemma4Attention

    src = inspect.getsource(Gemma4Attention.forward)
    split = src.index("qkv.split(")
    hook = src.index("gemma4_decode_fusion.qkv_norm_rope(self, positions, q, k, v)")
    assert split < hook < src.index("can_fuse_qkv_norm")
    assert "return gemma4_decode_fusion.attend(self, *fused, forward_batch)" in src


def test_attend_runs_attention_and_output_projection_as_upstream():
    calls = {}

    def attn_fn(q, kk, v, forward_batch, save_kv_cache):
        calls["attn"] = (q.shape, kk, v, forward_batch, save_kv_cache)
        return torch.ones(q.shape[0], q.shape[1], q.shape[2])

    a = _attn(is_kv_shared_layer=True)
    a.attn = attn_fn
    a.o_proj = lambda x: (x * 2, None)
    out = glue.attend(a, torch.zeros(3, 128), None, None, "fb")
    assert calls["attn"] == (torch.Size([3, 2, 64]), None, None, "fb", False)  # shared: no KV write
    assert out.shape == (3, 128) and torch.equal(out, torch.full((3, 128), 2.0))


_COMPILE_CHECK = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sglang.kernels.ops.layernorm import gemma4_qkv_norm_rope as k

sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "qw_ptr": "*bf16", "kw_ptr": "*bf16",
       "cs_ptr": "*fp32", "pos_ptr": "*i64", "stride_q": "i32", "stride_k": "i32", "stride_v": "i32", "eps": "fp32"}
for half, has_kv in ((256, True), (128, False)):
    c = triton.compile(ASTSource(fn=k._qkv_norm_rope_kernel, signature=sig,
                                 constexprs=dict(NQ=8, NKV=1, HALF=half, HAS_KV=has_kv, EMULATE=False)),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert c.asm.get("cubin")
    print("compiled", half, has_kv)
print("ok")
"""


def test_kernel_compiles_for_sm90(tmp_path):
    from triton_offline import compile_offline

    compile_offline(_COMPILE_CHECK, tmp_path, expected_kernels=2)


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("kind, D", [("full", 512), ("sliding", 256)])
@pytest.mark.parametrize("T", [1, 80, 1024])
@pytest.mark.parametrize("shared", [False, True])
def test_against_the_upstream_kernels_gpu(kind, D, T, shared):
    from sglang.kernels.ops.layernorm.gemma4_fused_ops import gemma_qkv_rmsnorm

    rope = _rope(kind, D).cuda()
    assert glue.attention_fusable(types.SimpleNamespace(
        q_norm=types.SimpleNamespace(scale_shift=0.0), k_norm=types.SimpleNamespace(scale_shift=0.0),
        v_norm=types.SimpleNamespace(with_scale=False), rotary_emb=rope, head_dim=D))
    q, kk, v, qw, kw, cache, pos = _inputs(T, 8, 1, D, torch.bfloat16, "cuda", cache=rope.cos_sin_cache.float())
    uq, uk, uv = q.clone(), kk.clone(), v.clone()
    gemma_qkv_rmsnorm(uq, None if shared else uk, None if shared else uv, qw, None if shared else kw,
                      num_q_heads=8, num_kv_heads=1, head_dim=D, eps=1e-6)
    dummy = torch.zeros_like(uq[:, :D]) if shared else uk
    uq, uk2 = rope(pos, uq, dummy)
    k.gemma4_qkv_norm_rope(q, None if shared else kk, None if shared else v, qw, None if shared else kw,
                           rope.cos_sin_cache, pos, num_q_heads=8, num_kv_heads=1, head_dim=D, eps=1e-6)
    _check(q, uq, torch.bfloat16)
    if not shared:
        _check(kk, uk2, torch.bfloat16)
        _check(v, uv, torch.bfloat16)


@pytest.mark.gpu
def test_cuda_graph_replay_gpu():
    rope = _rope("full", 512).cuda()
    q, kk, v, qw, kw, cache, pos = _inputs(16, 8, 1, 512, torch.bfloat16, "cuda", cache=rope.cos_sin_cache.float())
    src = (q.clone(), kk.clone(), v.clone())
    want = k.reference_qkv_norm_rope(*src, qw, kw, rope.cos_sin_cache, pos, num_q_heads=8, num_kv_heads=1,
                                     head_dim=512, eps=1e-6)

    def run():
        q.copy_(src[0]), kk.copy_(src[1]), v.copy_(src[2])
        k.gemma4_qkv_norm_rope(q, kk, v, qw, kw, rope.cos_sin_cache, pos, num_q_heads=8, num_kv_heads=1,
                               head_dim=512, eps=1e-6)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=s):
            run()
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        _check(q, want[0], torch.bfloat16)
        _check(kk, want[1], torch.bfloat16)
