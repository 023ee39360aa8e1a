"""benchmark/gemma4/serve_ab.py end to end on CPU, against a stand-in server.

The stand-in server (test/srt/fake_sglang_server.py run as a program) is a separate process speaking the HTTP
API that ``python -m sglang.bench_serving`` uses with ``--backend sglang-oai-chat``: /health, /health_generate,
/v1/models, /model_info, /server_info, /flush_cache and streaming /v1/chat/completions (every video part it
receives checked: a RIFF/AVI of whole JPEG frames). serve_ab starts it through ``--server-cmd``. It prints the
log lines serve_ab reads (pool sizes, scheduler line, series line, KV split line; a serving-time compile line
only while it serves a chosen request, so that the line lands in one pass), one line per request with a hash of
the messages, so that a test can tell which prompts each pass sent, and one line per video it accepted. The
"upstream" stand-in streams tokens slower than the "patched" one, so the table must show the patched engine
ahead; that direction is measured, not written in.

The load generator: ``test_real_bench_serving`` drives the REAL installed ``python -m sglang.bench_serving``
(flags, seeds, image dataset, output file). Each of its processes spends about 10 s importing sglang, so the
protocol tests (ABBA order, warm-up, repeats, dying server, merge) use a stand-in client (this file run with
``--client``, reached through ``--bench-python``): it takes bench_serving's flags, sends seeded prompts to the
server, measures TTFT/TPOT itself and writes bench_serving's JSONL result keys.

Failure paths: a server that exits before it is ready, a port already taken, readiness that times out, a
server that dies during the benchmark; each must give a clear error and leave no process behind.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE_AB = os.path.join(REPO, "benchmark", "gemma4", "serve_ab.py")
MAKE_DIR = os.path.join(REPO, "benchmark", "gemma4", "make_model_dir.py")
SERIES_PY = os.path.join(REPO, "python", "sglang", "srt", "gemma4_series.py")
THIS = os.path.abspath(__file__)

FAKE_SERVER = os.path.join(os.path.dirname(THIS), "fake_sglang_server.py")  # the stand-in server


# ---------------------------------------------------------------------------------------------------------
# stand-in client (bench_serving's flags and result keys; fast to start)
# ---------------------------------------------------------------------------------------------------------
def _client_main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", action="store_true")
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output-file", required=True)
    ap.add_argument("--dataset-name", default="sharegpt")
    ap.add_argument("--random-input-len", type=int, default=16)
    ap.add_argument("--random-output-len", type=int, default=8)
    ap.add_argument("--warmup-requests", type=int, default=1)
    ap.add_argument("--image-count", type=int, default=1)
    ap.add_argument("--ready-check-timeout-sec", type=int, default=60)
    ns, _ = ap.parse_known_args(argv)
    print("benchmark_args=" + json.dumps(vars(ns)), flush=True)
    base = f"http://{ns.host}:{ns.port}"
    deadline = time.monotonic() + ns.ready_check_timeout_sec
    while True:
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                model = json.load(r)["data"][0]["id"]
            break
        except OSError:
            if time.monotonic() > deadline:
                print("server not ready", flush=True)
                sys.exit(1)
            time.sleep(0.2)
    rng = random.Random(f"{ns.dataset_name}:{ns.seed}")
    prompts = []
    for i in range(ns.num_prompts):
        text = " ".join(rng.choice("alpha beta gamma delta omega".split()) for _ in range(ns.random_input_len))
        if ns.dataset_name == "image":
            content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{rng.random()}"}}
                       for _ in range(ns.image_count)] + [{"type": "text", "text": text}]
        else:
            content = text
        prompts.append(content)

    def one(content, out_len, res):
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True,
                "max_completion_tokens": out_len}
        req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        ttft, tokens = None, 0
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                for ln in r:
                    ln = ln.strip()
                    if not ln.startswith(b"data: ") or ln == b"data: [DONE]":
                        continue
                    obj = json.loads(ln[6:])
                    if obj.get("choices") and obj["choices"][0]["delta"].get("content"):
                        tokens += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
        except OSError as e:
            res.append({"ok": False, "error": str(e)})
            return
        lat = time.perf_counter() - t0
        res.append({"ok": ttft is not None, "ttft": ttft, "lat": lat, "tokens": tokens,
                    "tpot": (lat - ttft) / (tokens - 1) if ttft is not None and tokens > 1 else None})

    warm = []
    for _ in range(ns.warmup_requests):
        one(prompts[0], min(ns.random_output_len, 32), warm)
    results = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(c, ns.random_output_len, results)) for c in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    duration = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    accept = None
    try:
        with urllib.request.urlopen(base + "/server_info", timeout=5) as r:
            accept = (json.load(r).get("internal_states") or [{}])[0].get("avg_spec_accept_length")
    except OSError:
        pass
    out_tokens = sum(r["tokens"] for r in ok)
    in_tokens = ns.random_input_len * len(ok)
    result = {
        "backend": "stand-in client", "dataset_name": ns.dataset_name, "duration": duration,
        "completed": len(ok), "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
        "total_throughput": (in_tokens + out_tokens) / duration,
        "median_ttft_ms": statistics.median(r["ttft"] for r in ok) * 1000 if ok else None,
        "median_tpot_ms": statistics.median(r["tpot"] for r in ok if r["tpot"]) * 1000 if ok else None,
        "accept_length": accept, "server_info": {"dropped": "by serve_ab"},
    }
    with open(ns.output_file, "a") as f:
        f.write(json.dumps(result) + "\n")
    sys.exit(0 if len(ok) == ns.num_prompts else 1)


if __name__ == "__main__" and "--client" in sys.argv:
    _client_main(sys.argv[1:])

import pytest  # noqa: E402  (after the script mode, which does not need it)

if os.path.dirname(THIS) not in sys.path:  # also when the stand-in client loads this file by its path
    sys.path.insert(0, os.path.dirname(THIS))
from fake_sglang_server import ACCEPT_BASE, KV_SPLIT_LINE, POOLS, SERIES_LINE  # noqa: E402

INSTALLED = importlib.metadata.version("sglang")  # the engine the tests' python imports


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _load_serve_ab(path=SERVE_AB, name="serve_ab_under_test"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


sab = _load_serve_ab()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _standin_cmd(extra=""):
    return (f"{sys.executable} {FAKE_SERVER} --host {{host}} --port {{port}} --model {{model}} "
            f"--engine {{engine}} {extra} {{server_args}}")


def _speed_cmd(extra=""):
    # {engine} selects the speed: the upstream stand-in streams 6x slower per token.
    return ("sh -c 'd=1; [ \"$0\" = upstream ] && d=6; exec " + sys.executable + " " + FAKE_SERVER +
            " --host {host} --port {port} --model {model} --engine $0 --token-delay-ms $d " + extra +
            " \"$@\"' {engine} {server_args}")


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


def _starts(rec):
    return [json.loads(ln) for ln in open(os.path.join(rec, "starts.jsonl"))]


def _run_serve_ab(args, timeout=420, script=SERVE_AB, cwd=REPO, env=None):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run([sys.executable, MAKE_DIR, "dir", "tiny", str(d)], check=True, capture_output=True)
    return str(d)


@pytest.fixture(scope="module")
def client_python(tmp_path_factory):
    """A 'python' that runs the stand-in client for ``-m sglang.bench_serving`` and is python otherwise."""
    path = tmp_path_factory.mktemp("client") / "python"
    path.write_text("#!/bin/sh\n"
                    f'if [ "$1" = "-m" ] && [ "$2" = "sglang.bench_serving" ]; then shift 2; '
                    f'exec {sys.executable} {THIS} --client "$@"; fi\n'
                    f'exec {sys.executable} "$@"\n')
    path.chmod(0o755)
    return str(path)


def _base_args(tiny_dir, tmp_path, port, server_cmd, out="out"):
    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    return [
        "--model", tiny_dir, "--port", str(port),
        "--upstream-python", sys.executable, "--patched-python", sys.executable,
        "--server-cmd", server_cmd + f" --record {rec}",
        "--out", str(tmp_path / out), "--log-dir", str(tmp_path / "logs"),
        "--ready-timeout", "60", "--bench-mode", "process",  # the stand-in client is a program, not a module
    ], str(rec)


def _doc(tmp_path, name="serve_ab", out="out"):
    return json.loads((tmp_path / out / f"{name}.json").read_text())


def _pass_log(doc, run):
    """What the stand-in server logged while this pass ran (from the pass's recorded log byte range)."""
    srv = next(s for s in doc["servers"] if s["engine"] == run["engine"] and s["profile"] == run["profile"])
    a, b = run["log_range"]
    with open(os.path.join(doc["meta"]["log_dir"], srv["log"]), "rb") as f:
        f.seek(a)
        return f.read(b - a).decode()


def _pass_hashes(tmp_path, doc, run):
    """Request hashes the stand-in logged while this pass ran."""
    return {ln.split(" hash ")[1].strip() for ln in _pass_log(doc, run).splitlines() if "stand-in request" in ln}


def _runs(doc, engine, workload, kind=None):
    return [r for r in doc["runs"] if r["engine"] == engine and r["workload"] == workload
            and (kind is None or r["kind"] == kind)]


def _assistant_dir(tmp_path):
    d = tmp_path / "assistant"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["Gemma4AssistantForCausalLM"]}))
    return str(d)


