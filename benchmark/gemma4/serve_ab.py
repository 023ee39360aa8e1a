"""End-to-end A/B: stock sglang 0.5.23 against the patched engine, measured with ``bench_serving``.

For one model (a hub id, or a directory such as one written by make_model_dir.py) and a list of workloads,
the script starts each engine's server in turn (upstream first, then patched), waits until it answers,
runs SGLang's own load generator ``python -m sglang.bench_serving`` against it, stops it, and writes one
markdown table and one JSON file comparing the two: duration, median TTFT, median TPOT, request/output/
total throughput (and the speculative accept length where the server reports one).

The two engines are two Python environments (``make engine-upstream`` -> .venv-upstream, ``make engine``
-> .venv). The load generator always runs from one environment (``--bench-python``, default the patched
one), so both engines see the same client. Workloads are those of the reference series:

    chat           random 1000/1000, 80 prompts, range ratio 1.0, 2 warm-up requests, seed 1
    summarization  random 8000/1000, 80 prompts (same settings)
    images         6 random 480x480 images per request, 100 prompts, text 50 in / 10 out,
                   server with --disable-radix-cache and the multimodal embedding cache off
                   (SGLANG_VLM_CACHE_SIZE_MB=0) so that the vision encoder runs for every request

``random`` prompts are drawn from a ShareGPT-format file; with no network, a synthetic one is written
next to the logs (``--dataset-path`` to use your own). Directories without weight files are served with
``--load-format dummy`` (override with ``--load-format``).

Run from the repository root on a GPU machine:

    python benchmark/gemma4/serve_ab.py --model google/gemma-4-E2B-it --workloads chat,images
    python benchmark/gemma4/make_model_dir.py dir e2b build/models/e2b
    python benchmark/gemma4/serve_ab.py --model build/models/e2b --workloads chat --num-prompts 20

``--server-cmd`` replaces the launch command (a template with {python} {model} {host} {port} {engine}
{server_args}); the tests use it to start a stand-in server. Every server started is stopped (its whole
process group) on success, on error and on Ctrl-C. Exit status 0 when every run completed, 2 on an error
(a server that dies, a port already taken, readiness that times out, bench_serving that fails), with a
message naming the engine, the workload and the log file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
ENGINES = ("upstream", "patched")
DEFAULT_PYTHON = {
    "upstream": os.path.join(".venv-upstream", "bin", "python"),
    "patched": os.path.join(".venv", "bin", "python"),
}
DEFAULT_SERVER_CMD = "{python} -m sglang.launch_server --model-path {model} --host {host} --port {port} {server_args}"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class Workload:
    name: str
    bench_args: Tuple[str, ...]
    server_args: Tuple[str, ...] = ()
    server_env: Tuple[Tuple[str, str], ...] = ()
    needs_sharegpt: bool = False
    description: str = ""


_COMMON = ("--backend", "sglang-oai-chat", "--random-range-ratio", "1.0", "--warmup-requests", "2",
           "--seed", "1")
WORKLOADS: Dict[str, Workload] = {
    "chat": Workload(
        "chat",
        _COMMON + ("--dataset-name", "random", "--random-input-len", "1000", "--random-output-len", "1000",
                   "--num-prompts", "80"),
        needs_sharegpt=True,
        description="random 1000/1000, 80 prompts",
    ),
    "summarization": Workload(
        "summarization",
        _COMMON + ("--dataset-name", "random", "--random-input-len", "8000", "--random-output-len", "1000",
                   "--num-prompts", "80"),
        needs_sharegpt=True,
        description="random 8000/1000, 80 prompts",
    ),
    "images": Workload(
        "images",
        _COMMON + ("--dataset-name", "image", "--image-count", "6", "--image-resolution", "480x480",
                   "--image-content", "random", "--random-input-len", "50", "--random-output-len", "10",
                   "--num-prompts", "100"),
        server_args=("--disable-radix-cache",),
        server_env=(("SGLANG_VLM_CACHE_SIZE_MB", "0"),),
        description="6 x 480x480 random images per request, text 50/10, 100 prompts; radix and mm-embedding caches off",
    ),
}

# (key in bench_serving's JSON, label, unit, True when lower is better)
METRICS = [
    ("duration", "duration", "s", True),
    ("median_ttft_ms", "median TTFT", "ms", True),
    ("median_tpot_ms", "median TPOT", "ms", True),
    ("request_throughput", "request throughput", "req/s", False),
    ("output_throughput", "output throughput", "tok/s", False),
    ("total_throughput", "total throughput", "tok/s", False),
]


class ServeABError(RuntimeError):
    """A run failed; the message names the engine, workload and log."""


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------
def port_in_use(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return "(no log)"
    return "".join(lines[-n:]).rstrip()


def _http_get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return 0


class Server:
    """One engine's server process, in its own process group so that it and its children stop together."""

    def __init__(self, engine: str, cmd: List[str], env: Dict[str, str], log_path: str, port: int):
        self.engine, self.cmd, self.env, self.log_path, self.port = engine, cmd, env, log_path, port
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    def start(self) -> None:
        if port_in_use(HOST, self.port):
            raise ServeABError(
                f"[{self.engine}] port {self.port} on {HOST} is already in use; stop what listens there or "
                f"pass --port"
            )
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")
        self._log.write("$ " + " ".join(shlex.quote(c) for c in self.cmd) + "\n")
        self._log.flush()
        try:
            self.proc = subprocess.Popen(
                self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                start_new_session=True,
            )
        except OSError as e:
            raise ServeABError(f"[{self.engine}] cannot start server {self.cmd[0]!r}: {e}") from e

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_error(self, when: str) -> ServeABError:
        code = self.proc.returncode if self.proc else None
        return ServeABError(
            f"[{self.engine}] server exited with status {code} {when}; log {self.log_path}:\n"
            f"{_tail(self.log_path)}"
        )

    def wait_ready(self, timeout_s: float, poll_s: float = 1.0) -> float:
        """Block until /health_generate (or /health where the former is absent) answers 200."""
        base = f"http://{HOST}:{self.port}"
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        path = "/health_generate"
        while True:
            if not self.alive():
                raise self.died_error("before it became ready")
            status = _http_get(base + path, timeout=min(30.0, max(1.0, timeout_s)))
            if status == 404 and path == "/health_generate":
                path = "/health"
                continue
            if status == 200 and _http_get(base + "/v1/models") == 200:
                return time.monotonic() - t0
            if time.monotonic() >= deadline:
                raise ServeABError(
                    f"[{self.engine}] server not ready after {timeout_s:.0f}s (GET {path} -> "
                    f"{status or 'no answer'}); log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(poll_s)

    def stop(self, grace_s: float = 30.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            pgid = None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                pgid = os.getpgid(proc.pid)
            target = pgid if pgid == proc.pid else None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if target is not None:
                    os.killpg(target, signal.SIGTERM)
                else:
                    proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if target is not None:
                        os.killpg(target, signal.SIGKILL)
                    else:
                        proc.kill()
                proc.wait(timeout=grace_s)
        if proc is not None and proc.poll() is not None:
            # Children that outlived the leader (same group): make sure they are gone too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def has_weights(model: str) -> bool:
    if not os.path.isdir(model):
        return True  # a hub id: the server downloads real weights
    return any(f.endswith(WEIGHT_SUFFIXES) for f in os.listdir(model))


def write_sharegpt(path: str, n: int, seed: int = 1) -> str:
    """A ShareGPT-format file of ``n`` two-turn conversations of plain words (bench_serving's ``random``
    dataset cuts and repeats these to the requested lengths)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from make_model_dir import _WORDS as words  # same words the local tokenizers know
    finally:
        sys.path.pop(0)
    words = [w for w in words if w.isalpha()]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        human = " ".join(rng.choice(words) for _ in range(rng.randint(200, 400)))
        gpt = " ".join(rng.choice(words) for _ in range(rng.randint(50, 150)))
        rows.append({"id": f"synthetic-{i}", "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": gpt}]})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return path


def _version_of(python: str) -> str:
    try:
        out = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('sglang'))"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _device() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return "; ".join(ln.strip() for ln in out.stdout.strip().splitlines())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "no GPU (CPU machine)"


def _check_python(engine: str, python: str) -> str:
    path = python if os.path.isabs(python) else os.path.join(REPO, python)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        hint = {"upstream": "make engine-upstream", "patched": "make engine"}.get(engine, "")
        raise ServeABError(
            f"[{engine}] python {python!r} not found or not executable"
            + (f"; build it with `{hint}` or pass --{engine}-python" if hint else "")
        )
    return path


def ratio(upstream: Optional[float], patched: Optional[float], lower_is_better: bool) -> Optional[float]:
    """Improvement factor of patched over upstream (> 1 means patched is better)."""
    if upstream is None or patched is None or upstream <= 0 or patched <= 0:
        return None
    return upstream / patched if lower_is_better else patched / upstream


# --------------------------------------------------------------------------
# the A/B
# --------------------------------------------------------------------------
@dataclass
class Plan:
    model: str
    workloads: List[Workload]
    pythons: Dict[str, str]
    bench_python: str
    engines: List[str]
    port: int
    ready_timeout_s: float
    bench_timeout_s: float
    server_cmd: str
    extra_server_args: List[str]
    bench_extra: List[str]
    load_format: Optional[str]
    num_prompts: Optional[int]
    repeats: int
    log_dir: str
    dataset_path: Optional[str]
    env: Dict[str, str] = field(default_factory=dict)


def server_command(plan: Plan, engine: str, wl: Workload) -> List[str]:
    server_args: List[str] = []
    if plan.load_format:
        server_args += ["--load-format", plan.load_format]
    server_args += list(wl.server_args) + list(plan.extra_server_args)
    try:
        text = plan.server_cmd.format(
            python=shlex.quote(plan.pythons[engine]), model=shlex.quote(plan.model), host=HOST,
            port=plan.port, engine=engine, server_args=" ".join(shlex.quote(a) for a in server_args),
        )
    except (KeyError, IndexError) as e:
        raise ServeABError(f"--server-cmd has an unknown placeholder {e}; known: "
                           "{python} {model} {host} {port} {engine} {server_args}") from e
    return shlex.split(text)


def bench_command(plan: Plan, wl: Workload, out_file: str) -> List[str]:
    cmd = [plan.bench_python, "-m", "sglang.bench_serving", *wl.bench_args]
    if wl.needs_sharegpt:
        cmd += ["--dataset-path", plan.dataset_path]
    if plan.num_prompts:
        cmd += ["--num-prompts", str(plan.num_prompts)]
    cmd += ["--host", HOST, "--port", str(plan.port), "--output-file", out_file,
            "--ready-check-timeout-sec", "30", "--disable-tqdm"]
    return cmd + list(plan.bench_extra)


def _read_result(out_file: str) -> Optional[Dict[str, Any]]:
    try:
        with open(out_file, "r", encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return None
    for ln in reversed(lines):
        with contextlib.suppress(ValueError):
            obj = json.loads(ln)
            if isinstance(obj, dict) and "duration" in obj:
                return obj
    return None


def run_bench(plan: Plan, server: Server, engine: str, wl: Workload, rep: int) -> Dict[str, Any]:
    tag = f"{engine}-{wl.name}-{rep}"
    out_file = os.path.join(plan.log_dir, f"bench-{tag}.jsonl")
    log_path = os.path.join(plan.log_dir, f"bench-{tag}.log")
    with contextlib.suppress(FileNotFoundError):
        os.remove(out_file)
    cmd = bench_command(plan, wl, out_file)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=plan.env, cwd=REPO,
                                    start_new_session=True)
        except OSError as e:
            raise ServeABError(f"[{engine}/{wl.name}] cannot start bench_serving: {e}") from e
        t0 = time.monotonic()
        try:
            while proc.poll() is None:
                if not server.alive():
                    raise server.died_error(f"while bench_serving ran workload {wl.name!r}")
                if time.monotonic() - t0 > plan.bench_timeout_s:
                    raise ServeABError(
                        f"[{engine}/{wl.name}] bench_serving did not finish in {plan.bench_timeout_s:.0f}s; "
                        f"log {log_path}:\n{_tail(log_path)}"
                    )
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    result = _read_result(out_file)
    if proc.returncode != 0 or result is None:
        if not server.alive():
            raise server.died_error(f"while bench_serving ran workload {wl.name!r}")
        raise ServeABError(
            f"[{engine}/{wl.name}] bench_serving exited with status {proc.returncode} and "
            f"{'no result' if result is None else 'a result'}; log {log_path}:\n{_tail(log_path)}"
        )
    if not result.get("completed"):
        raise ServeABError(f"[{engine}/{wl.name}] bench_serving completed 0 requests; log {log_path}")
    return result


def _summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    keys = [m[0] for m in METRICS] + ["completed", "accept_length", "total_input_tokens",
                                      "total_output_tokens", "max_concurrency"]
    for k in keys:
        vals = [r.get(k) for r in runs if isinstance(r.get(k), (int, float))]
        out[k] = statistics.median(vals) if vals else None
    return out


def run_ab(plan: Plan) -> Dict[str, Any]:
    """Run every workload on every engine in turn; return the comparison."""
    if any(wl.needs_sharegpt for wl in plan.workloads) and not plan.dataset_path:
        n = max(200, (plan.num_prompts or 0) * 2)
        plan.dataset_path = write_sharegpt(os.path.join(plan.log_dir, "synthetic_sharegpt.json"), n)
    results: Dict[str, Dict[str, Any]] = {wl.name: {} for wl in plan.workloads}
    servers: List[Server] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(signum, frame):  # stop servers, then let the default handling happen
        for s in servers:
            s.stop(grace_s=10)
        raise KeyboardInterrupt(f"signal {signum}")

    for s in previous:
        signal.signal(s, _on_signal)
    try:
        for wl in plan.workloads:
            for engine in plan.engines:
                env = dict(plan.env)
                env.update(dict(wl.server_env))
                cmd = server_command(plan, engine, wl)
                server = Server(engine, cmd, env, os.path.join(plan.log_dir, f"server-{engine}-{wl.name}.log"),
                                plan.port)
                servers.append(server)
                print(f"[{engine}/{wl.name}] starting: {' '.join(cmd)}", flush=True)
                try:
                    server.start()
                    ready_s = server.wait_ready(plan.ready_timeout_s)
                    print(f"[{engine}/{wl.name}] ready in {ready_s:.1f}s", flush=True)
                    runs = [run_bench(plan, server, engine, wl, r) for r in range(plan.repeats)]
                finally:
                    server.stop()
                summary = _summarise(runs)
                results[wl.name][engine] = {"summary": summary, "runs": runs, "ready_s": ready_s,
                                            "server_cmd": cmd, "server_env": dict(wl.server_env)}
                print(f"[{engine}/{wl.name}] duration {summary['duration']:.2f}s, "
                      f"median TTFT {summary['median_ttft_ms']}, median TPOT {summary['median_tpot_ms']}",
                      flush=True)
    finally:
        for s in servers:
            s.stop(grace_s=10)
        for s, h in previous.items():
            signal.signal(s, h)
    return results


def make_report(plan: Plan, results: Dict[str, Any], meta: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    rows = []
    for wl in plan.workloads:
        by = results.get(wl.name, {})
        for key, label, unit, lower in METRICS:
            u = (by.get("upstream") or {}).get("summary", {}).get(key)
            p = (by.get("patched") or {}).get("summary", {}).get(key)
            rows.append({"workload": wl.name, "metric": key, "label": label, "unit": unit,
                         "lower_is_better": lower, "upstream": u, "patched": p,
                         "improvement": ratio(u, p, lower)})
    doc = {"meta": meta, "workloads": {wl.name: {"description": wl.description, "bench_args": list(wl.bench_args),
                                                   "server_args": list(wl.server_args),
                                                   "server_env": dict(wl.server_env)} for wl in plan.workloads},
           "rows": rows, "results": results}

    def fmt(v: Optional[float]) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"

    lines = [
        f"# bench_serving A/B: sglang {meta['versions'].get('upstream', '?')} vs "
        f"{meta['versions'].get('patched', '?')}",
        "",
        f"Model `{meta['model']}`{' (dummy weights)' if meta.get('load_format') == 'dummy' else ''}; "
        f"device: {meta['device']}; date {meta['date']}; git commit {meta['commit']}; "
        f"{meta['repeats']} run(s) per engine and workload (median shown).",
        "Improvement = upstream / patched for times, patched / upstream for throughputs (> 1: patched better).",
        "",
        "| workload | metric | upstream | patched | improvement |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        imp = "-" if r["improvement"] is None else f"{r['improvement']:.2f}x"
        lines.append(f"| {r['workload']} | {r['label']} ({r['unit']}) | {fmt(r['upstream'])} | "
                     f"{fmt(r['patched'])} | {imp} |")
    lines += ["", "Workloads:"]
    for wl in plan.workloads:
        lines.append(f"- {wl.name}: {wl.description}; bench_serving {' '.join(wl.bench_args)}"
                     + (f" --num-prompts {plan.num_prompts}" if plan.num_prompts else "")
                     + (f" {' '.join(plan.bench_extra)}" if plan.bench_extra else "")
                     + (f"; server {' '.join(wl.server_args)}" if wl.server_args else "")
                     + (f"; env {' '.join(f'{k}={v}' for k, v in wl.server_env)}" if wl.server_env else ""))
    return doc, "\n".join(lines) + "\n"


def parse_workloads(spec: str) -> List[Workload]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ServeABError("--workloads is empty")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ServeABError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    return [WORKLOADS[n] for n in names]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id or model directory")
    ap.add_argument("--workloads", default="chat,summarization,images",
                    help=f"comma list of {', '.join(WORKLOADS)}")
    ap.add_argument("--upstream-python", default=DEFAULT_PYTHON["upstream"])
    ap.add_argument("--patched-python", default=DEFAULT_PYTHON["patched"])
    ap.add_argument("--bench-python", default=None, help="python that runs bench_serving (default: patched)")
    ap.add_argument("--engines", default="upstream,patched", help="subset/order of engines to run")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for each server")
    ap.add_argument("--bench-timeout", type=float, default=3600.0, help="seconds for one bench_serving run")
    ap.add_argument("--server-cmd", default=DEFAULT_SERVER_CMD,
                    help="launch template; placeholders {python} {model} {host} {port} {engine} {server_args}")
    ap.add_argument("--server-args", default="", help="extra server arguments for both engines (one string)")
    ap.add_argument("--bench-args", default="", help="extra bench_serving arguments, appended last (one string)")
    ap.add_argument("--load-format", default=None,
                    help="default: dummy for a directory without weight files, else the server's default")
    ap.add_argument("--num-prompts", type=int, default=None, help="override every workload's prompt count")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dataset-path", default=None, help="ShareGPT-format file for the random workloads")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmark", "gemma4", "results"))
    ap.add_argument("--name", default="serve_ab", help="result file stem (serve_ab*.json / .md)")
    ap.add_argument("--log-dir", default=os.path.join(REPO, "build", "serve_ab_logs"))
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if not ns.name.startswith("serve_ab"):
            raise ServeABError(f"--name must start with 'serve_ab', got {ns.name!r}")
        if ns.repeats < 1:
            raise ServeABError("--repeats must be at least 1")
        if not 0 < ns.port < 65536:
            raise ServeABError(f"--port {ns.port} is not a TCP port")
        if ns.num_prompts is not None and ns.num_prompts < 1:
            raise ServeABError("--num-prompts must be at least 1")
        engines = [e.strip() for e in ns.engines.split(",") if e.strip()]
        bad = [e for e in engines if e not in ENGINES]
        if bad or not engines:
            raise ServeABError(f"--engines must name some of {', '.join(ENGINES)}, got {ns.engines!r}")
        workloads = parse_workloads(ns.workloads)
        model = ns.model
        if os.path.exists(model):
            model = os.path.abspath(model)
            if not os.path.isfile(os.path.join(model, "config.json")):
                raise ServeABError(f"{model} has no config.json; write one with make_model_dir.py")
        elif model.startswith((".", "/")) or model.count("/") != 1:
            raise ServeABError(f"--model {model!r} is neither an existing directory nor a hub id (org/name)")
        pythons = {
            "upstream": _check_python("upstream", ns.upstream_python) if "upstream" in engines else "",
            "patched": _check_python("patched", ns.patched_python) if "patched" in engines else "",
        }
        bench_python = _check_python("bench", ns.bench_python or ns.patched_python)
        load_format = ns.load_format or (None if has_weights(model) else "dummy")
        env = dict(os.environ)
        if os.path.isdir(model):
            env.setdefault("HF_HUB_OFFLINE", "1")
            env.setdefault("TRANSFORMERS_OFFLINE", "1")
        log_dir = os.path.abspath(ns.log_dir)
        os.makedirs(log_dir, exist_ok=True)
        plan = Plan(
            model=model, workloads=workloads, pythons=pythons, bench_python=bench_python, engines=engines,
            port=ns.port, ready_timeout_s=ns.ready_timeout, bench_timeout_s=ns.bench_timeout,
            server_cmd=ns.server_cmd, extra_server_args=shlex.split(ns.server_args),
            bench_extra=shlex.split(ns.bench_args), load_format=load_format, num_prompts=ns.num_prompts,
            repeats=ns.repeats, log_dir=log_dir,
            dataset_path=os.path.abspath(ns.dataset_path) if ns.dataset_path else None, env=env,
        )
        if plan.dataset_path and not os.path.isfile(plan.dataset_path):
            raise ServeABError(f"--dataset-path {plan.dataset_path} does not exist")
        meta = {
            "model": ns.model, "load_format": load_format, "device": _device(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": _git_commit(),
            "engines": engines, "repeats": ns.repeats, "num_prompts_override": ns.num_prompts,
            "versions": {e: _version_of(pythons[e]) for e in engines},
            "bench_client": _version_of(bench_python), "server_cmd_template": ns.server_cmd,
            "extra_server_args": plan.extra_server_args, "extra_bench_args": plan.bench_extra,
        }
        results = run_ab(plan)
        doc, md = make_report(plan, results, meta)
        os.makedirs(ns.out, exist_ok=True)
        jpath = os.path.join(ns.out, ns.name + ".json")
        mpath = os.path.join(ns.out, ns.name + ".md")
        with open(jpath, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=str)
            f.write("\n")
        with open(mpath, "w", encoding="utf-8") as f:
            f.write(md)
        print(md)
        print(f"wrote {jpath} and {mpath}")
        return 0
    except ServeABError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
