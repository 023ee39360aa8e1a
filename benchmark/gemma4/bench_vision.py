"""Gemma-4 vision encoder on the real engines: stock sglang 0.5.23 vs the series (patch 0010), fa3 and
triton_attn vision attention, plus parity against transformers.

Run on the GPU machine with the two engines of the GPU kit (``make-bundle.sh --fa3`` for the fa3 ops):

    /tmp/py-patched benchmark/gemma4/bench_vision.py \
        --upstream-python /tmp/py-upstream --patched-python /tmp/py-patched --out /tmp/vision

Each engine runs in its own process (its own installed sglang; nothing here stands in for sglang code):

* the vision tower is each engine's ``Gemma4VisionEncoder`` and the projection its
  ``Gemma4MultimodalEmbedder``, built at real tower geometry with seeded random weights (the same weights in
  both engines: every tensor is seeded from its name);
* the timed call is each engine's own ``Gemma4ForConditionalGeneration.get_image_feature`` (0.5.23: one tower
  call and one embed_vision call per image, every image padded to 2520 patches; series: packed encoder),
  bound to an object that holds the tower, the projection and the text hidden size / dtype it reads; no
  language model is built;
* the vision attention backend is chosen as the server chooses it, through ``--mm-attention-backend``
  (``override_server_args(mm_attention_backend=...)``) before the tower is built.

(a) parity, on padded images (480x480: 900 of 2520 patches valid; 384x528: 792 of 2520), both tower sizes,
    against transformers' ``Gemma4VisionModel`` + ``Gemma4MultimodalEmbedder`` in float32 on the same weights:
    "soft tokens before the embedder" = what the tower hands to embed_vision (pooled, scaled, standardized;
    the engine's get_image_feature with an identity embed_vision), "embeddings after the embedder" = what
    get_image_feature returns.  Engine arms: float32 + triton_attn (IEEE float32 dots), bfloat16 + triton_attn,
    bfloat16 + fa3 (fa3 has no float32).
(b) time, bfloat16: 1, 6 and 24 images of 480x480 and 6 images of mixed sizes, one item per image as the
    scheduler hands them over; median of --reps calls after --warmup calls; peak memory above the inputs.

Towers (random weights; geometry, not checkpoints): e2b = 768 x 16 layers, 12 heads x 64, MLP 3072
(transformers' Gemma4VisionConfig defaults, the E2B/E4B tower); large = 1152 x 27 layers, 16 heads x 72,
MLP 4304 (26B-A4B / 31B tower size; the head split is assumed).  Patch 16, pooling 3x3, position table
10240, 2520 patches per image.

Writes ``vision_fa3_<device>.json`` and ``.md`` (device, date, commit) to --out.  When the fa3 ops are
missing (a bundle made without --fa3) the fa3 rows are skipped with the error that made them fail.
``--quick`` (tiny towers, CPU allowed) checks the harness in a few minutes without a GPU.
Expected on one H200: about 2 minutes, under 10 GiB of GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)

TOWERS = {
    "e2b": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                num_key_value_heads=12, head_dim=64, standardize=False),
    "large": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                  num_key_value_heads=16, head_dim=72, standardize=True),
}
QUICK_TOWERS = {
    "e2b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, head_dim=32, standardize=False),
    "large": dict(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=48, standardize=True),
}
TEXT_HIDDEN = {"e2b": 1536, "large": 2816}
MAX_PATCHES = 2520
QUICK_MAX_PATCHES = 144
PATCH_PIXELS = 768
# mixed set: patch grids (rows, cols), multiples of the 3x3 pooling kernel, at most 2520 patches
MIXED = [(30, 30), (42, 60), (24, 33), (48, 51), (15, 15), (36, 63)]
WORKLOADS = [("480x480 x1", [(30, 30)]), ("480x480 x6", [(30, 30)] * 6),
             ("480x480 x24", [(30, 30)] * 24), ("mixed x6", MIXED)]
PARITY_IMAGES = [(30, 30), (24, 33)]  # 480x480 and 384x528, padded to 2520 patches
BACKENDS = ("fa3", "triton_attn")


# ================================================================================================= worker
# Runs inside one engine's interpreter.


class _Host:
    """What get_image_feature reads of the model: the tower, the projection, the text hidden size, the
    language model's device and dtype (no language model is built)."""

    def __init__(self, engine_cls, tower, embed, text_hidden, device, dtype):
        import types

        self._cls = engine_cls
        self.vision_tower = tower
        self.embed_vision = embed
        self.config = types.SimpleNamespace(text_config=types.SimpleNamespace(hidden_size=text_hidden))
        self.language_model = types.SimpleNamespace(device=device, dtype=lambda: dtype)

    def parameters(self):
        return self.vision_tower.parameters()

    def __getattr__(self, name):  # the engine's own methods (e.g. the series' _encode_vision_items)
        fn = getattr(self._cls, name)
        return fn.__get__(self)

    def get_image_feature(self, items):
        return self._cls.get_image_feature(self, items)


