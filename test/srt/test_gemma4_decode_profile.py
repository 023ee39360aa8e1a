"""benchmark/gemma4/decode_profile.py: kernel-family rules on real kernel names, attribution of a profiled
decode step (synthetic torch.profiler traces), the decode-floor arithmetic against hand-worked layers, and the
committed decode_floor results.  The GPU test checks the profiler's view of CUDA-graph replays (its CPU twin
is test_graph_steps_attributed_from_template)."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmark", "gemma4", "decode_profile.py")
CONFIGS = os.path.join(REPO, "benchmark", "gemma4", "configs")
RESULTS = os.path.join(REPO, "benchmark", "gemma4", "results")


def _load():
    spec = importlib.util.spec_from_file_location("decode_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["decode_profile"] = mod
    spec.loader.exec_module(mod)
    return mod


dp = _load()


def _geom(name):
    return dp.load_geometry(os.path.join(CONFIGS, name), name)


# ----------------------------------------------------------------------------------------------------------
# Real kernel names of the installed engine
# ----------------------------------------------------------------------------------------------------------
def _sglang_root():
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sglang is not installed")
    return list(spec.submodule_search_locations)[0]


# (file under the installed sglang package, Triton function name)
TRITON_NAMES = [
    ("kernels/ops/attention/decode_attention.py", "_fwd_grouped_kernel_stage1"),
    ("kernels/ops/attention/decode_attention.py", "_fwd_kernel_stage1"),
    ("kernels/ops/attention/decode_attention.py", "_fwd_kernel_stage2"),
    ("kernels/ops/attention/decode_attention.py", "_lean_attention_decode_kernel"),
    # the patched engine's router kernels (0.5.23's _gemma4_routing_kernel is only in the stock engine)
    ("kernels/ops/moe/gemma4_routing_network.py", "_gemma4_routing_network_kernel"),
    ("kernels/ops/moe/gemma4_routing_network.py", "_gemma4_routing_rounds_kernel"),
    ("kernels/ops/moe/gemma4_routing.py", "_gemma_routing_post_topk_kernel"),
    ("kernels/ops/moe/fused_moe_triton_kernels.py", "fused_moe_kernel"),
    ("kernels/ops/moe/fused_moe_triton_kernels.py", "act_and_mul_kernel"),
    ("kernels/ops/moe/fused_moe_triton_kernels.py", "_moe_sum_reduce_kernel"),
    ("kernels/ops/layernorm/gemma4_fused_ops.py", "_gemma_qkv_rmsnorm_kernel"),
    ("kernels/ops/layernorm/gemma4_fused_ops.py", "_gemma_rmsnorm_residual_kernel"),
    ("kernels/ops/layernorm/gemma4_fused_ops.py", "_gemma_dual_rmsnorm_residual_kernel"),
    ("kernels/ops/attention/kv_indices.py", "create_flashinfer_kv_indices_triton"),
]
# kernels of sgl_kernel's compiled ops (sm90 build), as the profiler prints them (demangled)
SGL_KERNEL_NAMES = {
    "RMSNormKernel": "void flashinfer::norm::RMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, "
                     "__nv_bfloat16*, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, float, float)",
    "FusedAddRMSNormKernel": "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, "
                             "__nv_bfloat16*, __nv_bfloat16*, unsigned int, unsigned int, unsigned int, float, float)",
    "act_and_mul_kernel": "void flashinfer::activation::act_and_mul_kernel<__nv_bfloat16, "
                          "&gelu_tanh<float>>(__nv_bfloat16*, __nv_bfloat16 const*, int)",
    "rotary_embedding_kernel": "void rotary_embedding_kernel<c10::BFloat16, true>(long const*, c10::BFloat16*, "
                               "c10::BFloat16*, c10::BFloat16 const*, int, long, long, int, int, int)",
    "moe_align_block_size_kernel": "void moe_align_block_size_kernel<int>(int const*, int*, int*, int*, int, int, "
                                   "int, int, unsigned long, int*, bool)",
    "moe_sum_reduce_kernel": "void moe_sum_reduce_kernel<c10::BFloat16, 8>(c10::BFloat16 const*, c10::BFloat16*, "
                             "long, long, long, long, double)",
}


def test_triton_kernel_names_exist_in_installed_sglang():
    root = _sglang_root()
    for rel, name in TRITON_NAMES:
        path = os.path.join(root, rel)
        assert os.path.isfile(path), f"{rel} is not in the installed sglang"
        with open(path, encoding="utf-8") as f:
            assert f"def {name}(" in f.read(), f"{name} is not defined in {rel}"


def test_sgl_kernel_names_exist_in_installed_ops():
    spec = importlib.util.find_spec("sgl_kernel")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sgl_kernel is not installed")
    so = os.path.join(list(spec.submodule_search_locations)[0], "sm90", "common_ops.abi3.so")
    if not os.path.isfile(so):
        pytest.skip("no sm90 build of sgl_kernel")
    with open(so, "rb") as f:
        blob = f.read()
    for short in SGL_KERNEL_NAMES:
        assert short.encode() in blob, f"{short} is not in sgl_kernel's sm90 ops"


L = "language_model.layers.7."


@pytest.mark.parametrize("name,label,phase,ple,family", [
    # decode attention: by name, whatever the label
    ("_fwd_grouped_kernel_stage1", L + "self_attn.attn", "forward", False, "attn_core"),
    ("_fwd_kernel_stage1", None, "forward", False, "attn_core"),
    ("_fwd_kernel_stage2", L + "self_attn.attn", "forward", True, "attn_core"),
    ("_lean_attention_decode_kernel", None, "forward", False, "attn_core"),
    # router and experts
    ("_gemma4_routing_kernel", L + "moe.topk", "forward", False, "router"),
    ("_gemma4_routing_kernel", None, "forward", False, "router"),
    ("_gemma4_routing_network_kernel", None, "forward", False, "router"),
    ("_gemma_routing_post_topk_kernel", L + "moe.topk", "forward", False, "router"),
    ("nvjet_tst_64x8_64x16_4x1_v_bz_TNT", L + "router.proj", "forward", False, "router"),
    (SGL_KERNEL_NAMES["RMSNormKernel"], L + "router.norm", "forward", False, "router"),
    ("fused_moe_kernel", L + "moe.experts", "forward", False, "moe_experts"),
    ("fused_moe_kernel", None, "forward", False, "moe_experts"),
    (SGL_KERNEL_NAMES["moe_align_block_size_kernel"], None, "forward", False, "moe_experts"),
    ("act_and_mul_kernel", L + "moe.experts", "forward", False, "moe_experts"),
    ("_moe_sum_reduce_kernel", L + "moe.experts", "forward", False, "moe_experts"),
    # the Triton MoE activation kernel and flashinfer's share a name: only the label tells them apart
    ("act_and_mul_kernel", None, "forward", False, "other"),
    (SGL_KERNEL_NAMES["act_and_mul_kernel"], L + "mlp.act_fn", "forward", False, "mlp"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", L + "mlp.gate_up_proj", "forward", False, "mlp"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", L + "mlp.down_proj", "forward", False, "mlp"),
    # attention block
    ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", L + "self_attn.qkv_proj", "forward", False, "attn_proj"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64", L + "self_attn.o_proj", "forward", False, "attn_proj"),
    (SGL_KERNEL_NAMES["rotary_embedding_kernel"], L + "self_attn.rotary_emb", "forward", False, "attn_aux"),
    (SGL_KERNEL_NAMES["rotary_embedding_kernel"], None, "forward", False, "attn_aux"),
    ("void at::native::index_elementwise_kernel<128, 4>(...)", L + "self_attn.attn", "forward", False, "attn_aux"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<c10::BFloat16>>(...)",
     L + "self_attn", "forward", False, "attn_aux"),
    ("_gemma_qkv_rmsnorm_kernel", L + "self_attn", "forward", False, "norms"),
    # norms: by name anywhere (also in the decoder layer's body of a PLE model), or by a norm module's label
    (SGL_KERNEL_NAMES["RMSNormKernel"], L + "input_layernorm", "forward", False, "norms"),
    (SGL_KERNEL_NAMES["FusedAddRMSNormKernel"], "language_model.layers.7", "forward", True, "norms"),
    ("_gemma_dual_rmsnorm_residual_kernel", "language_model.layers.7", "forward", False, "norms"),
    ("_gemma_rmsnorm_residual_kernel", None, "forward", False, "norms"),
    ("void at::native::reduce_kernel<512, 1>(...)", L + "post_feedforward_layernorm_1", "forward", False, "norms"),
    (SGL_KERNEL_NAMES["RMSNormKernel"], "language_model.norm", "forward", False, "norms"),
    # PLE
    ("nvjet_tst_64x8_64x16_4x1_v_bz_TNT", L + "per_layer_input_gate", "forward", True, "ple_tail"),
    ("nvjet_tst_64x8_64x16_4x1_v_bz_TNT", L + "per_layer_projection", "forward", True, "ple_tail"),
    (SGL_KERNEL_NAMES["RMSNormKernel"], L + "post_per_layer_input_norm", "forward", True, "ple_tail"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(...)>(...)",
     "language_model.layers.7", "forward", True, "ple_tail"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(...)>(...)",
     "language_model.layers.7", "forward", False, "other"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", "language_model.per_layer_model_projection", "forward", True, "ple_entry"),
    ("void at::native::(anonymous namespace)::indexSelectSmallIndex<c10::BFloat16, long, unsigned int, 2, 2, -2>(...)",
     "language_model.embed_tokens_per_layer", "forward", True, "ple_entry"),
    (SGL_KERNEL_NAMES["RMSNormKernel"], "language_model.per_layer_projection_norm", "forward", True, "ple_entry"),
    # embedding, LM head, sampling, the rest
    ("void at::native::(anonymous namespace)::indexSelectSmallIndex<c10::BFloat16, long, unsigned int, 2, 2, -2>(...)",
     "language_model.embed_tokens", "forward", False, "embed"),
    ("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT", "logits_processor", "forward", False, "lm_head"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::tanh_kernel_cuda(...)>(...)", "logits_processor",
     "forward", False, "lm_head"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>>>(...)", None,
     "sample", False, "sampling"),
    ("Memcpy HtoD (Pageable -> Device)", None, "prepare", False, "other"),
    ("create_flashinfer_kv_indices_triton", None, "forward", False, "other"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", None, "forward", False, "gemm_unattributed"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<long>>(...)", "<root>", "forward",
     True, "other"),
])
def test_classify_real_names(name, label, phase, ple, family):
    assert dp.classify(name, label, phase, ple) == family


def test_attention_family_and_layer_of_label():
    types = ["sliding_attention", "full_attention"]
    assert dp.layer_of_label("language_model.layers.1.self_attn.attn") == 1
    assert dp.layer_of_label("language_model.layers.12") == 12
    assert dp.layer_of_label("language_model.norm") is None
    assert dp.attention_family(1, types) == "attn_full"
    assert dp.attention_family(0, types) == "attn_sliding"
    assert dp.attention_family(2, types) == "attn_unassigned"
    assert dp.attention_family(None, types) == "attn_unassigned"


# ----------------------------------------------------------------------------------------------------------
# Attribution of profiled steps: a synthetic torch.profiler chrome trace
# ----------------------------------------------------------------------------------------------------------
class Trace:
    """Builds chrome-trace events as torch.profiler exports them (times in us)."""

    TID = 101

    def __init__(self):
        self.events = []
        self.corr = 1000
        self.t = 0.0

    def range(self, name, ts, dur):
        self.events.append({"ph": "X", "cat": "user_annotation", "name": name, "ts": ts, "dur": dur,
                            "tid": self.TID, "pid": 1, "args": {"External id": 1}})

    def launch(self, ts, name="cudaLaunchKernel"):
        self.corr += 1
        self.events.append({"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": 1.0,
                            "tid": self.TID, "pid": 1, "args": {"correlation": self.corr, "cbid": 211}})
        return self.corr

    def kernel(self, name, ts, dur, corr, cat="kernel"):
        self.events.append({"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": 7, "pid": 0,
                            "args": {"correlation": corr, "stream": 7, "device": 0}})

    def obj(self):
        return {"schemaVersion": 1, "traceEvents": list(self.events)}


TYPES = ["sliding_attention", "full_attention", "sliding_attention"]
Lp = "language_model.layers."
GEMM_A = "nvjet_tst_128x64_64x8_1x1_v_bz_TNT"
GEMM_B = "nvjet_tst_64x8_64x16_4x1_v_bz_TNT"
NORM = "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, float)"
ARGMAX = "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>>>(...)"
COPY = "Memcpy HtoD (Pageable -> Device)"
ATT_US = {"sliding_attention": 8.0, "full_attention": 10.0}


def _layer_kernels(i, qkv_name=GEMM_A):
    """(name, module label, us) of one decoder layer's forward."""
    p = f"{Lp}{i}."
    return [
        (NORM, p + "input_layernorm", 1.0),
        (qkv_name, p + "self_attn.qkv_proj", 5.0),
        ("_fwd_grouped_kernel_stage1", p + "self_attn.attn", ATT_US[TYPES[i]]),
        ("_fwd_kernel_stage2", p + "self_attn.attn", 2.0),
        (GEMM_A, p + "self_attn.o_proj", 4.0),
        (GEMM_A, p + "mlp.gate_up_proj", 6.0),
        (GEMM_B, p + "mlp.down_proj", 3.0),
    ]