# ---------------------------------------------------------------------------------------------------------
# pure logic
# ---------------------------------------------------------------------------------------------------------
def test_set_flag_replaces_in_place_and_appends_when_absent():
    args = ["--dataset-name", "random", "--num-prompts", "80", "--seed", "1"]
    assert sab.set_flag(args, "--num-prompts", "6") == ["--dataset-name", "random", "--num-prompts", "6", "--seed", "1"]
    assert sab.set_flag(["--num-prompts=80", "--x", "1", "--num-prompts", "9"], "--num-prompts", "6") == \
        ["--num-prompts", "6", "--x", "1"]
    assert sab.set_flag(["--x", "1"], "--seed", "3") == ["--x", "1", "--seed", "3"]
    assert sab.get_flag(["--num-prompts", "80", "--num-prompts=7"], "--num-prompts") == "7"
    assert sab.get_flag(["--x", "1"], "--num-prompts") is None
    with pytest.raises(sab.ServeABError, match="--seed has no value"):
        sab.set_flag(["--x", "--seed"], "--seed", "1")


def test_plan_overrides_prompts_and_seeds_every_pass():
    wl = sab.WORKLOADS["chat"]
    plan = sab.Plan(model="m", workloads=[wl], pythons={"upstream": "pu", "patched": "pp"}, bench_python="pb",
                    engines=["upstream", "patched"], port=1, ready_timeout_s=1, bench_timeout_s=1, server_cmd="",
                    extra_server_args=[], bench_extra=["--random-output-len", "8"], load_format=None,
                    num_prompts=10, repeats=3, log_dir="/logs", dataset_path=None, warmup_prompts=16, base_seed=5)
    assert plan.passes(wl) == [("warmup", 0, 5, 10), ("timed", 0, 6, 10), ("timed", 1, 7, 10), ("timed", 2, 8, 10)]
    assert plan.bench_args(wl).count("--num-prompts") == 1
    assert sab.get_flag(plan.bench_args(wl), "--num-prompts") == "10"
    cmd = sab.bench_command(plan, wl, "/o.jsonl", 7, 4)
    assert cmd.count("--num-prompts") == 1 and cmd[cmd.index("--num-prompts") + 1] == "4"
    assert cmd.count("--seed") == 1 and cmd[cmd.index("--seed") + 1] == "7"
    assert cmd[cmd.index("--dataset-path") + 1] == "/logs/datasets/sharegpt-chat-seed7.json"
    plan.num_prompts, plan.warmup_prompts = None, 4
    assert plan.passes(wl)[0] == ("warmup", 0, 5, 4) and plan.passes(wl)[1][3] == 80


def test_each_pass_gets_its_own_synthetic_conversations(tmp_path):
    plan = sab.Plan(model="m", workloads=[], pythons={}, bench_python="", engines=["patched"], port=1,
                    ready_timeout_s=1, bench_timeout_s=1, server_cmd="", extra_server_args=[], bench_extra=[],
                    load_format=None, num_prompts=None, repeats=1, log_dir=str(tmp_path), dataset_path=None)

    def humans(wl, seed):
        path = sab.ensure_dataset(plan, sab.WORKLOADS[wl], seed, 4)
        return {row["conversations"][0]["value"] for row in json.load(open(path))}

    assert humans("chat", 2) == humans("chat", 2)  # same seed, same prompts: the two engines' repeat r
    assert len(humans("chat", 2)) == 64
    assert not humans("chat", 1) & humans("chat", 2)  # warm-up vs repeat 0
    assert not humans("chat", 2) & humans("summarization", 2)  # same server, same seed, other workload
    assert sab.ensure_dataset(plan, sab.WORKLOADS["images"], 2, 4) is None
    plan.dataset_path = str(tmp_path / "own.json")
    assert sab.ensure_dataset(plan, sab.WORKLOADS["chat"], 3, 4) == plan.dataset_path
    assert not os.path.exists(plan.dataset_path)  # the user's file is used as it is


_LOG = """$ python -m sglang.launch_server ...
[2026-12-01 10:00:00 TP0] Use sliding window memory pool. full_layer_tokens=7787613, swa_layer_tokens=6230090
[2026-12-01 10:00:01 TP0] Use sliding window memory pool. full_layer_tokens=11, swa_layer_tokens=22
[2026-12-01 10:00:02 TP0] max_total_num_tokens=7787613, chunked_prefill_size=8192, max_prefill_tokens=16384, \
max_running_requests=48, context_len=131072, available_gpu_mem=12.50 GB
[2026-12-01 10:00:02] Gemma-4 series 0.5.23+gemma4.10 on sglang==0.5.23: 0001-gemma4-series-manifest
[2026-12-01 10:00:02] Gemma-4 KV split: swa_full_tokens_ratio=0.3 (geometry)
[2026-12-01 10:00:09 TP0] Triton kernel 'fused_moe_kernel' took 3.21 s to compile after serving started. \
Serving-time compilation can stall the engine; pre-compile it during engine init.
"""


def test_peak_running_requests_from_decode_lines():
    text = (
        "[2026-12-06 12:10:41 TP0] Decode batch, #running-req: 48, #token: 4000, token usage: 0.01, \n"
        "[2026-12-06 12:10:42 TP0] Prefill batch, #new-seq: 2, #running-req: 99, \n"  # not a decode line
        "[2026-12-06 12:10:43 TP0] Decode batch [123], #running-req: 80, #token: 9000, \n"
        "[2026-12-06 12:10:44 TP0] Decode batch, #running-req: 7, #token: 100, \n"
    )
    assert sab.peak_running_requests(text) == 80
    assert sab.peak_running_requests(_LOG) is None


def test_peak_tokens_used_and_unified_pool_lines():
    # sglang 0.5.23's hybrid-SWA decode line, and the boot lines of --enable-unified-memory
    text = (
        "[2026-12-06 12:10:41 TP0] Decode batch, #running-req: 48, #full token: 4000, full token usage: 0.01, "
        "#swa token: 9000, swa token usage: 0.02, \n"
        "[2026-12-06 12:10:42 TP0] Prefill batch, #new-seq: 2, #full token: 99999, #swa token: 99999, \n"
        "[2026-12-06 12:10:43 TP0] Decode batch [123], #running-req: 80, #full token: 7000, full token usage: "
        "0.02, #swa token: 8000, swa token usage: 0.01, \n"
        "[2026-12-06 12:10:44 TP0] [unified-memory-pool] UnifiedKVPool swa: total_bytes=9.74 GB (=10458 B), \n"
    )
    assert sab.peak_tokens_used(text) == {"full": 7000, "swa": 9000}
    assert sab.peak_tokens_used(_LOG) == {"full": None, "swa": None}
    info = sab.parse_server_log(text)
    assert info["unified_pool_lines"] == ["[unified-memory-pool] UnifiedKVPool swa: total_bytes=9.74 GB (=10458 B),"]
    assert sab.parse_server_log(_LOG)["unified_pool_lines"] == []