_NOISE = {}  # (name, shape) -> CPU float32 tensor, drawn once per process


def _seeded_(torch, name, t, device):
    """Fill ``t`` from a generator seeded by ``name``: the same values in every engine and process."""
    key = (name, tuple(t.shape))
    if key not in _NOISE:
        gen = torch.Generator(device="cpu").manual_seed(zlib.crc32(name.encode()))
        _NOISE[key] = torch.randn(t.shape, generator=gen)
    t.copy_(_NOISE[key].to(device))


def _init_tower(torch, vt, device, prefix):
    with torch.no_grad():
        for name, p in vt.state_dict(keep_vars=True).items():
            if not p.is_floating_point():
                continue
            if name.endswith("layer_scalar") or "std_scale" in name:
                p.fill_(1.0)
                continue
            _seeded_(torch, f"{prefix}.{name}", p, device)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                # this tower's softmax scale is 1.0: q/k norm weights near 0.35 give attention logits of unit
                # spread; with unit weights a random tower is chaotic and no parity figure means anything
                p.mul_(0.03).add_(0.35)
            elif "norm" in name:
                p.mul_(0.1).add_(1.0)
            elif "position_embedding_table" in name or "std_bias" in name:
                p.mul_(0.02)
            else:
                p.mul_(p.shape[-1] ** -0.5)


class Engine:
    """One engine's vision modules, built the way its server builds them."""

    def __init__(self, device, quick):
        import types

        import torch

        from sglang.srt import runtime_context as rc

        self.torch, self.device, self.quick = torch, device, quick
        self._rc = rc
        group = types.SimpleNamespace(is_first_rank=True, is_last_rank=True, world_size=1, rank_in_group=0)
        self._override = None
        self._install(None)
        rc.get_parallel().override_permanently(
            pp_group=group, tp_group=group, attn_tp_group=group, tp_rank=0, attn_tp_rank=0, pp_rank=0
        )
        from sglang.srt.models import gemma4_mm

        self.gemma4_mm = gemma4_mm

    def _install(self, backend):
        if self._override is not None:
            self._override.restore()
        fields = dict(device=self.device.type)
        if backend is not None:
            fields["mm_attention_backend"] = backend
        self._override = self._rc._CONTEXT.override_server_args(**fields)
        self._override.install()

    def vision_config(self, tower):
        from transformers import Gemma4VisionConfig

        geometry = (QUICK_TOWERS if self.quick else TOWERS)[tower]
        return Gemma4VisionConfig(patch_size=16, pooling_kernel_size=3, position_embedding_size=10240, **geometry)

    def tower(self, tower, backend, dtype):
        torch = self.torch
        from sglang.srt.models.gemma4_vision import Gemma4VisionEncoder

        self._install(backend)
        with torch.device(self.device):
            vt = Gemma4VisionEncoder(self.vision_config(tower))
        _init_tower(torch, vt, self.device, tower)
        return vt.to(self.device, dtype).eval()

    def embedder(self, tower, dtype):
        torch = self.torch
        from transformers import Gemma4TextConfig

        cfg = self.vision_config(tower)
        with torch.device(self.device):
            ev = self.gemma4_mm.Gemma4MultimodalEmbedder(cfg, Gemma4TextConfig(hidden_size=self.text_hidden(tower)))
        _init_tower(torch, ev, self.device, tower + ".embed_vision")
        return ev.to(self.device, dtype).eval()

    def text_hidden(self, tower):
        return 96 if self.quick else TEXT_HIDDEN[tower]

    def host(self, tower, vt, embed, dtype):
        return _Host(self.gemma4_mm.Gemma4ForConditionalGeneration, vt, embed, self.text_hidden(tower),
                     self.device, dtype)