def _forward_kernels(qkv_override=None):
    ks = []
    for i in range(len(TYPES)):
        ks += _layer_kernels(i, qkv_override.get(i, GEMM_A) if qkv_override else GEMM_A)
    ks.append(("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT", "logits_processor", 30.0))
    return ks


def _eager_trace():
    """One eager step: every kernel launched by its own call inside its module's range."""
    tr = Trace()
    t = 1000.0
    tr.range("dp:step#0", t, 5000)
    tr.range("dp:prepare", t + 1, 50)
    c = tr.launch(t + 10)
    tr.kernel(COPY, t + 12, 1.5, c, cat="gpu_memcpy")
    tr.range("dp:forward", t + 100, 3000)
    tr.range("mod:<root>", t + 105, 2900)
    tgpu = t + 200
    tcpu = t + 110
    for name, label, us in _forward_kernels():
        tr.range("mod:" + label, tcpu, 10)
        c = tr.launch(tcpu + 2)
        tr.kernel(name, tgpu, us, c)
        tcpu += 20
        tgpu += us + 0.5
    tr.range("dp:sample", t + 3200, 100)
    c = tr.launch(t + 3210)
    tr.kernel(ARGMAX, t + 3220, 3.0, c)
    return tr.obj()


def _graph_trace(steps=2, qkv_override=None, orphan=False):
    """Graph steps: prepare copy, one cudaGraphLaunch whose kernels share its correlation id, argmax."""
    tr = Trace()
    for s in range(steps):
        t = 10000.0 * (s + 1)
        tr.range(f"dp:step#{s}", t, 5000)
        tr.range("dp:prepare", t + 1, 50)
        c = tr.launch(t + 10, "cudaMemcpyAsync")
        tr.kernel(COPY, t + 12, 1.5, c, cat="gpu_memcpy")
        tr.range("dp:forward", t + 100, 3000)
        c = tr.launch(t + 120, "cudaGraphLaunch")
        tgpu = t + 130
        for j, (name, _label, us) in enumerate(_forward_kernels(qkv_override)):
            # a kernel the profiler reports without a correlation id is placed by its own start time
            tr.kernel(name, tgpu, us, None if (orphan and s == 1 and j == 3) else c)
            tgpu += us + 0.2
        tr.range("dp:sample", t + 3200, 100)
        c = tr.launch(t + 3210)
        tr.kernel(ARGMAX, t + 3220, 3.0, c)
    return tr.obj()


