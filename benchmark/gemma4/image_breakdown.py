#!/usr/bin/env python3
"""Where the time of one Gemma-4 images request goes before (and around) the vision tower.

The images workload of the end-to-end A/B (serve_ab.py ``images``): bench_serving's image dataset, 6 random
480x480 JPEG images per request (``sglang.benchmark.datasets.image.sample_image_requests``, the code
bench_serving itself calls), 50 text tokens.  Every stage below runs sglang 0.5.23's REAL code, built the way
``TokenizerManager.init_tokenizer_and_processor`` builds it (``import_processors`` +
``get_processor_wrapper`` + ``get_mm_processor`` on ServerArgs resolved from the model directory):

tokenizer manager
  load        ``BaseMultimodalProcessor.load_mm_data``: base64 decode + image decode on the io thread pool
              (nvJPEG on the GPU when CUDA is there, as sglang does; PIL otherwise)
  hf          ``process_mm_data``: transformers' Gemma4Processor (text expansion, resize, rescale,
              patchify, pad), run on the device sglang picks (``_fast_image_processor_device``)
  combine     ``process_and_combine_mm_data``: the HF call plus item collection, offsets, per-image split
  request     ``process_mm_data_async`` end to end (load + combine, through sglang's processor pool)
dispatch (``_send_one_request``)
  shm_wrap    ``wrap_shm_features``: every pixel tensor copied into a POSIX shared-memory segment
  encode      ``wrap_pickle_fields`` + ``msgpack_encode`` of the TokenizedGenerateReqInput
  zmq         one PUSH -> PULL over an ipc:// socket of the encoded bytes (same host)
scheduler (``RequestReceiver`` + ``handle_generate_request``)
  decode      ``msgpack_decode`` + ``unwrap_pickle_fields``
  unwrap      ``unwrap_shm_features`` (copy-on-write mapping of the segment)
  mm_inputs   ``MultimodalInputs.from_processor_output``: ``set_pad_value`` = sha256 of every pixel tensor
  pad_ids     ``pad_mm_tokens`` (what Gemma4ForConditionalGeneration.pad_input_ids calls)
  h2d         (CUDA only) the per-item ``feature.to(device, non_blocking=True)`` of
              ``mm_schedule._move_items_to_device``, then a synchronize
  hash_alone  sha256 of the same tensors already in private memory (separates hashing from page faults)

Each stage: median, min and max over ``--repeats`` passes over ``--requests`` requests.  Then the request
stage is run for all requests at once (``asyncio.gather``) with the pool sglang builds by default, and, where
given, with other ``--mm-processor-worker-num`` values; that measured throughput is the projection of what
the tokenizer side can sustain.  Both image-processor backends sglang exposes (``--image-processor-backend
pil|torchvision``; ``auto`` resolves to torchvision when it is installed) are measured.  If the series'
uint8 pixel transport is installed (``sglang.srt.multimodal.gemma4_pixel_transport``) every backend runs
with it on and off (its kill switch).

With CUDA, the vision tower is also timed on the same batch: the installed engine's
``Gemma4ForConditionalGeneration.get_image_feature`` (the series' packed encoder when patched) with the
model directory's vision geometry, bf16, random weights, on the pixel values the processor produced for 1
request (6 images) and for all requests (6 x N).

Usage:
    python benchmark/gemma4/make_model_dir.py dir e2b /tmp/e2b
    python benchmark/gemma4/image_breakdown.py --model-dir /tmp/e2b --out results/image_breakdown_cpu
writes ``<out>.json`` and ``<out>.md``.  About 35-50 s on 2 CPU cores; stays under a minute by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)
TRANSPORT_MODULE = "sglang.srt.multimodal.gemma4_pixel_transport"
TRANSPORT_SWITCH = "SGLANG_GEMMA4_UINT8_PIXELS"


# ---------------------------------------------------------------------------------------------- helpers


def _stats(values: List[float]) -> Dict[str, float]:
    ms = [v * 1e3 for v in values]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


def _sync(torch):
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(torch, fn: Callable[[], Any]):
    _sync(torch)
    t0 = time.perf_counter()
    out = fn()
    _sync(torch)
    return out, time.perf_counter() - t0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _tensor_info(value) -> List[Dict[str, Any]]:
    import torch

    out = []
    if isinstance(value, torch.Tensor):
        out.append({"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                    "bytes": value.numel() * value.element_size(), "device": str(value.device)})
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.extend(_tensor_info(v))
    return out


# ---------------------------------------------------------------------------------------------- sglang setup


class Sglang:
    """sglang's context published for a tokenizer process, and the pieces the stages call."""

    def __init__(self, model_dir: str, device: str):
        from sglang.srt import runtime_context as rc
        from sglang.srt.server_args import prepare_server_args

        self.rc = rc
        self.phases: Dict[str, float] = {}
        t0 = time.perf_counter()
        args = ["--model-path", model_dir, "--load-format", "dummy", "--disable-radix-cache"]
        if device == "cpu":
            args += ["--device", "cpu"]
        self.server_args = prepare_server_args(args)
        try:
            self.server_args.resolve_once()
        except Exception:
            pass  # resolution needing a device (memory probes) is not what the tokenizer side reads
        rc.reset_context()
        rc.publish(self.server_args, role="tokenizer")
        self.phases["server_args_s"] = time.perf_counter() - t0
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.managers.multimodal_processor import import_processors

        t0 = time.perf_counter()
        self.model_config = ModelConfig.from_server_args(self.server_args)
        self.phases["model_config_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        import_processors("sglang.srt.multimodal.processors")
        self.phases["import_processors_s"] = time.perf_counter() - t0
        self._hf: Dict[str, Any] = {}

    def processor(self, backend: str, worker_num: int = 0):
        """The multimodal processor exactly as the tokenizer manager builds it, for one
        ``--image-processor-backend`` / ``--mm-processor-worker-num``."""
        from sglang.srt.managers.multimodal_processor import get_mm_processor
        from sglang.srt.managers.tokenizer_manager import get_processor_wrapper
        from sglang.srt.multimodal.transport import determine_tensor_transport_mode

        with self.rc.get_mm().override(image_processor_backend=backend, mm_processor_worker_num=worker_num):
            if backend not in self._hf:
                t0 = time.perf_counter()
                self._hf[backend] = get_processor_wrapper()
                self.phases[f"hf_processor_{backend}_s"] = time.perf_counter() - t0
            hf = self._hf[backend]
            mode = determine_tensor_transport_mode()
            proc = get_mm_processor(self.model_config.hf_config, self.server_args, hf, mode,
                                    model_config=self.model_config)
        return proc, hf, mode


def make_requests(model_dir: str, hf_processor, n: int, images: int, resolution: str, seed: int):
    """bench_serving's own image dataset rows (native ``sglang`` backend, so the prompt is the chat-templated
    text with the image placeholders the server's chat template produces)."""
    import random

    import numpy as np

    from sglang.benchmark.datasets.image import sample_image_requests

    random.seed(seed)
    np.random.seed(seed)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        rows = sample_image_requests(
            num_requests=n, image_count=images, input_len=50, output_len=10, range_ratio=1.0,
            processor=hf_processor, image_content="random", image_format="jpeg",
            image_resolution=resolution, backend="sglang", random_image_count=False,
        )
    return rows


# ---------------------------------------------------------------------------------------------- stages


def tokenized_request(mm_out, input_ids, rid):
    from array import array

    from sglang.srt.managers.io_struct import TokenizedGenerateReqInput
    from sglang.srt.sampling.sampling_params import SamplingParams

    return TokenizedGenerateReqInput(
        rid=rid, input_text="", input_ids=array("q", input_ids), input_embeds=None, mm_inputs=mm_out,
        token_type_ids=None, sampling_params=SamplingParams(max_new_tokens=10), return_logprob=False,
        logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None, stream=False,
    )


class ZmqPipe:
    def __init__(self, tmpdir: str):
        import zmq

        self.ctx = zmq.Context(2)
        name = f"ipc://{tmpdir}/image_breakdown_{os.getpid()}"
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(name)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(name)

    def roundtrip(self, data: bytes) -> bytes:
        self.push.send(data)
        return self.pull.recv()

    def close(self):
        self.push.close(0)
        self.pull.close(0)
        self.ctx.term()


def run_backend(sg: Sglang, backend: str, rows, repeats: int, pipe: ZmqPipe, pool_sizes: List[int],
                cuda: bool, label: str) -> Dict[str, Any]:
    import torch

    from sglang.srt.managers.io_struct import msgpack_decode, msgpack_encode
    from sglang.srt.managers.mm_utils import tensor_hash, unwrap_shm_features, wrap_shm_features
    from sglang.srt.managers.schedule_batch import Modality, MultimodalInputs
    from sglang.srt.models.gemma4_mm import pad_mm_tokens

    proc, _hf, mode = sg.processor(backend)
    tokens = proc.mm_tokens
    result: Dict[str, Any] = {
        "backend_flag": backend, "label": label,
        "hf_image_processor": type(proc._processor.image_processor).__name__,
        "processor_device": None, "tensor_transport_mode": mode,
        "mm_feature_transport": proc.mm_feature_transport,
        "default_mm_processor_worker_num": proc.mm_processor_worker_num,
        "io_worker_num": proc.mm_io_worker_num,
    }
    try:
        result["processor_device"] = (proc._fast_image_processor_device(proc._processor) or
                                      "cpu (no device argument)") if (
            not proc.disable_fast_image_processor) else "cpu (PIL backend)"
    except Exception as exc:  # pragma: no cover - reporting only
        result["processor_device"] = f"unknown ({exc})"

    req_obj = types.SimpleNamespace(video_data=None)
    loop = asyncio.new_event_loop()
    stages: Dict[str, List[float]] = {k: [] for k in (
        "load", "decode_one_image", "hf", "combine", "request", "shm_wrap", "encode", "zmq", "decode",
        "unwrap", "mm_inputs", "pad_ids", "hash_alone", "h2d", "request_total_serial")}
    outputs = {}
    # warm-up: first call pays lazy imports, CUDA init, nvJPEG handles
    loop.run_until_complete(proc.process_mm_data_async(
        image_data=rows[0].image_data, input_text=rows[0].prompt, request_obj=req_obj))

    if os.environ.get(TRANSPORT_SWITCH) == "1":
        result["parity"] = uint8_parity(proc, rows[0], tokens)

    for rep in range(repeats):
        for i, row in enumerate(rows):
            base, t = _timed(torch, lambda: loop.run_until_complete(proc.load_mm_data(
                prompt=row.prompt, image_data=list(row.image_data), multimodal_tokens=tokens)))
            stages["load"].append(t)
            _, t = _timed(torch, lambda: proc._load_single_item(row.image_data[0], Modality.IMAGE))
            stages["decode_one_image"].append(t)
            ret, t_hf = _timed(torch, lambda: proc.process_mm_data(input_text=base.input_text,
                                                                    images=list(base.images)))
            stages["hf"].append(t_hf)
            (items, input_ids, _), t_comb = _timed(torch, lambda: proc.process_and_combine_mm_data(base, tokens))
            stages["combine"].append(t_comb)
            mm_out, t_req = _timed(torch, lambda: loop.run_until_complete(proc.process_mm_data_async(
                image_data=list(row.image_data), input_text=row.prompt, request_obj=req_obj)))
            stages["request"].append(t_req)
            if rep == 0 and i == 0:
                outputs = {
                    "items": len(mm_out.mm_items),
                    "input_ids": len(mm_out.input_ids),
                    "image_tokens": sum(e - s + 1 for it in mm_out.mm_items for s, e in it.offsets),
                    "feature": _tensor_info([it.feature for it in mm_out.mm_items]),
                    "other_tensors": {k: _tensor_info(v) for k, v in mm_out.mm_items[0].model_specific_data.items()
                                      if _tensor_info(v)},
                    "hf_pixel_values": _tensor_info(ret["pixel_values"]),
                }
            # tokenizer dispatch
            req = tokenized_request(mm_out, mm_out.input_ids, f"r{rep}-{i}")
            req, t_wrap = _timed(torch, lambda: wrap_shm_features(req))
            stages["shm_wrap"].append(t_wrap)

            def _encode():
                req.wrap_pickle_fields()
                return msgpack_encode(req)

            data, t_enc = _timed(torch, _encode)
            stages["encode"].append(t_enc)
            got, t_zmq = _timed(torch, lambda: pipe.roundtrip(data))
            stages["zmq"].append(t_zmq)
            if rep == 0 and i == 0:
                outputs["message_bytes"] = len(data)

            # scheduler
            def _decode():
                r = msgpack_decode(got)
                r.unwrap_pickle_fields()
                return r

            sreq, t_dec = _timed(torch, _decode)
            stages["decode"].append(t_dec)
            _, t_unw = _timed(torch, lambda: unwrap_shm_features(sreq))
            stages["unwrap"].append(t_unw)
            mm_inputs, t_mm = _timed(torch, lambda: MultimodalInputs.from_processor_output(sreq.mm_inputs))
            stages["mm_inputs"].append(t_mm)
            _, t_pad = _timed(torch, lambda: pad_mm_tokens(sreq.input_ids, mm_inputs))
            stages["pad_ids"].append(t_pad)
            feats = [it.feature for it in mm_inputs.mm_items]
            private = [f.clone() for f in feats]
            _, t_hash = _timed(torch, lambda: [tensor_hash([f]) for f in private])
            stages["hash_alone"].append(t_hash)
            if cuda:
                dev = torch.device("cuda", torch.cuda.current_device())
                _, t_h2d = _timed(torch, lambda: [f.to(dev, non_blocking=True) for f in feats])
                stages["h2d"].append(t_h2d)
            stages["request_total_serial"].append(t_req + t_wrap + t_enc + t_zmq + t_dec + t_unw + t_mm + t_pad)
            del private, feats, mm_inputs, sreq, req

    result["stages"] = {k: _stats(v) for k, v in stages.items() if v}
    result["outputs"] = outputs
    n_img = len(rows[0].image_data)
    result["images_per_request"] = n_img

    # concurrency: all requests at once through sglang's pool (default size, then the asked sizes)
    conc = []
    sizes = [0] + [s for s in pool_sizes if s]
    for size in sizes:
        p = proc if size == 0 else sg.processor(backend, worker_num=size)[0]

        async def _one(r, k):
            # what the tokenizer manager does per request: the processor (pool or loop), then, on the loop,
            # shared-memory wrap + encode + send (_send_one_request)
            out = await p.process_mm_data_async(image_data=list(r.image_data), input_text=r.prompt,
                                                request_obj=req_obj)
            req = wrap_shm_features(tokenized_request(out, out.input_ids, f"c{k}"))
            req.wrap_pickle_fields()
            pipe.push.send(msgpack_encode(req))

        async def _all():
            await asyncio.gather(*[_one(r, k) for k, r in enumerate(rows)])

        def _drain():  # the scheduler's side, outside the timing: release the shared-memory segments
            for _ in rows:
                unwrap_shm_features(msgpack_decode(pipe.pull.recv()))

        loop.run_until_complete(_all())  # warm the pool's clones
        _drain()
        times = []
        for _ in range(max(1, repeats - 1)):
            _, t = _timed(torch, lambda: loop.run_until_complete(_all()))
            _drain()
            times.append(t)
        t = statistics.median(times)
        conc.append({"worker_num": p.mm_processor_worker_num, "requested": size, "requests": len(rows),
                     "wall_ms": t * 1e3, "images_per_s": len(rows) * n_img / t})
        if p is not proc:
            p.shutdown()
    result["concurrent"] = conc
    proc.shutdown()
    loop.close()
    return result


def uint8_parity(proc, row, tokens) -> Dict[str, Any]:
    """The float32 pixel values the model gets from the uint8 transport (restore_pixel_values, on the
    device the features would be on) against the HF processor's own float32 output, on this machine's
    real processor path (device, backend), for the images of one request."""
    import torch

    from sglang.srt.multimodal import gemma4_pixel_transport as gpt

    loop = asyncio.new_event_loop()
    base = loop.run_until_complete(proc.load_mm_data(prompt=row.prompt, image_data=list(row.image_data),
                                                     multimodal_tokens=tokens))
    loop.close()
    os.environ[TRANSPORT_SWITCH] = "0"
    ref, _, _ = proc.process_and_combine_mm_data(base, tokens)
    os.environ[TRANSPORT_SWITCH] = "1"
    got, _, _ = proc.process_and_combine_mm_data(base, tokens)
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    for it in got:
        it.feature = it.feature.to(dev)
    restored = gpt.restore_pixel_values(got)
    same = [torch.equal(a.feature.cpu(), b.feature.to(dev).cpu()) for a, b in zip(ref, restored)]
    pos = [torch.equal(a.image_position_ids.cpu(), b.image_position_ids.cpu()) for a, b in zip(ref, got)]
    return {"images": len(same), "pixel_values_bit_identical": all(same), "positions_identical": all(pos),
            "uint8_dtype": str(got[0].feature.dtype), "restored_on": str(dev)}


# ---------------------------------------------------------------------------------------------- tower (GPU)


def time_tower(sg: Sglang, rows, backend: str, repeats: int, device: str = "cuda") -> Dict[str, Any]:
    """The installed engine's get_image_feature on the processor's pixel values for 1 and all requests
    (bf16 on CUDA; float32 on CPU, meant for a tiny model directory as a smoke test)."""
    import torch

    from sglang.srt.models import gemma4_mm

    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    proc, _hf, _ = sg.processor(backend)
    loop = asyncio.new_event_loop()
    req_obj = types.SimpleNamespace(video_data=None)
    items = []
    for r in rows:
        out = loop.run_until_complete(proc.process_mm_data_async(
            image_data=list(r.image_data), input_text=r.prompt, request_obj=req_obj))
        for it in out.mm_items:
            it.feature = it.feature.to(dev)  # as mm_schedule._move_items_to_device leaves them
            items.append(it)
    proc.shutdown()
    loop.close()
    override = sg.rc._CONTEXT.override_server_args(device=dev.type)
    override.install()
    group = types.SimpleNamespace(is_first_rank=True, is_last_rank=True, world_size=1, rank_in_group=0)
    try:
        sg.rc.get_parallel().override_permanently(pp_group=group, tp_group=group, attn_tp_group=group,
                                                   tp_rank=0, attn_tp_rank=0, pp_rank=0)
    except Exception:
        pass
    cfg = sg.model_config.hf_config
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    from sglang.srt.models.gemma4_vision import Gemma4VisionEncoder

    with torch.device(dev):
        vt = Gemma4VisionEncoder(cfg.vision_config)
        ev = gemma4_mm.Gemma4MultimodalEmbedder(cfg.vision_config, cfg.text_config)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for mod in (vt, ev):
            for name, p in mod.state_dict(keep_vars=True).items():
                if p.is_floating_point():
                    if "norm" in name or "layer_scalar" in name or "std_scale" in name:
                        p.fill_(1.0)
                    else:
                        p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02))
    vt = vt.to(dev, dtype).eval()
    ev = ev.to(dev, dtype).eval()

    class Host:
        vision_tower, embed_vision = vt, ev
        config = types.SimpleNamespace(text_config=types.SimpleNamespace(hidden_size=cfg.text_config.hidden_size))
        language_model = types.SimpleNamespace(device=dev, dtype=lambda: dtype)

        def parameters(self):  # 0.5.23's per-image path reads the device from the parameters
            return vt.parameters()

        def __getattr__(self, name):
            return getattr(gemma4_mm.Gemma4ForConditionalGeneration, name).__get__(self)

    host = Host()
    n1 = len(rows[0].image_data)
    res = {"tower": f"{cfg.vision_config.hidden_size} x {cfg.vision_config.num_hidden_layers}",
           "dtype": str(dtype).replace("torch.", ""), "device": str(dev),
           "attention_backend": getattr(vt.encoder.layers[0].self_attn, "backend_name", "?"),
           "valid_patches_per_image": int((items[0].image_position_ids[0] != -1).any(-1).sum()),
           "soft_tokens_per_image": int(items[0].offsets[0][1] - items[0].offsets[0][0] + 1), "batches": []}
    for batch in (items[:n1], items):
        with torch.no_grad():
            host.get_image_feature(batch)  # warm
            times = []
            for _ in range(max(3, repeats)):
                _, t = _timed(torch, lambda: host.get_image_feature(batch))
                times.append(t)
        t = statistics.median(times)
        res["batches"].append({"images": len(batch), "median_ms": t * 1e3, "min_ms": min(times) * 1e3,
                               "images_per_s": len(batch) / t})
    override.restore()
    return res


