"""serve_ab's video client: requests that each carry one synthetic video, sent to an sglang server through its
OpenAI-compatible chat endpoint, with bench_serving's result keys (sglang 0.5.23's bench_serving has no video
data set). ``benchmark/gemma4/video_client.py`` is its command line; serve_ab runs it instead of bench_serving
for the video workloads, with the same pass protocol (warm-up pass, timed repeats, seeds, flushes, server logs).

One pass: ``--num-prompts`` requests, at most ``--max-concurrency`` in flight (0: all at once), after
``--warmup-requests`` requests that are not measured. Every request is one user message of two content parts,
``{"type": "video_url", "video_url": {"url": "data:video/x-msvideo;base64,..."}}`` then ``{"type": "text"}``
(a short instruction and a few seeded words), streamed, greedy, ``ignore_eos`` with ``--output-len`` tokens, and
``stream_options.include_usage`` so that the server's own prompt and completion token counts come back.

The video: ``--frames`` frames of ``--resolution`` HxW, uniform random pixels (as bench_serving's ``--image-content
random``), each frame a JPEG (quality ``--quality``, Pillow) in an AVI container (Motion JPEG, ``--fps`` frames a
second, one key frame per frame, an idx1 index) written here in plain Python, so the client needs only numpy and
Pillow. Content comes from (``--seed``, frames, resolution, warm-up or timed, request index): the two engines get
the same videos for the same seed, and no two passes (seeds) or requests share one, so neither the radix cache nor
the multimodal cache can hit across them.

What the server does with it (sglang 0.5.23): the chat endpoint passes ``video_url.url`` on as a string;
``load_video`` base64-decodes a data URL and hands the bytes to ``VideoDecoderWrapper``, which decodes with
torchcodec when ``torchcodec.decoders`` imports, else with decord (nothing else: no PyAV or OpenCV path, and no
list of frames through the chat endpoint). The Gemma-4 processor then keeps every frame when the video has at
most the video processor's ``num_frames`` (32 in the published processor config), else samples that many evenly;
each frame becomes at most ``max_soft_tokens`` (70) video tokens, 64 at 480x480. Both decoders are FFmpeg
underneath, which demuxes AVI and decodes Motion JPEG natively. The GPU kit (shared/gpu-serving) carries neither torchcodec nor decord: a video
run needs one of them in the engines' python (the decord 0.6.0 wheel is py3-none and bundles its FFmpeg libraries).
Verified on CPU with sglang 0.5.23's ``load_video`` and the Gemma-4 processor's frame sampling, on both decoders
(torchcodec 0.17 over Debian 12's FFmpeg 5.1, and decord 0.6.0 with torchcodec hidden as in the GPU kit): every
frame comes back at its size, 8 frames stay 8, 40 become 32; with the E2B processor (make_model_dir.py) a 480x480
request is 561 prompt tokens at 8 frames (512 video tokens) and 2169 at 32 (2048). decord misreads frames 8, 16
or 24 pixels wide, hence a 32-pixel minimum side. Not verified here: a real server and model on the GPU machine.

Metrics as bench_serving computes them: TTFT = time to the first streamed chunk with content; latency = time to
the last chunk; TPOT = (latency - TTFT) / (completion tokens - 1); throughputs over the timed section's duration;
medians and percentiles with numpy. Input tokens are the server's ``usage.prompt_tokens`` (text and video tokens;
bench_serving counts its own data set's lengths instead). Failed requests are counted (``failed``) with their
first errors, and leave ``completed`` short as in bench_serving; a pass whose timed requests all failed still
writes its result, which serve_ab then refuses (completed 0); a warm-up none of whose requests completed stops
the pass without a result (exit status 1), as bench_serving's "Warmup failed" does. ``accept_length`` is read
from ``/server_info`` after the pass, as bench_serving does. Flags this client does not know are ignored and
listed (``ignored_args``), because serve_ab's ``--bench-args`` go to every workload's client.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import io
import json
import random
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

MIME = "video/x-msvideo"
INSTRUCTION = "Describe what happens in this video in one sentence."
_WORDS = ("red green blue light dark fast slow left right up down near far small large round square bright quiet "
          "moving still river road tree house sky cloud water stone").split()
MIN_SIDE = 32
WARMUP_PAUSE_S = 1.0  # bench_serving's pause between its warm-up requests and the timed ones
AVIF_HASINDEX = 0x10
AVIIF_KEYFRAME = 0x10


class VideoClientError(ValueError):
    """A bad argument or an unusable server; the message says which."""


# --------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------
def parse_resolution(text: str) -> Tuple[int, int]:
    """``HxW`` (bench_serving's ``--image-resolution`` order: height first) -> (height, width)."""
    parts = str(text).strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise VideoClientError(f"--resolution must be HEIGHTxWIDTH in pixels (e.g. 480x480), got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h < MIN_SIDE or w < MIN_SIDE:
        raise VideoClientError(f"--resolution must be at least {MIN_SIDE}x{MIN_SIDE} (decord 0.6.0, sglang's fallback "
                               f"decoder, misreads frames 8, 16 or 24 pixels wide), got {text!r}")
    if h > 4096 or w > 4096:
        raise VideoClientError(f"--resolution above 4096 on a side is not supported, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="video_client.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--model", default=None, help="model id to send (default: the first one /v1/models lists)")
    ap.add_argument("--frames", type=int, default=8, help="frames per video")
    ap.add_argument("--resolution", default="480x480", help="HEIGHTxWIDTH of every frame")
    ap.add_argument("--fps", type=int, default=1, help="frame rate written in the container")
    ap.add_argument("--quality", type=int, default=85, help="JPEG quality of every frame (1-95)")
    ap.add_argument("--num-prompts", type=int, default=64, help="timed requests")
    ap.add_argument("--max-concurrency", type=int, default=16, help="requests in flight at most (0: all at once)")
    ap.add_argument("--output-len", type=int, default=10, help="completion tokens per request (ignore_eos)")
    ap.add_argument("--warmup-requests", type=int, default=2, help="requests sent first, not measured")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--output-file", default=None, help="append the result as one JSON line")
    ap.add_argument("--ready-check-timeout-sec", type=float, default=60.0,
                    help="wait this long for /v1/models to answer")
    ap.add_argument("--request-timeout", type=float, default=600.0, help="seconds of socket silence per request")
    return ap


@dataclass
class Options:
    host: str
    port: int
    model: Optional[str]
    frames: int
    height: int
    width: int
    fps: int
    quality: int
    num_prompts: int
    max_concurrency: int
    output_len: int
    warmup_requests: int
    seed: int
    output_file: Optional[str]
    ready_timeout_s: float
    request_timeout_s: float
    ignored_args: List[str] = field(default_factory=list)


def parse_args(argv: Sequence[str]) -> Options:
    """Parse and check; VideoClientError names the bad argument. Unknown flags are kept in ``ignored_args``."""
    ns, unknown = build_parser().parse_known_args(list(argv))
    h, w = parse_resolution(ns.resolution)
    checks = [("--frames", ns.frames, 1), ("--num-prompts", ns.num_prompts, 1), ("--output-len", ns.output_len, 1),
              ("--fps", ns.fps, 1), ("--max-concurrency", ns.max_concurrency, 0),
              ("--warmup-requests", ns.warmup_requests, 0)]
    for flag, value, least in checks:
        if value < least:
            raise VideoClientError(f"{flag} must be at least {least}, got {value}")
    if ns.frames > 1024:
        raise VideoClientError(f"--frames above 1024 is not supported, got {ns.frames}")
    if not 1 <= ns.quality <= 95:
        raise VideoClientError(f"--quality must be 1-95 (Pillow's JPEG range), got {ns.quality}")
    if not 0 < ns.port < 65536:
        raise VideoClientError(f"--port {ns.port} is not a TCP port")
    if ns.ready_check_timeout_sec < 0 or ns.request_timeout <= 0:
        raise VideoClientError("--ready-check-timeout-sec must be >= 0 and --request-timeout > 0")
    return Options(host=ns.host, port=ns.port, model=ns.model, frames=ns.frames, height=h, width=w, fps=ns.fps,
                   quality=ns.quality, num_prompts=ns.num_prompts, max_concurrency=ns.max_concurrency,
                   output_len=ns.output_len, warmup_requests=ns.warmup_requests, seed=ns.seed,
                   output_file=ns.output_file, ready_timeout_s=ns.ready_check_timeout_sec,
                   request_timeout_s=ns.request_timeout, ignored_args=list(unknown))


# --------------------------------------------------------------------------
# the video: random frames, JPEG each, Motion JPEG in AVI
# --------------------------------------------------------------------------
def content_key(seed: int, frames: int, height: int, width: int, warmup: bool, index: int) -> str:
    """What a request's video and text are generated from."""
    return f"video:{seed}:{frames}:{height}x{width}:{'warmup' if warmup else 'timed'}:{index}"


def _rng_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def random_frames(key: str, frames: int, height: int, width: int):
    """``frames`` uniform random RGB frames (uint8, H x W x 3) generated from ``key``."""
    import numpy as np

    rng = np.random.default_rng(_rng_seed(key))
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)]


def jpeg(frame, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, payload: bytes) -> bytes:
    return _chunk(b"LIST", kind + payload)


def avi_mjpeg(jpegs: Sequence[bytes], width: int, height: int, fps: int) -> bytes:
    """An AVI file (RIFF) of one Motion JPEG video stream: ``jpegs`` as its frames, every frame a key frame,
    ``fps`` frames a second, with an idx1 index (offsets from the 'movi' list's type field, as FFmpeg reads)."""
    if not jpegs:
        raise VideoClientError("a video needs at least one frame")
    n, biggest = len(jpegs), max(len(j) for j in jpegs)
    avih = struct.pack("<14I", round(1_000_000 / fps), biggest * fps, 0, AVIF_HASINDEX, n, 0, 1, biggest,
                       width, height, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIiI4h", b"vids", b"MJPG", 0, 0, 0, 0, 1, fps, 0, n, biggest, -1, 0,
                       0, 0, width, height)
    strf = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0)
    hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
    chunks, index, offset = [], [], 4
    for j in jpegs:
        c = _chunk(b"00dc", j)
        index.append(struct.pack("<4sIII", b"00dc", AVIIF_KEYFRAME, offset, len(j)))
        chunks.append(c)
        offset += len(c)
    movi = _list(b"movi", b"".join(chunks))
    return _chunk(b"RIFF", b"AVI " + hdrl + movi + _chunk(b"idx1", b"".join(index)))