EXPECTED = {  # us per step, by hand from _layer_kernels
    "attn_sliding": 2 * (8.0 + 2.0), "attn_full": 10.0 + 2.0, "attn_proj": 3 * (5.0 + 4.0),
    "mlp": 3 * (6.0 + 3.0), "norms": 3 * 1.0, "lm_head": 30.0, "sampling": 3.0, "other": 1.5,
}


def _attribute(graph_obj, template_obj, ple=False):
    graph = dp.annotate(dp.compact_trace(graph_obj))
    template = dp.template_from(dp.annotate(dp.compact_trace(template_obj))) if template_obj else None
    return dp.attribute(graph, template, TYPES, ple)


def test_graph_steps_attributed_from_template():
    r = _attribute(_graph_trace(qkv_override={1: "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64"}),
                   _eager_trace())
    assert r["steps"] == 2
    got = {f: round(v["us_per_step"], 6) for f, v in r["families"].items()}
    assert got == EXPECTED
    assert r["families"]["attn_full"]["kernels_per_step"] == 2
    assert r["families"]["attn_sliding"]["kernels_per_step"] == 4
    assert r["families"]["attn_proj"]["kernels_per_step"] == 6  # the replaced qkv GEMM kept its label
    assert r["kernel_us_per_step"] == pytest.approx(sum(EXPECTED.values()))
    assert r["attention_layer_by"] == {"label": 12, "order": 0}
    al = r["alignment"]
    assert al["forward_kernels"] == 2 * len(_forward_kernels()) and al["labelled"] == al["forward_kernels"]
    assert r["phase_us_per_step"]["sample"] == 3.0 and r["phase_us_per_step"]["prepare"] == 1.5
    assert r["unplaced_us"] == 0.0
    assert sum(v["share"] for v in r["families"].values()) == pytest.approx(1.0)
    top = r["top_kernels"][0]
    assert top["family"] == "lm_head" and top["us_per_step"] == 30.0 and top["module"] == "logits_processor"


def test_kernel_without_correlation_placed_by_its_start_time():
    r = _attribute(_graph_trace(orphan=True), _eager_trace())
    got = {f: round(v["us_per_step"], 6) for f, v in r["families"].items()}
    assert got == EXPECTED and r["unplaced_us"] == 0.0


def test_without_template_attention_by_order_and_gemms_unattributed():
    r = _attribute(_graph_trace(), None)
    fam = {f: round(v["us_per_step"], 6) for f, v in r["families"].items()}
    assert fam["attn_sliding"] == EXPECTED["attn_sliding"] and fam["attn_full"] == EXPECTED["attn_full"]
    assert fam["gemm_unattributed"] == EXPECTED["attn_proj"] + EXPECTED["mlp"] + EXPECTED["lm_head"]
    assert fam["norms"] == EXPECTED["norms"]  # norm kernels are known by name
    assert r["attention_layer_by"] == {"label": 0, "order": 12}