def _image(torch, rows, cols, seed, device, max_patches=MAX_PATCHES):
    """Pre-patchified image as transformers' Gemma-4 processor gives it: float32 pixels in [0, 1], patches in
    row-major order, padded to 2520 with (-1, -1)."""
    gen = torch.Generator().manual_seed(seed)
    n = rows * cols
    pv = torch.zeros(max_patches, PATCH_PIXELS)
    pv[:n] = torch.rand(n, PATCH_PIXELS, generator=gen)
    pos = torch.full((max_patches, 2), -1, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos[:n, 0], pos[:n, 1] = xs.reshape(-1), ys.reshape(-1)
    return pv.to(device), pos  # pixels on the device (the scheduler moves them), positions on the host


def _items(torch, grids, device, seed0=0, quick=False):
    import types

    if quick:  # tiny images for the harness check: grids scaled down, 144 patches
        grids = [(3 * max(1, round(r / 15)), 3 * max(1, round(c / 15))) for r, c in grids]
    out = []
    for i, (r, c) in enumerate(grids):
        pv, pos = _image(torch, r, c, seed0 + 1000 * i + r * c, device, QUICK_MAX_PATCHES if quick else MAX_PATCHES)
        out.append(types.SimpleNamespace(feature=pv[None], image_position_ids=pos[None]))
    return out


def _flat(torch, result):
    return torch.cat(result) if isinstance(result, list) else result


def _compare(torch, a, b):
    a, b = a.float(), b.float().to(a.device)
    if a.shape != b.shape:
        return {"shape": list(a.shape), "reference_shape": list(b.shape)}
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"max_abs": float((a - b).abs().max()),
            "max_rel_to_max": float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)),
            "min_token_cosine": float(cos.min())}


def _hf_reference(torch, eng, tower, vt32, ev32, items):
    """transformers' Gemma4VisionModel + Gemma4MultimodalEmbedder (float32) on the weights of ``vt32`` /
    ``ev32``: (soft tokens before the embedder, embeddings after it), valid tokens of all images in order."""
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4MultimodalEmbedder, Gemma4VisionModel

    cfg = eng.vision_config(tower)
    cfg._attn_implementation = "sdpa"
    with torch.device(eng.device):
        hf = Gemma4VisionModel(cfg).float().eval()
        hf_embed = Gemma4MultimodalEmbedder(cfg, Gemma4TextConfig(hidden_size=eng.text_hidden(tower))).float()
    src = {k: v.float() for k, v in vt32.state_dict().items()}
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    mapped, missing = {}, []
    for key in hf.state_dict():
        if ".q_proj." in key or ".k_proj." in key or ".v_proj." in key:
            w = src[key.split(".self_attn.")[0] + ".self_attn.qkv.qkv_proj.weight"]
            q, k, v = w.split([nh * hd, nkv * hd, nkv * hd])
            mapped[key] = {"q": q, "k": k, "v": v}[key.split(".self_attn.")[1][0]]
        elif ".gate_proj." in key or ".up_proj." in key:
            gate, up = src[key.split(".mlp.")[0] + ".mlp.gate_up.gate_up_proj.weight"].chunk(2)
            mapped[key] = gate if ".gate_proj." in key else up
        elif key in src:
            mapped[key] = src[key]
        else:
            missing.append(key)
    unmapped = [m for m in missing if not m.endswith(("_min", "_max", "inv_freq"))]
    if unmapped:
        raise RuntimeError(f"unmapped transformers weights: {unmapped[:5]}")
    hf.load_state_dict(mapped, strict=False)
    hf_embed.load_state_dict({k: v.float() for k, v in ev32.state_dict().items()})
    pv = torch.cat([it.feature for it in items]).float()
    pp = torch.cat([it.image_position_ids for it in items]).to(eng.device)
    with torch.no_grad():
        soft = hf(pixel_values=pv, pixel_position_ids=pp).last_hidden_state
        soft = soft.reshape(-1, soft.shape[-1])
        emb = hf_embed(inputs_embeds=soft)
    return soft, emb


