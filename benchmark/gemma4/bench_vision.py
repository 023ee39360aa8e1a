"""Gemma-4 vision encoder: 0.5.23 per-image path vs the packed encoder of patch 0010.

Both arms run sglang's own code at real vision geometries with random weights, in one process:

* upstream: sglang 0.5.23's ``Gemma4VisionEncoder`` (the unmodified file from the wheel) driven the way
  0.5.23's ``Gemma4ForConditionalGeneration.get_image_feature`` drives it: one tower call and one
  ``embed_vision`` call per image, every image padded to its processor's 2520 patches;
* patched: the patched ``gemma4_vision.py`` and ``gemma4_vision_batching.encode_vision_items``
  (what the patched ``get_image_feature`` calls), on the same weights.

Towers (random weights; geometry, not checkpoints):
* e2b: 768 hidden x 16 layers, 12 heads x 64, MLP 3072 (transformers' Gemma4VisionConfig defaults, the
  E2B/E4B tower size in the shared environment notes);
* large: 1152 hidden x 27 layers (26B-A4B / 31B tower size in the shared environment notes), 16 heads x 72,
  MLP 4304 (the SigLIP-so400m split of that size; assumed, not read from a checkpoint).
Patch 16, pooling 3x3, position table 10240, 2520 patches per image (280 soft tokens), as transformers'
Gemma-4 image processor produces.

Workloads: 1, 6 and 24 images of 480x480 (30x30 = 900 valid patches of 2520) and 6 images of mixed
resolutions; each call gets one item per image, as the scheduler hands them over.

On a GPU machine without sglang's dependencies: ``prepare`` (run where the wheel is) extracts the few real
sglang files this needs into a folder to carry; ``run`` lays them into a minimal ``sglang`` package and
stands in for the modules that cannot be imported there (see ``SHIMS`` below).  Usage:

    python benchmark/gemma4/bench_vision.py prepare --wheel sglang-0.5.23-cp312-...whl \
        --patched-tree build/wt-vision/python --dest build/gpu-vision
    python benchmark/gemma4/bench_vision.py run --files build/gpu-vision --out OUTDIR

It writes vision_bench.json and vision_bench.md to OUTDIR.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

# Real sglang files carried to the GPU machine: (path inside the sglang package, which tree).
REAL_FILES = [
    ("srt/models/gemma4_vision.py", "upstream"),  # 0.5.23 as released
    ("srt/models/gemma4_vision.py", "patched"),  # with patch 0010
    ("srt/models/gemma4_vision_batching.py", "patched"),  # new module of patch 0010
    ("srt/layers/clippable_linear.py", "common"),  # the tower's clamped linears
    ("kernels/ops/attention/prefill_attention.py", "common"),  # the triton_attn vision kernel
]

# Stand-ins for modules that cannot be imported on the GPU machine.  Each is what the five files above
# use of that module, at tensor-parallel size 1, unquantized.  Why each is a stand-in:
# * sglang.srt.utils, sglang.srt.runtime_context: import msgspec, psutil, zmq, requests, pydantic, ...
#   (absent there; about 200 packages in all).  Only is_cuda/is_hip/is_cpu, get_device_capability,
#   add_prefix and the three context getters (attention backend choice, TP size 1, platform) are used.
# * sglang.srt.layers.linear: imports the distributed stack; at TP 1, unquantized, its layers compute
#   x @ W.T (+ b) and return (output, None), as here.
# * sglang.srt.layers.layernorm: imports sgl_kernel (rmsnorm kernels), absent there; Gemma4RMSNorm here
#   is its float32 reference formula (x * rsqrt(mean(x^2) + eps) * weight, cast back).
# * einops (only if absent): gemma4_vision.py's one rearrange "(b s) h d -> b s (h d)", a reshape.
# * sglang.srt.layers.attention.vision: imports sgl_kernel's flash-attention (fa3, the H100 default for
#   this tower) and flashinfer, both absent there.  Its "triton_attn" backend is restated: the same
#   call of the real Triton kernel ``context_attention_fwd`` (carried above) with uniform cu_seqlens
#   when none are given, exactly as VisionTritonAttention does.  Both arms use it.
SHIMS = {
    "__init__.py": "",
    "srt/__init__.py": "",
    "srt/models/__init__.py": "",
    "srt/layers/__init__.py": "",
    "srt/layers/quantization/__init__.py": "",
    "srt/layers/attention/__init__.py": "",
    "kernels/__init__.py": "",
    "kernels/ops/__init__.py": "",
    "kernels/ops/attention/__init__.py": "",
    "srt/layers/quantization/base_config.py": "class QuantizationConfig:\n    pass\n",
    "srt/utils.py": '''
import torch
def is_cuda(): return torch.cuda.is_available() and torch.version.cuda is not None
def is_hip(): return torch.cuda.is_available() and torch.version.hip is not None
def is_cpu(): return not torch.cuda.is_available()
def cpu_has_amx_support(): return False
def get_device_capability(device_id=0):
    return torch.cuda.get_device_capability(device_id) if torch.cuda.is_available() else (None, None)
def add_prefix(name, prefix): return name if not prefix else f"{prefix}.{name}"
''',
    "srt/runtime_context.py": '''
import os, types
_MM = types.SimpleNamespace(mm_attention_backend=os.environ.get("BENCH_VISION_BACKEND", "triton_attn"))
_PAR = types.SimpleNamespace(attn_tp_size=1, tp_size=1, tp_rank=0, attn_tp_rank=0)
_PLAT = types.SimpleNamespace(is_blackwell=False)
def get_mm(): return _MM
def get_parallel(): return _PAR
def get_platform(): return _PLAT
''',
    "srt/layers/linear.py": '''
import torch, torch.nn as nn, torch.nn.functional as F
class _Linear(nn.Module):
    def __init__(self, input_size, output_size, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(output_size, input_size))
        self.weight.weight_loader = lambda p, w, shard=None: p.data.copy_(w)
        self.bias = nn.Parameter(torch.zeros(output_size)) if bias else None
    def forward(self, x):
        return F.linear(x, self.weight, self.bias), None
class ColumnParallelLinear(_Linear):
    def __init__(self, input_size, output_size, bias=True, quant_config=None, prefix="", **kw):
        super().__init__(input_size, output_size, bias)
class RowParallelLinear(_Linear):
    def __init__(self, input_size, output_size, bias=True, quant_config=None, prefix="", **kw):
        super().__init__(input_size, output_size, bias)
class MergedColumnParallelLinear(_Linear):
    def __init__(self, input_size, output_sizes, bias=True, quant_config=None, prefix="", **kw):
        super().__init__(input_size, sum(output_sizes), bias)
class QKVParallelLinear(_Linear):
    def __init__(self, hidden_size, head_size, total_num_heads, total_num_kv_heads=None, bias=True,
                 quant_config=None, prefix="", **kw):
        kv = total_num_kv_heads or total_num_heads
        super().__init__(hidden_size, (total_num_heads + 2 * kv) * head_size, bias)
''',
    "srt/layers/layernorm.py": '''
import torch, torch.nn as nn
class Gemma4RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6, scale_shift=0.0, with_scale=True):
        super().__init__()
        self.with_scale, self.eps, self.scale_shift = with_scale, eps, scale_shift
        if with_scale:
            self.weight = nn.Parameter(torch.ones(dim))
        else:
            self.register_buffer("weight", torch.ones(dim), persistent=False)
    def forward(self, x):
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.with_scale:
            y = y * (self.weight.float() + self.scale_shift)
        return y.type_as(x)
''',
    "srt/layers/attention/vision.py": '''
import torch, torch.nn as nn, torch.nn.functional as F
from sglang.kernels.ops.attention.prefill_attention import context_attention_fwd
class VisionTritonAttention(nn.Module):
    def __init__(self, **kw):
        super().__init__()
    def forward(self, q, k, v, cu_seqlens, bsz, seq_len, softmax_scale=None, **kw):
        if cu_seqlens is None:
            cu_seqlens = torch.arange(0, (bsz + 1) * seq_len, seq_len, dtype=torch.int32, device=q.device)
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32)
        seq_lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
        max_seqlen = kw.get("max_seqlen")
        max_seqlen = int(seq_lens.max().item()) if max_seqlen is None else int(max_seqlen)
        out = torch.empty_like(q)
        context_attention_fwd(q, k, v, out, cu_seqlens, seq_lens, max_seqlen, is_causal=False,
                              sm_scale=softmax_scale)
        return out
class VisionSdpaAttention(nn.Module):
    def __init__(self, head_dim, num_heads, num_kv_heads, softmax_scale=None, **kw):
        super().__init__()
        self.h, self.d, self.scale = num_heads, head_dim, softmax_scale
    def forward(self, q, k, v, bsz, cu_seqlens=None, attention_mask=None, softmax_scale=None, **kw):
        s = q.shape[0] // bsz
        q, k, v = (t.reshape(bsz, s, self.h, self.d).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scale)
        return o.transpose(1, 2).reshape(bsz * s, self.h, self.d)
QKV_BACKEND_IMPL = {"triton_attn": VisionTritonAttention, "sdpa": VisionSdpaAttention}
''',
}

EINOPS_SHIM = '''
def rearrange(x, pattern, **sizes):
    if pattern.replace(" ", "") != "(bs)hd->bs(hd)":
        raise NotImplementedError(pattern)
    return x.reshape(sizes["b"], -1, x.shape[-2] * x.shape[-1])
'''

TOWERS = {
    "e2b": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                num_key_value_heads=12, head_dim=64, standardize=False),
    "large": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                  num_key_value_heads=16, head_dim=72, standardize=True),
}
TEXT_HIDDEN = {"e2b": 1536, "large": 2816}
MAX_PATCHES = 2520
# mixed set: patch grids (rows, cols), multiples of the 3x3 pooling kernel, at most 2520 patches
MIXED = [(30, 30), (42, 60), (24, 33), (48, 51), (15, 15), (36, 63)]


# ------------------------------------------------------------------------------------------------ prepare


def prepare(args):
    dest = os.path.abspath(args.dest)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    with zipfile.ZipFile(args.wheel) as whl:
        for rel, tree in REAL_FILES:
            if tree == "patched":
                src = os.path.join(args.patched_tree, "sglang", rel)
                data = open(src, "rb").read()
            else:
                data = whl.read("sglang/" + rel)
            out = os.path.join(dest, tree, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(data)
    print(f"prepared {len(REAL_FILES)} sglang files under {dest}")


# ------------------------------------------------------------------------------------------------ run


def _build_package(files_dir):
    root = tempfile.mkdtemp(prefix="bench_vision_")
    pkg = os.path.join(root, "sglang")
    for rel, text in SHIMS.items():
        path = os.path.join(pkg, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    for rel, tree in REAL_FILES:
        if tree == "upstream":
            continue
        shutil.copy(os.path.join(files_dir, tree, rel), os.path.join(pkg, rel))
    if importlib.util.find_spec("einops") is None:
        # absent on the GPU machine; gemma4_vision.py uses this one pattern of it
        with open(os.path.join(root, "einops.py"), "w") as f:
            f.write(EINOPS_SHIM)
    sys.path.insert(0, root)
    return root


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _vision_config(tower):
    from transformers import Gemma4VisionConfig

    return Gemma4VisionConfig(patch_size=16, pooling_kernel_size=3, position_embedding_size=10240,
                              **TOWERS[tower])


class Embedder:
    """embed_vision of 0.5.23 (Gemma4MultimodalEmbedder): RMSNorm without scale, then a projection."""

    def __init__(self, torch, hidden, text_hidden, eps, device, dtype, gen):
        self.torch, self.eps = torch, eps
        self.weight = (torch.randn(text_hidden, hidden, generator=gen) * hidden**-0.5).to(device, dtype)

    def __call__(self, inputs_embeds):
        torch = self.torch
        x = inputs_embeds.float()
        x = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(inputs_embeds)
        return torch.nn.functional.linear(x, self.weight)


def _random_tower(torch, mod, cfg, device, dtype, gen):
    vt = mod.Gemma4VisionEncoder(cfg)
    with torch.no_grad():
        # persistent tensors only: the clip bounds (+-inf) and v_norm's unit weight stay as built
        for name, p in vt.state_dict(keep_vars=True).items():
            if not p.is_floating_point():
                continue
            if name.endswith("layer_scalar") or "std_scale" in name:
                p.fill_(1.0)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                # this tower's softmax scale is 1.0: q/k norm weights near 0.35 give attention logits of
                # unit spread; with unit weights the random tower is chaotic (a 1e-3 input change
                # decorrelates its output), which would make every parity figure meaningless
                p.copy_(0.35 + 0.03 * torch.randn(p.shape, generator=gen))
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "position_embedding_table" in name or "std_bias" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    return vt.to(device, dtype).eval()


def _image(torch, rows, cols, gen, device):
    """Pre-patchified image as transformers' Gemma-4 processor gives it: float32 pixels in [0, 1],
    patches in row-major order, padded to 2520 with (-1, -1)."""
    n = rows * cols
    pv = torch.zeros(MAX_PATCHES, 768)
    pv[:n] = torch.rand(n, 768, generator=gen)
    pos = torch.full((MAX_PATCHES, 2), -1, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos[:n, 0], pos[:n, 1] = xs.reshape(-1), ys.reshape(-1)
    return pv.to(device), pos  # pixels on the device (the scheduler moves them), positions on the host


def upstream_get_image_feature(torch, vt, embed, items, dtype):
    """0.5.23's get_image_feature loop: per image, one tower call, then one projection per pooled row."""
    out = []
    for item in items:
        pv, pp = item.feature, item.image_position_ids
        if pv.dim() == 2:
            pv, pp = pv.unsqueeze(0), pp.unsqueeze(0)
        pv = pv.to(device=vt.device, dtype=dtype)
        pp = pp.to(device=vt.device)
        pooled, mask = vt(pv, pp)
        for hs, m in zip(pooled, mask):
            out.append(embed(inputs_embeds=hs[m].unsqueeze(0)).squeeze(0))
    return torch.cat(out, dim=0)