def test_extra_attention_launch_is_unassigned_not_miscounted():
    obj = _graph_trace(steps=1)
    head = next(e for e in obj["traceEvents"] if e.get("name", "").startswith("nvjet_tst_256"))  # LM head, last in forward
    extra = copy.deepcopy(head)
    extra.update(name="_fwd_grouped_kernel_stage1", ts=head["ts"] - 0.1, dur=7.0)  # a 4th launch in 3 layers
    obj["traceEvents"].append(extra)
    r = _attribute(obj, None)
    assert r["families"]["attn_unassigned"]["us_per_step"] == 7.0


def test_no_kernels_in_steps_is_a_clear_error():
    obj = _graph_trace(steps=1)
    obj["traceEvents"] = [e for e in obj["traceEvents"] if e.get("cat") != "user_annotation"]
    with pytest.raises(ValueError, match="dp:step"):
        _attribute(obj, None)


def test_compact_trace_rejects_non_trace():
    with pytest.raises(ValueError, match="traceEvents"):
        dp.compact_trace({"events": []})


def test_innermost_nested_ranges():
    ranges = [(0, 100, "outer"), (10, 20, "a"), (12, 15, "a.b"), (30, 40, "c")]
    assert dp._innermost(ranges, [5, 13, 18, 25, 35, 150]) == ["outer", "a.b", "a", "outer", "c", None]


def test_align_labels_equal_and_same_length_replace():
    template = [("n1", "x"), ("n2", "y"), ("n3", "z"), ("n4", "w")]
    labels, matched = dp.align_labels(template, ["n1", "m2", "n3", "n4", "n5"])
    assert labels == ["x", "y", "z", "w", None] and matched == 4
    labels, matched = dp.align_labels(template, ["n1", "q", "r", "n4"])  # 2 replaced by 2: position by position
    assert labels == ["x", "y", "z", "w"] and matched == 4
    labels, matched = dp.align_labels(template, ["n1", "q", "r", "s", "n4"])  # 2 replaced by 3: no guess
    assert labels == ["x", None, None, None, "w"] and matched == 2