# ---------------------------------------------------------------------------------------------- report


STAGE_ROWS = [
    ("load", "tokenizer: load_mm_data (base64 + decode, io pool), per request"),
    ("decode_one_image", "  one image decoded alone (_load_single_item)"),
    ("hf", "tokenizer: HF Gemma4Processor call (resize, rescale, patchify, pad, text)"),
    ("combine", "tokenizer: process_and_combine_mm_data (the HF call + items, offsets, per-image split)"),
    ("request", "tokenizer: process_mm_data_async end to end"),
    ("shm_wrap", "dispatch: wrap_shm_features (copy into /dev/shm)"),
    ("encode", "dispatch: msgpack_encode of TokenizedGenerateReqInput"),
    ("zmq", "transfer: zmq ipc PUSH -> PULL of the message"),
    ("decode", "scheduler: msgpack_decode"),
    ("unwrap", "scheduler: unwrap_shm_features"),
    ("mm_inputs", "scheduler: MultimodalInputs.from_processor_output (sha256 per image)"),
    ("hash_alone", "  sha256 of the same tensors in private memory"),
    ("pad_ids", "scheduler: pad_mm_tokens"),
    ("h2d", "model: feature.to(cuda, non_blocking) per item + sync"),
    ("request_total_serial", "sum: one request, tokenizer + transfer + scheduler, serial"),
]