def _time(torch, fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else 0
    del out
    return dt, peak


def _compare(torch, a, b):
    a, b = a.float(), b.float()
    if a.shape != b.shape:
        return {"shape_a": list(a.shape), "shape_b": list(b.shape)}
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {
        "max_abs": float((a - b).abs().max()),
        "max_rel_to_max": float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)),
        "min_token_cosine": float(cos.min()),
    }


def _hf_tower(torch, cfg, vt, device):
    """transformers' Gemma4VisionModel with the weights of sglang tower ``vt`` (float32)."""
    from transformers.models.gemma4.modeling_gemma4 import Gemma4VisionModel

    cfg = cfg.__class__.from_dict(cfg.to_dict())
    cfg._attn_implementation = "sdpa"
    hf = Gemma4VisionModel(cfg).to(device, torch.float32).eval()
    src = {k: v.float() for k, v in vt.state_dict().items()}
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    mapped, missing = {}, []
    for key in hf.state_dict():
        k = key
        if ".q_proj." in k or ".k_proj." in k or ".v_proj." in k:
            base = k.split(".self_attn.")[0] + ".self_attn.qkv.qkv_proj.weight"
            w = src[base]
            q, kk, v = w.split([nh * hd, nkv * hd, nkv * hd])
            mapped[key] = {"q": q, "k": kk, "v": v}[k.split(".self_attn.")[1][0]]
        elif ".gate_proj." in k or ".up_proj." in k:
            base = k.split(".mlp.")[0] + ".mlp.gate_up.gate_up_proj.weight"
            gate, up = src[base].chunk(2)
            mapped[key] = gate if ".gate_proj." in k else up
        elif k in src:
            mapped[key] = src[k]
        else:
            missing.append(key)
    real_missing = [m for m in missing if not m.endswith(("_min", "_max", "inv_freq"))]
    if real_missing:
        raise RuntimeError(f"unmapped transformers weights: {real_missing[:5]}")
    hf.load_state_dict(mapped, strict=False)
    return hf