def test_real_profiler_ranges_are_read():
    """The CPU part of a real torch.profiler trace (ranges) goes through compact_trace / annotate."""
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.randn(16, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("dp:step#0"):
            with record_function("dp:forward"):
                with record_function("mod:layers.0.mlp"):
                    (x @ x).sum()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.json")
        prof.export_chrome_trace(p)
        with open(p) as f:
            c = dp.compact_trace(json.load(f))
    names = sorted(r[0] for r in c["ranges"])
    assert names == ["dp:forward", "dp:step#0", "mod:layers.0.mlp"]
    step = next(r for r in c["ranges"] if r[0] == "dp:step#0")
    mod = next(r for r in c["ranges"] if r[0] == "mod:layers.0.mlp")
    assert step[1] <= mod[1] and mod[1] + mod[2] <= step[1] + step[2]


# ----------------------------------------------------------------------------------------------------------
# analyze: saved events -> JSON + markdown
# ----------------------------------------------------------------------------------------------------------
def _events():
    with open(os.path.join(CONFIGS, "e2b", "config.json")) as f:
        cfg = json.load(f)
    cfg["text_config"] = dict(cfg["text_config"], num_hidden_layers=3, layer_types=TYPES, num_kv_shared_layers=0)
    meta = {"model": "tiny-e2b", "engine_label": "stock", "engine_version": "0.5.23", "device": "NVIDIA H200",
            "date": "2026-12-01", "commit": "abc1234", "torch": "2.14.1", "triton": "3.8.0", "load_format": "dummy",
            "batch_sizes": [16], "warmup_steps": 3, "timed_steps": 10, "profiled_steps": 2,
            "timings": {"load_model_s": 12.0, "cuda_graph_capture_s": 4.0, "load_total_s": 20.0, "run_total_s": 60.0}}
    batch = {"batch_size": 16, "context_mean": 1500.0, "prefill_s": 0.4, "step_wall_ms_median": 1.2,
             "forward_device_ms_median": 0.9, "graph_used": True, "template_error": None,
             "_graph_trace": dp.compact_trace(_graph_trace()), "_template_trace": dp.compact_trace(_eager_trace())}
    return {"meta": meta, "geometry_config": cfg, "batches": [batch]}


def test_analyze_events_and_markdown(tmp_path):
    ev = _events()
    p = tmp_path / "decode_profile_tiny_stock_events.json.gz"
    with gzip.open(p, "wt") as f:
        json.dump(ev, f)
    assert dp.main(["analyze", "--events", str(p), "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "decode_profile_tiny_stock.json").read_text())
    b = res["batches"][0]
    assert b["attribution"]["families"]["attn_full"]["us_per_step"] == EXPECTED["attn_full"]
    geom = dp.geometry(ev["geometry_config"], "tiny")
    want = dp.model_floor(geom, 16, 1500)["families"]["attn_full"]["floor_us"]
    assert b["attribution"]["families"]["attn_full"]["floor_us"] == pytest.approx(want)
    md = (tmp_path / "decode_profile_tiny_stock.md").read_text()
    assert "| attn_full | 12.0 | 2.0 | 6.0 |" in md
    assert "NVIDIA H200" in md and "abc1234" in md and "model load 12.0 s" in md and "capture 4.0 s" in md
    assert "first match wins" in md and "`attn_core`" in md


def _tiny_model_dir(tmp_path):
    with open(os.path.join(CONFIGS, "e2b", "config.json")) as f:
        cfg = json.load(f)
    cfg["text_config"] = dict(cfg["text_config"], num_hidden_layers=3, layer_types=TYPES, num_kv_shared_layers=0)
    d = tmp_path / "tiny-e2b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_run_needs_cuda_and_a_long_enough_context(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    model = _tiny_model_dir(tmp_path)
    with pytest.raises(SystemExit, match="too short"):
        dp.main(["run", "--model", str(model), "--out", str(tmp_path), "--context", "20"])
    with pytest.raises(SystemExit, match="no config.json"):
        dp.main(["run", "--model", str(tmp_path), "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA device"):
            dp.main(["run", "--model", str(model), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        dp.main(["run", "--model", str(model), "--out", str(tmp_path), "--batch-sizes", "0"])
    assert "batch size must be positive" in capsys.readouterr().err


class _FakeProfile:
    """torch.profiler.profile stand-in: export_chrome_trace writes the next queued synthetic trace."""

    queue: list = []

    def __init__(self, activities=None, **_kw):
        self.activities = activities

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def export_chrome_trace(self, path):
        with open(path, "w") as f:
            json.dump(_FakeProfile.queue.pop(0), f)


class _FakeEvent:
    def __init__(self, enable_timing=False):
        assert enable_timing

    def record(self):
        pass

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return 0.9


class _FakeBuffer:
    """What the copy probe touches of a device tensor: copy_ counts the copies."""

    copies = 0

    def __init__(self, n):
        self.n = n

    def copy_(self, other):
        assert other.n == self.n
        _FakeBuffer.copies += 1


def _fake_engine():
    """(torch, one_batch, ModelRunner, ServerArgs) stand-ins with one_batch 0.5.23's call shapes."""
    import types

    torch = pytest.importorskip("torch")
    fake_torch = types.SimpleNamespace(
        __version__="fake", int64=torch.int64, autograd=torch.autograd,
        profiler=types.SimpleNamespace(profile=_FakeProfile, ProfilerActivity=types.SimpleNamespace(CPU="cpu", CUDA="cuda")),
        cuda=types.SimpleNamespace(synchronize=lambda: None, Event=_FakeEvent, get_device_name=lambda i=0: "FakeGPU",
                                   is_available=lambda: True),
        uint8="uint8", empty=lambda n, dtype=None, device=None: _FakeBuffer(n), empty_like=lambda t: _FakeBuffer(t.n))

    class Batch:
        def __init__(self):
            self.decodes = 0
            self.input_ids = None

        def prepare_for_decode(self):
            self.decodes += 1

    class ModelRunner:
        instances: list = []

        def __init__(self):
            self.load_model()
            self.decode_cuda_graph_runner = object()
            self.model = torch.nn.Sequential(torch.nn.Linear(2, 2))
            self.attn_backend = types.SimpleNamespace()
            self.max_total_num_tokens = 100000
            self.forwards = []
            ModelRunner.instances.append(self)

        def load_model(self):
            pass

        def init_cuda_graphs(self):
            pass

        def forward(self, fb):
            self.model(torch.zeros(1, 2))
            graph = self.decode_cuda_graph_runner is not None
            self.forwards.append(graph)
            return types.SimpleNamespace(logits_output="logits", can_run_graph=graph)

        def sample(self, logits, fb):
            return torch.zeros(1, dtype=torch.int32)

    class BenchRunner:
        def __init__(self, mr):
            self.torch_runner = mr

        def clear(self):
            pass

        def extend(self, reqs):
            return torch.zeros(len(reqs), dtype=torch.int32), None, Batch()

        def decode(self, ids, batch):
            batch.prepare_for_decode()
            self.torch_runner.forward(None)
            return ids, None

        def cleanup(self, batch):
            pass

    ob = types.SimpleNamespace(calls=[], input_lens=[])

    def main(server_args, bench_args):
        ob.calls.append(("main", server_args, bench_args))
        ob.latency_test(server_args, "ports", bench_args, 0, 0)

    def load_model(server_args, port_args, gpu_id, tp_rank):
        mr = ModelRunner()
        mr.init_cuda_graphs()
        return BenchRunner(mr), None

    def original_latency_test(*a):
        raise AssertionError("one_batch's own latency test ran")

    ob.main = main
    ob.latency_test = original_latency_test
    ob.load_model = load_model
    ob.publish = lambda *a, **k: ob.calls.append(("publish", k["role"]))
    ob.SpawnRanks = lambda **k: k
    ob.spawn_world_rank = lambda sa, tp_rank, pp_rank: 0
    ob.BenchArgs = lambda **k: types.SimpleNamespace(**k)
    ob.prepare_synthetic_inputs_for_latency_test = lambda bs, il: ob.input_lens.append(il) or [None] * bs
    ob.ForwardBatch = types.SimpleNamespace(init_new=lambda batch, mr, return_hidden_states_before_norm: "fb")

    class ServerArgs:
        @staticmethod
        def add_cli_args(parser):
            for flag in ("--model-path", "--load-format", "--attention-backend", "--sampling-backend",
                         "--mm-attention-backend", "--swa-full-tokens-ratio", "--context-length",
                         "--mem-fraction-static"):
                parser.add_argument(flag)
            parser.add_argument("--disable-prefill-cuda-graph", action="store_true")
            parser.add_argument("--cuda-graph-bs-decode", nargs="+", type=int)

        @classmethod
        def from_cli_args(cls, ns):
            o = cls()
            o.__dict__.update(vars(ns))
            o.tp_size, o.log_level = 1, "warning"
            return o

    return fake_torch, ob, ModelRunner, ServerArgs, original_latency_test


def test_run_orchestration_with_a_fake_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_GEMMA4_TRITON_KV_SPLITS", "0")
    monkeypatch.setenv("SGLANG_OTHER_SETTING", "1")
    fake_torch, ob, ModelRunner, ServerArgs, original = _fake_engine()
    model = _tiny_model_dir(tmp_path)
    out = tmp_path / "res"
    _FakeProfile.queue = [_graph_trace(steps=2), _eager_trace(), _graph_trace(steps=2), _eager_trace()]
    rc = dp.main(["run", "--model", str(model), "--out", str(out), "--batch-sizes", "16", "1", "--context", "600",
                  "--steps", "2", "--engine-label", "stock"], engine=(fake_torch, ob, ModelRunner, ServerArgs))
    assert rc == 0 and _FakeProfile.queue == []
    assert ob.latency_test is original  # one_batch's worker is put back
    sargs = ob.calls[0][1]
    assert sargs.cuda_graph_bs_decode == [1, 16] and sargs.load_format == "dummy"
    assert sargs.sampling_backend == "pytorch" and sargs.attention_backend == "triton"
    assert ob.calls[0][2].batch_size == (1, 16)
    mr = ModelRunner.instances[-1]
    assert mr.decode_cuda_graph_runner is not None  # restored after the eager step
    assert not mr.model[0]._forward_hooks and not mr.model[0]._forward_pre_hooks
    per_bs = dp.WARMUP_STEPS + 2 * dp.TIMED_STEPS + 2 + 1
    assert len(mr.forwards) == 2 * per_bs
    assert mr.forwards[per_bs - 1] is False and all(mr.forwards[: per_bs - 1])  # only the labelled step is eager
    stem = out / "decode_profile_tiny-e2b_stock"
    res = json.loads(stem.with_suffix(".json").read_text())
    assert [b["batch_size"] for b in res["batches"]] == [1, 16]
    for b in res["batches"]:
        assert b["graph_used"] and b["template_error"] is None
        assert abs(b["context_mean"] - 600) <= 0.5
        assert b["forward_device_ms_median"] == 0.9
        got = {f: round(v["us_per_step"], 6) for f, v in b["attribution"]["families"].items()}
        assert got == EXPECTED
    assert set(res["meta"]["timings"]) >= {"load_model_s", "cuda_graph_capture_s", "load_total_s", "run_total_s"}
    assert res["meta"]["device"] == "FakeGPU" and res["meta"]["engine_label"] == "stock"
    # no --bw: the floors use the copy rate the probe measured (1 GiB read + written in the fake's 0.9 ms)
    assert res["meta"]["bandwidth_source"] == "device copy measured at start"
    assert res["meta"]["bandwidth_bytes_per_s"] == pytest.approx(2 * (1 << 30) / 0.9e-3)
    assert "at 2.39 TB/s (device copy measured at start" in stem.with_suffix(".md").read_text()
    # the switches a profile ran under are in its result: only the series' and the Triton decode ones
    assert res["meta"]["switches"].get("SGLANG_GEMMA4_TRITON_KV_SPLITS") == "0"
    assert "SGLANG_OTHER_SETTING" not in res["meta"]["switches"]
    assert "Switches set: " in stem.with_suffix(".md").read_text()
    assert "SGLANG_GEMMA4_TRITON_KV_SPLITS=0" in stem.with_suffix(".md").read_text()
    assert (out / "decode_profile_tiny-e2b_stock_events.json.gz").is_file()
    assert "## 16 running requests, context 600 tokens" in stem.with_suffix(".md").read_text()


_CONTRACT = r"""
import argparse, inspect, json, shlex, sys
sys.path.insert(0, sys.argv[1])
import decode_profile as dp
from sglang.benchmark import one_batch as ob
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.server_args import ServerArgs
from sglang.srt.runtime_context import override_platform
out = {
    "load_model": list(inspect.signature(ob.load_model).parameters),
    "latency_test": list(inspect.signature(ob.latency_test).parameters),
    "main": list(inspect.signature(ob.main).parameters),
    "synthetic": list(inspect.signature(ob.prepare_synthetic_inputs_for_latency_test).parameters),
    "runner": [m for m in ("extend", "decode", "clear", "cleanup") if hasattr(ob._TorchBenchRunner, m)],
    "init_new": "return_hidden_states_before_norm" in inspect.signature(ob.ForwardBatch.init_new).parameters,
    "publish": list(inspect.signature(ob.publish).parameters),
    "helpers": [n for n in ("_maybe_prepare_mlp_sync_batch", "_init_process_global_configs", "BenchArgs",
                            "SpawnRanks", "spawn_world_rank") if hasattr(ob, n)],
    "mr": [m for m in ("load_model", "init_cuda_graphs", "forward", "sample") if hasattr(ModelRunner, m)],
    "mr_graph_attr": "self.decode_cuda_graph_runner.can_run_graph(" in inspect.getsource(ModelRunner._forward_raw),
    "main_calls_latency_test": "work_func = latency_test" in inspect.getsource(ob.main),
    "prepare_for_decode": hasattr(ScheduleBatch, "prepare_for_decode"),
}
argv = ["--model-path", sys.argv[2]] + shlex.split(dp.DEFAULT_SERVER_ARGS)
argv += ["--cuda-graph-bs-decode", "1", "16", "80", "--device", "cuda", "--skip-tokenizer-init"]
p = argparse.ArgumentParser()
ServerArgs.add_cli_args(p)
sa = ServerArgs.from_cli_args(p.parse_args(argv))
from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view
declare_resolution(sa, "benchmark.one_batch", cuda_graph_config={"decode": {"max_bs": 80}})  # as one_batch.main
with override_platform(is_sm90=True):
    sa.resolve_once()
cfg = resolving_view(sa)
g = cfg.cuda_graph_config
out["resolved"] = {"attention": cfg.attention_backend, "sampling": cfg.sampling_backend,
                   "ratio": cfg.swa_full_tokens_ratio, "decode_bs": list(g.decode.bs), "decode_max_bs": g.decode.max_bs,
                   "decode_backend": g.decode.backend, "prefill_backend": g.prefill.backend,
                   "load_format": cfg.load_format, "mm_attention": cfg.mm_attention_backend}
print("CONTRACT " + json.dumps(out))
"""


@pytest.mark.slow
def test_engine_contract_of_the_installed_sglang(tmp_path):
    """What `run` calls in one_batch / ModelRunner exists with the shapes it uses, and the default server
    arguments resolve (Hopper) to CUDA-graph decode at exactly 1/16/80, triton attention, pytorch sampling."""
    import subprocess

    pytest.importorskip("sglang")
    model = tmp_path / "e2b"
    model.mkdir()
    with open(os.path.join(CONFIGS, "e2b", "config.json")) as f:
        (model / "config.json").write_text(f.read())
    proc = subprocess.run([sys.executable, "-c", _CONTRACT, os.path.dirname(SCRIPT), str(model)],
                          capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CONTRACT ")), None)
    assert line, proc.stderr[-3000:]
    c = json.loads(line[len("CONTRACT "):])
    assert c["load_model"] == ["server_args", "port_args", "gpu_id", "tp_rank"]
    assert c["latency_test"] == ["server_args", "port_args", "bench_args", "gpu_id", "tp_rank"]
    assert c["main"] == ["server_args", "bench_args"] and c["main_calls_latency_test"]
    assert c["synthetic"][:2] == ["batch_size", "input_len"]
    assert c["runner"] == ["extend", "decode", "clear", "cleanup"] and c["init_new"]
    assert "role" in c["publish"] and "ranks" in c["publish"]
    assert len(c["helpers"]) == 5 and c["mr"] == ["load_model", "init_cuda_graphs", "forward", "sample"]
    assert c["mr_graph_attr"] and c["prepare_for_decode"]
    r = c["resolved"]
    assert r["attention"] == "triton" and r["sampling"] == "pytorch" and r["ratio"] == 1.0
    assert r["decode_bs"] == [1, 16, 80] and r["decode_max_bs"] == 80 and r["decode_backend"] == "full"
    assert r["prefill_backend"] == "disabled" and r["load_format"] == "dummy" and r["mm_attention"] == "triton_attn"


# ----------------------------------------------------------------------------------------------------------
# Floor arithmetic: hand-worked layers
# ----------------------------------------------------------------------------------------------------------
def test_e2b_layer0_sliding_owner_by_hand():
    g = _geom("e2b")
    l0 = g.layers[0]
    assert (l0.full, l0.head_dim, l0.n_q, l0.n_kv, l0.kv_shared, l0.mlp_intermediate) == (False, 256, 8, 1, False, 6144)
    f = dp.layer_floor(g, l0, 1, 1500)
    assert f["attn_proj"].weight == (1536 * 2048 + 1536 * 256 * 2 + 2048 * 1536) * 2 == 14_155_776
    assert f["attn_proj"].extra == 0
    assert f["attn_sliding"].kv == 512 * 1 * (256 + 256) * 2 == 524_288  # the window, not the context
    assert f["attn_full"].kv == 0
    assert f["mlp"].weight == 3 * 1536 * 6144 * 2 == 56_623_104
    assert f["mlp"].flops == 2 * 3 * 1536 * 6144
    assert f["attn_sliding"].flops == 2 * 8 * 512 * (256 + 256)
    short = dp.layer_floor(g, l0, 1, 300)  # context below the window: every token
    assert short["attn_sliding"].kv == 300 * 512 * 2


def test_e2b_layer34_full_kv_shared_double_wide_by_hand():
    g = _geom("e2b")
    l34 = g.layers[34]
    assert (l34.full, l34.head_dim, l34.kv_shared, l34.owner, l34.mlp_intermediate) == (True, 512, True, 14, 12288)
    assert g.layers[15].owner == 13 and g.layers[14].owner == 14  # sliding shared -> last sliding owner
    f = dp.layer_floor(g, l34, 1, 1500)
    assert f["attn_proj"].weight == 2 * 1536 * 4096 * 2 == 25_165_824  # q and o only
    assert f["attn_proj"].extra == 2 * 1536 * 512 * 2 == 3_145_728  # k, v computed and dropped by 0.5.23
    assert f["attn_full"].kv == 1500 * 1 * (512 + 512) * 2 == 3_072_000
    assert f["mlp"].weight == 3 * 1536 * 12288 * 2 == 113_246_208
    assert f["attn_aux"].act == 2 * 1 * 4096 * 2  # RoPE on q only, no KV write


def test_26b_full_layer_k_eq_v_and_moe_by_hand():
    g = _geom("26b-a4b")
    l5 = g.layers[5]
    assert (l5.full, l5.head_dim, l5.n_q, l5.n_kv, l5.k_eq_v) == (True, 512, 16, 2, True)
    assert not g.layers[4].k_eq_v and g.layers[4].n_kv == 8 and g.layers[4].head_dim == 256
    f = dp.layer_floor(g, l5, 1, 1500)
    assert f["attn_proj"].weight == (2816 * 8192 + 2816 * 1024 + 8192 * 2816) * 2 == 98_041_856
    assert f["attn_proj"].extra == 2816 * 1024 * 2 == 5_767_168
    assert f["attn_full"].kv == 1500 * 2 * (512 + 512) * 2 == 6_144_000
    expert = 3 * 2816 * 704 * 2
    assert f["moe_experts"].weight == 8 * expert == 95_158_272
    assert f["moe_experts"].flops == 2 * 8 * 3 * 2816 * 704
    assert f["mlp"].weight == 3 * 2816 * 2112 * 2
    assert f["router"].weight == (2816 * 128 + 2816 + 128) * 2
    f16 = dp.layer_floor(g, l5, 16, 1500)
    assert f16["moe_experts"].weight == pytest.approx(128 * (1 - (15 / 16) ** 16) * expert)
    sl = dp.layer_floor(g, g.layers[0], 1, 1500)
    assert sl["attn_sliding"].kv == 1024 * 8 * (256 + 256) * 2  # window 1024, 8 kv heads


def test_expected_distinct_experts():
    assert dp.expected_distinct_experts(128, 8, 1) == pytest.approx(8.0)
    assert dp.expected_distinct_experts(128, 8, 2) == pytest.approx(8 + 8 * 120 / 128)
    assert dp.expected_distinct_experts(128, 8, 80) == pytest.approx(128 * (1 - (15 / 16) ** 80))
    vals = [dp.expected_distinct_experts(128, 8, b) for b in (1, 4, 16, 80, 200)]
    assert vals == sorted(vals) and len(set(vals)) == len(vals) and vals[-1] < 128
    assert dp.expected_distinct_experts(0, 0, 5) == 0.0


def test_e2b_step_at_80_requests_matches_the_issue():
    g = _geom("e2b")
    fl = dp.model_floor(g, 80, 1500)
    t = fl["totals"]
    assert t["kv_bytes"] == 80 * (7 * 1500 * 2048 + 28 * 512 * 1024)
    assert fl["families"]["attn_full"]["kv_bytes"] == 80 * 7 * 1500 * 2048
    p = dp.parameter_counts(g)
    assert p["mlp"] == 15 * 3 * 1536 * 6144 + 20 * 3 * 1536 * 12288
    assert p["lm_head"] == 262144 * 1536
    assert p["attention_engine_extra"] == 16 * 2 * 1536 * 256 + 4 * 2 * 1536 * 512
    assert t["floor_us"] == pytest.approx((t["weight_bytes"] + t["kv_bytes"]) / 4.3e12 * 1e6)
    assert t["floor_us"] / 1e3 == pytest.approx(1.75, rel=0.02)  # the issue's figure holds
    assert t["flop_us"] < t["mem_us"]
    assert t["floor_unfused_us"] > t["floor_us"]
    assert sum(f["floor_bytes"] for f in fl["families"].values()) == pytest.approx(t["floor_bytes"])


def test_geometry_errors_name_the_problem():
    with open(os.path.join(CONFIGS, "e2b", "config.json")) as f:
        cfg = json.load(f)
    bad = copy.deepcopy(cfg)
    del bad["text_config"]["hidden_size"]
    with pytest.raises(ValueError, match="hidden_size"):
        dp.geometry(bad, "x")
    bad = copy.deepcopy(cfg)
    bad["text_config"]["layer_types"] = bad["text_config"]["layer_types"][:-1]
    with pytest.raises(ValueError, match="layer_types has 34 entries for 35 layers"):
        dp.geometry(bad, "x")
    bad = copy.deepcopy(cfg)
    bad["text_config"]["num_kv_shared_layers"] = 34  # only layer 0 owns KV: no full layer to read from
    with pytest.raises(ValueError, match="no earlier full_attention layer"):
        dp.geometry(bad, "x")
    with pytest.raises(ValueError, match="batch must be positive"):
        dp.model_floor(dp.geometry(cfg, "e2b"), 0, 1500)
    with pytest.raises(ValueError, match="no config.json"):
        dp.load_geometry("/nonexistent/dir")


def test_floor_subcommand_and_committed_results(tmp_path):
    assert dp.main(["floor", "--out", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "decode_floor.json").read_text())
    md = (tmp_path / "decode_floor.md").read_text()
    assert "Check of the issue's figure" in md and "1.734" in md
    committed_path = os.path.join(RESULTS, "decode_floor.json")
    assert os.path.isfile(committed_path), "benchmark/gemma4/results/decode_floor.json is not committed"
    with open(committed_path) as f:
        committed = json.load(f)
    for key in ("date", "commit"):
        fresh.pop(key)
        committed.pop(key)
    assert committed == fresh, "decode_floor.json is stale: rerun `decode_profile.py floor`"


# ----------------------------------------------------------------------------------------------------------
# GPU: the profiler sees the kernels of a CUDA-graph replay, step by step
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_selfcheck_graph_replay_on_gpu():
    torch = pytest.importorskip("torch")
    r = dp.selfcheck(torch, steps=3)
    assert r["ok"], r


# ----------------------------------------------------------------------------------------------------------
# size_run: the batch sizes, memory fraction and context length one run can use on a card (first contact)
H100_BYTES = 79.2 * dp.GIB
H200_BYTES = 139.8 * dp.GIB


def test_size_run_e2b_h100_leaves_prefill_room():
    # a fixed 0.8 ran out of memory on an H100 in the 80 x 1500-token prefill (issue 20); 0.6 ran
    r = dp.size_run(_geom("e2b"), [1, 16, 80], 1500, 6, H100_BYTES)
    assert r["kept"] == [1, 16, 80] and not r["skipped"]
    assert 0.5 <= r["mem_fraction"] <= 0.7
    assert (1 - r["mem_fraction"]) * H100_BYTES >= r["prefill_headroom_gib"] * dp.GIB * 0.999
    assert r["context_length"] == 4096
    # a 16k context: 80 requests no longer fit, the context length follows the request
    r16 = dp.size_run(_geom("e2b"), [1, 16, 80], 16000, 6, H100_BYTES)
    assert r16["kept"] == [1, 16] and 80 in r16["skipped"] and r16["context_length"] >= 16000 + 6


def test_size_run_26b_drops_what_the_pool_cannot_hold():
    # 80 x 1500 tokens do not fit an 80 GB card beside 26B-A4B's weights (one_batch then reached an
    # eviction stub: AttributeError evict_for_alloc); on an H200 they do
    r = dp.size_run(_geom("26b-a4b"), [1, 16, 80], 1500, 6, H100_BYTES)
    assert r["kept"] == [1, 16] and "GiB of KV" in r["skipped"][80]
    assert dp.size_run(_geom("26b-a4b"), [1, 16, 80], 1500, 6, H200_BYTES)["kept"] == [1, 16, 80]


def test_size_run_keeps_a_given_fraction_and_stops_with_advice():
    r = dp.size_run(_geom("e2b"), [1, 16, 80], 1500, 6, H100_BYTES, mem_fraction=0.55)
    assert r["mem_fraction"] == 0.55 and r["kept"] == [1, 16, 80]
    # a given fraction that leaves no prefill room for 80 requests drops them
    r2 = dp.size_run(_geom("e2b"), [1, 16, 80], 1500, 6, H100_BYTES, mem_fraction=0.85)
    assert r2["kept"] == [1, 16] and "mem fraction 0.85 given" in r2["skipped"][80]
    with pytest.raises(SystemExit, match="shorter --context"):
        dp.size_run(_geom("31b"), [1], 16000, 6, 40 * dp.GIB)


def test_copy_probe_takes_the_median_copy_and_counts_read_plus_write():
    import types

    from benchkit import dp_run

    times = iter([5.0, 1.0, 2.0, 4.0, 3.0])  # ms of the timed copies, in order

    class Event(_FakeEvent):
        def elapsed_time(self, other):
            return next(times)

    fake = types.SimpleNamespace(uint8="uint8", empty=lambda n, dtype=None, device=None: _FakeBuffer(n),
                                 empty_like=lambda t: _FakeBuffer(t.n), cuda=types.SimpleNamespace(Event=Event))
    _FakeBuffer.copies = 0
    bw = dp_run.measure_copy_bandwidth(fake, nbytes=1000, repeats=5)
    assert bw == pytest.approx(2 * 1000 / 3.0e-3)  # median of 1..5 ms
    assert _FakeBuffer.copies == 2 + 5  # two warm-ups, then the timed ones
    with pytest.raises(ValueError, match="repeats"):
        dp_run.measure_copy_bandwidth(fake, nbytes=1000, repeats=0)


@pytest.mark.gpu
def test_copy_probe_on_the_card_gpu():
    import torch

    from benchkit import dp_run

    bw = dp_run.measure_copy_bandwidth(torch, nbytes=256 << 20, repeats=5)
    assert 5e11 < bw < 2e13, f"{bw / 1e12:.2f} TB/s is not an HBM copy rate"