def render(res: Dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# Gemma-4 images request: where the time goes ({m['where']})", "",
             f"- machine: {m['cpu']}, {m['cores']} cores; GPU: {m['gpu']}",
             f"- date: {res['date']}; commit: {res['commit']}; sglang {m['sglang']}, torch {m['torch']}, "
             f"transformers {m['transformers']}",
             f"- workload: bench_serving image dataset rows (sample_image_requests), {res['requests']} requests x "
             f"{res['images_per_request']} random {res['resolution']} JPEG images, {res['repeats']} passes; "
             f"model dir {res['model']}",
             "- every stage calls sglang 0.5.23's own functions (see the script's docstring); times are wall "
             "clock per request; median [min-max] over all passes",
             f"- load average at start / end: {res['load_average']['start'][0]:.2f} / "
             f"{res['load_average']['end'][0]:.2f} (other processes share the cores when it exceeds 1 per core); "
             f"setup {res['setup_s']} s ({', '.join(f'{k} {v}' for k, v in res['setup_phases_s'].items())})", "",
             "## Summary (ms per request of 6 images unless noted)", "",
             "| variant | pixels MB / request | HF call | process_mm_data_async | shm_wrap | scheduler hash "
             "(mm_inputs) | h2d | serial sum | tokenizer images/s |", "|---|---|---|---|---|---|---|---|---|"]
    for b in res["backends"]:
        s, o = b["stages"], b["outputs"]
        h2d = f"{s['h2d']['median_ms']:.1f}" if "h2d" in s else "-"
        lines.append(f"| {b['label']} | {sum(f['bytes'] for f in o['feature']) / 1e6:.1f} | "
                     f"{s['hf']['median_ms']:.1f} | {s['request']['median_ms']:.1f} | {s['shm_wrap']['median_ms']:.1f} | "
                     f"{s['mm_inputs']['median_ms']:.1f} | {h2d} | {s['request_total_serial']['median_ms']:.1f} | "
                     f"{b['projection']['tokenizer_images_per_s']:.0f} |")
    lines.append("")
    for b in res["backends"]:
        s, o = b["stages"], b["outputs"]
        n = b["images_per_request"]
        lines += [f"## {b['label']}", "",
                  f"HF image processor {b['hf_image_processor']} on {b['processor_device']}; "
                  f"feature transport {b['mm_feature_transport']} (tensor transport mode "
                  f"{b['tensor_transport_mode']}: {'POSIX shm' if b['tensor_transport_mode'] != 'default' else 'inline'}); "
                  f"default processor pool {b['default_mm_processor_worker_num']} worker(s), io pool "
                  f"{b['io_worker_num']} threads.", "",
                  f"Per request: {o['items']} items, {o['image_tokens']} image tokens, {o['input_ids']} input ids; "
                  f"feature per image {o['feature'][0]['shape']} {o['feature'][0]['dtype']} "
                  f"({o['feature'][0]['bytes'] / 1e6:.2f} MB; {sum(f['bytes'] for f in o['feature']) / 1e6:.1f} MB "
                  f"per request); HF pixel_values {o['hf_pixel_values'][0]['shape']} "
                  f"{o['hf_pixel_values'][0]['dtype']}; message {o['message_bytes'] / 1e3:.1f} kB.", "",
                  "| stage | median ms | min | max | per image ms |", "|---|---|---|---|---|"]
        for key, label in STAGE_ROWS:
            if key in s:
                st = s[key]
                per = "" if key == "decode_one_image" else f"{st['median_ms'] / n:.2f}"
                lines.append(f"| {label} | {st['median_ms']:.2f} | {st['min_ms']:.2f} | {st['max_ms']:.2f} | {per} |")
        if b.get("parity"):
            pr = b["parity"]
            lines += ["", f"uint8 transport parity on this path ({pr['images']} images, restored on "
                      f"{pr['restored_on']}): pixel values bit-identical to the HF processor's float32: "
                      f"**{pr['pixel_values_bit_identical']}**; positions identical: {pr['positions_identical']}."]
        lines += ["", "All requests at once, each through process_mm_data_async and then wrap_shm_features + encode + "
                  "send on the event loop (the tokenizer manager's per-request work):", "",
                  "| processor pool | requests at once | wall ms | images/s |", "|---|---|---|---|"]
        for c in b["concurrent"]:
            tag = "default" if c["requested"] == 0 else f"--mm-processor-worker-num {c['requested']}"
            lines.append(f"| {c['worker_num']} ({tag}) | {c['requests']} | {c['wall_ms']:.1f} | "
                         f"{c['images_per_s']:.1f} |")
        p = b["projection"]
        lines += ["", f"Projection: the tokenizer side sustains about **{p['tokenizer_images_per_s']:.0f} images/s** "
                  f"({p['tokenizer_basis']}). Arithmetic on the medians: the event loop's serial share "
                  f"({p['event_loop_basis']}) caps it at {p['event_loop_images_per_s']:.0f} images/s; the scheduler's "
                  f"per-request CPU work (decode + unwrap + mm_inputs + pad) at {p['scheduler_images_per_s']:.0f} "
                  f"images/s; all {res['machine']['cores']} cores each running one request at a time: "
                  f"{p['cores_images_per_s']:.0f} images/s.", ""]
    if res.get("skipped_backends"):
        lines += [f"Not measured (time budget --max-seconds): {', '.join(res['skipped_backends'])}.", ""]
    if res.get("tower"):
        t = res["tower"]
        lines += [f"## Vision tower alone (installed engine's get_image_feature, {t['tower']}, {t['dtype']}, "
                  f"{t['attention_backend']} on {t['device']})", "",
                  f"{t['valid_patches_per_image']} valid patches and {t['soft_tokens_per_image']} soft tokens per "
                  "image (the processor's real output for these images).", "",
                  "| images | median ms | min ms | images/s |", "|---|---|---|---|"]
        for bt in t["batches"]:
            lines.append(f"| {bt['images']} | {bt['median_ms']:.1f} | {bt['min_ms']:.1f} | {bt['images_per_s']:.1f} |")
        lines.append("")
    lines += ["## Other per-request image costs on the scheduler path (read from sglang 0.5.23)", ""]
    lines += [f"- {x}" for x in res["notes"]]
    lines.append("")
    return "\n".join(lines)


