"""The fused per-layer-embedding tail of Gemma-4 E2B / E4B layers (gemma4_ple_tail, gemma4_decode_fusion).

The three elementwise kernels around the two linears must give what 0.5.23's nine ops give
(``reference_ple_tail``, the same ops in torch, one rounding to the activation dtype after each).  The
CPU tests run the installed kernels under Triton's interpreter (which then rounds like the GPU) and
require the reference's result bit for bit, on partial blocks, strided per-layer inputs and both
16-bit dtypes, plus named errors and the glue's conditions; the GPU-marked twins run them compiled at
E2B's and E4B's widths and decode / prefill row counts, against sglang's own norm modules and
cuBLAS, where only the fp32 order of the norms' sums of squares may differ (a rounding step of a few
elements), and inside a CUDA graph.
"""

from __future__ import annotations

import types

import pytest
import torch

from sglang.kernels.ops.layernorm import gemma4_ple_tail as k
from sglang.srt.models import gemma4_decode_fusion as glue


def _dev() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(T, H, P, dtype=torch.bfloat16, device=None, seed=0, pli_layers=3, scalar=0.75):
    device = device or _dev()
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

    # per-layer input as the model passes it: a [T, P] view of a [T, layers, P] tensor
    pli_all = rnd(T, pli_layers, P)
    return dict(
        x=rnd(T, H, scale=3.0),
        residual=rnd(T, H, scale=2.0),
        ff_norm_weight=(1.0 + 0.3 * torch.randn(H, generator=g)).to(dtype).to(device),
        ff_eps=1e-6,
        gate_weight=rnd(P, H, scale=H ** -0.5),
        per_layer_input=pli_all[:, 1, :],
        proj_weight=rnd(H, P, scale=P ** -0.5),
        ple_norm_weight=(1.0 + 0.3 * torch.randn(H, generator=g)).to(dtype).to(device),
        ple_eps=1e-6,
        layer_scalar=torch.tensor([scalar], dtype=dtype, device=device),
    )


def _tol(dtype):
    # two bf16 / fp16 roundings of accumulation-order differences, relative to the output scale
    return (3e-2, 3e-2) if dtype == torch.bfloat16 else (4e-3, 4e-3)


def _check_close(got, want, dtype):
    if got.device.type == "cpu":
        # the interpreter runs the kernels with the GPU's roundings; its dots sum the same exact products
        # as the reference's (fp32 or better), so here the result is the reference's, bit for bit
        assert torch.equal(got, want), f"{(got != want).float().mean().item():.2%} of the elements differ"
        return
    rtol, atol = _tol(dtype)
    scale = want.float().abs().mean().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * scale)


def _run(inp, **kw):
    return k.gemma4_ple_tail(**inp, **kw)


def _ref(inp, **kw):
    return k.reference_ple_tail(**inp, **kw)


# ----------------------------------------------------------------------------------------------
# CPU (Triton interpreter) and GPU alike


@pytest.mark.parametrize("T,H,P", [(1, 64, 32), (5, 96, 48), (37, 80, 24), (3, 1536, 256)])
def test_matches_upstream_op_sequence(T, H, P):
    # widths that are not powers of two leave masked lanes in every kernel
    inp = _inputs(T, H, P)
    _check_close(_run(inp), _ref(inp), torch.bfloat16)


def test_linears_are_the_callers():
    """gate / proj callables replace the weights: the layer's own modules do the GEMMs."""
    inp = _inputs(4, 64, 32, seed=9)
    calls = []

    def gate(t):
        calls.append("gate")
        return torch.nn.functional.linear(t, inp["gate_weight"])

    def proj(t):
        calls.append("proj")
        return torch.nn.functional.linear(t, inp["proj_weight"])

    got = k.gemma4_ple_tail(**dict(inp, gate_weight=None, proj_weight=None), gate=gate, proj=proj)
    assert calls == ["gate", "proj"]
    _check_close(got, _ref(inp), torch.bfloat16)
    with pytest.raises(ValueError, match="give gate and proj"):
        k.gemma4_ple_tail(**dict(inp, gate_weight=None))
    with pytest.raises(ValueError, match="gate output has width 7, the per_layer_input 32"):
        k.gemma4_ple_tail(**inp, gate=lambda t: t[:, :7], proj=proj)


def test_fp16_and_norm_shift():
    inp = _inputs(9, 64, 32, dtype=torch.float16, seed=3)
    _check_close(_run(inp, ple_norm_shift=1.0), _ref(inp, ple_norm_shift=1.0), torch.float16)
    # the shift matters: without it the result is another one
    assert not torch.allclose(_run(inp, ple_norm_shift=1.0).float(), _ref(inp).float(), rtol=0.05, atol=0.05)


