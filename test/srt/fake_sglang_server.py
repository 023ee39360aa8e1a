"""A fake sglang HTTP server for the benchmark tests: the answers of sglang's API without a model.

One implementation, two ways to run it:

* in the test process: ``start(**options)`` (or the ``fake_sglang_server`` and ``make_fake_sglang_server``
  fixtures of test/conftest.py) serves on a free loopback port from a thread; ``.requests`` holds the body of
  every /generate and chat request, ``.log_lines`` the log lines, ``.peak_in_flight`` the most requests it
  served at once; ``.bad_generate`` makes /generate drop its logprobs;
* as a program, started by the tool under test: ``python fake_sglang_server.py --port P [options]
  [server args]`` (serve_ab's ``--server-cmd``), or as ``python -m sglang.launch_server ...`` through the
  package ``write_launch_server_package`` writes (serve_parity starts that command). The options it does not
  know are the server's arguments: recorded, printed, otherwise ignored.

Endpoints: GET /health, /health_generate (503 until ready), /v1/models, /model_info, /get_model_info,
/server_info, /get_server_info; POST /flush_cache, /reset_prefix_cache, /generate (greedy answer with logprobs
and top-2 logprobs, a deterministic function of the prompt text, delayed by a prompt-dependent amount so that
concurrent requests finish out of order; a prompt holding ``<fail>`` gets HTTP 400) and streaming
/v1/chat/completions (``--token-delay-ms`` before each token, ``--first-token-ms`` instead before the first; 2 ms
more per image, 0.5 ms per video frame; the usage chunk counts 1 prompt token, or 10 + 64 per frame of its
videos).

Videos: every video_url part of a chat request must be a base64 data URL of a RIFF/AVI file whose frames are
whole JPEGs, as many as its header says (``avi_info``, written apart from serve_ab's video writer; the video
tests read the client's files with it). A part that is not gets HTTP 400 ``Could not decode video: ...``, as
sglang answers; so does every video request with ``--no-video-decoder`` (sglang 0.5.23 without torchcodec or
decord) and every ``--fail-every``-th chat request.

Log lines (stdout, as sglang's scheduler writes them, for serve_ab to read): with ``--engine`` the pool sizes and
scheduler line, and for the patched engine the series and KV-split lines (``--no-log-facts``: none); one
``stand-in request N hash H`` line per chat request (H a hash of its messages) with a decode-batch line; a
serving-time compile line for the requests ``--compile-on-request`` names; one ``stand-in video frames=F
size=WxH codec=C bytes=B`` line per video it accepted; ``Cache flushed successfully!``.
With ``$FAKE_SGLANG_REQUEST_LOG`` set, each of those requests appends {argv, text} to that file.
"""

import argparse
import base64
import hashlib
import http.server
import json
import os
import struct
import sys
import threading
import time

SCRIPT = os.path.abspath(__file__)
REQUEST_LOG_ENV = "FAKE_SGLANG_REQUEST_LOG"

POOLS = {"upstream": (3337548, 2670038), "patched": (7787613, 6230090)}
ACCEPT_BASE = {"upstream": 2.5, "patched": 3.0}
SERIES_LINE = ("Gemma-4 series 0.5.23+gemma4.10 on sglang==0.5.23: 0001-gemma4-series-manifest, "
               "0022-gemma4-swa-ratio-policy")
KV_SPLIT_LINE = "Gemma-4 KV split: swa_full_tokens_ratio=0.3 (geometry of the model)"
VERSION = "0.5.23-standin"
MODES = ("ok", "exit-early", "never-ready", "die-on-request")


_LOG_LOCK = threading.Lock()


def log(msg):
    """One server log line, with sglang's time and rank prefix."""
    with _LOG_LOCK:
        print(f"[2026-12-01 10:00:00 TP0] {msg}", flush=True)


def log_facts(engine, spec):
    """The start-up lines serve_ab reads from an engine's log: pool sizes, scheduler limits; series, KV split."""
    full, swa = POOLS[engine]
    log(f"Use sliding window memory pool. full_layer_tokens={full}, swa_layer_tokens={swa}")
    log(f"max_total_num_tokens={full}, chunked_prefill_size=8192, max_prefill_tokens=16384, "
        f"max_running_requests={48 if spec else 4096}, context_len=131072, available_gpu_mem=12.34 GB")
    if engine == "patched":
        log(SERIES_LINE)
        log(KV_SPLIT_LINE)