def make_video(key: str, frames: int, height: int, width: int, fps: int = 1, quality: int = 85) -> bytes:
    return avi_mjpeg([jpeg(f, quality) for f in random_frames(key, frames, height, width)], width, height, fps)


def data_url(video: bytes) -> str:
    return f"data:{MIME};base64,{base64.b64encode(video).decode('ascii')}"


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------
def prompt_text(key: str) -> str:
    rng = random.Random(key)
    return f"{INSTRUCTION} Context: {' '.join(rng.choice(_WORDS) for _ in range(8))}."


def request_body(model: str, video: bytes, text: str, output_len: int) -> Dict[str, Any]:
    """The chat-completions body of one request: one user message, the video part then the text part."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": data_url(video)}},
            {"type": "text", "text": text},
        ]}],
        "max_completion_tokens": output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass
class Request:
    index: int
    warmup: bool
    key: str
    body: bytes
    video_bytes: int


def build_requests(opts: Options, model: str, warmup: bool) -> List[Request]:
    """The warm-up or timed requests of one pass, generated from the pass's seed."""
    count = opts.warmup_requests if warmup else opts.num_prompts
    out = []
    for i in range(count):
        key = content_key(opts.seed, opts.frames, opts.height, opts.width, warmup, i)
        video = make_video(key, opts.frames, opts.height, opts.width, opts.fps, opts.quality)
        body = request_body(model, video, prompt_text(key), opts.output_len)
        out.append(Request(i, warmup, key, json.dumps(body).encode(), len(video)))
    return out