def _identity(inputs_embeds):
    return inputs_embeds


def _time_call(torch, fn, device):
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


def _count_tower_calls(vt):
    counter = {"n": 0}
    vt.encoder.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    return counter


def _probe_backend(torch, eng, backend, dtype):
    """None if ``backend`` runs here, else why not (e.g. the fa3 ops are missing)."""
    try:
        vt = eng.tower("e2b", backend, dtype)
        ev = eng.embedder("e2b", dtype)
        host = eng.host("e2b", vt, ev, dtype)
        with torch.no_grad():
            out = _flat(torch, host.get_image_feature(_items(torch, [(3, 3)], eng.device, quick=eng.quick)))
        if eng.device.type == "cuda":
            torch.cuda.synchronize()
        if not torch.isfinite(out.float()).all():
            return "non-finite output"
        return None
    except Exception as exc:  # report, skip the backend's rows
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def worker(args):
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # float32 parity arms: IEEE dots in the Triton kernel
    import torch

    device = torch.device(args.device)
    eng = Engine(device, args.quick)
    bf16 = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {"engine": args.engine, "rows": [], "parity": [], "skipped": {}, "meta": {}}
    import importlib.metadata as md

    out["meta"] = {"sglang": md.version("sglang"), "torch": torch.__version__,
                   "transformers": md.version("transformers"), "python": platform.python_version()}
    try:
        out["meta"]["triton"] = md.version("triton")
    except md.PackageNotFoundError:
        pass
    try:
        from sglang.srt import gemma4_series

        manifest = gemma4_series.load_manifest()
        out["meta"]["series_commit"] = (manifest or {}).get("series_commit")
        out["meta"]["series_version"] = (manifest or {}).get("version")
    except ImportError:
        out["meta"]["series_commit"] = None  # stock sglang
    backends = [b for b in args.backends.split(",") if b]
    usable = []
    for b in backends:
        why = _probe_backend(torch, eng, b, bf16)
        if why is None:
            usable.append(b)
        else:
            out["skipped"][b] = why
            print(f"[{args.engine}] skipping {b}: {why}", flush=True)
    towers = args.towers.split(",")
    workloads = WORKLOADS[:2] if args.quick else WORKLOADS
    for tower in towers:
        # (a) parity on padded images
        items = _items(torch, PARITY_IMAGES, device, seed0=7, quick=args.quick)
        vt32 = eng.tower(tower, "triton_attn", torch.float32) if "triton_attn" in usable else None
        ev32 = eng.embedder(tower, torch.float32)
        ref_soft = ref_emb = None
        if vt32 is not None:
            try:
                ref_soft, ref_emb = _hf_reference(torch, eng, tower, vt32, ev32, items)
            except Exception as exc:
                out["skipped"][f"transformers reference ({tower})"] = f"{type(exc).__name__}: {exc}"
        arms = ([("float32", "triton_attn", vt32)] if vt32 is not None else []) + [
            (str(bf16).replace("torch.", ""), b, None) for b in usable
        ]
        for dtype_name, backend, vt in arms:
            dtype = getattr(torch, dtype_name)
            vt = vt if vt is not None else eng.tower(tower, backend, dtype)
            ev = ev32 if dtype == torch.float32 else eng.embedder(tower, dtype)
            with torch.no_grad():
                soft = _flat(torch, eng.host(tower, vt, _identity, dtype).get_image_feature(items))
                emb = _flat(torch, eng.host(tower, vt, ev, dtype).get_image_feature(items))
            if ref_soft is not None:
                for what, got, ref in (("soft tokens before the embedder", soft, ref_soft),
                                       ("embeddings after the embedder", emb, ref_emb)):
                    out["parity"].append({"tower": tower, "backend": backend, "dtype": dtype_name,
                                          "compared": what, **_compare(torch, got, ref)})
            del vt
        del vt32, ev32
        # (b) timing, bfloat16, each backend
        for backend in usable:
            vt = eng.tower(tower, backend, bf16)
            ev = eng.embedder(tower, bf16)
            host = eng.host(tower, vt, ev, bf16)
            calls = _count_tower_calls(vt)
            for wname, grids in workloads:
                items = _items(torch, grids, device, quick=args.quick)
                with torch.no_grad():
                    for _ in range(args.warmup):
                        host.get_image_feature(items)
                    times, peaks = [], []
                    calls["n"] = 0
                    for _ in range(args.reps):
                        dt, pk = _time_call(torch, lambda h=host, it=items: h.get_image_feature(it), device)
                        times.append(dt)
                        peaks.append(pk)
                med = statistics.median(times)
                valid = sum(int((it.image_position_ids != -1).any(-1).sum()) for it in items)
                row = {"tower": tower, "backend": backend, "workload": wname, "images": len(grids),
                       "dtype": str(bf16).replace("torch.", ""), "valid_patches": valid, "median_ms": 1e3 * med,
                       "all_ms": [round(1e3 * t, 3) for t in times], "img_s": len(grids) / med,
                       "peak_mib": max(peaks) / 2**20, "tower_calls_per_call": calls["n"] / args.reps}
                out["rows"].append(row)
                print(f"[{args.engine}] {tower} {backend} {wname}: {row['median_ms']:.2f} ms "
                      f"({row['tower_calls_per_call']:g} tower calls)", flush=True)
            del vt, ev, host
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out["meta"]["device"] = stamp.device_name(torch, cuda=device.type == "cuda")
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