def test_each_term_counts():
    """Each input moves the output: a kernel that dropped a term would pass a loose comparison only
    if the term did not matter, so change one at a time and require the output to follow the
    reference."""
    base = _inputs(6, 64, 32, seed=5)
    changes = {
        "layer_scalar": lambda t: t * 2,
        "ff_norm_weight": lambda t: t.flip(0),
        "ple_norm_weight": lambda t: t.flip(0),
        "per_layer_input": lambda t: -t,
        "gate_weight": lambda t: t.flip(0),
        "proj_weight": lambda t: t.flip(1),
        "residual": lambda t: t * 0.5,
    }
    out0 = _run(base)
    for name, change in changes.items():
        inp = dict(base, **{name: change(base[name])})
        got = _run(inp)
        _check_close(got, _ref(inp), torch.bfloat16)
        assert (got.float() - out0.float()).abs().max() > 0.1, f"changing {name} did not change the output"


def test_empty_batch():
    out = _run(_inputs(0, 64, 32))
    assert tuple(out.shape) == (0, 64)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("residual", lambda i: i["residual"][:, :-1], "residual has shape"),
        ("per_layer_input", lambda i: i["per_layer_input"].float(), "per_layer_input is torch.float32"),
        ("per_layer_input", lambda i: i["per_layer_input"][:-1], r"per_layer_input has shape \(3, 32\)"),
        ("proj_weight", lambda i: i["proj_weight"][:-1], "proj_weight has shape"),
        ("ple_norm_weight", lambda i: i["ple_norm_weight"][:-1], "ple_norm_weight must be"),
        ("layer_scalar", lambda i: torch.ones(2, dtype=torch.bfloat16, device=i["x"].device), "layer_scalar"),
        ("x", lambda i: i["x"].float(), "dtype torch.float32 is not fused"),
        ("x", lambda i: i["x"][None], r"x must be \[tokens, hidden\]"),
    ],
)
def test_bad_input_is_named(name, value, message):
    inp = _inputs(4, 64, 32)
    inp[name] = value(inp)
    with pytest.raises(ValueError, match=message):
        _run(inp)


# ----------------------------------------------------------------------------------------------
# The model glue: when a layer takes the fused tail


class _Linear:
    """ReplicatedLinear's calling convention: (output, bias)."""

    def __init__(self, w):
        self.weight = w

    def __call__(self, t):
        return torch.nn.functional.linear(t, self.weight), None


def _layer(H=64, P=32, dtype=torch.bfloat16, device="cpu"):
    inp = _inputs(3, H, P, dtype=dtype, device=device)
    lin = _Linear
    return types.SimpleNamespace(
        hidden_size_per_layer_input=P,
        per_layer_input_gate=lin(inp["gate_weight"]),
        per_layer_projection=lin(inp["proj_weight"]),
        post_feedforward_layernorm=types.SimpleNamespace(
            weight=inp["ff_norm_weight"], variance_epsilon=1e-6, cast_x_before_out_mul=False,
            variance_size_override=None, has_weight=True),
        post_per_layer_input_norm=types.SimpleNamespace(
            weight=inp["ple_norm_weight"], eps=1e-6, scale_shift=0.0, with_scale=True),
        layer_scalar=inp["layer_scalar"],
    ), inp


def test_layer_fusable_conditions():
    layer, _ = _layer()
    assert glue.layer_fusable(layer)
    for mutate in (
        lambda l: setattr(l, "per_layer_projection", None),
        lambda l: setattr(l, "hidden_size_per_layer_input", 0),
        lambda l: setattr(l.post_feedforward_layernorm, "cast_x_before_out_mul", True),
        lambda l: setattr(l.post_feedforward_layernorm, "variance_size_override", 32),
        lambda l: setattr(l.post_feedforward_layernorm, "_quant_linear", object()),
        lambda l: setattr(l.post_feedforward_layernorm, "has_weight", False),
        lambda l: setattr(l.post_per_layer_input_norm, "with_scale", False),
        lambda l: setattr(l, "layer_scalar", torch.ones(2)),
    ):
        bad, _ = _layer()
        mutate(bad)
        assert not glue.layer_fusable(bad)


def test_switch_off_and_cpu_tensors_keep_upstream_path(monkeypatch):
    layer, inp = _layer()
    # CPU tensors: never fused (the kernels serve CUDA only), whatever the switch says
    assert glue.ple_tail(layer, inp["x"].cpu(), inp["residual"].cpu(), inp["per_layer_input"].cpu()) is None
    monkeypatch.setenv("SGLANG_GEMMA4_FUSED_PLE_TAIL", "0")
    assert glue.fused_ple_tail_enabled() is False
    monkeypatch.setenv("SGLANG_GEMMA4_FUSED_PLE_TAIL", "1")
    assert glue.fused_ple_tail_enabled() is True
    monkeypatch.delenv("SGLANG_GEMMA4_FUSED_PLE_TAIL")
    assert glue.fused_ple_tail_enabled() is True  # default on