def test_parse_server_log_reads_pools_scheduler_series_and_compiles():
    info = sab.parse_server_log(_LOG)
    assert (info["full_layer_tokens"], info["swa_layer_tokens"]) == (7787613, 6230090)  # the target's, first
    assert len(info["pool_lines"]) == 2
    assert info["max_running_requests"] == 48 and info["max_total_num_tokens"] == 7787613
    assert info["context_len"] == 131072 and info["available_mem_gb"] == 12.5 and info["chunked_prefill_size"] == 8192
    assert info["series_line"] == "Gemma-4 series 0.5.23+gemma4.10 on sglang==0.5.23: 0001-gemma4-series-manifest"
    assert info["kv_split_lines"] == ["Gemma-4 KV split: swa_full_tokens_ratio=0.3 (geometry)"]
    assert info["compile_lines"] == [{"kernel": "fused_moe_kernel", "seconds": 3.21}]
    all_swa = sab.parse_server_log("[x] Use sliding window memory pool (all SWA). swa_layer_tokens=99\n")
    assert (all_swa["full_layer_tokens"], all_swa["swa_layer_tokens"]) == (0, 99)
    none = sab.parse_server_log("stand-in up\nmax_total_num_tokens=5\n")
    assert none["full_layer_tokens"] is None and none["max_running_requests"] is None
    assert none["series_line"] is None and none["kv_split_lines"] == [] and none["compile_lines"] == []


def test_summary_uses_timed_repeats_only_and_marks_spread():
    def run(engine, kind, rep, duration, status="ok"):
        return {"engine": engine, "workload": "chat", "kind": kind, "rep": rep, "seed": rep + 2, "status": status,
                "result": {"duration": duration, "median_tpot_ms": duration / 10}}
    runs = [run("upstream", "warmup", 0, 99.0), run("upstream", "timed", 0, 10.0), run("upstream", "timed", 1, 12.0),
            run("upstream", "timed", 2, 11.0), run("upstream", "timed", 3, 50.0, status="failed"),
            run("patched", "warmup", 0, 0.5), run("patched", "timed", 0, 5.0), run("patched", "timed", 1, 6.0)]
    s = sab.summarise(runs, ["chat"])
    u, p = s["chat"]["upstream"]["metrics"]["duration"], s["chat"]["patched"]["metrics"]["duration"]
    assert (u["median"], u["min"], u["max"], u["n"]) == (11.0, 10.0, 12.0, 3)
    assert (p["median"], p["min"], p["max"], p["n"]) == (5.5, 5.0, 6.0, 2)
    assert s["chat"]["upstream"]["hint"] is False and s["chat"]["patched"]["hint"] is True
    assert s["chat"]["upstream"]["seeds"] == [2, 3, 4]
    rows = {r["metric"]: r for r in sab.compare_rows(s, ["chat"])}
    assert rows["duration"]["ratio"] == pytest.approx(11.0 / 5.5)
    assert rows["duration"]["spread"] == "outside spread" and rows["duration"]["hint"] is True
    assert "accept_length" not in rows  # nobody reported one
    assert sab.spread({"min": 1, "max": 3}, {"min": 3, "max": 4}) == "within spread"
    assert sab.spread({"min": 1, "max": 2}, {"min": 2.5, "max": 4}) == "outside spread"
    assert sab.spread({"min": 5, "max": 6}, {"min": 1, "max": 4.9}) == "outside spread"
    assert sab.spread(None, {"min": 1, "max": 2}) is None
    assert sab.ratio(10.0, 5.0, lower_is_better=False) == 0.5 and sab.ratio(10.0, 5.0, lower_is_better=True) == 2.0


def test_engine_order_alternates_by_profile():
    plan = sab.Plan(model="m", workloads=[sab.WORKLOADS[n] for n in ("chat", "images-nocache", "images")],
                    pythons={}, bench_python="", engines=["patched", "upstream"], port=1, ready_timeout_s=1,
                    bench_timeout_s=1, server_cmd="", extra_server_args=[], bench_extra=[], load_format=None,
                    num_prompts=None, repeats=1, log_dir="/l", dataset_path=None)
    profiles = plan.profiles()
    assert [[w.name for w in p.workloads] for p in profiles] == [["chat", "images"], ["images-nocache"]]
    assert [plan.engine_order(i) for i in range(3)] == [["patched", "upstream"], ["upstream", "patched"],
                                                        ["patched", "upstream"]]
    plan.order = "fixed"
    assert plan.engine_order(1) == ["patched", "upstream"]


# ---------------------------------------------------------------------------------------------------------
# plan printing, version and commit
# ---------------------------------------------------------------------------------------------------------
def test_dry_run_prints_plan_without_starting_anything(tiny_dir, tmp_path):
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd())
    args += ["--workloads", "chat,images-nocache", "--num-prompts", "5", "--warmup-prompts", "3", "--repeats", "2",
             "--mtp-draft", _assistant_dir(tmp_path), "--dry-run"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not os.path.exists(os.path.join(rec, "starts.jsonl")) and not (tmp_path / "out").exists()
    servers = [ln.split(" (")[0] for ln in out.splitlines() if ln.startswith("server ")]
    assert servers == ["server 1: upstream p0", "server 2: patched p0", "server 3: patched p1", "server 4: upstream p1"]
    benches = [ln.split() for ln in out.splitlines() if "sglang.bench_serving" in ln]
    assert len(benches) == 4 * 3
    for cmd in benches:
        assert cmd.count("--num-prompts") == 1 and cmd.count("--seed") == 1
    seeds = [(c[c.index("--seed") + 1], c[c.index("--num-prompts") + 1]) for c in benches]
    assert seeds == [("1", "3"), ("2", "5"), ("3", "5")] * 4
    launch = [ln for ln in out.splitlines() if FAKE_SERVER in ln]
    assert len(launch) == 4 and all("--speculative-algorithm NEXTN" in ln and "--speculative-num-draft-tokens 4" in ln
                                    for ln in launch)
    assert "--disable-radix-cache" in launch[2] and "--disable-radix-cache" not in launch[0]
    fixed = _run_serve_ab(args + ["--order", "fixed"])
    fixed_servers = [ln.split(" (")[0] for ln in fixed.stdout.splitlines() if ln.startswith("server ")]
    assert fixed_servers[2] == "server 3: upstream p1"
    bad = _run_serve_ab(args + ["--bench-args", "--seed 9"])
    assert bad.returncode == 2 and "--bench-args must not set --seed" in bad.stderr
    bad = _run_serve_ab(args + ["--mtp-draft", tiny_dir])
    assert bad.returncode == 2 and "is not a Gemma-4 assistant" in bad.stderr


def _fake_engine(root, version, manifest):
    """A python whose sglang is a bare package with a dist-info and (optionally) the series manifest module."""
    site = root / "site"
    (site / "sglang" / "srt").mkdir(parents=True)
    (site / "sglang" / "__init__.py").write_text("raise ImportError('the probe must not import sglang')\n")
    dist = site / f"sglang-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\nVersion: {version}\n")
    if manifest is not None:
        shutil.copy(SERIES_PY, site / "sglang" / "srt" / "gemma4_series.py")
        (site / "sglang" / "srt" / "gemma4_series.json").write_text(json.dumps(manifest))
    py = root / "python"
    py.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    py.chmod(0o755)
    return str(py)