@dataclass
class Output:
    success: bool = False
    error: Optional[str] = None
    start: float = 0.0
    ttft: Optional[float] = None
    latency: Optional[float] = None
    output_len: int = 0
    prompt_len: Optional[int] = None
    itl: List[float] = field(default_factory=list)


def _content(delta: Dict[str, Any]) -> str:
    return "".join(str(delta.get(k) or "") for k in ("reasoning_content", "content"))


def send(host: str, port: int, body: bytes, output_len: int, timeout_s: float) -> Output:
    """POST one streamed chat completion and time it as bench_serving does."""
    out = Output()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    out.start = st = time.perf_counter()
    last = st
    completion = output_len
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            out.error = f"HTTP {resp.status} {resp.reason}: {resp.read(2000).decode('utf-8', 'replace')}"
            return out
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            now = time.perf_counter()
            out.latency = now - st
            if payload == b"[DONE]":
                continue
            data = json.loads(payload)
            usage = data.get("usage") or {}
            completion = usage.get("completion_tokens", completion)
            if usage.get("prompt_tokens") is not None:
                out.prompt_len = int(usage["prompt_tokens"])
            choices = data.get("choices") or []
            if choices and _content(choices[0].get("delta") or {}):
                if out.ttft is None:
                    out.ttft = now - st
                else:
                    out.itl.append(now - last)
                last = now
        if out.ttft is None:
            out.error = "the stream ended without content"
            return out
        out.output_len, out.success = int(completion), True
    except (OSError, http.client.HTTPException, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return out


def run_requests(opts: Options, requests: Sequence[Request]) -> Tuple[List[Output], float]:
    """Send ``requests`` with at most ``max_concurrency`` in flight; (outputs in request order, duration s)."""
    if not requests:
        return [], 0.0
    workers = min(len(requests), opts.max_concurrency or len(requests))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(send, opts.host, opts.port, r.body, opts.output_len, opts.request_timeout_s)
                   for r in requests]
        outputs = [f.result() for f in futures]
    return outputs, time.perf_counter() - t0