def run(args):
    import torch

    os.environ["BENCH_VISION_BACKEND"] = args.backend
    # float32 parity only: IEEE float32 dots in the Triton attention kernel instead of TF32
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
    device = torch.device(args.device)
    _build_package(os.path.abspath(args.files))
    up_mod = _load("gemma4_vision_upstream", os.path.join(args.files, "upstream/srt/models/gemma4_vision.py"))
    import sglang.srt.models.gemma4_vision as pt_mod
    import sglang.srt.models.gemma4_vision_batching as vb

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    towers = ["e2b", "large"] if not args.quick else ["e2b"]
    results = {"rows": [], "parity": {}, "estimate": []}
    for tower in towers:
        cfg = _vision_config(tower)
        if args.quick:
            cfg.num_hidden_layers = 2
        gen = torch.Generator().manual_seed(0)
        vt_up = _random_tower(torch, up_mod, cfg, device, dtype, gen)
        vt_pt = pt_mod.Gemma4VisionEncoder(cfg).to(device, dtype).eval()
        vt_pt.load_state_dict(vt_up.state_dict())
        assert vt_pt.encoder.layers[0].self_attn.backend_name == args.backend
        embed = Embedder(torch, cfg.hidden_size, TEXT_HIDDEN[tower], cfg.rms_norm_eps, device, dtype, gen)

        def items_for(grids):
            import types

            return [
                types.SimpleNamespace(feature=pv[None], image_position_ids=pp[None])
                for pv, pp in (_image(torch, r, c, gen, device) for r, c in grids)
            ]

        def patched(items):
            return vb.encode_vision_items(items, kind="image", position_attr="image_position_ids",
                                          vision_tower=vt_pt, embed_vision=embed,
                                          text_hidden_size=TEXT_HIDDEN[tower], dtype=dtype)

        def upstream(items):
            return upstream_get_image_feature(torch, vt_up, embed, items, dtype)

        workloads = [("480x480 x1", [(30, 30)]), ("480x480 x6", [(30, 30)] * 6),
                     ("480x480 x24", [(30, 30)] * 24), ("mixed x6", MIXED)]
        if args.quick:
            workloads = workloads[:2]
        with torch.no_grad():
            for wname, grids in workloads:
                items = items_for(grids)
                for _ in range(args.warmup):
                    upstream(items)
                    patched(items)
                t_up, t_pt, m_up, m_pt = [], [], [], []
                for _ in range(args.reps):  # interleaved, so drift hits both arms alike
                    dt, pk = _time(torch, lambda: upstream(items), device)
                    t_up.append(dt)
                    m_up.append(pk)
                    dt, pk = _time(torch, lambda: patched(items), device)
                    t_pt.append(dt)
                    m_pt.append(pk)
                n = len(items)
                valid = sum(r * c for r, c in grids)
                row = {
                    "tower": tower, "workload": wname, "images": n, "valid_patches": valid,
                    "upstream_ms": 1e3 * statistics.median(t_up), "patched_ms": 1e3 * statistics.median(t_pt),
                    "upstream_ms_all": [round(1e3 * x, 3) for x in t_up],
                    "patched_ms_all": [round(1e3 * x, 3) for x in t_pt],
                    "upstream_peak_mib": max(m_up) / 2**20, "patched_peak_mib": max(m_pt) / 2**20,
                }
                row["upstream_img_s"] = n / (row["upstream_ms"] / 1e3)
                row["patched_img_s"] = n / (row["patched_ms"] / 1e3)
                row["speedup"] = row["upstream_ms"] / row["patched_ms"]
                results["rows"].append(row)
                per_tok = vb.encoder_bytes_per_token(cfg, dtype, torch.float32)
                results["estimate"].append({"tower": tower, "workload": wname, "bytes_per_token": per_tok,
                                            "estimated_mib": per_tok * valid / 2**20,
                                            "measured_patched_peak_mib": row["patched_peak_mib"]})
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                  for k, v in row.items() if not k.endswith("_all")}), flush=True)

            # parity.  float32 copies of both towers on the same weights are the references.
            vt32 = pt_mod.Gemma4VisionEncoder(cfg).to(device, torch.float32).eval()
            vt32.load_state_dict({k: v.float() for k, v in vt_up.state_dict().items()})
            up32 = up_mod.Gemma4VisionEncoder(cfg).to(device, torch.float32).eval()
            up32.load_state_dict(vt32.state_dict())
            embed32 = Embedder(torch, cfg.hidden_size, TEXT_HIDDEN[tower], cfg.rms_norm_eps, device,
                               torch.float32, gen)
            embed32.weight = embed.weight.float()
            # (a) images without padding patches, where the 0.5.23 path is exact
            full = items_for([(42, 60), (30, 30)])
            full[1].feature = full[1].feature[:, :900]
            full[1].image_position_ids = full[1].image_position_ids[:, :900]
            ref32 = upstream_get_image_feature(torch, up32, embed32, full, torch.float32)
            pt32 = torch.cat(vb.encode_vision_items(
                full, kind="image", position_attr="image_position_ids", vision_tower=vt32,
                embed_vision=embed32, text_hidden_size=TEXT_HIDDEN[tower], dtype=torch.float32))
            par = {
                "fp32_patched_vs_upstream_no_padding": _compare(torch, pt32, ref32),
                f"{str(dtype)[6:]}_patched_vs_fp32_reference_no_padding": _compare(torch, torch.cat(patched(full)), ref32),
                f"{str(dtype)[6:]}_upstream_vs_fp32_reference_no_padding": _compare(torch, upstream(full), ref32),
            }
            # (b) padded 480x480 and 384x528 images: soft tokens vs transformers' Gemma4VisionModel
            padded = items_for([(30, 30), (24, 33)])
            pv = torch.cat([it.feature for it in padded]).float()
            pp = torch.cat([it.image_position_ids for it in padded]).to(device)
            soft = vb.encode_segments(vt32, vb.plan_items(
                padded, kind="image", position_attr="image_position_ids", text_hidden_size=-1,
                patch_pixels=768, pooling_kernel_size=3, position_table_size=10240).segments,
                dtype=torch.float32)
            pooled, mask = up32(pv, pp)
            try:
                hf = _hf_tower(torch, cfg, vt32, device)
                hf_out = hf(pixel_values=pv, pixel_position_ids=pp).last_hidden_state
                par["fp32_patched_vs_transformers_padded"] = _compare(torch, soft, hf_out)
                par["fp32_upstream_vs_transformers_padded"] = _compare(torch, pooled[mask], hf_out)
                par["transformers_version"] = __import__("transformers").__version__
            except Exception as exc:  # report, do not lose the timings
                par["fp32_vs_transformers_error"] = f"{type(exc).__name__}: {exc}"
            par["fp32_patched_vs_upstream_padded"] = _compare(torch, soft, pooled[mask])
            del vt32, up32
            results["parity"][tower] = par
            print(json.dumps({tower: par}), flush=True)
        del vt_up, vt_pt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["meta"] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "backend": args.backend, "dtype": str(dtype), "reps": args.reps, "warmup": args.warmup,
        "budget_mib": float(os.environ.get(vb.BUDGET_ENV) or vb.DEFAULT_BUDGET_MB),
        "commit": args.commit,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "vision_bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "vision_bench.md"), "w") as f:
        f.write(render_markdown(results))
    print(render_markdown(results))