# ----------------------------------------------------------------------------------------------
# GPU twins: compiled, real widths, against the upstream modules


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 7, 16, 80, 129, 1000, 8192])
@pytest.mark.parametrize("H,P", [(1536, 256), (2560, 256)])  # E2B, E4B
def test_gpu_matches_reference(T, H, P):
    inp = _inputs(T, H, P, device="cuda", seed=T)
    _check_close(_run(inp), _ref(inp), torch.bfloat16)


@pytest.mark.gpu
def test_gpu_against_upstream_modules(monkeypatch):
    """The glue with the switch on against 0.5.23's own modules (sgl_kernel RMSNorm, cuBLAS GEMMs,
    Gemma4RMSNorm) on the same weights."""
    from sglang.srt.layers.layernorm import Gemma4RMSNorm, RMSNorm

    H, P, T = 1536, 256, 80
    inp = _inputs(T, H, P, device="cuda", seed=11)
    ff = RMSNorm(H, eps=1e-6).to("cuda", torch.bfloat16)
    ff.weight.data.copy_(inp["ff_norm_weight"])
    ple = Gemma4RMSNorm(H, eps=1e-6).to("cuda", torch.bfloat16)
    ple.weight.data.copy_(inp["ple_norm_weight"])
    layer = types.SimpleNamespace(
        hidden_size_per_layer_input=P,
        per_layer_input_gate=_Linear(inp["gate_weight"]), per_layer_projection=_Linear(inp["proj_weight"]),
        post_feedforward_layernorm=ff, post_per_layer_input_norm=ple, layer_scalar=inp["layer_scalar"])
    h = ff(inp["x"]) + inp["residual"]
    gate = torch.nn.functional.gelu(h @ inp["gate_weight"].t(), approximate="tanh")
    c = ple((gate * inp["per_layer_input"]) @ inp["proj_weight"].t())
    upstream = (h + c) * inp["layer_scalar"]
    fused = glue.ple_tail(layer, inp["x"], inp["residual"], inp["per_layer_input"])
    assert fused is not None
    _check_close(fused, upstream, torch.bfloat16)
    # the same GEMMs and the same roundings: all but a few elements (the norms' fp32 sums may be
    # added in another order) equal the upstream ops'
    same = (fused == upstream).float().mean().item()
    assert same > 0.99, f"only {same:.2%} of the elements equal the upstream ops'"


@pytest.mark.gpu
def test_gpu_cuda_graph_replay():
    inp = _inputs(16, 1536, 256, device="cuda", seed=2)
    want = k.gemma4_ple_tail(**inp)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        k.gemma4_ple_tail(**inp)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=s):
            got = k.gemma4_ple_tail(**inp)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(5):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------
# The compiler, not only the interpreter: Triton's interpreter runs kernels the GPU compiler refuses
# (a module-level float read inside a kernel passed here and failed on the first H100). Compile the
# installed kernels offline for sm_90 in a process without TRITON_INTERPRET (no GPU needed).

_COMPILE_CHECK = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sglang.kernels.ops.layernorm import gemma4_ple_tail as k

target = GPUTarget("cuda", 90, 32)
common = dict(BLOCK=2048, EMULATE=False)
kernels = (
    (k._ple_pre_kernel, {"x_ptr": "*bf16", "r_ptr": "*bf16", "w_ptr": "*bf16", "h_ptr": "*bf16", "H": "i32",
                         "stride_x": "i32", "stride_r": "i32", "stride_h": "i32", "eps": "fp32"}, common),
    (k._ple_gate_kernel, {"a_ptr": "*bf16", "p_ptr": "*bf16", "g_ptr": "*bf16", "P": "i32", "stride_a": "i32",
                          "stride_p": "i32", "stride_g": "i32"}, dict(BLOCK=256, EMULATE=False)),
    (k._ple_post_kernel, {"c_ptr": "*bf16", "h_ptr": "*bf16", "w_ptr": "*bf16", "s_ptr": "*bf16",
                          "out_ptr": "*bf16", "H": "i32", "stride_c": "i32", "stride_h": "i32", "stride_o": "i32",
                          "eps": "fp32", "shift": "fp32"}, common),
)
for fn, sig, consts in kernels:
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                              options={"num_warps": 4})
    assert compiled.asm.get("cubin"), fn.__name__
    print("compiled", fn.__name__)
print("ok")
"""


def test_kernels_compile_for_sm90(tmp_path):
    from triton_offline import compile_offline

    compile_offline(_COMPILE_CHECK, tmp_path, expected_kernels=3)