def test_version_and_commit_come_from_the_manifest_outside_a_checkout(tiny_dir, tmp_path):
    copy = tmp_path / "tree" / "benchmark" / "gemma4" / "serve_ab.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(SERVE_AB, copy)
    for helper in ("stamp.py", "kv_budget.py"):  # the modules serve_ab.py imports from its folder
        shutil.copy(os.path.join(os.path.dirname(SERVE_AB), helper), copy.parent)
    shutil.copytree(os.path.join(os.path.dirname(SERVE_AB), "benchkit"), copy.parent / "benchkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    manifest = {"upstream": "sglang==0.5.23", "version": "0.5.23+gemma4.7", "series_commit": "c0ffee1",
                "patches": [{"name": "0001-gemma4-series-manifest.patch"}, {"name": "0010-x.patch"}]}
    patched = _fake_engine(tmp_path / "patched", "0.5.23+gemma4.7", manifest)
    upstream = _fake_engine(tmp_path / "upstream", "0.5.23", None)
    args = ["--model", tiny_dir, "--workloads", "images", "--upstream-python", upstream, "--patched-python", patched,
            "--dry-run"]
    proc = _run_serve_ab(args + ["--engines", "upstream"], script=str(copy), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    # Only upstream runs, the tree is no checkout: the commit still comes from the patched engine's manifest.
    assert "commit c0ffee1 (from series manifest of the patched engine)" in proc.stdout
    assert f"engine upstream: {upstream} sglang 0.5.23, series none" in proc.stdout
    proc = _run_serve_ab(args + ["--engines", "patched"], script=str(copy), cwd=str(tmp_path))
    assert f"engine patched: {patched} sglang 0.5.23+gemma4.7, series 0.5.23+gemma4.7 (2 patches)" in proc.stdout
    del manifest["series_commit"]
    (tmp_path / "patched" / "site" / "sglang" / "srt" / "gemma4_series.json").write_text(json.dumps(manifest))
    proc = _run_serve_ab(args + ["--engines", "patched"], script=str(copy), cwd=str(tmp_path))
    assert "commit unknown (from none (not a git checkout" in proc.stdout
    # The repository itself is a checkout: its HEAD wins.
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    proc = _run_serve_ab(args + ["--engines", "patched"])
    assert f"commit {head} (from git checkout)" in proc.stdout


# ---------------------------------------------------------------------------------------------------------
# the protocol, with the stand-in client
# ---------------------------------------------------------------------------------------------------------
def test_abba_warmup_repeats_and_log_facts(tiny_dir, tmp_path, client_python):
    port = _free_port()
    # Request 2 (the first timed request of the first warm-up pass on every server) stalls 2 s and logs a
    # compile line; request 9 (inside the first workload's repeat 1) logs another.
    args, rec = _base_args(tiny_dir, tmp_path, port,
                           _speed_cmd("--compile-on-request 2:2.0,9:0"))
    args += ["--workloads", "chat,images,images-nocache", "--num-prompts", "3", "--warmup-prompts", "2",
             "--repeats", "2", "--bench-python", client_python, "--mtp-draft", _assistant_dir(tmp_path),
             "--bench-args", "--random-input-len 12 --random-output-len 12 --warmup-requests 1 --image-count 2"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = _doc(tmp_path)
    md = (tmp_path / "out" / "serve_ab.md").read_text()
    assert doc["status"] == "complete" and _pids_alive(rec) == []

    # One server per engine and profile (chat and images share p0), ABBA across the two profiles.
    starts = _starts(rec)
    assert [s["engine"] for s in starts] == ["upstream", "patched", "patched", "upstream"]
    assert [("--disable-radix-cache" in s["server_args"], s["vlm_cache_mb"]) for s in starts] == \
        [(False, None), (False, None), (True, "0"), (True, "0")]
    for s in starts:  # dummy weights, MTP flags on both engines
        assert s["server_args"][:2] == ["--load-format", "dummy"]
        assert s["server_args"][s["server_args"].index("--speculative-algorithm") + 1] == "NEXTN"
    assert doc["meta"]["order"] == [
        {"profile": "p0", "engines": ["upstream", "patched"], "workloads": ["chat", "images"]},
        {"profile": "p1", "engines": ["patched", "upstream"], "workloads": ["images-nocache"]}]
    assert doc["meta"]["mtp"]["flags"][-2:] == ["--speculative-num-draft-tokens", "4"]
    assert [(s["engine"], s["profile"], s["status"]) for s in doc["servers"]] == \
        [("upstream", "p0", "done"), ("patched", "p0", "done"), ("patched", "p1", "done"), ("upstream", "p1", "done")]

    for wl in ("chat", "images", "images-nocache"):
        for eng in ("upstream", "patched"):
            warm, timed = _runs(doc, eng, wl, "warmup"), _runs(doc, eng, wl, "timed")
            assert [(r["seed"], r["num_prompts"], r["result"]["completed"]) for r in warm] == [(1, 2, 2)]
            assert [(r["rep"], r["seed"], r["num_prompts"], r["result"]["completed"]) for r in timed] == \
                [(0, 2, 3, 3), (1, 3, 3, 3)]
            for r in warm + timed:
                cmd = r["bench_cmd"]
                assert cmd.count("--num-prompts") == 1 and cmd[cmd.index("--num-prompts") + 1] == str(r["num_prompts"])
                assert cmd.count("--seed") == 1 and cmd[cmd.index("--seed") + 1] == str(r["seed"])
                assert r["flush_status"] == 200 and "server_info" not in r["result"]
            # Medians come from the timed repeats only.
            summ = doc["summary"][wl][eng]
            assert summ["n"] == 2 and summ["hint"] is True and summ["seeds"] == [2, 3]
            durations = [r["result"]["duration"] for r in timed]
            assert summ["metrics"]["duration"]["median"] == pytest.approx(statistics.median(durations))
            assert (summ["metrics"]["duration"]["min"], summ["metrics"]["duration"]["max"]) == \
                (min(durations), max(durations))
            # The cache flush before each pass resets the accept-length counters: every timed pass reports the
            # average over its own 1 + 3 requests.
            assert [r["result"]["accept_length"] for r in timed] == \
                [pytest.approx(sab_accept(eng, 4))] * 2
    # The first workload of each server: the 2 s compile stall fell in its warm-up pass, which the medians skip.
    for eng in ("upstream", "patched"):
        for wl in ("chat", "images-nocache"):
            warm = _runs(doc, eng, wl, "warmup")[0]
            timed = _runs(doc, eng, wl, "timed")
            assert warm["result"]["duration"] > 2.0
            assert warm["result"]["duration"] > doc["summary"][wl][eng]["metrics"]["duration"]["max"]
            assert [c["kernel"] for c in warm["compile_lines"]] == ["stand_in_kernel_r2"]
            assert [[c["kernel"] for c in r["compile_lines"]] for r in timed] == [[], ["stand_in_kernel_r9"]]
            assert warm["compile_lines"][0]["seconds"] == 1.25
            # each pass starts from a flushed cache: its sampled peak is its own request count
            for r in [warm] + timed:
                sent = _pass_log(doc, r).count("stand-in request ")
                assert r["peak_running_requests"] == sent >= r["num_prompts"]
        assert all(r["compile_lines"] == [] for r in _runs(doc, eng, "images"))

    # No two passes on a server sent the same prompt; both engines got the same prompts in the same pass.
    for srv in doc["servers"]:
        seen = set()
        for r in doc["runs"]:
            if r["engine"] == srv["engine"] and r["profile"] == srv["profile"]:
                h = _pass_hashes(tmp_path, doc, r)
                assert len(h) == r["num_prompts"] and not (h & seen), (r["workload"], r["kind"], r["rep"])
                seen |= h
    for r in _runs(doc, "upstream", "chat"):
        twin = next(t for t in _runs(doc, "patched", "chat") if (t["kind"], t["rep"]) == (r["kind"], r["rep"]))
        assert _pass_hashes(tmp_path, doc, r) == _pass_hashes(tmp_path, doc, twin)

    # Server-log facts per engine.
    for srv in doc["servers"]:
        info = srv["log_info"]
        assert (info["full_layer_tokens"], info["swa_layer_tokens"]) == POOLS[srv["engine"]]
        assert info["max_running_requests"] == 48
        if srv["engine"] == "patched":
            assert info["series_line"] == SERIES_LINE and info["kv_split_lines"] == [KV_SPLIT_LINE]
        else:
            assert info["series_line"] is None and info["kv_split_lines"] == []
        assert srv["compile_lines_outside_passes"] == 0 and srv["ready_s"] > 0

    # Token delay 6 ms vs 1 ms: the patched stand-in must come out ahead on TPOT.
    rows = {(r["workload"], r["metric"]): r for r in doc["rows"]}
    tpot = rows[("chat", "median_tpot_ms")]
    assert tpot["upstream"]["median"] > 2 * tpot["patched"]["median"] and tpot["ratio"] > 2
    assert tpot["ratio"] == pytest.approx(tpot["upstream"]["median"] / tpot["patched"]["median"])
    acc = rows[("chat", "accept_length")]
    assert acc["ratio"] == pytest.approx(sab_accept("patched", 4) / sab_accept("upstream", 4))
    # The markdown: median [min-max] n, hint for 2 repeats, ratio, spread and the per-workload server table.
    assert "| workload | metric | upstream | patched | ratio | spread |" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| chat | median TPOT (ms) |"))
    assert "n=2 hint" in line and f"{tpot['ratio']:.2f}x" in line and "outside spread (hint)" in line
    def peak(engine, wl):
        return max(r["peak_running_requests"] for r in _runs(doc, engine, wl, "timed"))

    assert f"| upstream | 3337548 | 2670038 | 48 | {peak('upstream', 'chat')} | 1 | 1 |" in md
    # images: compiles fell in chat's passes
    assert f"| patched | 7787613 | 6230090 | 48 | {peak('patched', 'images')} | 0 | 0 |" in md
    assert "| engine | full tokens | SWA tokens | max_running_requests | peak running, timed passes |" in md
    assert "?" not in md.splitlines()[0]


def sab_accept(engine, requests):
    return ACCEPT_BASE[engine] + 0.001 * requests


def test_server_dying_mid_run_keeps_finished_passes(tiny_dir, tmp_path, client_python):
    port = _free_port()
    # Passes of 1 warm-up request + prompts: warm-up = requests 1-3, repeat 0 = 4-7, repeat 1 = 8-11.
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--mode die-on-request --die-after 9"))
    args += ["--engines", "patched", "--workloads", "chat", "--num-prompts", "3", "--warmup-prompts", "2",
             "--repeats", "3", "--bench-python", client_python, "--name", "serve_ab_dies",
             "--bench-args", "--random-input-len 8 --random-output-len 4 --warmup-requests 1"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 2
    assert "[patched] server exited with status 7 while bench_serving ran workload 'chat' (repeat 1, seed 3)" \
        in proc.stderr
    assert "finished passes kept in" in proc.stderr
    assert _pids_alive(rec) == []
    doc = _doc(tmp_path, "serve_ab_dies")
    assert doc["status"] == "failed" and "status 7" in doc["error"]
    assert [(r["kind"], r["rep"], r["seed"], r["status"]) for r in doc["runs"]] == \
        [("warmup", 0, 1, "ok"), ("timed", 0, 2, "ok"), ("timed", 1, 3, "failed")]
    assert "server exited with status 7" in doc["runs"][2]["error"]
    assert doc["servers"][0]["status"] == "failed"
    s = doc["summary"]["chat"]["patched"]
    assert s["n"] == 1 and s["metrics"]["duration"]["median"] == doc["runs"][1]["result"]["duration"]
    assert not (tmp_path / "out" / "serve_ab_dies.md").exists()


def test_json_is_written_after_every_pass(tiny_dir, tmp_path, client_python):
    # serve_ab killed with SIGKILL (no handler runs) part-way: the passes it finished are on disk.
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--token-delay-ms 20"))
    args += ["--engines", "patched", "--workloads", "chat", "--num-prompts", "2", "--warmup-prompts", "2",
             "--repeats", "8", "--bench-python", client_python, "--name", "serve_ab_killed",
             "--bench-args", "--random-input-len 8 --random-output-len 8 --warmup-requests 1"]
    path = tmp_path / "out" / "serve_ab_killed.json"
    proc = subprocess.Popen([sys.executable, SERVE_AB, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        done = []
        while time.monotonic() < deadline and len(done) < 3:
            assert proc.poll() is None, "serve_ab ended before it was killed"
            if path.exists():
                done = [r for r in json.loads(path.read_text())["runs"] if r["status"] == "ok"]
            time.sleep(0.05)
        assert len(done) >= 3
    finally:
        proc.kill()
        proc.wait()
        for pid in _pids_alive(rec):  # the stand-in server serve_ab had started
            os.kill(pid, 9)
    doc = json.loads(path.read_text())
    assert doc["status"] == "running" and doc["servers"][0]["status"] == "running"
    ok = [r for r in doc["runs"] if r["status"] == "ok"]
    assert [(r["kind"], r["seed"]) for r in ok[:3]] == [("warmup", 1), ("timed", 2), ("timed", 3)]
    assert doc["summary"]["chat"]["patched"]["n"] == len(ok) - 1
    assert not (tmp_path / "out" / "serve_ab_killed.md").exists()


def test_merge_two_single_engine_files(tiny_dir, tmp_path, client_python):
    port = _free_port()
    files = {}
    for eng in ("upstream", "patched"):
        args, rec = _base_args(tiny_dir, tmp_path, port, _speed_cmd("--no-log-facts"))
        args += ["--engines", eng, "--workloads", "chat", "--num-prompts", "3", "--warmup-prompts", "2",
                 "--repeats", "2", "--bench-python", client_python, "--name", f"serve_ab_{eng}",
                 "--bench-args", "--random-input-len 8 --random-output-len 12 --warmup-requests 1"]
        proc = _run_serve_ab(args)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        files[eng] = str(tmp_path / "out" / f"serve_ab_{eng}.json")
    # A single-engine run names its engine's version, not "?".
    title = (tmp_path / "out" / "serve_ab_upstream.md").read_text().splitlines()[0]
    assert title.startswith(f"# bench_serving A/B: upstream: sglang {INSTALLED} (series ")
    up, pa = (json.load(open(files[e])) for e in ("upstream", "patched"))
    assert up["servers"][0]["log_info"]["full_layer_tokens"] is None  # no pool line: recorded as None

    merged_dir = tmp_path / "merged"
    proc = _run_serve_ab(["merge", files["upstream"], files["patched"], "--out", str(merged_dir),
                          "--name", "serve_ab_m"])
    assert proc.returncode == 0, proc.stderr
    m = json.loads((merged_dir / "serve_ab_m.json").read_text())
    md = (merged_dir / "serve_ab_m.md").read_text()
    assert [i["file"] for i in m["inputs"]] == ["serve_ab_upstream.json", "serve_ab_patched.json"]
    assert len(m["runs"]) == len(up["runs"]) + len(pa["runs"]) == 6
    assert {r["source"] for r in m["runs"]} == {"serve_ab_upstream.json", "serve_ab_patched.json"}
    rows = {r["metric"]: r for r in m["rows"]}
    u_tpot = statistics.median(r["result"]["median_tpot_ms"] for r in up["runs"] if r["kind"] == "timed")
    p_tpot = statistics.median(r["result"]["median_tpot_ms"] for r in pa["runs"] if r["kind"] == "timed")
    assert rows["median_tpot_ms"]["upstream"]["median"] == pytest.approx(u_tpot)
    assert rows["median_tpot_ms"]["ratio"] == pytest.approx(u_tpot / p_tpot) and u_tpot / p_tpot > 2
    assert rows["median_tpot_ms"]["spread"] == "outside spread"
    line = next(ln for ln in md.splitlines() if ln.startswith("| chat | median TPOT (ms) |"))
    assert f"{u_tpot / p_tpot:.2f}x" in line and "outside spread (hint)" in line
    peaks = {e: max(r["peak_running_requests"] for r in m["runs"] if r["engine"] == e and r["kind"] == "timed")
             for e in ("upstream", "patched")}
    assert f"| upstream | - | - | - | {peaks['upstream']} | 0 | 0 |" in md
    assert f"| patched | - | - | - | {peaks['patched']} | 0 | 0 |" in md
    assert "serve_ab_upstream.json (complete)" in md and "serve_ab_patched.json (complete)" in md

    def refuse(mutate, expect):
        bad = json.load(open(files["patched"]))
        mutate(bad)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        proc = _run_serve_ab(["merge", files["upstream"], str(path), "--out", str(merged_dir), "--name", "serve_ab_x"])
        assert proc.returncode == 2, proc.stdout
        assert files["upstream"] in proc.stderr and str(path) in proc.stderr and expect in proc.stderr, proc.stderr

    refuse(lambda d: d["meta"].update(model="google/gemma-4-E4B-it"), "disagree on model")
    refuse(lambda d: d["meta"].update(load_format=None), "disagree on load format")
    refuse(lambda d: d["meta"].update(extra_server_args=["--chunked-prefill-size", "4096"]),
           "disagree on extra server args")
    refuse(lambda d: d["workloads"]["chat"].update(
        bench_args=sab.set_flag(d["workloads"]["chat"]["bench_args"], "--num-prompts", "4")),
        "disagree on workload 'chat'")
    refuse(lambda d: [r.update(engine="upstream") for r in d["runs"]],
           "both hold engine 'upstream' on workload 'chat'")
    assert not (merged_dir / "serve_ab_x.json").exists()

    # --take: a file that holds both engines contributes only the named passes; a workload whose engines come
    # from different files is flagged in the table's header.
    both = json.load(open(files["patched"]))
    both["runs"] += [dict(r, engine="upstream") for r in both["runs"]]
    both["servers"] += [dict(s, engine="upstream") for s in both["servers"]]
    both_path = tmp_path / "both.json"
    both_path.write_text(json.dumps(both))
    proc = _run_serve_ab(["merge", files["upstream"], str(both_path), "--out", str(merged_dir),
                          "--name", "serve_ab_t", "--take", f"{both_path}=patched:chat"])
    assert proc.returncode == 0, proc.stderr
    t = json.loads((merged_dir / "serve_ab_t.json").read_text())
    assert {(r["engine"], r["source"]) for r in t["runs"]} == {("upstream", "serve_ab_upstream.json"),
                                                              ("patched", "both.json")}
    assert [s["engine"] for s in t["servers"] if s["source"] == "both.json"] == ["patched"]
    assert {r["metric"]: r for r in t["rows"]}["median_tpot_ms"]["ratio"] == pytest.approx(u_tpot / p_tpot)
    tmd = (merged_dir / "serve_ab_t.md").read_text()
    flag = "`chat`: the engines ran in different runs** (upstream from serve_ab_upstream.json, patched from "
    assert flag + "both.json)" in tmd and flag + "serve_ab_patched.json)" in md
    same = dict(t, runs=[dict(r, source="one.json") for r in t["runs"]])
    assert "the engines ran in different runs" not in sab.render_markdown(same)
    for take, expect in ((f"{tmp_path / 'other.json'}=patched:chat", "is not one of the files to merge"),
                         (f"{both_path}=patched:images", "holds no pass of patched:images"),
                         (f"{both_path}=stock:chat", "is not engine:workload"),
                         ("patched:chat", "expected FILE=engine:workload")):
        proc = _run_serve_ab(["merge", files["upstream"], str(both_path), "--out", str(merged_dir),
                              "--name", "serve_ab_y", "--take", take])
        assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
    assert not (merged_dir / "serve_ab_y.json").exists()


# ---------------------------------------------------------------------------------------------------------
# the real bench_serving
# ---------------------------------------------------------------------------------------------------------
def test_real_bench_serving(tiny_dir, tmp_path):
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--compile-on-request 2:0"))
    args += ["--engines", "patched", "--workloads", "images-nocache", "--num-prompts", "3",
             "--warmup-prompts", "2", "--repeats", "1", "--bench-mode", "fork",
             "--bench-args", "--random-input-len 40 --random-output-len 8 --warmup-requests 1 --image-count 2"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = _doc(tmp_path)
    # Both passes were forked from one process that imported bench_serving once.
    assert doc["meta"]["bench_client"]["mode"] == "fork"
    fs_log = open(os.path.join(doc["meta"]["log_dir"], "bench-forkserver.log")).read()
    assert fs_log.count("bench_forkserver.py") == 1
    md = (tmp_path / "out" / "serve_ab.md").read_text()
    starts = _starts(rec)
    assert len(starts) == 1 and _pids_alive(rec) == []
    assert "--disable-radix-cache" in starts[0]["server_args"] and starts[0]["vlm_cache_mb"] == "0"
    assert [(r["kind"], r["seed"], r["num_prompts"]) for r in doc["runs"]] == [("warmup", 1, 2), ("timed", 2, 3)]
    for r in doc["runs"]:
        # bench_serving itself took the seed and the replaced prompt count, and completed every prompt.
        bench_log = open(os.path.join(doc["meta"]["log_dir"], r["bench_log"])).read()
        assert f"num_prompts={r['num_prompts']}," in bench_log and f"seed={r['seed']}," in bench_log
        assert r["result"]["completed"] == r["num_prompts"] and r["result"]["duration"] > 0
        assert r["result"]["median_ttft_ms"] > 0 and r["result"]["accept_length"] is None
        assert r["result"]["total_input_vision_tokens"] > 0  # the images were sent
    a, b = (_pass_hashes(tmp_path, doc, r) for r in doc["runs"])  # images differ by seed
    assert len(a) == 2 and len(b) == 3 and not (a & b)
    assert [c["kernel"] for c in doc["runs"][0]["compile_lines"]] == ["stand_in_kernel_r2"]
    assert doc["runs"][1]["compile_lines"] == []
    assert doc["servers"][0]["log_info"]["full_layer_tokens"] == POOLS["patched"][0]
    assert doc["meta"]["commit_source"] == "git checkout"
    assert md.splitlines()[0].startswith(f"# bench_serving A/B: patched: sglang {INSTALLED} (series ")
    timed_peak = doc["runs"][1]["peak_running_requests"]
    assert timed_peak == _pass_log(doc, doc["runs"][1]).count("stand-in request ") >= 3
    assert "n=1 hint" in md and f"| patched | 7787613 | 6230090 | 4096 | {timed_peak} | 1 | 0 |" in md


# ---------------------------------------------------------------------------------------------------------
# failure paths
# ---------------------------------------------------------------------------------------------------------
def test_server_exiting_before_ready_is_reported(tiny_dir, tmp_path):
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--mode exit-early"))
    proc = _run_serve_ab(args + ["--workloads", "chat", "--num-prompts", "2"])
    assert proc.returncode == 2
    assert "[upstream] server exited with status 3 before it became ready" in proc.stderr
    assert "simulated crash during start-up" in proc.stderr  # the log tail is shown
    assert not (tmp_path / "out" / "serve_ab.md").exists()
    doc = _doc(tmp_path)
    assert doc["status"] == "failed" and doc["runs"] == [] and doc["servers"][0]["status"] == "failed"


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
    # The real bench_serving on the random data set (the pass's own synthetic file): its 2 warm-up requests
    # are served, the server dies on the first prompt of the warm-up pass.
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--mode die-on-request"))
    proc = _run_serve_ab(args + ["--workloads", "chat", "--num-prompts", "4", "--engines", "patched",
                                 "--bench-args", "--random-input-len 20 --random-output-len 4"])
    assert proc.returncode == 2
    assert "[patched] server exited with status 7 while bench_serving ran workload 'chat' (warm-up, seed 1)" \
        in proc.stderr
    assert _pids_alive(rec) == []
    doc = _doc(tmp_path)
    assert doc["status"] == "failed" and "status 7" in doc["error"]
    (warm,) = doc["runs"]
    assert (warm["kind"], warm["seed"], warm["num_prompts"], warm["status"]) == ("warmup", 1, 4, "failed")
    bench_log = open(os.path.join(doc["meta"]["log_dir"], warm["bench_log"])).read()
    assert "seed=1," in bench_log and "num_prompts=4," in bench_log and "sharegpt-chat-seed1.json" in bench_log
    assert warm["log_range"][1] > warm["log_range"][0]  # the requests it sent are in the server log's range


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
    proc = _run_serve_ab(args + ["--name", "results"])
    assert proc.returncode == 2 and "--name must start with 'serve_ab'" in proc.stderr
    proc = _run_serve_ab(["merge", str(tmp_path / "missing.json"), str(tmp_path / "missing2.json")])
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    proc = _run_serve_ab(["merge", "a.json", "b.json", "--name", "merged"])
    assert proc.returncode == 2 and "--name must start with 'serve_ab'" in proc.stderr
    proc = _run_serve_ab(["merge", str(tmp_path / "serve_ab_a.json"), "b.json", "--out", str(tmp_path),
                          "--name", "serve_ab_a"])
    assert proc.returncode == 2 and "is one of its inputs" in proc.stderr


def test_per_workload_prompt_counts():
    assert sab.parse_num_prompts(None, ["chat"]) == (None, {})
    assert sab.parse_num_prompts("7", ["chat"]) == (7, {})
    assert sab.parse_num_prompts("chat=48, summarization=24", ["chat", "summarization"]) == \
        (None, {"chat": 48, "summarization": 24})
    for bad, msg in (("images=3", "not one of the workloads run"), ("chat=x", "whole numbers"), ("0", "at least 1"),
                     ("chat=0", "at least 1")):
        with pytest.raises(sab.ServeABError, match=msg):
            sab.parse_num_prompts(bad, ["chat"])
    chat, summ = sab.WORKLOADS["chat"], sab.WORKLOADS["summarization"]
    plan = sab.Plan(model="m", workloads=[chat, summ], pythons={}, bench_python="", engines=["patched"], port=1,
                    ready_timeout_s=1, bench_timeout_s=1, server_cmd="", extra_server_args=[], bench_extra=[],
                    load_format=None, num_prompts=None, repeats=1, log_dir="/l", dataset_path=None,
                    num_prompts_for={"summarization": 24})
    assert plan.prompts(summ) == 24 and plan.prompts(chat) == 80  # chat keeps its own 80
    assert plan.bench_args(summ).count("--num-prompts") == 1


def test_after_passes_command_runs_against_each_live_server(tiny_dir, tmp_path, client_python):
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd())
    seen = tmp_path / "seen.txt"
    # The command reaches the live server (its /v1/models answers) and knows which engine it is.
    probe = (f"{sys.executable} -c \"import urllib.request,sys; "
             f"urllib.request.urlopen('http://{{host}}:{{port}}/v1/models', timeout=5); "
             f"open('{seen}', 'a').write('{{engine}}\\n')\"")
    args += ["--workloads", "chat", "--num-prompts", "chat=2", "--warmup-prompts", "1", "--repeats", "1",
             "--bench-python", client_python, "--after-passes", probe,
             "--bench-args", "--random-input-len 8 --random-output-len 8 --warmup-requests 1"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seen.read_text().split() == ["upstream", "patched"]
    doc = _doc(tmp_path)
    assert [s["after_passes"]["rc"] for s in doc["servers"]] == [0, 0]
    assert all(r["num_prompts"] == 2 for r in doc["runs"] if r["kind"] == "timed")
    # A failing command is recorded, not fatal.
    args2 = [a if a != probe else "exit 5" for a in args] + ["--name", "serve_ab_fail"]
    proc = _run_serve_ab(args2)
    assert proc.returncode == 0
    doc = json.loads((tmp_path / "out" / "serve_ab_fail.json").read_text())
    assert [s["after_passes"]["rc"] for s in doc["servers"]] == [5, 5]


def test_commit_info_keeps_the_engine_build_commit_beside_a_checkout(monkeypatch):
    probe = {"series": {"series_commit": "591ee15"}}
    monkeypatch.setattr(sab.stamp, "checkout_head", lambda: ("cb9725c", True))
    info = sab.commit_info(probe)
    assert info["commit"] == "cb9725c" and info["engine_series_commit"] == "591ee15"
    monkeypatch.setattr(sab.stamp, "checkout_head", lambda: (None, None))
    assert sab.commit_info(probe)["commit"] == "591ee15"


# ---------------------------------------------------------------------------------------------------------
# the bench_serving fork server, with a stand-in entry point
# ---------------------------------------------------------------------------------------------------------
FORK_TARGET = '''
import os, sys, time
def main():
    args = sys.argv[1:]
    print("argv", args, "cwd", os.getcwd(), "env", os.environ.get("FORK_TEST_VAR"), flush=True)
    if "--sleep" in args:
        time.sleep(float(args[args.index("--sleep") + 1]))
    if "--raise" in args:
        raise RuntimeError("stand-in failure")
    if "--exit" in args:
        sys.exit(int(args[args.index("--exit") + 1]))
'''


def test_fork_server_runs_passes_from_one_import(tmp_path):
    (tmp_path / "forktarget.py").write_text(FORK_TARGET + "print('imported once', flush=True)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), FORK_TEST_VAR="base")
    fs = sab.ForkServer(sys.executable, env, str(tmp_path / "fs.log"), entry="forktarget:main")
    try:
        results = []
        for i, extra in enumerate([[], ["--exit", "3"], ["--raise"]]):
            log = tmp_path / f"p{i}.log"
            log.write_text("$ header\n")
            p = fs.start(["--seed", str(i), *extra], str(log), str(tmp_path / f"p{i}.rc"),
                         dict(env, FORK_TEST_VAR=f"pass{i}"))
            assert p.wait(30) is not None
            results.append((p.returncode, log.read_text()))
        assert [rc for rc, _ in results] == [0, 3, 1]
        text0 = results[0][1]
        assert text0.startswith("$ header\n")  # appended to the pass's own log
        assert f"argv ['--seed', '0'] cwd {sab.REPO} env pass0" in text0
        assert "RuntimeError: stand-in failure" in results[2][1]
        # A pass that runs on is killed with its process group, as run_pass does; it leaves no status.
        p = fs.start(["--sleep", "30"], str(tmp_path / "s.log"), str(tmp_path / "s.rc"), env)
        time.sleep(0.3)
        assert p.poll() is None
        os.killpg(p.pid, 9)
        assert p.wait(10) == -9
        fs_log = (tmp_path / "fs.log").read_text()
    finally:
        fs.close()
    assert fs.proc.returncode == 0
    # The entry module was imported by the server only, not once per pass.
    assert "imported once" not in "".join(t for _, t in results)
    assert "forktarget:main" in fs_log and fs_log.count("imported once") == 1  # the import's stdout: the log


def test_fork_server_start_failures_are_clear(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    with pytest.raises(sab.ServeABError, match="fork server gave no answer"):
        sab.ForkServer(sys.executable, env, str(tmp_path / "a.log"), entry="no_such_module_x:main")
    assert "No module named 'no_such_module_x'" in (tmp_path / "a.log").read_text()
    with pytest.raises(sab.ServeABError, match="did not start"):
        sab.ForkServer(sys.executable, env, str(tmp_path / "b.log"), entry="nocolon")


CLIENT_ENTRY = f'''
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("serve_ab_test_client", {THIS!r})
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)


def main():
    if os.environ.get("CLIENT_FAIL_SEED") == sys.argv[sys.argv.index("--seed") + 1]:
        print("stand-in client: failing on purpose", flush=True)
        sys.exit(5)
    client._client_main(["--client", *sys.argv[1:]])
'''


def test_fork_mode_protocol_with_the_stand_in_client(tiny_dir, tmp_path):
    """The default bench mode end to end: every pass forked from one fork server (entry: the stand-in client),
    passes recorded as in process mode, and a failing pass names the fork server and the way out."""
    (tmp_path / "forkclient.py").write_text(CLIENT_ENTRY)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), SERVE_AB_BENCH_ENTRY="forkclient:main")
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _speed_cmd("--no-log-facts"))
    args += ["--bench-mode", "fork", "--engines", "patched", "--workloads", "chat", "--num-prompts", "3",
             "--warmup-prompts", "2", "--repeats", "2", "--bench-python", sys.executable,
             "--bench-args", "--random-input-len 8 --random-output-len 6 --warmup-requests 1"]
    proc = _run_serve_ab(args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = _doc(tmp_path)
    assert doc["meta"]["bench_client"]["mode"] == "fork"
    assert [(r["kind"], r["seed"], r["status"]) for r in doc["runs"]] == [
        ("warmup", 1, "ok"), ("timed", 2, "ok"), ("timed", 3, "ok")]
    assert all(r["result"]["completed"] == r["num_prompts"] for r in doc["runs"])
    fs_log = open(os.path.join(doc["meta"]["log_dir"], "bench-forkserver.log")).read()
    assert fs_log.count("forkclient:main") == 1  # one fork server for the three passes
    assert _pids_alive(rec) == []

    proc = _run_serve_ab(args + ["--name", "serve_ab_fail"], env=dict(env, CLIENT_FAIL_SEED="2"))
    assert proc.returncode == 2
    assert "bench_serving exited with status 5 and no result (repeat 0, seed 2)" in proc.stderr
    assert "`--bench-mode process` runs each pass as its own process" in proc.stderr
    assert "stand-in client: failing on purpose" in proc.stderr  # the pass's log tail
    bad = _doc(tmp_path, name="serve_ab_fail")
    assert [(r["seed"], r["status"]) for r in bad["runs"]] == [(1, "ok"), (2, "failed")]
    assert _pids_alive(rec) == []


# ---------------------------------------------------------------------------------------------------------
# the video workloads: serve_ab's own video client (the real one) against the stand-in server
# ---------------------------------------------------------------------------------------------------------
VIDEO_CLIENT = os.path.join(REPO, "benchmark", "gemma4", "video_client.py")


def _video_lines(doc, run):
    """The stand-in's ``stand-in video ...`` lines of one pass (one per video it accepted)."""
    return [ln.split("stand-in video ")[1] for ln in _pass_log(doc, run).splitlines() if "stand-in video " in ln]


def test_video_workloads_run_the_video_client_with_the_pass_protocol(tiny_dir, tmp_path, client_python):
    """video8 and video32 beside chat on one server, both engines (ABBA): serve_ab runs the real video client for
    them (the stand-in client for chat), with the warm-up pass, timed repeats, seeds and flushes of any workload;
    --bench-args reach both clients, each ignoring the other's flags."""
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _speed_cmd())
    args += ["--workloads", "chat,video8,video32", "--num-prompts", "3", "--warmup-prompts", "2", "--repeats", "2",
             "--bench-python", client_python,
             "--bench-args", "--random-input-len 8 --random-output-len 6 --warmup-requests 1 --resolution 48x64 "
                             "--output-len 6"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = _doc(tmp_path)
    md = (tmp_path / "out" / "serve_ab.md").read_text()
    assert doc["status"] == "complete" and _pids_alive(rec) == []
    assert [s["engine"] for s in _starts(rec)] == ["upstream", "patched"]  # one profile: one server per engine
    assert doc["workloads"]["video8"]["client"] == "video" and "client" not in doc["workloads"]["chat"]
    for wl, frames in (("video8", 8), ("video32", 32)):
        for eng in ("upstream", "patched"):
            warm, timed = _runs(doc, eng, wl, "warmup"), _runs(doc, eng, wl, "timed")
            assert [(r["seed"], r["num_prompts"], r["result"]["completed"]) for r in warm] == [(1, 2, 2)]
            assert [(r["rep"], r["seed"], r["num_prompts"], r["result"]["completed"]) for r in timed] == \
                [(0, 2, 3, 3), (1, 3, 3, 3)]
            for r in warm + timed:
                cmd, res = r["bench_cmd"], r["result"]
                assert cmd[1] == VIDEO_CLIENT and cmd[cmd.index("--seed") + 1] == str(r["seed"])
                assert cmd.count("--num-prompts") == 1 and cmd[cmd.index("--num-prompts") + 1] == str(r["num_prompts"])
                assert r["flush_status"] == 200 and "server_info" not in res
                assert (res["frames_per_video"], res["resolution"], res["failed"]) == (frames, "48x64", 0)
                assert res["ignored_args"] == ["--random-input-len", "8", "--random-output-len", "6"]
                # The server's own token counts: 6 out per request, 10 + 64 per frame in (the stand-in's usage).
                assert res["total_output_tokens"] == 6 * r["num_prompts"]
                assert res["total_input_tokens"] == r["num_prompts"] * (10 + 64 * frames)
                assert res["median_ttft_ms"] > 0 and res["median_tpot_ms"] > 0 and res["duration"] > 0
                # Every request (the pass's warm-up request too) carried one video of that many frames and size.
                lines = _video_lines(doc, r)
                assert len(lines) == r["num_prompts"] + 1
                assert all(re.fullmatch(rf"frames={frames} size=64x48 codec=MJPG bytes=\d+", ln) for ln in lines)
            summ = doc["summary"][wl][eng]
            assert summ["n"] == 2 and summ["seeds"] == [2, 3]
            durations = [r["result"]["duration"] for r in timed]
            assert summ["metrics"]["duration"]["median"] == pytest.approx(statistics.median(durations))
    # No two passes on a server sent the same video or prompt (the video client's warm-up requests are videos of
    # their own); both engines sent the same ones in the same pass.
    for srv in doc["servers"]:
        seen = set()
        for r in doc["runs"]:
            if r["engine"] == srv["engine"]:
                h = _pass_hashes(tmp_path, doc, r)
                extra = 1 if r["workload"].startswith("video") else 0
                assert len(h) == r["num_prompts"] + extra and not (h & seen), (r["workload"], r["kind"], r["rep"])
                seen |= h
    for wl in ("video8", "video32"):
        for r in _runs(doc, "upstream", wl):
            twin = next(t for t in _runs(doc, "patched", wl) if (t["kind"], t["rep"]) == (r["kind"], r["rep"]))
            assert _pass_hashes(tmp_path, doc, r) == _pass_hashes(tmp_path, doc, twin)
    # Token delay 6 ms vs 1 ms: the table shows the patched stand-in ahead on the video workloads' TPOT too.
    rows = {(r["workload"], r["metric"]): r for r in doc["rows"]}
    tpot = rows[("video8", "median_tpot_ms")]
    assert tpot["ratio"] == pytest.approx(tpot["upstream"]["median"] / tpot["patched"]["median"]) and tpot["ratio"] > 2
    line = next(ln for ln in md.splitlines() if ln.startswith("| video32 | median TPOT (ms) |"))
    assert "n=2 hint" in line and f"{rows[('video32', 'median_tpot_ms')]['ratio']:.2f}x" in line
    assert "- video8: one 8-frame 480x480 random video per request" in md
    assert "video client (benchmark/gemma4/video_client.py) --frames 32 --resolution 480x480" in md


def test_video_pass_runs_as_its_own_process_in_fork_mode(tiny_dir, tmp_path):
    """Fork mode forks bench_serving passes only: a video-only run starts no fork server."""
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--no-log-facts"))
    args += ["--bench-mode", "fork", "--engines", "patched", "--workloads", "video8", "--num-prompts", "2",
             "--warmup-prompts", "1", "--repeats", "1", "--bench-args", "--resolution 32x32 --warmup-requests 0"]
    proc = _run_serve_ab(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = _doc(tmp_path)
    assert [(r["kind"], r["result"]["completed"]) for r in doc["runs"]] == [("warmup", 1), ("timed", 2)]
    assert not os.path.exists(os.path.join(doc["meta"]["log_dir"], "bench-forkserver.log"))
    assert _pids_alive(rec) == []


def test_video_server_without_decoder_fails_the_pass_clearly(tiny_dir, tmp_path):
    """A server that cannot decode videos (sglang 0.5.23 without torchcodec or decord answers 400): the client's
    warm-up fails (as bench_serving's), or without warm-up requests the pass completes 0 requests; either way
    serve_ab stops with the video client named and the server's answer in the client's log."""
    port = _free_port()
    args, rec = _base_args(tiny_dir, tmp_path, port, _standin_cmd("--no-video-decoder"))
    args += ["--engines", "patched", "--workloads", "video8", "--num-prompts", "2", "--repeats", "1"]
    proc = _run_serve_ab(args + ["--bench-args", "--resolution 32x32 --warmup-requests 1"])
    assert proc.returncode == 2
    assert "[patched/video8] the video client exited with status 1 and no result (warm-up, seed 1); log" \
        in proc.stderr
    assert "fork server" not in proc.stderr  # the video client is never forked
    assert "warm-up failed: none of its 1 requests completed; first error: HTTP 400" in proc.stderr  # log tail
    assert "Could not decode video: No module named 'decord'" in proc.stderr
    doc = _doc(tmp_path)
    (warm,) = doc["runs"]
    assert (warm["kind"], warm["status"], warm["result"]) == ("warmup", "failed", None)
    assert doc["status"] == "failed"

    proc = _run_serve_ab(args + ["--bench-args", "--resolution 32x32 --warmup-requests 0", "--name", "serve_ab_0"])
    assert proc.returncode == 2
    assert "[patched/video8] the video client completed 0 requests (warm-up, seed 1)" in proc.stderr
    doc = _doc(tmp_path, name="serve_ab_0")
    (warm,) = doc["runs"]
    client_log = open(os.path.join(doc["meta"]["log_dir"], warm["bench_log"])).read()
    assert "Failed requests:                         2" in client_log
    assert "request error: HTTP 400 Bad Request" in client_log and "No module named 'decord'" in client_log
    assert _pids_alive(rec) == []