# --------------------------------------------------------------------------
# metrics (bench_serving's keys)
# --------------------------------------------------------------------------
def _dist(name: str, values: Sequence[float]) -> Dict[str, float]:
    import numpy as np

    ms = [v * 1000.0 for v in values] or [0.0]
    return {f"mean_{name}_ms": float(np.mean(ms)), f"median_{name}_ms": float(np.median(ms)),
            f"std_{name}_ms": float(np.std(ms)), f"p90_{name}_ms": float(np.percentile(ms, 90)),
            f"p95_{name}_ms": float(np.percentile(ms, 95)), f"p99_{name}_ms": float(np.percentile(ms, 99))}


def compute_metrics(outputs: Sequence[Output], duration_s: float) -> Dict[str, Any]:
    """bench_serving's result keys over one pass's timed requests (plus ``failed``)."""
    ok = [o for o in outputs if o.success]
    out_tokens = sum(o.output_len for o in ok)
    in_tokens = sum(o.prompt_len or 0 for o in ok)
    tpots = [(o.latency - o.ttft) / (o.output_len - 1) for o in ok if o.output_len > 1]
    dur = max(duration_s, 1e-9)
    res: Dict[str, Any] = {
        "duration": duration_s, "completed": len(ok), "failed": len(outputs) - len(ok),
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / dur, "input_throughput": in_tokens / dur,
        "output_throughput": out_tokens / dur, "total_throughput": (in_tokens + out_tokens) / dur,
        "concurrency": sum(o.latency for o in ok) / dur,
    }
    res.update(_dist("e2e_latency", [o.latency for o in ok]))
    res.update(_dist("ttft", [o.ttft for o in ok]))
    res.update(_dist("tpot", tpots))
    res.update(_dist("itl", [x for o in ok for x in o.itl]))
    return res


# --------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------
def _get_json(host: str, port: int, path: str, timeout_s: float = 10.0) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"GET {path}: HTTP {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


def wait_for_model(opts: Options) -> str:
    """The model id to send: --model, else the first one /v1/models lists once the server answers."""
    deadline = time.monotonic() + opts.ready_timeout_s
    while True:
        try:
            models = _get_json(opts.host, opts.port, "/v1/models")
            return opts.model or models["data"][0]["id"]
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError) as e:
            if time.monotonic() >= deadline:
                raise VideoClientError(f"server {opts.host}:{opts.port} not ready after "
                                       f"{opts.ready_timeout_s:.0f}s: {e}") from e
            time.sleep(0.5)