NOTES = [
    "hashing: `MultimodalInputs.from_processor_output` calls `set_pad_value` on every item, a sha256 over the "
    "whole pixel tensor on the scheduler's main thread (timed above as mm_inputs / hash_alone); it runs with the "
    "radix and embedding caches off too, because pad_input_ids needs the pad values. `SGLANG_MM_PRECOMPUTE_HASH=1` "
    "moves it to the tokenizer's hash executor; `SGLANG_MM_SKIP_COMPUTE_HASH=1` replaces it by a random id "
    "(no cache reuse).",
    "the pixel tensors cross processes through POSIX shared memory (`wrap_shm_features`: a full copy with "
    "posix_fallocate in the tokenizer; the scheduler maps it copy-on-write, so its first read of every page - the "
    "hash - takes the page faults).",
    "`pad_mm_tokens` (Gemma4ForConditionalGeneration.pad_input_ids) rewrites the image token runs with pad "
    "values (timed above as pad_ids).",
    "copies to the GPU: `mm_schedule._move_items_to_device` moves every item's feature with "
    "`.to(device, non_blocking=True)` from pageable memory (Gemma-4 is not in `_can_skip_pre_embed_feature_move`), "
    "timed above as h2d on CUDA.",
    "on CUDA, sglang runs the torchvision image processor on the GPU inside the tokenizer process "
    "(`_fast_image_processor_device`), decodes JPEG with nvJPEG (`gpu_image_decode`), builds a fresh "
    "`torch.cuda.MemPool` per call (`_temporary_fast_processor_cuda_pool`) and copies the padded float32 "
    "pixels back to the CPU before transport; with that GPU path the default pool is 1 worker, so the processor "
    "call runs on the tokenizer's event loop (`process_and_combine_mm_data_async` without an executor).",
    "`--mm-feature-transport cuda_ipc` keeps GPU-produced features on the device and sends CUDA IPC handles "
    "(the scheduler then hashes on the GPU); it reserves SGLANG_MM_FEATURE_CACHE_MB (1024 MiB) on the GPU.",
    "not on this path: the TP broadcast of mm inputs (tp=1), the embedding cache (SGLANG_VLM_CACHE_SIZE_MB=0 "
    "in the caches-off run), chunked-prefill splitting of images (prompts are ~1.6k tokens).",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", required=True, help="output path prefix (writes PREFIX.json and PREFIX.md)")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--resolution", default="480x480", help="bench_serving's --image-resolution (HxW)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backends", default="torchvision,pil")
    ap.add_argument("--pool-sizes", default="", help="extra --mm-processor-worker-num values to measure, e.g. 4,8")
    ap.add_argument("--device", choices=["auto", "cpu"], default="auto",
                    help="auto: CUDA when present (sglang's GPU paths), cpu: force the CPU paths")
    ap.add_argument("--no-tower", action="store_true")
    ap.add_argument("--tower-on-cpu", action="store_true",
                    help="time the tower on the CPU too (float32; for a tiny model directory)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=40.0,
                    help="start no further backend after this many seconds (keeps the run under a minute)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    # model directories are local; never wait on a hub lookup (the GPU machine has no network)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = args.out[:-5] if args.out.endswith((".json", ".md")) and args.out.endswith(".json") else args.out
    out = out[:-3] if out.endswith(".md") else out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    import torch

    cuda = args.device == "auto" and torch.cuda.is_available()
    sg = Sglang(os.path.abspath(args.model_dir), "cuda" if cuda else "cpu")
    t_setup = time.perf_counter() - t_start
    rows = make_requests(args.model_dir, sg.processor(args.backends.split(",")[0].strip())[1], args.requests, args.images, args.resolution,
                         args.seed)
    try:
        __import__(TRANSPORT_MODULE)
        has_transport = True
    except ImportError:
        has_transport = False
    import tempfile

    pipe = ZmqPipe(tempfile.gettempdir())
    pool_sizes = [int(x) for x in args.pool_sizes.split(",") if x.strip()]
    backends, skipped, tower = [], [], None
    for b_idx, backend in enumerate([b.strip() for b in args.backends.split(",") if b.strip()]):
        if b_idx == 1 and cuda and not args.no_tower:
            tower = time_tower(sg, rows, args.backends.split(",")[0].strip(), args.repeats)
        if b_idx > 0 and time.perf_counter() - t_start > args.max_seconds:
            skipped.append(backend)
            continue
        variants = [("1", "uint8 pixels"), ("0", "float32 pixels (HF default)")] if has_transport else [(None, "")]
        for switch, what in variants:
            if switch is not None:
                os.environ[TRANSPORT_SWITCH] = switch
            label = f"--image-processor-backend {backend}" + (f", {what}" if what else "")
            b = run_backend(sg, backend, rows, args.repeats, pipe, pool_sizes, cuda, label)
            s = b["stages"]
            n = b["images_per_request"]
            loop_bound = b["default_mm_processor_worker_num"] == 1
            on_loop = s["shm_wrap"]["median_ms"] + s["encode"]["median_ms"] + (
                s["combine"]["median_ms"] if loop_bound else 0.0)
            measured = [c["images_per_s"] for c in b["concurrent"] if c["requested"] == 0][0]
            sched = sum(s[k]["median_ms"] for k in ("decode", "unwrap", "mm_inputs", "pad_ids"))
            b["projection"] = {
                "tokenizer_images_per_s": measured,
                "tokenizer_basis": (f"measured: {len(rows)} requests at once through the default pool of "
                                    f"{b['default_mm_processor_worker_num']} and the dispatch on the event loop"),
                "event_loop_images_per_s": n / on_loop * 1e3,
                "event_loop_basis": ("shm_wrap + encode" + (" + the processor call (1 worker: no executor, "
                                                            "it runs on the loop)" if loop_bound else "")),
                "scheduler_images_per_s": n / sched * 1e3,
                "cores_images_per_s": n / s["request"]["median_ms"] * 1e3 * (os.cpu_count() or 1),
            }
            backends.append(b)
            print(f"[image_breakdown] {label}: request {s['request']['median_ms']:.1f} ms, serial total "
                  f"{s['request_total_serial']['median_ms']:.1f} ms ({time.perf_counter() - t_start:.0f} s)",
                  flush=True)
        os.environ.pop(TRANSPORT_SWITCH, None)
    pipe.close()

    if tower is None and (cuda or args.tower_on_cpu) and not args.no_tower:
        tower = time_tower(sg, rows, args.backends.split(",")[0].strip(), args.repeats,
                           "cuda" if cuda else "cpu")

    import importlib.metadata as md

    res = {
        "date": stamp.utc_now(),
        "commit": stamp.commit(),
        "machine": {"where": "GPU machine" if cuda else "CPU only", "cpu": _cpu_name(), "cores": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if cuda else "none",
                    "python": platform.python_version(), "sglang": md.version("sglang"),
                    "torch": torch.__version__, "transformers": md.version("transformers")},
        "model": os.path.basename(os.path.abspath(args.model_dir)),
        "requests": args.requests, "images_per_request": args.images, "resolution": args.resolution,
        "repeats": args.repeats, "uint8_transport_installed": has_transport,
        "backends": backends, "skipped_backends": skipped, "tower": tower, "notes": NOTES,
        "wall_s": round(time.perf_counter() - t_start, 1), "setup_s": round(t_setup, 1),
        "setup_phases_s": {k: round(v, 2) for k, v in sg.phases.items()},
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
    }
    with open(out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(render(res) + f"\nWhole run: {res['wall_s']} s.\n")
    print(f"[image_breakdown] wrote {out}.json and {out}.md in {res['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