def avi_info(data):
    """Walk a RIFF/AVI file: the main header's frame count and size, the stream's codec and rate, the frames of
    the 'movi' list (each must be a whole JPEG) and the idx1 entries. ValueError when it is no such file."""
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ValueError("not a RIFF AVI file")
    if struct.unpack("<I", data[4:8])[0] != len(data) - 8:
        raise ValueError("RIFF size does not match the file")
    info = {"frames": None, "width": None, "height": None, "handler": None, "codec": None, "rate": None,
            "jpegs": [], "index": [], "movi_at": None}

    def walk(start, end):
        pos = start
        while pos + 8 <= end:
            fourcc, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            body = data[pos + 8:pos + 8 + size]
            if len(body) != size:
                raise ValueError(f"chunk {fourcc!r} at {pos} runs past the end")
            if fourcc == b"LIST":
                if body[:4] == b"movi":
                    info["movi_at"] = pos + 8
                walk(pos + 12, pos + 8 + size)
            elif fourcc == b"avih":
                vals = struct.unpack("<14I", body)
                info["frames"], info["width"], info["height"] = vals[4], vals[8], vals[9]
            elif fourcc == b"strh":
                info["handler"], info["rate"] = body[4:8], struct.unpack("<II", body[20:28])
            elif fourcc == b"strf":
                info["codec"] = body[16:20]
            elif fourcc == b"00dc":
                if body[:2] != b"\xff\xd8" or body[-2:] != b"\xff\xd9":
                    raise ValueError(f"frame at {pos} is not a whole JPEG")
                info["jpegs"].append((pos, body))
            elif fourcc == b"idx1":
                info["index"] = [struct.unpack("<4sIII", body[i:i + 16]) for i in range(0, size, 16)]
            pos += 8 + size + (size & 1)

    walk(12, len(data))
    return info


def video_parts(content):
    """The decoded videos of a message's content parts (data URLs of type video_url)."""
    if not isinstance(content, list):
        return []
    out = []
    for part in content:
        if part.get("type") == "video_url":
            url = part["video_url"]["url"]
            if not url.startswith("data:video/") or ";base64," not in url:
                raise ValueError(f"not a base64 video data URL: {url[:40]!r}")
            out.append(base64.b64decode(url.split(",", 1)[1], validate=True))
    return out


def answer(req, bad=False):
    """The /generate answer to ``req``: output ids and logprobs a function of the prompt text."""
    text = req["text"]
    m = req["sampling_params"]["max_new_tokens"]
    h = hashlib.sha256(text.encode()).digest()
    ids = [200 + (h[i % 32] * 7 + i * 13) % 800 for i in range(m)]
    lps = [-0.5 - (h[(i + 5) % 32] % 50) / 10.0 for i in range(m)]
    top = [[[lp, t, None], [lp - 0.25, t + 1, None]] for lp, t in zip(lps, ids)]
    images = len(req.get("image_data") or [])
    prompt_tokens = 1 + len(text.split()) + 256 * images
    meta = {"id": h.hex()[:8], "finish_reason": {"type": "length", "length": m},
            "prompt_tokens": prompt_tokens, "completion_tokens": m, "cached_tokens": 0,
            "output_token_logprobs": [[lp, t, None] for lp, t in zip(lps, ids)],
            "output_top_logprobs": top, "e2e_latency": 0.01}
    if bad:
        meta.pop("output_token_logprobs")
    return {"text": " ".join("w%d" % t for t in ids), "output_ids": ids, "meta_info": meta}