# ================================================================================================= driver


def run_engine(python, engine, args, tmp):
    path = os.path.join(tmp, f"{engine}.json")
    cmd = [python, os.path.abspath(__file__), "worker", "--engine", engine, "--json", path, "--device",
           args.device, "--backends", args.backends, "--towers", args.towers, "--reps", str(args.reps),
           "--warmup", str(args.warmup)] + (["--quick"] if args.quick else [])
    t0 = time.time()
    proc = subprocess.run(cmd, text=True, timeout=args.timeout)
    if proc.returncode != 0 or not os.path.exists(path):
        raise SystemExit(f"error: the {engine} engine ({python}) failed with exit status {proc.returncode}")
    with open(path) as f:
        res = json.load(f)
    res["meta"]["wall_s"] = round(time.time() - t0, 1)
    return res


def render_markdown(res):
    m = res["meta"]
    up, pt = res["engines"]["upstream"], res["engines"]["patched"]
    lines = [
        "# Gemma-4 vision encoder on the real engines: sglang 0.5.23 vs the series, fa3 and triton_attn",
        "",
        f"Device: {m['device']}; date {m['date']}; series commit {m['commit']} "
        f"({m['commit_source']}); engines: stock sglang {up['meta']['sglang']}, patched {pt['meta']['sglang']}; "
        f"torch {pt['meta']['torch']}, triton {pt['meta'].get('triton', '?')}, transformers "
        f"{pt['meta']['transformers']}; median of {m['reps']} calls after {m['warmup']} warm-up calls; "
        f"chunk budget: the default ({m['budget']})."
        + (" **Quick harness run (tiny towers), not a measurement.**" if m["quick"] else ""),
        "",
        f"Command: `{m['command']}` (wall time {m['wall_s']} s).",
        "",
    ]
    for eng, r in (("stock", up), ("patched", pt)):
        for backend, why in r["skipped"].items():
            lines.append(f"- skipped on the {eng} engine: {backend}: {why}")
    dtype = pt["rows"][0]["dtype"] if pt["rows"] else "bfloat16"
    lines += ["", f"## Vision encoder call (get_image_feature: tower + pooling + embed_vision), {dtype}", "",
              "| tower | backend | workload | valid patches | 0.5.23 ms | patched ms | 0.5.23 img/s | patched img/s "
              "| speed-up | patched tower calls | peak MiB 0.5.23 / patched |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    index = {(r["tower"], r["backend"], r["workload"]): r for r in up["rows"]}
    for p in pt["rows"]:
        u = index.get((p["tower"], p["backend"], p["workload"]))
        if u is None:
            continue
        lines.append(
            f"| {p['tower']} | {p['backend']} | {p['workload']} | {p['valid_patches']} | {u['median_ms']:.2f} | "
            f"{p['median_ms']:.2f} | {u['img_s']:.1f} | {p['img_s']:.1f} | {u['median_ms'] / p['median_ms']:.2f}x | "
            f"{p['tower_calls_per_call']:g} | {u['peak_mib']:.1f} / {p['peak_mib']:.1f} |")
    lines += ["", "Peak = max_memory_allocated during the call minus memory allocated before it (weights and "
              "inputs excluded). 0.5.23 makes one tower call per image.", "",
              "## Parity against transformers (padded images: 480x480 and 384x528, 900 and 792 of 2520 patches "
              "valid)", "",
              "Reference: transformers' Gemma4VisionModel + Gemma4MultimodalEmbedder, float32, same weights. "
              "\"soft tokens before the embedder\": the tower's pooled, scaled and standardized output (the "
              "engine's get_image_feature with an identity embed_vision); \"embeddings after the embedder\": what "
              "get_image_feature returns. max rel = max |engine - reference| / max |reference|.", "",
              "| tower | engine | backend | dtype | compared | max abs | max rel | min token cosine |",
              "|---|---|---|---|---|---|---|---|"]
    for eng, r in (("0.5.23", up), ("patched", pt)):
        for row in r["parity"]:
            if "max_abs" not in row:
                lines.append(f"| {row['tower']} | {eng} | {row['backend']} | {row['dtype']} | {row['compared']} | "
                             f"shape {row['shape']} vs {row['reference_shape']} | | |")
                continue
            lines.append(f"| {row['tower']} | {eng} | {row['backend']} | {row['dtype']} | {row['compared']} | "
                         f"{row['max_abs']:.3g} | {row['max_rel_to_max']:.3g} | {row['min_token_cosine']:.6f} |")
    lines += ["", "Towers: e2b = 768 x 16 layers, 12 x 64 heads, MLP 3072; large = 1152 x 27 layers, 16 x 72 "
              "heads, MLP 4304 (26B/31B size, assumed head split). Random weights seeded per tensor name, the same "
              "in both engines; q/k norm weights near 0.35 so the random tower is well conditioned.", ""]
    return "\n".join(lines)


def driver(args):
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        upstream = run_engine(args.upstream_python, "upstream", args, tmp)
        patched = run_engine(args.patched_python, "patched", args, tmp)
    if patched["meta"].get("series_commit") is None and patched["meta"].get("series_version") is None:
        print("warning: the --patched-python engine has no Gemma-4 series manifest", file=sys.stderr)
    head = stamp.checkout_commit()
    commit, source = (head, "git checkout") if head else (
        patched["meta"].get("series_commit") or "unknown", "series manifest of the patched engine")
    res = {
        "meta": {"device": patched["meta"]["device"],
                 "date": stamp.utc_now(),
                 "commit": commit, "commit_source": source,
                 "series_commit_of_patched_engine": patched["meta"].get("series_commit"),
                 "reps": args.reps, "warmup": args.warmup, "quick": args.quick,
                 "budget": os.environ.get("SGLANG_GEMMA4_VISION_ENCODER_BUDGET_MB", "512") + " MiB",
                 "command": " ".join([os.path.basename(sys.executable)] + sys.argv[0:1] + sys.argv[1:]),
                 "wall_s": round(time.time() - t0, 1)},
        "engines": {"upstream": upstream, "patched": patched},
    }
    name = f"vision_fa3_{stamp.device_slug(res['meta']['device'])}" + ("_quick" if args.quick else "")
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    md_text = render_markdown(res)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(md_text)
    print(md_text)
    print(f"wrote {os.path.join(args.out, name)}.json/.md in {res['meta']['wall_s']} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(internal) one engine's measurements")
    w.add_argument("--engine", required=True, choices=["upstream", "patched"])
    w.add_argument("--json", required=True)
    for p in (ap, w):
        p.add_argument("--device", default="cuda")
        p.add_argument("--backends", default=",".join(BACKENDS))
        p.add_argument("--towers", default="e2b,large")
        p.add_argument("--reps", type=int, default=5)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--quick", action="store_true", help="tiny towers, two workloads: harness check only")
    ap.add_argument("--upstream-python", default="/tmp/py-upstream")
    ap.add_argument("--patched-python", default="/tmp/py-patched")
    ap.add_argument("--out", default=None)
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per engine")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        worker(args)
        return 0
    if not args.out:
        ap.error("--out is required")
    driver(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
