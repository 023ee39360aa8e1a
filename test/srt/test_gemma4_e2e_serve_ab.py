"""benchmark/gemma4/serve_ab.py end to end on CPU, against a stand-in server.

The stand-in (this file run as a script, ``--standin``) is a separate process speaking the HTTP API that
``python -m sglang.bench_serving`` uses with ``--backend sglang-oai-chat``: /health, /health_generate,
/v1/models, /model_info, /server_info, /flush_cache and streaming /v1/chat/completions. serve_ab starts it
once per engine and workload through ``--server-cmd``, and drives the real bench_serving of the installed
sglang against it. The "upstream" stand-in streams tokens slower than the "patched" one, so the table must
show the patched engine ahead; that direction is measured, not written in.

Failure paths: a server that exits before it is ready, a port already taken, readiness that times out, a
server that dies during the benchmark; each must give a clear error and leave no process behind.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE_AB = os.path.join(REPO, "benchmark", "gemma4", "serve_ab.py")
MAKE_DIR = os.path.join(REPO, "benchmark", "gemma4", "make_model_dir.py")
THIS = os.path.abspath(__file__)


# ---------------------------------------------------------------------------------------------------------
# stand-in server
# ---------------------------------------------------------------------------------------------------------
def _standin_main(argv):
    import http.server
    import threading

    ap = argparse.ArgumentParser()
    ap.add_argument("--standin", action="store_true")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--token-delay-ms", type=float, default=1.0)
    ap.add_argument("--startup-s", type=float, default=0.5)
    ap.add_argument("--mode", default="ok", choices=["ok", "exit-early", "never-ready", "die-on-request"])
    ap.add_argument("--record", default=None, help="directory for one JSON line per start (argv, env)")
    ns, server_args = ap.parse_known_args(argv)
    if ns.host != "127.0.0.1":
        raise SystemExit("stand-in listens on loopback only")
    if ns.record:
        with open(os.path.join(ns.record, "starts.jsonl"), "a") as f:
            f.write(json.dumps({"engine": ns.engine, "server_args": server_args, "pid": os.getpid(),
                                "vlm_cache_mb": os.environ.get("SGLANG_VLM_CACHE_SIZE_MB")}) + "\n")
    if ns.mode == "exit-early":
        print("stand-in: simulated crash during start-up", flush=True)
        sys.exit(3)
    started = time.monotonic()
    ready = threading.Event()
    state = {"requests": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
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
            up = ready.is_set()
            if self.path in ("/health", "/health_generate"):
                return self._json(200 if up else 503, {"ok": up})
            if not up:
                return self._json(503, {"error": "starting"})
            if self.path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{"id": ns.model, "object": "model"}]})
            if self.path in ("/model_info", "/get_model_info"):
                return self._json(200, {"model_path": ns.model, "tokenizer_path": ns.model})
            if self.path in ("/server_info", "/get_server_info"):
                return self._json(200, {"internal_states": [{}], "engine": ns.engine})
            return self._json(404, {"error": self.path})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            if self.path in ("/flush_cache", "/reset_prefix_cache"):
                return self._json(200, {})
            if self.path != "/v1/chat/completions":
                return self._json(404, {"error": self.path})
            state["requests"] += 1
            if ns.mode == "die-on-request" and state["requests"] > 2:
                os._exit(7)
            out_len = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
            content = body["messages"][0]["content"]
            n_images = sum(1 for c in content if c.get("type") == "image_url") if isinstance(content, list) else 0
            time.sleep(0.002 * n_images)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i in range(out_len):
                time.sleep(ns.token_delay_ms / 1000.0)
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": ns.model,
                         "choices": [{"index": 0, "delta": {"content": "the " if i else "world "}}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            final = {"id": "x", "object": "chat.completion.chunk", "model": ns.model, "choices": [],
                     "usage": {"prompt_tokens": 1, "completion_tokens": out_len, "total_tokens": out_len + 1}}
            self.wfile.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
            self.wfile.flush()

    httpd = http.server.ThreadingHTTPServer((ns.host, ns.port), Handler)
    httpd.daemon_threads = True
    print(f"stand-in {ns.engine} on {ns.host}:{ns.port} serving {ns.model}; args {server_args}", flush=True)

    def _ready_later():
        if ns.mode == "never-ready":
            return
        time.sleep(max(0.0, ns.startup_s - (time.monotonic() - started)))
        ready.set()

    threading.Thread(target=_ready_later, daemon=True).start()
    httpd.serve_forever()


if __name__ == "__main__" and "--standin" in sys.argv:
    _standin_main(sys.argv[1:])
    sys.exit(0)


# ---------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _standin_cmd(extra=""):
    # {engine} selects the speed: the upstream stand-in streams 3x slower per token.
    return (f"{sys.executable} {THIS} --standin --host {{host}} --port {{port}} --model {{model}} "
            f"--engine {{engine}} {extra} {{server_args}}")


def _pids_alive(record_dir):
    path = os.path.join(record_dir, "starts.jsonl")
    if not os.path.exists(path):
        return []
    alive = []
    for ln in open(path):
        pid = json.loads(ln)["pid"]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # A zombie is not running; read its state.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        alive.append(pid)
    return alive


def _run_serve_ab(args, timeout=420):
    return subprocess.run([sys.executable, SERVE_AB, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run([sys.executable, MAKE_DIR, "dir", "tiny", str(d)], check=True, capture_output=True)
    return str(d)


def _base_args(tiny_dir, tmp_path, port, server_cmd):
    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    return [
        "--model", tiny_dir, "--port", str(port),
        "--upstream-python", sys.executable, "--patched-python", sys.executable,
        "--server-cmd", server_cmd + f" --record {rec}",
        "--out", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs"),
        "--ready-timeout", "60",
    ], str(rec)


def test_serve_ab_end_to_end_with_standin(tiny_dir, tmp_path):
    port = _free_port()
    # The stand-in reads --token-delay-ms; make upstream slower by giving its engine its own delay through
    # a tiny wrapper template: two templates are not supported, so the delay is chosen from {engine} in shell.
    cmd = ("sh -c 'd=1; [ \"$0\" = upstream ] && d=6; exec " + sys.executable + " " + THIS +
           " --standin --host {host} --port {port} --model {model} --engine $0 --token-delay-ms $d \"$@\"' "
           "{engine} {server_args}")
    args, rec = _base_args(tiny_dir, tmp_path, port, cmd)
    args += ["--workloads", "chat,images", "--num-prompts", "6",
             "--bench-args", "--random-input-len 40 --random-output-len 24 --warmup-requests 1 --image-count 2"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    md = (tmp_path / "out" / "serve_ab.md").read_text()
    doc = json.loads((tmp_path / "out" / "serve_ab.json").read_text())

    # Every (workload, engine) ran bench_serving to completion against its own server start.
    starts = [json.loads(ln) for ln in open(os.path.join(rec, "starts.jsonl"))]
    assert [s["engine"] for s in starts] == ["upstream", "patched", "upstream", "patched"]
    # Dummy weights for a directory without weights; images run with radix cache and mm-embedding cache off.
    for s in starts:
        assert s["server_args"][:2] == ["--load-format", "dummy"]
    assert "--disable-radix-cache" in starts[2]["server_args"] and starts[2]["vlm_cache_mb"] == "0"
    assert "--disable-radix-cache" not in starts[0]["server_args"] and starts[0]["vlm_cache_mb"] is None
    assert _pids_alive(rec) == []

    for wl in ("chat", "images"):
        for eng in ("upstream", "patched"):
            s = doc["results"][wl][eng]["summary"]
            assert s["completed"] == 6, (wl, eng, s)
            assert s["duration"] > 0 and s["median_ttft_ms"] > 0 and s["median_tpot_ms"] > 0
    # Token delay 6 ms vs 1 ms: the patched stand-in must come out ahead on TPOT and output throughput.
    rows = {(r["workload"], r["metric"]): r for r in doc["rows"]}
    tpot = rows[("chat", "median_tpot_ms")]
    assert tpot["upstream"] > 2 * tpot["patched"] and tpot["improvement"] > 2
    assert abs(tpot["improvement"] - tpot["upstream"] / tpot["patched"]) < 1e-9
    thr = rows[("chat", "output_throughput")]
    assert thr["improvement"] == pytest.approx(thr["patched"] / thr["upstream"])
    # The image workload really sent the images: bench_serving counted vision tokens from the processor.
    img_run = doc["results"]["images"]["patched"]["runs"][0]
    assert img_run["total_input_vision_tokens"] > 0
    # The markdown table names both engines' numbers for every metric.
    assert "| chat | median TPOT (ms) |" in md and "| images | duration (s) |" in md
    assert f"{tpot['improvement']:.2f}x" in md
    assert doc["meta"]["load_format"] == "dummy" and doc["meta"]["commit"]


def test_server_exiting_before_ready_is_reported(tiny_dir, tmp_path):
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--mode exit-early"))
    proc = _run_serve_ab(args + ["--workloads", "chat", "--num-prompts", "2"])
    assert proc.returncode == 2
    assert "[upstream] server exited with status 3 before it became ready" in proc.stderr
    assert "simulated crash during start-up" in proc.stderr  # the log tail is shown
    assert not (tmp_path / "out" / "serve_ab.md").exists()


def test_port_taken_is_reported(tiny_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd())
        proc = _run_serve_ab(args + ["--workloads", "chat", "--num-prompts", "2"])
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert not os.path.exists(os.path.join(rec, "starts.jsonl"))  # nothing was started


def test_readiness_timeout_is_reported_and_server_stopped(tiny_dir, tmp_path):
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--mode never-ready"))
    args[args.index("--ready-timeout") + 1] = "4"
    t0 = time.monotonic()
    proc = _run_serve_ab(args + ["--workloads", "chat", "--num-prompts", "2"])
    assert proc.returncode == 2
    assert "[upstream] server not ready after 4s" in proc.stderr and "503" in proc.stderr
    assert time.monotonic() - t0 < 60
    assert _pids_alive(rec) == []


def test_server_dying_during_benchmark_is_reported(tiny_dir, tmp_path):
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--mode die-on-request"))
    proc = _run_serve_ab(args + ["--workloads", "chat", "--num-prompts", "4", "--engines", "patched",
                                 "--bench-args", "--random-input-len 20 --random-output-len 4"])
    assert proc.returncode == 2
    assert "[patched] server exited with status 7 while bench_serving ran workload 'chat'" in proc.stderr
    assert _pids_alive(rec) == []


def test_bad_arguments_are_reported(tiny_dir, tmp_path):
    port = _free_port()
    args, _ = _base_args(tiny_dir, tmp_path, port, _standin_cmd())
    proc = _run_serve_ab(args + ["--workloads", "chat,vision"])
    assert proc.returncode == 2 and "unknown workload(s) vision" in proc.stderr
    proc = _run_serve_ab(args[:1] + [str(tmp_path)] + args[2:])
    assert proc.returncode == 2 and "has no config.json" in proc.stderr
    bad = list(args)
    bad[bad.index("--upstream-python") + 1] = str(tmp_path / "nope" / "python")
    proc = _run_serve_ab(bad)
    assert proc.returncode == 2 and "make engine-upstream" in proc.stderr