class FakeSglangServer(http.server.ThreadingHTTPServer):
    """The server and its state; the options are those of the command line (see ``main``)."""

    daemon_threads = True

    def __init__(self, host="127.0.0.1", port=0, *, model=None, engine=None, token_delay_ms=1.0,
                 first_token_ms=None, mode="ok", die_after=2, compile_at=None, no_video_decoder=False, fail_every=0,
                 accept_length=None, echo=False, argv=(), server_args=()):
        if host != "127.0.0.1":
            raise SystemExit("stand-in listens on loopback only")
        super().__init__((host, port), _Handler)
        self.model, self.engine, self.mode = model, engine, mode
        self.token_delay_ms, self.first_token_ms, self.die_after = token_delay_ms, first_token_ms, die_after
        self.compile_at = dict(compile_at or {})
        self.no_video_decoder, self.fail_every, self.accept_length = no_video_decoder, fail_every, accept_length
        self.echo = echo  # print the log lines (the program); they are kept in .log_lines either way
        self.log_lines = []
        self.in_flight = self.peak_in_flight = 0
        self.argv = list(argv)
        self.spec = "--speculative-algorithm" in server_args
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.requests = []  # every POST body, in arrival order
        self.bad_generate = False
        self.chat_requests = 0
        self.since_flush = 0

    def log(self, msg):
        with self.lock:
            self.log_lines.append(msg)
        if self.echo:
            log(msg)

    @property
    def port(self):
        return self.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):  # quiet
        pass

    def _json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv = self.server
        up = srv.ready.is_set()
        if self.path in ("/health", "/health_generate"):
            return self._json(200 if up else 503, {"ok": up})
        if not up:
            return self._json(503, {"error": "starting"})
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": srv.model, "object": "model"}]})
        if self.path in ("/model_info", "/get_model_info"):
            return self._json(200, {"model_path": srv.model, "tokenizer_path": srv.model})
        if self.path in ("/server_info", "/get_server_info"):
            internal = {}
            with srv.lock:
                if srv.accept_length is not None:
                    internal["avg_spec_accept_length"] = srv.accept_length
                elif srv.spec and srv.since_flush:
                    # Grows with the requests since the last flush: a pass that was not preceded by a flush
                    # reports a different value than one that was.
                    internal["avg_spec_accept_length"] = ACCEPT_BASE[srv.engine] + 0.001 * srv.since_flush
            return self._json(200, {"version": VERSION, "attention_backend": "triton", "disable_radix_cache": True,
                                    "argv": srv.argv, "internal_states": [internal], "engine": srv.engine})
        return self._json(404, {"error": self.path})

    def do_POST(self):
        srv = self.server
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        path = self.path.split("?")[0]
        if path in ("/flush_cache", "/reset_prefix_cache"):
            with srv.lock:
                srv.since_flush = 0
            srv.log("Cache flushed successfully!")
            return self._json(200, {})
        if path not in ("/generate", "/v1/chat/completions"):
            return self._json(404, {"error": self.path})
        body = json.loads(raw or b"{}")
        with srv.lock:
            srv.requests.append(body)
            if os.environ.get(REQUEST_LOG_ENV):
                with open(os.environ[REQUEST_LOG_ENV], "a") as f:
                    f.write(json.dumps({"argv": srv.argv, "text": body.get("text")}) + "\n")
            srv.in_flight += 1
            srv.peak_in_flight = max(srv.peak_in_flight, srv.in_flight)
        try:
            return self._generate(body) if path == "/generate" else self._chat(body)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _generate(self, req):
        if "<fail>" in req["text"]:
            return self._json(400, {"error": "bad prompt"})
        time.sleep((hashlib.sha256(req["text"].encode()).digest()[0] % 5) * 0.01)
        self._json(200, answer(req, bad=self.server.bad_generate))

    def _chat(self, body):
        srv = self.server
        with srv.lock:
            srv.chat_requests += 1
            srv.since_flush += 1
            k = srv.chat_requests
        digest = hashlib.sha1(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:16]
        srv.log(f"stand-in request {k} hash {digest}")
        # as sglang's scheduler logs it: here, the requests since the last flush
        srv.log(f"Decode batch, #running-req: {srv.since_flush}, #token: 0, token usage: 0.00, ")
        if srv.mode == "die-on-request" and k > srv.die_after:
            os._exit(7)
        if k in srv.compile_at:
            time.sleep(srv.compile_at[k])
            srv.log(f"Triton kernel 'stand_in_kernel_r{k}' took 1.25 s to compile after serving started. "
                "Serving-time compilation can stall the engine; pre-compile it during engine init.")
        out_len = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        content = body["messages"][0]["content"]
        n_images = sum(1 for c in content if c.get("type") == "image_url") if isinstance(content, list) else 0
        prompt_tokens, frames = 1, 0
        try:
            if srv.fail_every and k % srv.fail_every == 0:
                raise ValueError(f"refused (--fail-every {srv.fail_every})")
            if srv.no_video_decoder and video_parts(content):
                raise ValueError("No module named 'decord'")
            for video in video_parts(content):
                info = avi_info(video)
                if info["frames"] != len(info["jpegs"]):
                    raise ValueError(f"header says {info['frames']} frames, the file holds {len(info['jpegs'])}")
                frames += info["frames"]
                srv.log(f"stand-in video frames={info['frames']} size={info['width']}x{info['height']} "
                        f"codec={info['codec'].decode()} bytes={len(video)}")
        except (ValueError, KeyError, struct.error) as e:  # as sglang answers a video it cannot decode
            return self._json(400, {"object": "error", "message": f"Could not decode video: {e}"})
        if frames:
            prompt_tokens = 10 + 64 * frames
        time.sleep(0.002 * n_images + 0.0005 * frames)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(out_len):
            first = i == 0 and srv.first_token_ms is not None
            time.sleep((srv.first_token_ms if first else srv.token_delay_ms) / 1000.0)
            chunk = {"id": "x", "object": "chat.completion.chunk", "model": srv.model,
                     "choices": [{"index": 0, "delta": {"content": "the " if i else "world "}}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()
        final = {"id": "x", "object": "chat.completion.chunk", "model": srv.model, "choices": [],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_len,
                           "total_tokens": out_len + prompt_tokens}}
        self.wfile.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        self.wfile.flush()


def start(**options):
    """A ready server on a free loopback port, serving from a daemon thread; ``stop()`` ends it."""
    srv = FakeSglangServer(**options)
    srv.ready.set()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main(argv=None, **defaults):
    """The program: ``defaults`` change the options' defaults (for a launcher that cannot pass options)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default=None, help="served model (default: the value of --model-path)")
    ap.add_argument("--engine", default=None, choices=sorted(POOLS),
                    help="upstream | patched: the log lines and accept lengths of that engine (default: no lines)")
    ap.add_argument("--token-delay-ms", type=float, default=1.0, help="wait before each streamed token")
    ap.add_argument("--first-token-ms", type=float, default=None, help="wait before the first token instead")
    ap.add_argument("--startup-s", type=float, default=0.3, help="/health answers 503 for this long")
    ap.add_argument("--listen-delay-s", type=float, default=0.0, help="no listening socket for this long")
    ap.add_argument("--mode", default="ok", choices=MODES)
    ap.add_argument("--die-after", type=int, default=2, help="die-on-request: exit on request die_after + 1")
    ap.add_argument("--compile-on-request", default="",
                    help="comma list of N:S: request N logs a compile line after stalling S seconds")
    ap.add_argument("--no-log-facts", action="store_true", help="no pool/scheduler/series lines")
    ap.add_argument("--no-video-decoder", action="store_true",
                    help="answer every video request 400, as sglang 0.5.23 does without torchcodec or decord")
    ap.add_argument("--fail-every", type=int, default=0, help="answer every N-th chat request 400")
    ap.add_argument("--accept-length", type=float, default=None,
                    help="the avg_spec_accept_length /server_info reports (default: the engine's, under speculation)")
    ap.add_argument("--record", default=None, help="directory for one JSON line per start (argv, env)")
    ap.set_defaults(**defaults)
    ns, server_args = ap.parse_known_args(argv)
    if ns.host != "127.0.0.1":
        raise SystemExit("stand-in listens on loopback only")
    if ns.model is None and "--model-path" in server_args:
        ns.model = server_args[server_args.index("--model-path") + 1]
    if ns.record:
        with open(os.path.join(ns.record, "starts.jsonl"), "a") as f:
            f.write(json.dumps({"engine": ns.engine, "server_args": server_args, "pid": os.getpid(),
                                "vlm_cache_mb": os.environ.get("SGLANG_VLM_CACHE_SIZE_MB")}) + "\n")
    if ns.mode == "exit-early":
        print("stand-in: simulated crash during start-up", flush=True)
        sys.exit(3)
    compile_at = {int(x.split(":")[0]): float(x.split(":")[1]) for x in ns.compile_on_request.split(",") if x}
    if ns.engine and not ns.no_log_facts:
        log_facts(ns.engine, "--speculative-algorithm" in server_args)
    started = time.monotonic()
    time.sleep(ns.listen_delay_s)
    srv = FakeSglangServer(ns.host, ns.port, model=ns.model, engine=ns.engine, token_delay_ms=ns.token_delay_ms,
                           first_token_ms=ns.first_token_ms, mode=ns.mode, die_after=ns.die_after,
                           compile_at=compile_at, no_video_decoder=ns.no_video_decoder, fail_every=ns.fail_every,
                           accept_length=ns.accept_length, echo=True, argv=argv, server_args=server_args)
    print(f"stand-in {ns.engine} on {ns.host}:{ns.port} serving {ns.model}; args {server_args}", flush=True)

    def _ready_later():
        if ns.mode == "never-ready":
            return
        time.sleep(max(0.0, ns.startup_s - (time.monotonic() - started)))
        srv.ready.set()

    threading.Thread(target=_ready_later, daemon=True).start()
    srv.serve_forever()


def write_launch_server_package(root, **defaults):
    """A package ``sglang`` under ``root`` whose ``python -m sglang.launch_server`` runs this server (``defaults``
    as for ``main``); returns the entry to put on PYTHONPATH."""
    pkg = os.path.join(root, "sglang")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(pkg, "launch_server.py"), "w") as f:
        f.write(f"import sys\nsys.path.insert(0, {os.path.dirname(SCRIPT)!r})\nimport fake_sglang_server\n\n"
                f"fake_sglang_server.main(**{defaults!r})\n")
    return root


if __name__ == "__main__":
    main()