def accept_length(opts: Options) -> Optional[float]:
    """The server's average speculative accept length (``/server_info``), as bench_serving reads it."""
    try:
        info = _get_json(opts.host, opts.port, "/server_info")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    if isinstance(info, dict) and "decode" in info:
        info = info["decode"][0]
    states = (info or {}).get("internal_states") or [{}]
    return states[0].get("avg_spec_accept_length")


# --------------------------------------------------------------------------
# one pass
# --------------------------------------------------------------------------
def run(opts: Options, log=print) -> Dict[str, Any]:
    model = wait_for_model(opts)
    t_gen = time.perf_counter()
    warm = build_requests(opts, model, warmup=True)
    timed = build_requests(opts, model, warmup=False)
    gen_s = time.perf_counter() - t_gen
    sizes = [r.video_bytes for r in timed]
    log(f"generated {len(warm)} warm-up and {len(timed)} timed videos of {opts.frames} frames "
        f"{opts.height}x{opts.width} in {gen_s:.1f}s (mean {sum(sizes) / len(sizes) / 1024:.0f} KiB each)")
    if warm:  # as bench_serving: at the pass's concurrency, refused when none completes, then a pause
        warm_out, _ = run_requests(opts, warm)
        bad = [o.error for o in warm_out if not o.success]
        log(f"warm-up: {len(warm_out) - len(bad)} of {len(warm_out)} requests completed"
            + (f"; first error: {bad[0]}" if bad else ""))
        if len(bad) == len(warm_out):
            raise VideoClientError(f"warm-up failed: none of its {len(warm_out)} requests completed; "
                                   f"first error: {bad[0]}")
        time.sleep(WARMUP_PAUSE_S)
    outputs, duration = run_requests(opts, timed)
    result: Dict[str, Any] = {
        "backend": "serve_ab video client (OpenAI chat completions)", "dataset_name": "video",
        "model": model, "request_rate": "inf", "max_concurrency": opts.max_concurrency or None,
        "frames_per_video": opts.frames, "resolution": f"{opts.height}x{opts.width}", "fps": opts.fps,
        "jpeg_quality": opts.quality, "container": "avi/mjpeg", "output_len": opts.output_len,
        "seed": opts.seed, "num_prompts": opts.num_prompts, "warmup_requests": opts.warmup_requests,
        "mean_video_bytes": sum(sizes) / len(sizes), "generation_s": gen_s,
    }
    result.update(compute_metrics(outputs, duration))
    result["accept_length"] = accept_length(opts)
    errors = [o.error for o in outputs if not o.success]
    result["errors"] = errors[:5]
    result["ignored_args"] = list(opts.ignored_args)
    return result


def summary_lines(res: Dict[str, Any]) -> List[str]:
    keys = [("Successful requests", "completed", "{}"), ("Failed requests", "failed", "{}"),
            ("Benchmark duration (s)", "duration", "{:.2f}"), ("Total input tokens", "total_input_tokens", "{}"),
            ("Total generated tokens", "total_output_tokens", "{}"),
            ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
            ("Output token throughput (tok/s)", "output_throughput", "{:.2f}"),
            ("Median TTFT (ms)", "median_ttft_ms", "{:.2f}"), ("Median TPOT (ms)", "median_tpot_ms", "{:.2f}"),
            ("Median E2E Latency (ms)", "median_e2e_latency_ms", "{:.2f}")]
    return [f"{label + ':':<40} {fmt.format(res[k])}" for label, k, fmt in keys]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parse_args(argv)
    except VideoClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("video client args: " + json.dumps({k: v for k, v in vars(opts).items()}), flush=True)
    if opts.ignored_args:
        print(f"ignored (not video client flags): {' '.join(opts.ignored_args)}", flush=True)
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(msg, flush=True)

    try:
        res = run(opts, log)
    except VideoClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for ln in summary_lines(res):
        log(ln)
    for err in res["errors"]:
        log(f"request error: {err}")
    if opts.output_file:
        with open(opts.output_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(res) + "\n")
    return 0