def render_markdown(res):
    m = res["meta"]
    lines = [
        "# Gemma-4 vision encoder: 0.5.23 per-image path vs packed encoder (patch 0010)",
        "",
        f"Device: {m['device']}; date {m['date_utc']} UTC; series commit {m['commit']}; torch {m['torch']}; "
        f"{m['dtype']}; vision attention backend `{m['backend']}` in both arms; median of {m['reps']} "
        f"interleaved calls after {m['warmup']} warm-up calls; chunk budget {m['budget_mib']:g} MiB (capped at half the free device memory).",
        "",
        "| tower | workload | valid patches | upstream ms | patched ms | upstream img/s | patched img/s "
        "| speed-up | upstream peak MiB | patched peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['tower']} | {r['workload']} | {r['valid_patches']} | {r['upstream_ms']:.2f} | "
            f"{r['patched_ms']:.2f} | {r['upstream_img_s']:.1f} | {r['patched_img_s']:.1f} | "
            f"{r['speedup']:.2f}x | {r['upstream_peak_mib']:.1f} | {r['patched_peak_mib']:.1f} |"
        )
    lines += ["", "Peak = max_memory_allocated during the call minus memory allocated before it "
              "(weights and inputs excluded).", "", "## Parity", ""]
    for tower, par in res["parity"].items():
        for k, v in par.items():
            lines.append(f"- {tower} {k}: {v}")
    lines += ["", "## Chunk-size estimate vs measured (patched)", "",
              "| tower | workload | bytes/token | estimated MiB | measured peak MiB |", "|---|---|---|---|---|"]
    for e in res["estimate"]:
        lines.append(f"| {e['tower']} | {e['workload']} | {e['bytes_per_token']} | {e['estimated_mib']:.1f} | "
                     f"{e['measured_patched_peak_mib']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="extract the real sglang files to carry")
    p.add_argument("--wheel", required=True)
    p.add_argument("--patched-tree", required=True, help="a patched tree's python/ folder (has sglang/)")
    p.add_argument("--dest", required=True)
    r = sub.add_parser("run", help="run both arms and write vision_bench.{json,md}")
    r.add_argument("--files", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--backend", default="triton_attn", choices=["triton_attn", "sdpa"])
    r.add_argument("--reps", type=int, default=9)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--quick", action="store_true", help="2-layer tower, 2 workloads (harness check)")
    r.add_argument("--commit", default=os.environ.get("BENCH_COMMIT", "unknown"))
    args = ap.parse_args()
    prepare(args) if args.cmd == "prepare" else run(args)


if __name__ == "__main__":
    main()
