"""End-to-end A/B: stock sglang 0.5.23 against the patched engine, measured with ``bench_serving``.

Two commands:

``run`` (also what a call without a command does) serves one model with one or both engines and drives
SGLang's own load generator ``python -m sglang.bench_serving`` against each server. ``merge`` joins the JSON
files of several ``run`` calls (one engine each, or mixed) into one comparison, so that a long matrix can run
in parts.

Protocol of ``run``:

* Workloads that need the same server (same server arguments and environment) form a *server profile*; one
  server is started per (engine, profile) and every workload of the profile runs against it.
* Per workload on a server: one warm-up pass (``--warmup-prompts`` prompts, default 16, capped at the
  workload's count; seed = ``--base-seed``), kept in the JSON as warm-up and never in the medians; then
  ``--repeats`` timed passes (default 3), seed ``base + 1 + rep``. Every pass draws its own prompts (and
  images): bench_serving seeds its sampling with ``--seed``, and each pass of a ``random`` workload gets its
  own synthetic ShareGPT file generated from (workload, seed), so no two passes send the same prompt and the
  radix / multimodal caches cannot hit across passes. Both engines get the same seeds, hence the same
  prompts, in the same repeat.
* Before every pass the server's caches are flushed (``POST /flush_cache``; ``--no-flush`` to skip): that also
  resets the server's speculative accept-length counters, which bench_serving reads from ``/server_info``
  (otherwise a pass would report the average over the server's whole life).
* Engine order: ``--order alternate`` (default) runs the engines in the ``--engines`` order for profiles
  p0, p2, ... and in reverse for p1, p3, ... (ABBA); ``--order fixed`` keeps the given order. Across models,
  alternate the ``--engines`` order yourself; the JSON records the order that ran.
* From each server's log: the full/SWA pool tokens ("Use sliding window memory pool"), the scheduler's
  max_total_num_tokens / max_running_requests / context_len / available memory line, the "Gemma-4 series"
  line and any "Gemma-4 KV split:" lines; per pass (log byte range recorded) the serving-time compile lines
  ("Triton kernel 'X' took N s to compile after serving started") and the most running requests its
  "Decode batch, #running-req: N" lines report (logged every --decode-log-interval decode steps, so a sampled
  peak). Absent lines are recorded as None.
* The JSON (``--out DIR``, ``--name serve_ab...``) is rewritten atomically after every pass, so a run that is
  killed part-way leaves every finished pass on disk; the markdown table is written once the run is done.
  Each cell: median and [min-max] over the timed repeats, and n; "hint" marks fewer than 3 repeats.

Workloads (bench_serving 0.5.23 has no video dataset, so there is no video workload):

    chat            random 1000/1000, 80 prompts, range ratio 1.0, 2 warm-up requests
    summarization   random 8000/1000, 80 prompts (same settings)
    images          6 random 480x480 images per request, 100 prompts, text 50 in / 10 out, default server
    images-nocache  the same with --disable-radix-cache and SGLANG_VLM_CACHE_SIZE_MB=0 (the vision encoder
                    runs for every request whatever the content)

Directories without weight files are served with ``--load-format dummy`` (override with ``--load-format``).
``--mtp-draft DIR`` adds sglang's MTP flags for a Gemma-4 assistant draft to both engines:
``--speculative-algorithm NEXTN --speculative-draft-model-path DIR --speculative-num-steps 3
--speculative-eagle-topk 1 --speculative-num-draft-tokens 4`` (sglang promotes NEXTN to FROZEN_KV_MTP for a
Gemma4AssistantForCausalLM draft).

Run from the repository root on a GPU machine, e.g.:

    python benchmark/gemma4/serve_ab.py run --model build/models/e2b --workloads chat,images \\
        --engines upstream --name serve_ab_e2b_upstream
    python benchmark/gemma4/serve_ab.py run --model build/models/e2b --workloads chat,images \\
        --engines patched --name serve_ab_e2b_patched
    python benchmark/gemma4/serve_ab.py merge benchmark/gemma4/results/serve_ab_e2b_upstream.json \\
        benchmark/gemma4/results/serve_ab_e2b_patched.json --name serve_ab_e2b

``--dry-run`` prints every server and bench_serving command (with seeds) and the order, then exits. ``--server-cmd``
replaces the launch command (a template with {python} {model} {host} {port} {engine} {server_args}); the tests
use it to start a stand-in server. Every server started is stopped (its whole process group) on success, on
error and on Ctrl-C. Exit status 0 when every pass completed, 2 on an error (a server that dies, a port already
taken, readiness that times out, bench_serving that fails, merge inputs that disagree), with a message naming
the engine, the workload and the log file (or the files).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import random
import re
import select
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
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kv_budget  # noqa: E402  (benchmark/gemma4/kv_budget.py: the MTP deployment the planner assumes)
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)

REPO = stamp.REPO
HOST = "127.0.0.1"
ENGINES = ("upstream", "patched")
FORMAT = "serve_ab/2"
DEFAULT_PYTHON = {
    "upstream": os.path.join(".venv-upstream", "bin", "python"),
    "patched": os.path.join(".venv", "bin", "python"),
}
DEFAULT_SERVER_CMD = "{python} -m sglang.launch_server --model-path {model} --host {host} --port {port} {server_args}"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MIN_REPEATS_FOR_CLAIM = 3
GEMMA4_ASSISTANT_ARCHS = ("Gemma4AssistantForCausalLM", "Gemma4UnifiedAssistantForCausalLM")
# Gemma-4 assistant draft: sglang 0.5.23 promotes NEXTN (or EAGLE) to FROZEN_KV_MTP for it.
# Flags serve_ab sets itself on every bench_serving command; --bench-args must not set them.
OWN_BENCH_FLAGS = {
    "--seed": "serve_ab sets it per pass; use --base-seed",
    "--num-prompts": "use --num-prompts",
    "--output-file": "serve_ab writes one file per pass",
    "--host": "serve_ab points bench_serving at the server it started",
    "--port": "use --port",
    "--base-url": "serve_ab points bench_serving at the server it started",
    "--dataset-path": "use --dataset-path",
}


@dataclass(frozen=True)
class Workload:
    name: str
    bench_args: Tuple[str, ...]
    server_args: Tuple[str, ...] = ()
    server_env: Tuple[Tuple[str, str], ...] = ()
    needs_sharegpt: bool = False
    description: str = ""


_COMMON = ("--backend", "sglang-oai-chat", "--random-range-ratio", "1.0", "--warmup-requests", "2")
_IMAGES = _COMMON + ("--dataset-name", "image", "--image-count", "6", "--image-resolution", "480x480",
                     "--image-content", "random", "--random-input-len", "50", "--random-output-len", "10",
                     "--num-prompts", "100")
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
        "images", _IMAGES,
        description="6 x 480x480 random images per request, text 50/10, 100 prompts; default server (caches on, "
                    "content differs per pass)",
    ),
    "images-nocache": Workload(
        "images-nocache", _IMAGES,
        server_args=("--disable-radix-cache",),
        server_env=(("SGLANG_VLM_CACHE_SIZE_MB", "0"),),
        description="6 x 480x480 random images per request, text 50/10, 100 prompts; radix and mm-embedding "
                    "caches off",
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
    ("accept_length", "accept length", "tok/step", False),
]
OPTIONAL_METRICS = {"accept_length"}  # rows only where some run reports it


class ServeABError(RuntimeError):
    """A run failed; the message names the engine, workload and log."""


# --------------------------------------------------------------------------
# argument lists
# --------------------------------------------------------------------------
def set_flag(args: Sequence[str], flag: str, value: str) -> List[str]:
    """``args`` with ``flag``'s value set to ``value``: the first occurrence (``--f v`` or ``--f=v``) is
    rewritten in place, later ones are dropped, and the flag is appended when absent."""
    out: List[str] = []
    placed = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == flag:
            if i + 1 >= len(args):
                raise ServeABError(f"{flag} has no value in {' '.join(args)}")
            if not placed:
                out += [flag, value]
                placed = True
            i += 2
            continue
        if a.startswith(flag + "="):
            if not placed:
                out += [flag, value]
                placed = True
            i += 1
            continue
        out.append(a)
        i += 1
    if not placed:
        out += [flag, value]
    return out


def get_flag(args: Sequence[str], flag: str) -> Optional[str]:
    """The value the last occurrence of ``flag`` gives (argparse semantics), or None."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1:]
    return value


# --------------------------------------------------------------------------
# server logs
# --------------------------------------------------------------------------
_POOL_RE = re.compile(r"Use sliding window memory pool\. full_layer_tokens=(\d+), swa_layer_tokens=(\d+)")
_POOL_ALL_SWA_RE = re.compile(r"Use sliding window memory pool \(all SWA\)\. swa_layer_tokens=(\d+)")
_SCHED_RE = re.compile(
    r"max_total_num_tokens=(\d+), chunked_prefill_size=(-?\d+), max_prefill_tokens=(-?\d+), "
    r"max_running_requests=(\d+), context_len=(\d+), available_(?:gpu|cpu)_mem=(-?[\d.]+) GB"
)
_SERIES_RE = re.compile(r"(Gemma-4 series\b.*?)\s*$")
_KV_SPLIT_RE = re.compile(r"(Gemma-4 KV split:.*?)\s*$")
_COMPILE_RE = re.compile(r"Triton kernel '(.+?)' took ([\d.]+) s to compile after serving started")


def compile_lines(text: str) -> List[Dict[str, Any]]:
    """Serving-time Triton compile lines in ``text``: kernel name and seconds."""
    return [{"kernel": m.group(1), "seconds": float(m.group(2))} for m in _COMPILE_RE.finditer(text)]


_RUNNING_RE = re.compile(r"Decode batch\b[^\n]*?#running-req: (\d+)")


def peak_running_requests(text: str) -> Optional[int]:
    """The most running requests any "Decode batch" line of ``text`` reports (the scheduler logs one every
    --decode-log-interval decode steps, so this is a sampled peak); None without such lines."""
    counts = [int(m.group(1)) for m in _RUNNING_RE.finditer(text)]
    return max(counts) if counts else None


def parse_server_log(text: str) -> Dict[str, Any]:
    """What a server log says about pools and series; None for what it does not say."""
    out: Dict[str, Any] = {"full_layer_tokens": None, "swa_layer_tokens": None, "pool_lines": [],
                           "max_total_num_tokens": None, "chunked_prefill_size": None, "max_prefill_tokens": None,
                           "max_running_requests": None, "context_len": None, "available_mem_gb": None,
                           "series_line": None, "kv_split_lines": [], "compile_lines": []}
    for line in text.splitlines():
        m = _POOL_RE.search(line)
        if m:
            out["pool_lines"].append({"full_layer_tokens": int(m.group(1)), "swa_layer_tokens": int(m.group(2))})
        m = _POOL_ALL_SWA_RE.search(line)
        if m:
            out["pool_lines"].append({"full_layer_tokens": 0, "swa_layer_tokens": int(m.group(1))})
        m = _SCHED_RE.search(line)
        if m and out["max_running_requests"] is None:
            out.update(max_total_num_tokens=int(m.group(1)), chunked_prefill_size=int(m.group(2)),
                       max_prefill_tokens=int(m.group(3)), max_running_requests=int(m.group(4)),
                       context_len=int(m.group(5)), available_mem_gb=float(m.group(6)))
        m = _SERIES_RE.search(line)
        if m and out["series_line"] is None:
            out["series_line"] = m.group(1)
        m = _KV_SPLIT_RE.search(line)
        if m:
            out["kv_split_lines"].append(m.group(1))
    if out["pool_lines"]:  # the target's pool is logged first (a draft worker may log its own after it)
        out["full_layer_tokens"] = out["pool_lines"][0]["full_layer_tokens"]
        out["swa_layer_tokens"] = out["pool_lines"][0]["swa_layer_tokens"]
    out["compile_lines"] = compile_lines(text)
    return out


def read_log(path: str, start: int = 0, end: Optional[int] = None) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


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


def _http(url: str, timeout: float = 5.0, method: str = "GET") -> int:
    try:
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=timeout) as r:
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
            status = _http(base + path, timeout=min(30.0, max(1.0, timeout_s)))
            if status == 404 and path == "/health_generate":
                path = "/health"
                continue
            if status == 200 and _http(base + "/v1/models") == 200:
                return time.monotonic() - t0
            if time.monotonic() >= deadline:
                raise ServeABError(
                    f"[{self.engine}] server not ready after {timeout_s:.0f}s (GET {path} -> "
                    f"{status or 'no answer'}); log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(poll_s)

    def flush_cache(self, timeout_s: float = 60.0) -> int:
        """POST /flush_cache (radix tree, KV pools, mm preprocess cache, speculative accept counters)."""
        return _http(f"http://{HOST}:{self.port}/flush_cache?timeout={timeout_s:g}", timeout=timeout_s + 30,
                     method="POST")

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
# environment facts
# --------------------------------------------------------------------------
def has_weights(model: str) -> bool:
    if not os.path.isdir(model):
        return True  # a hub id: the server downloads real weights
    return any(f.endswith(WEIGHT_SUFFIXES) for f in os.listdir(model))


def write_sharegpt(path: str, n: int, seed: Any = 1) -> str:
    """A ShareGPT-format file of ``n`` two-turn conversations of plain words, generated from ``seed``
    (bench_serving's ``random`` dataset shuffles these with its --seed and cuts/repeats them to length)."""
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
        rows.append({"id": f"synthetic-{seed}-{i}", "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": gpt}]})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return path


# Runs in an engine's python: the sglang version and the series manifest. The manifest module is loaded from
# its file (``sglang/srt/gemma4_series.py``, absent in stock sglang) so that sglang itself is not imported.
_PROBE = r"""
import importlib.metadata as md, importlib.util as iu, json, os
out = {"version": None, "series": None, "series_error": None}
try:
    out["version"] = md.version("sglang")
except Exception as e:
    out["version_error"] = type(e).__name__ + ": " + str(e)
spec = iu.find_spec("sglang")
path = None
for d in (spec.submodule_search_locations or []) if spec else []:
    p = os.path.join(d, "srt", "gemma4_series.py")
    if os.path.isfile(p):
        path = p
        break
if path:
    try:
        s = iu.spec_from_file_location("_serve_ab_gemma4_series", path)
        m = iu.module_from_spec(s)
        s.loader.exec_module(m)
        out["series"] = m.load_manifest()
    except Exception as e:
        out["series_error"] = type(e).__name__ + ": " + str(e)
print("SERVE_AB_PROBE " + json.dumps(out))
"""


def probe_engine(python: str) -> Dict[str, Any]:
    """sglang version and Gemma-4 series manifest (None: stock sglang) of the sglang that ``python`` imports."""
    info: Dict[str, Any] = {"python": python, "version": None, "series": None, "series_error": None}
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        info["probe_error"] = str(e)
        return info
    for ln in out.stdout.splitlines():
        if ln.startswith("SERVE_AB_PROBE "):
            with contextlib.suppress(ValueError):
                info.update(json.loads(ln[len("SERVE_AB_PROBE "):]))
            return info
    info["probe_error"] = (out.stderr or out.stdout).strip()[-500:] or f"exit status {out.returncode}"
    return info


def commit_info(patched_probe: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The commit to name in results: the checkout's HEAD, else the patched engine's manifest key
    ``series_commit``, else "unknown"; with where it came from."""
    head, dirty = stamp.checkout_head()
    manifest = (patched_probe or {}).get("series") or {}
    value = manifest.get("series_commit") if isinstance(manifest, dict) else None
    if head:
        # A copied tree can carry a stale .git: the engine's own build commit is recorded beside it.
        return {"commit": head, "commit_source": "git checkout", "commit_dirty": dirty,
                "engine_series_commit": str(value) if value else None}
    if value:
        return {"commit": str(value), "commit_source": "series manifest of the patched engine", "commit_dirty": None}
    return {"commit": "unknown", "commit_dirty": None,
            "commit_source": "none (not a git checkout, and no series_commit in the patched engine's manifest)"}


def _check_python(engine: str, python: str) -> str:
    path = python if os.path.isabs(python) else os.path.join(REPO, python)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        hint = {"upstream": "make engine-upstream", "patched": "make engine"}.get(engine, "")
        raise ServeABError(
            f"[{engine}] python {python!r} not found or not executable"
            + (f"; build it with `{hint}` or pass --{engine}-python" if hint else "")
        )
    return path


def series_label(probe: Optional[Dict[str, Any]]) -> str:
    if not probe:
        return "not probed"
    if probe.get("series_error"):
        return f"unreadable ({probe['series_error']})"
    s = probe.get("series")
    if not s:
        return "none"
    return f"{s.get('version', '?')} ({len(s.get('patches') or [])} patches)"


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------
def ratio(upstream: Optional[float], patched: Optional[float], lower_is_better: bool) -> Optional[float]:
    """Improvement factor of patched over upstream (> 1 means patched is better)."""
    if upstream is None or patched is None or upstream <= 0 or patched <= 0:
        return None
    return upstream / patched if lower_is_better else patched / upstream


def stats(values: Sequence[float]) -> Optional[Dict[str, Any]]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "values": vals}


def spread(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> Optional[str]:
    """'within spread' when the [min, max] ranges overlap, 'outside spread' when they do not."""
    if not a or not b:
        return None
    apart = a["max"] < b["min"] or b["max"] < a["min"]
    return "outside spread" if apart else "within spread"


def timed_runs(runs: Sequence[Dict[str, Any]], workload: str, engine: str) -> List[Dict[str, Any]]:
    return [r for r in runs if r["workload"] == workload and r["engine"] == engine and r["kind"] == "timed"
            and r["status"] == "ok" and r.get("result")]


def summarise(runs: Sequence[Dict[str, Any]], workloads: Sequence[str]) -> Dict[str, Any]:
    """Per workload and engine: median [min, max] and n of every metric over the timed repeats only."""
    out: Dict[str, Any] = {}
    for wl in workloads:
        for engine in ENGINES:
            timed = timed_runs(runs, wl, engine)
            warm = [r for r in runs if r["workload"] == wl and r["engine"] == engine and r["kind"] == "warmup"]
            if not timed and not warm:
                continue
            metrics = {k: stats([r["result"].get(k) for r in timed]) for k, *_ in METRICS}
            out.setdefault(wl, {})[engine] = {
                "n": len(timed), "hint": len(timed) < MIN_REPEATS_FOR_CLAIM, "metrics": metrics,
                "seeds": [r["seed"] for r in timed], "warmup_passes": len(warm),
            }
    return out


def compare_rows(summary: Dict[str, Any], workloads: Sequence[str]) -> List[Dict[str, Any]]:
    rows = []
    for wl in workloads:
        by = summary.get(wl, {})
        for key, label, unit, lower in METRICS:
            u = ((by.get("upstream") or {}).get("metrics") or {}).get(key)
            p = ((by.get("patched") or {}).get("metrics") or {}).get(key)
            if key in OPTIONAL_METRICS and u is None and p is None:
                continue
            rows.append({
                "workload": wl, "metric": key, "label": label, "unit": unit, "lower_is_better": lower,
                "upstream": u, "patched": p,
                "ratio": ratio(u and u["median"], p and p["median"], lower),
                "spread": spread(u, p),
                "hint": any(s is not None and s["n"] < MIN_REPEATS_FOR_CLAIM for s in (u, p)),
            })
    return rows


# --------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------
@dataclass
class Profile:
    name: str
    server_args: Tuple[str, ...]
    server_env: Tuple[Tuple[str, str], ...]
    workloads: List[Workload]


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
    warmup_prompts: int = 16
    base_seed: int = 1
    order: str = "alternate"
    mtp_flags: List[str] = field(default_factory=list)
    flush: bool = True
    env: Dict[str, str] = field(default_factory=dict)
    # Per-workload prompt counts (``--num-prompts chat=48,summarization=24``); they win over num_prompts.
    num_prompts_for: Dict[str, int] = field(default_factory=dict)
    # Shell command run against each live server after its passes ({port} {engine} {model} {host}).
    after_passes: Optional[str] = None
    # "fork": passes forked from one process that imported bench_serving once (bench_forkserver.py);
    # "process": one `python -m sglang.bench_serving` per pass.
    bench_mode: str = "fork"
    bench_server: Optional["ForkServer"] = None

    def profiles(self) -> List[Profile]:
        """Workloads grouped by identical server arguments and environment, in order of first appearance."""
        out: List[Profile] = []
        for wl in self.workloads:
            for p in out:
                if p.server_args == wl.server_args and p.server_env == wl.server_env:
                    p.workloads.append(wl)
                    break
            else:
                out.append(Profile(f"p{len(out)}", wl.server_args, wl.server_env, [wl]))
        return out

    def engine_order(self, profile_index: int) -> List[str]:
        """ABBA: the given order for even profiles, reversed for odd ones (``order == 'alternate'``)."""
        if self.order == "alternate" and profile_index % 2 == 1:
            return list(reversed(self.engines))
        return list(self.engines)

    def bench_args(self, wl: Workload) -> List[str]:
        """The workload's bench_serving arguments after the --num-prompts override, plus --bench-args."""
        args = list(wl.bench_args)
        count = self.num_prompts_for.get(wl.name, self.num_prompts)
        if count:
            args = set_flag(args, "--num-prompts", str(count))
        return args + list(self.bench_extra)

    def prompts(self, wl: Workload) -> int:
        return int(get_flag(self.bench_args(wl), "--num-prompts") or 1000)  # bench_serving's default

    def warmup_count(self, wl: Workload) -> int:
        return min(self.warmup_prompts, self.prompts(wl))

    def passes(self, wl: Workload) -> List[Tuple[str, int, int, int]]:
        """(kind, rep, seed, prompts) of every pass of a workload on one server, in order."""
        out = [("warmup", 0, self.base_seed, self.warmup_count(wl))]
        out += [("timed", r, self.base_seed + 1 + r, self.prompts(wl)) for r in range(self.repeats)]
        return out

    def definition(self, wl: Workload, profile: str) -> Dict[str, Any]:
        return {"description": wl.description, "profile": profile, "bench_args": self.bench_args(wl),
                "server_args": list(wl.server_args), "server_env": dict(wl.server_env),
                "num_prompts": self.prompts(wl), "warmup_prompts": self.warmup_count(wl),
                "dataset": ("synthetic ShareGPT file per (workload, seed)" if wl.needs_sharegpt and not
                            self.dataset_path else (self.dataset_path if wl.needs_sharegpt else None))}


def server_command(plan: Plan, engine: str, profile: Profile) -> List[str]:
    server_args: List[str] = []
    if plan.load_format:
        server_args += ["--load-format", plan.load_format]
    server_args += list(profile.server_args) + list(plan.extra_server_args) + list(plan.mtp_flags)
    try:
        text = plan.server_cmd.format(
            python=shlex.quote(plan.pythons[engine]), model=shlex.quote(plan.model), host=HOST,
            port=plan.port, engine=engine, server_args=" ".join(shlex.quote(a) for a in server_args),
        )
    except (KeyError, IndexError) as e:
        raise ServeABError(f"--server-cmd has an unknown placeholder {e}; known: "
                           "{python} {model} {host} {port} {engine} {server_args}") from e
    return shlex.split(text)


def dataset_for(plan: Plan, wl: Workload, seed: int) -> Optional[str]:
    if not wl.needs_sharegpt:
        return None
    if plan.dataset_path:
        return plan.dataset_path
    return os.path.join(plan.log_dir, "datasets", f"sharegpt-{wl.name}-seed{seed}.json")


def ensure_dataset(plan: Plan, wl: Workload, seed: int, prompts: int) -> Optional[str]:
    """The data set file of one pass: for a ``random`` workload without --dataset-path, a synthetic ShareGPT
    file generated from (workload, seed), so that every pass (and workload) draws its own conversations while
    both engines get the same ones for the same seed."""
    path = dataset_for(plan, wl, seed)
    if path and not plan.dataset_path:
        write_sharegpt(path, max(64, prompts + 16), seed=f"{wl.name}:{seed}")
    return path


def bench_command(plan: Plan, wl: Workload, out_file: str, seed: int, prompts: int) -> List[str]:
    args = set_flag(plan.bench_args(wl), "--num-prompts", str(prompts))
    args = set_flag(args, "--seed", str(seed))
    cmd = [plan.bench_python, "-m", "sglang.bench_serving", *args]
    dataset = dataset_for(plan, wl, seed)
    if dataset:
        cmd += ["--dataset-path", dataset]
    cmd += ["--host", HOST, "--port", str(plan.port), "--output-file", out_file,
            "--ready-check-timeout-sec", "30", "--disable-tqdm"]
    return cmd



def check_mtp_draft(draft: str) -> str:
    if os.path.exists(draft):
        path = os.path.abspath(draft)
        cfg_path = os.path.join(path, "config.json")
        try:
            with open(cfg_path, "r", encoding="utf-8") as f:
                archs = json.load(f).get("architectures") or []
        except (OSError, ValueError) as e:
            raise ServeABError(f"--mtp-draft {draft}: cannot read {cfg_path} ({e})") from e
        if not any(a in GEMMA4_ASSISTANT_ARCHS for a in archs):
            raise ServeABError(f"--mtp-draft {draft} is not a Gemma-4 assistant (architectures {archs}; "
                               f"expected one of {', '.join(GEMMA4_ASSISTANT_ARCHS)})")
        return path
    if draft.startswith((".", "/")) or draft.count("/") != 1:
        raise ServeABError(f"--mtp-draft {draft!r} is neither an existing directory nor a hub id (org/name)")
    return draft


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------
class Recorder:
    """The run's JSON document, rewritten atomically after every change."""

    def __init__(self, path: str, doc: Dict[str, Any]):
        self.path, self.doc = path, doc

    def write(self) -> None:
        names = [wl for wl in self.doc["workloads"]]
        self.doc["summary"] = summarise(self.doc["runs"], names)
        self.doc["rows"] = compare_rows(self.doc["summary"], names)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.doc, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, self.path)


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
                obj.pop("server_info", None)  # the server's whole argument set; the command is recorded
                return obj
    return None


def pass_tag(engine: str, wl: Workload, kind: str, rep: int) -> str:
    return f"{engine}-{wl.name}-{'warmup' if kind == 'warmup' else f'rep{rep}'}"


FORKSERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_forkserver.py")


class ForkedPass:
    """One bench_serving pass forked by the fork server; the Popen surface run_pass uses."""

    def __init__(self, pid: int, rc_file: str):
        self.pid, self.rc_file, self.returncode = pid, rc_file, None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
                return None
            except ProcessLookupError:
                pass
            except PermissionError:
                return None
            try:
                with open(self.rc_file, "r", encoding="utf-8") as f:
                    self.returncode = int(f.read().strip() or "1")
            except (OSError, ValueError):
                self.returncode = -signal.SIGKILL  # gone without writing its status: killed
        return self.returncode

    def wait(self, timeout: float = 30.0) -> Optional[int]:
        end = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        return self.returncode


class ForkServer:
    """``bench_python bench_forkserver.py``: imports bench_serving once, forks one child per pass."""

    def __init__(self, python: str, env: Dict[str, str], log_path: str, entry: Optional[str] = None,
                 ready_timeout_s: float = 600.0):
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8")
        cmd = [python, FORKSERVER] + ([entry] if entry else [])
        self._log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        self._log.flush()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                         text=True, env=env, cwd=REPO, start_new_session=True)
        except OSError as e:
            raise ServeABError(f"cannot start the bench_serving fork server ({' '.join(cmd)}): {e}") from e
        reply = self._reply(ready_timeout_s, "import bench_serving")
        if not reply.get("ready"):
            self.close()
            raise ServeABError(f"bench_serving fork server did not start: {reply}; log {log_path}:\n"
                               f"{_tail(log_path)}")

    def _reply(self, timeout_s: float, what: str) -> Dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise ServeABError(f"bench_serving fork server gave no answer to {what!r} in {timeout_s:.0f}s "
                               f"(exit status {self.proc.poll()}); log {self.log_path}:\n{_tail(self.log_path)}")
        try:
            return json.loads(line)
        except ValueError:
            return {"error": line.strip()}

    def start(self, argv: Sequence[str], log_path: str, rc_file: str, env: Dict[str, str]) -> ForkedPass:
        with contextlib.suppress(FileNotFoundError):
            os.remove(rc_file)
        req = {"argv": list(argv), "log": log_path, "rc_file": rc_file, "cwd": REPO, "env": env}
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise ServeABError(f"bench_serving fork server is gone (exit status {self.proc.poll()}): {e}; "
                               f"log {self.log_path}:\n{_tail(self.log_path)}") from e
        reply = self._reply(60.0, "fork a pass")
        if "pid" not in reply:
            raise ServeABError(f"bench_serving fork server refused a pass: {reply}")
        return ForkedPass(int(reply["pid"]), rc_file)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


def start_bench(plan: Plan, cmd: List[str], log, log_path: str, out_file: str):
    """Start one pass: forked from the fork server (started on first use), or as its own process."""
    if plan.bench_mode == "process":
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=plan.env, cwd=REPO,
                                start_new_session=True)
    if plan.bench_server is None:
        # SERVE_AB_BENCH_ENTRY (module:function, default bench_serving's cli_main): for the tests' stand-in client.
        plan.bench_server = ForkServer(plan.bench_python, plan.env, os.path.join(plan.log_dir, "bench-forkserver.log"),
                                       entry=plan.env.get("SERVE_AB_BENCH_ENTRY") or None)
    log.flush()
    return plan.bench_server.start(cmd[3:], log_path, out_file + ".rc", plan.env)


def run_pass(plan: Plan, server: Server, engine: str, wl: Workload, profile: str, kind: str, rep: int,
             seed: int, prompts: int, recorder: Recorder) -> Dict[str, Any]:
    tag = pass_tag(engine, wl, kind, rep)
    what = f"workload {wl.name!r}"
    where = f"{'warm-up' if kind == 'warmup' else f'repeat {rep}'}, seed {seed}"
    out_file = os.path.join(plan.log_dir, f"bench-{tag}.jsonl")
    log_path = os.path.join(plan.log_dir, f"bench-{tag}.log")
    with contextlib.suppress(FileNotFoundError):
        os.remove(out_file)
    ensure_dataset(plan, wl, seed, prompts)
    cmd = bench_command(plan, wl, out_file, seed, prompts)
    rec: Dict[str, Any] = {
        "engine": engine, "workload": wl.name, "profile": profile, "kind": kind, "rep": rep, "seed": seed,
        "num_prompts": prompts, "status": "running", "error": None, "bench_cmd": cmd,
        "bench_log": os.path.relpath(log_path, plan.log_dir), "flush_status": None,
        "log_range": None, "compile_lines": [], "peak_running_requests": None, "wall_s": None, "result": None,
    }
    recorder.doc["runs"].append(rec)
    try:
        if plan.flush:
            rec["flush_status"] = server.flush_cache()
            if not server.alive():
                raise server.died_error(f"while its cache was flushed before {what} ({where})")
        start = _log_size(server.log_path)
        rec["log_range"] = [start, start]
        t0 = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
            log.flush()
            try:
                proc = start_bench(plan, cmd, log, log_path, out_file)
            except OSError as e:
                raise ServeABError(f"[{engine}/{wl.name}] cannot start bench_serving: {e}") from e
            try:
                while proc.poll() is None:
                    if not server.alive():
                        raise server.died_error(f"while bench_serving ran {what} ({where})")
                    if time.monotonic() - t0 > plan.bench_timeout_s:
                        raise ServeABError(
                            f"[{engine}/{wl.name}] bench_serving did not finish in {plan.bench_timeout_s:.0f}s "
                            f"({where}); log {log_path}:\n{_tail(log_path)}"
                        )
                    time.sleep(0.2)
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                end = _log_size(server.log_path)
                rec["log_range"] = [start, end]
                pass_log = read_log(server.log_path, start, end)
                rec["compile_lines"] = compile_lines(pass_log)
                rec["peak_running_requests"] = peak_running_requests(pass_log)
                rec["wall_s"] = time.monotonic() - t0
        result = _read_result(out_file)
        if proc.returncode != 0 or result is None:
            if not server.alive():
                raise server.died_error(f"while bench_serving ran {what} ({where})")
            hint = (" (this pass was forked from the bench_serving fork server; `--bench-mode process` runs "
                    "each pass as its own process)" if plan.bench_mode == "fork" else "")
            raise ServeABError(
                f"[{engine}/{wl.name}] bench_serving exited with status {proc.returncode} and "
                f"{'no result' if result is None else 'a result'} ({where}){hint}; log {log_path}:\n"
                f"{_tail(log_path)}"
            )
        if not result.get("completed"):
            raise ServeABError(f"[{engine}/{wl.name}] bench_serving completed 0 requests ({where}); log {log_path}")
        rec["result"] = result
        rec["status"] = "ok"
    except ServeABError as e:
        rec["status"], rec["error"] = "failed", str(e)
        raise
    except KeyboardInterrupt:
        rec["status"], rec["error"] = "interrupted", "interrupted"
        raise
    finally:
        recorder.write()
    return rec


def run_after_passes(plan: Plan, engine: str, profile: str) -> Dict[str, Any]:
    """Run ``--after-passes`` against the live server; its failure is recorded, not raised."""
    try:
        cmd = plan.after_passes.format(port=plan.port, engine=engine, model=shlex.quote(plan.model), host=HOST)
    except (KeyError, IndexError) as e:
        return {"cmd": plan.after_passes, "rc": None, "error": f"unknown placeholder {e}"}
    log_path = os.path.join(plan.log_dir, f"after-{engine}-{profile}.log")
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {cmd}\n")
        log.flush()
        try:
            rc = subprocess.run(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT, env=plan.env,
                                cwd=REPO, timeout=plan.bench_timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
    print(f"[{engine}/{profile}] after-passes command exited {rc}; log {log_path}", flush=True)
    return {"cmd": cmd, "rc": rc, "seconds": round(time.monotonic() - t0, 1),
            "log": os.path.relpath(log_path, plan.log_dir)}


def parse_num_prompts(spec: Optional[str], workloads: Sequence[str]) -> Tuple[Optional[int], Dict[str, int]]:
    """``N`` (every workload) or ``name=N,name=N`` (those workloads)."""
    if spec is None:
        return None, {}
    spec = str(spec).strip()

    def count(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise ServeABError(f"--num-prompts needs whole numbers, got {text!r}") from None
        if n < 1:
            raise ServeABError("--num-prompts must be at least 1")
        return n

    if "=" not in spec:
        return count(spec), {}
    per: Dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in workloads:
            raise ServeABError(f"--num-prompts names {name!r}, which is not one of the workloads run "
                               f"({', '.join(workloads)})")
        per[name] = count(value)
    return None, per


def run_ab(plan: Plan, recorder: Recorder) -> None:
    """Start one server per (engine, server profile), run every pass of its workloads, record as it goes."""
    doc = recorder.doc
    servers: List[Server] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(signum, frame):  # stop servers, then let the default handling happen
        for s in servers:
            s.stop(grace_s=10)
        raise KeyboardInterrupt(f"signal {signum}")

    for s in previous:
        signal.signal(s, _on_signal)
    try:
        for i, profile in enumerate(plan.profiles()):
            for engine in plan.engine_order(i):
                env = dict(plan.env)
                env.update(dict(profile.server_env))
                cmd = server_command(plan, engine, profile)
                log_path = os.path.join(plan.log_dir, f"server-{engine}-{profile.name}.log")
                server = Server(engine, cmd, env, log_path, plan.port)
                servers.append(server)
                srec: Dict[str, Any] = {
                    "engine": engine, "profile": profile.name, "workloads": [w.name for w in profile.workloads],
                    "cmd": cmd, "env": dict(profile.server_env), "log": os.path.relpath(log_path, plan.log_dir),
                    "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "ready_s": None, "status": "starting", "error": None, "log_info": None,
                    "compile_lines_outside_passes": None, "after_passes": None,
                }
                doc["servers"].append(srec)
                print(f"[{engine}/{profile.name}] starting: {' '.join(cmd)}", flush=True)
                try:
                    server.start()
                    srec["ready_s"] = server.wait_ready(plan.ready_timeout_s)
                    srec["status"] = "running"
                    srec["log_info"] = parse_server_log(read_log(log_path))
                    recorder.write()
                    print(f"[{engine}/{profile.name}] ready in {srec['ready_s']:.1f}s", flush=True)
                    for wl in profile.workloads:
                        for kind, rep, seed, prompts in plan.passes(wl):
                            r = run_pass(plan, server, engine, wl, profile.name, kind, rep, seed, prompts, recorder)
                            res = r["result"]
                            print(f"[{engine}/{wl.name}] {kind} {rep} seed {seed}: {res['completed']} requests, "
                                  f"duration {res['duration']:.2f}s, median TTFT {res.get('median_ttft_ms')}, "
                                  f"median TPOT {res.get('median_tpot_ms')}, compile lines {len(r['compile_lines'])}",
                                  flush=True)
                    if plan.after_passes:
                        srec["after_passes"] = run_after_passes(plan, engine, profile.name)
                        recorder.write()
                    srec["status"] = "done"
                except ServeABError as e:
                    srec["status"], srec["error"] = "failed", str(e)
                    raise
                except KeyboardInterrupt:
                    srec["status"], srec["error"] = "interrupted", "interrupted"
                    raise
                finally:
                    server.stop()
                    info = parse_server_log(read_log(log_path))
                    srec["log_info"] = info
                    in_passes = sum(len(r["compile_lines"]) for r in doc["runs"]
                                    if r["engine"] == engine and r["profile"] == profile.name)
                    srec["compile_lines_outside_passes"] = len(info["compile_lines"]) - in_passes
                    recorder.write()
    finally:
        for s in servers:
            s.stop(grace_s=10)
        if plan.bench_server is not None:
            plan.bench_server.close()
            plan.bench_server = None
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------
def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"


def _cell(s: Optional[Dict[str, Any]]) -> str:
    if not s:
        return "-"
    text = f"{_fmt(s['median'])} [{_fmt(s['min'])}-{_fmt(s['max'])}] n={s['n']}"
    return text + (" hint" if s["n"] < MIN_REPEATS_FOR_CLAIM else "")


def _sources(doc: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any], str]]:
    if doc.get("kind") == "merge":
        return [(i["file"], i["meta"], i.get("status", "?")) for i in doc["inputs"]]
    return [("this run", doc["meta"], doc.get("status", "?"))]


def _contributes(doc: Dict[str, Any], label: str, meta: Dict[str, Any], engine: str) -> bool:
    """Whether ``engine`` of this source has passes in the document (a merge may take only some of them)."""
    if engine not in meta.get("engines", []):
        return False
    if doc.get("kind") != "merge":
        return True
    return any(r["engine"] == engine and r.get("source") == label for r in doc["runs"])


def _server_for(doc: Dict[str, Any], engine: str, workload: str) -> Optional[Dict[str, Any]]:
    for s in doc["servers"]:
        if s["engine"] == engine and workload in s["workloads"]:
            return s
    return None


def render_markdown(doc: Dict[str, Any]) -> str:
    sources = _sources(doc)
    workloads = list(doc["workloads"])
    versions: Dict[str, List[str]] = {}
    for label, meta, _ in sources:
        for e, p in (meta.get("engine_info") or {}).items():
            v = f"sglang {p.get('version') or 'unknown'} (series {series_label(p)})"
            if _contributes(doc, label, meta, e) and v not in versions.setdefault(e, []):
                versions[e].append(v)
    title = " vs ".join(f"{e}: {' / '.join(versions[e])}" for e in ENGINES if versions.get(e)) or "no engine"
    first = sources[0][1]
    lines = [f"# bench_serving A/B: {title}", ""]
    lines.append(f"Model `{first['model']}`{' (dummy weights)' if first.get('load_format') == 'dummy' else ''}"
                 f"; extra server args: {' '.join(first.get('extra_server_args') or []) or 'none'}"
                 f"; MTP: {' '.join((first.get('mtp') or {}).get('flags') or []) or 'off'}.")
    lines.append("")
    for label, meta, status in sources:
        order = "; ".join(f"{o['profile']} ({', '.join(o['workloads'])}): {' -> '.join(o['engines'])}"
                          for o in meta.get("order", []))
        lines.append(f"- {label} ({status}): engines {', '.join(meta.get('engines', []))}; device {meta['device']};"
                     f" date {meta['date']}; commit {meta['commit']} (from {meta.get('commit_source', '?')}"
                     f"{', uncommitted changes' if meta.get('commit_dirty') else ''})"
                     + (f"; patched engine built at series commit {meta['engine_series_commit']}"
                        if meta.get("engine_series_commit") and meta["engine_series_commit"] != meta["commit"] else "")
                     + f"; order {order}; "
                     f"{meta['repeats']} timed repeat(s) (seeds {meta['seeds']['timed']}) after one warm-up pass "
                     f"(seed {meta['seeds']['warmup']}, up to {meta['warmup_prompts']} prompts) per workload and "
                     f"engine; caches {'flushed' if meta.get('flush_before_pass') else 'not flushed'} before "
                     f"each pass.")
    devices = {meta["device"] for _, meta, _ in sources}
    if len(devices) > 1:
        lines.append(f"- **The inputs ran on different devices** ({'; '.join(sorted(devices))}).")
    if doc.get("kind") == "merge":
        for wl in workloads:
            src = {e: sorted({r["source"] for r in doc["runs"] if r["workload"] == wl and r["engine"] == e})
                   for e in ENGINES}
            if all(src.values()) and src["upstream"] != src["patched"]:
                lines.append(f"- **`{wl}`: the engines ran in different runs** (upstream from "
                             f"{', '.join(src['upstream'])}, patched from {', '.join(src['patched'])}), "
                             "so they were not alternated in one session; compare with that in mind.")
    lines += [
        "",
        "Each cell: median [min-max] over the timed repeats, n = repeats (warm-up passes excluded); \"hint\": "
        f"fewer than {MIN_REPEATS_FOR_CLAIM} repeats, not enough for a claim. Ratio = upstream / patched "
        "medians for times, patched / upstream for throughputs and accept length (> 1: patched better). "
        "Spread: whether the two [min-max] ranges overlap.",
        "",
        "| workload | metric | upstream | patched | ratio | spread |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        rt = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        sp = r["spread"] or "-"
        if r["spread"] and r["hint"]:
            sp += " (hint)"
        lines.append(f"| {r['workload']} | {r['label']} ({r['unit']}) | {_cell(r['upstream'])} | "
                     f"{_cell(r['patched'])} | {rt} | {sp} |")
    for wl in workloads:
        engines = [e for e in ENGINES if any(r["workload"] == wl and r["engine"] == e for r in doc["runs"])]
        if not engines:
            continue
        lines += ["", f"Server of `{wl}`:", "",
                  "| engine | full tokens | SWA tokens | max_running_requests | peak running, timed passes | "
                  "compile lines warm-up | compile lines timed | ready s |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in engines:
            s = _server_for(doc, e, wl) or {}
            info = s.get("log_info") or {}
            runs = [r for r in doc["runs"] if r["workload"] == wl and r["engine"] == e]
            cw = sum(len(r["compile_lines"]) for r in runs if r["kind"] == "warmup")
            ct = sum(len(r["compile_lines"]) for r in runs if r["kind"] == "timed")
            peaks = [r.get("peak_running_requests") for r in runs if r["kind"] == "timed"]
            peaks = [p for p in peaks if p is not None]
            facts = [info.get(k) for k in ("full_layer_tokens", "swa_layer_tokens", "max_running_requests")]
            facts.append(max(peaks) if peaks else None)
            lines.append(f"| {e} | " + " | ".join("-" if v is None else str(v) for v in facts)
                         + f" | {cw} | {ct} | {_fmt(s.get('ready_s'))} |")
    lines += ["", "Engines:"]
    for label, meta, _ in sources:
        for e in [e for e in meta.get("engines", []) if _contributes(doc, label, meta, e)]:
            p = (meta.get("engine_info") or {}).get(e) or {}
            lines.append(f"- {e} ({label}): sglang {p.get('version') or 'unknown'}, series {series_label(p)}")
    lines += ["", "Server logs:"]
    for s in doc["servers"]:
        info = s.get("log_info") or {}
        src = f" from {s['source']}" if s.get("source") else ""
        lines.append(f"- {s['engine']} {s['profile']} ({', '.join(s['workloads'])}){src}: "
                     f"series line: {info.get('series_line') or 'none'}; KV split: "
                     f"{' | '.join(info.get('kv_split_lines') or []) or 'none'}; command `{' '.join(s['cmd'])}`"
                     + (f" env {' '.join(f'{k}={v}' for k, v in s['env'].items())}" if s.get("env") else ""))
    lines += ["", "Workloads (bench_serving arguments after the --num-prompts override; serve_ab adds --seed, "
              "--num-prompts per pass, --dataset-path, --host/--port and --output-file):"]
    for wl, d in doc["workloads"].items():
        lines.append(f"- {wl}: {d['description']}; bench_serving {' '.join(d['bench_args'])}; "
                     f"{d['num_prompts']} prompts per timed pass, {d['warmup_prompts']} in the warm-up pass"
                     + (f"; server {' '.join(d['server_args'])}" if d["server_args"] else "")
                     + (f"; env {' '.join(f'{k}={v}' for k, v in d['server_env'].items())}" if d["server_env"] else ""))
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str, name: str, doc: Dict[str, Any], md: str) -> Tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, name + ".json")
    mpath = os.path.join(out_dir, name + ".md")
    Recorder(jpath, doc).write()
    with open(mpath, "w", encoding="utf-8") as f:
        f.write(md)
    return jpath, mpath


# --------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------
def _load_run(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ServeABError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ServeABError(f"{path} is not a serve_ab result file of format {FORMAT}")
    if doc.get("kind") != "run":
        raise ServeABError(f"{path} is a {doc.get('kind')!r} file; merge the run files it came from")
    return doc


def parse_take(specs: Sequence[str], paths: Sequence[str]) -> Dict[str, Set[Tuple[str, str]]]:
    """``FILE=engine:workload[,engine:workload...]`` -> {FILE: {(engine, workload), ...}}; FILE must be an input."""
    take: Dict[str, Set[Tuple[str, str]]] = {}
    for spec in specs:
        path, sep, pairs = spec.rpartition("=")
        if not sep or not path or not pairs:
            raise ServeABError(f"--take {spec!r}: expected FILE=engine:workload[,engine:workload]")
        if path not in paths:
            raise ServeABError(f"--take {spec!r}: {path} is not one of the files to merge")
        for item in pairs.split(","):
            engine, sep, workload = item.strip().partition(":")
            if not sep or engine not in ENGINES or workload not in WORKLOADS:
                raise ServeABError(f"--take {spec!r}: {item!r} is not engine:workload with engine in "
                                   f"{', '.join(ENGINES)} and workload in {', '.join(WORKLOADS)}")
            take.setdefault(path, set()).add((engine, workload))
    return take


def _restrict(path: str, doc: Dict[str, Any], pairs: Set[Tuple[str, str]]) -> Dict[str, Any]:
    """Keep only the given (engine, workload) pairs of one run file (its runs, workloads and servers)."""
    runs = [r for r in doc["runs"] if (r["engine"], r["workload"]) in pairs]
    missing = sorted(pairs - {(r["engine"], r["workload"]) for r in runs})
    if missing:
        raise ServeABError(f"--take: {path} holds no pass of " + ", ".join(f"{e}:{w}" for e, w in missing))
    wls = {w for _, w in pairs}
    servers = []
    for s in doc["servers"]:
        kept = [w for w in s["workloads"] if (s["engine"], w) in pairs]
        if kept:
            servers.append(dict(s, workloads=kept))
    return dict(doc, runs=runs, servers=servers,
                workloads={w: d for w, d in doc["workloads"].items() if w in wls})


def merge_docs(paths: Sequence[str], take: Optional[Dict[str, Set[Tuple[str, str]]]] = None) -> Dict[str, Any]:
    if len(paths) < 2:
        raise ServeABError("merge needs at least two run files")
    docs = [(p, _load_run(p)) for p in paths]
    take = take or {}
    docs = [(p, _restrict(p, d, take[p]) if p in take else d) for p, d in docs]
    base_path, base = docs[0]
    checks = [("model", lambda d: d["meta"]["model"]), ("load format", lambda d: d["meta"].get("load_format")),
              ("extra server args", lambda d: d["meta"].get("extra_server_args")),
              ("MTP flags", lambda d: (d["meta"].get("mtp") or {}).get("flags")),
              ("base seed", lambda d: d["meta"].get("base_seed"))]
    for path, doc in docs[1:]:
        for what, get in checks:
            if get(doc) != get(base):
                raise ServeABError(f"{base_path} and {path} disagree on {what}: {get(base)!r} vs {get(doc)!r}")
    workloads: Dict[str, Dict[str, Any]] = {}
    owner: Dict[str, str] = {}
    for path, doc in docs:
        for wl, d in doc["workloads"].items():
            key = {k: d[k] for k in ("bench_args", "server_args", "server_env")}
            if wl in workloads:
                prev = {k: workloads[wl][k] for k in ("bench_args", "server_args", "server_env")}
                if prev != key:
                    raise ServeABError(f"{owner[wl]} and {path} disagree on workload {wl!r}: "
                                       f"{json.dumps(prev)} vs {json.dumps(key)}")
            else:
                workloads[wl], owner[wl] = d, path
    seen: Dict[Tuple[str, str], str] = {}
    for path, doc in docs:
        for pair in sorted({(r["engine"], r["workload"]) for r in doc["runs"]}):
            if pair in seen and seen[pair] != path:
                raise ServeABError(f"{seen[pair]} and {path} both hold engine {pair[0]!r} on workload "
                                   f"{pair[1]!r}; merge one of them")
            seen[pair] = path
    merged = {
        "format": FORMAT, "kind": "merge", "status": "merged",
        "inputs": [{"file": os.path.basename(p), "path": p, "status": d.get("status"), "meta": d["meta"]}
                   for p, d in docs],
        "meta": {"model": base["meta"]["model"], "load_format": base["meta"].get("load_format"),
                 "extra_server_args": base["meta"].get("extra_server_args"), "mtp": base["meta"].get("mtp"),
                 "base_seed": base["meta"].get("base_seed"),
                 "date": stamp.utc_now()},
        "workloads": workloads,
        "servers": [dict(s, source=os.path.basename(p)) for p, d in docs for s in d["servers"]],
        "runs": [dict(r, source=os.path.basename(p)) for p, d in docs for r in d["runs"]],
    }
    return merged


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def _run_parser(sub) -> argparse.ArgumentParser:
    ap = sub.add_parser("run", help="serve a model with one or both engines and run the workloads",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id or model directory")
    ap.add_argument("--workloads", default="chat,summarization,images",
                    help=f"comma list of {', '.join(WORKLOADS)}")
    ap.add_argument("--engines", default="upstream,patched",
                    help="engines to run, in this order (upstream, patched or both)")
    ap.add_argument("--order", choices=["alternate", "fixed"], default="alternate",
                    help="alternate: reverse the engine order on every other server profile (ABBA)")
    ap.add_argument("--upstream-python", default=DEFAULT_PYTHON["upstream"])
    ap.add_argument("--patched-python", default=DEFAULT_PYTHON["patched"])
    ap.add_argument("--bench-python", default=None, help="python that runs bench_serving (default: patched)")
    ap.add_argument("--bench-mode", choices=["fork", "process"], default="fork",
                    help="fork: every pass forked from one process that imported bench_serving once "
                         "(bench_forkserver.py; saves the import, ~20 s per pass); process: one "
                         "`python -m sglang.bench_serving` per pass")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for each server")
    ap.add_argument("--bench-timeout", type=float, default=3600.0, help="seconds for one bench_serving pass")
    ap.add_argument("--server-cmd", default=DEFAULT_SERVER_CMD,
                    help="launch template; placeholders {python} {model} {host} {port} {engine} {server_args}")
    ap.add_argument("--server-args", default="", help="extra server arguments for both engines (one string)")
    ap.add_argument("--mtp-draft", default=None, help="Gemma-4 assistant draft (dir or hub id): adds MTP flags")
    ap.add_argument("--bench-args", default="", help="extra bench_serving arguments, appended last (one string)")
    ap.add_argument("--load-format", default=None,
                    help="default: dummy for a directory without weight files, else the server's default")
    ap.add_argument("--num-prompts", default=None,
                    help="replace the prompt count: N for every workload, or name=N,name=N for some")
    ap.add_argument("--after-passes", default=None,
                    help="shell command run against each live server after its passes "
                         "(placeholders {port} {engine} {model} {host}); failure is recorded, not fatal")
    ap.add_argument("--warmup-prompts", type=int, default=16, help="prompts of the warm-up pass (capped)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per engine and workload")
    ap.add_argument("--base-seed", type=int, default=1, help="warm-up seed; repeat r uses base + 1 + r")
    ap.add_argument("--no-flush", action="store_true", help="do not flush the server's caches before a pass")
    ap.add_argument("--dataset-path", default=None,
                    help="ShareGPT-format file for the random workloads (default: a synthetic file per pass)")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmark", "gemma4", "results"))
    ap.add_argument("--name", default="serve_ab", help="result file stem (serve_ab*.json / .md)")
    ap.add_argument("--log-dir", default=os.path.join(REPO, "build", "serve_ab_logs"),
                    help="logs go to LOG_DIR/NAME/")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return ap


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    _run_parser(sub)
    mp = sub.add_parser("merge", help="join run files into one comparison")
    mp.add_argument("files", nargs="+", help="serve_ab run JSON files")
    mp.add_argument("--out", default=os.path.join(REPO, "benchmark", "gemma4", "results"))
    mp.add_argument("--name", default="serve_ab_merged", help="result file stem (serve_ab*.json / .md)")
    mp.add_argument("--take", action="append", default=[], metavar="FILE=ENGINE:WORKLOAD[,...]",
                    help="from FILE keep only these (engine, workload) passes (repeatable; files without "
                         "--take contribute everything)")
    return ap


def _check_name(name: str) -> None:
    if not name.startswith("serve_ab") or os.sep in name:
        raise ServeABError(f"--name must start with 'serve_ab' and name a file, got {name!r}")


def _make_plan(ns: argparse.Namespace) -> Tuple[Plan, Dict[str, Any]]:
    _check_name(ns.name)
    if ns.repeats < 1:
        raise ServeABError("--repeats must be at least 1")
    if ns.warmup_prompts < 1:
        raise ServeABError("--warmup-prompts must be at least 1")
    if not 0 < ns.port < 65536:
        raise ServeABError(f"--port {ns.port} is not a TCP port")
    engines = [e.strip() for e in ns.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines or len(set(engines)) != len(engines):
        raise ServeABError(f"--engines must name upstream, patched or both (once each), got {ns.engines!r}")
    workloads = parse_workloads(ns.workloads)
    num_prompts, num_prompts_for = parse_num_prompts(ns.num_prompts, [w.name for w in workloads])
    model = ns.model
    if os.path.exists(model):
        model = os.path.abspath(model)
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ServeABError(f"{model} has no config.json; write one with make_model_dir.py")
    elif model.startswith((".", "/")) or model.count("/") != 1:
        raise ServeABError(f"--model {model!r} is neither an existing directory nor a hub id (org/name)")
    bench_extra = shlex.split(ns.bench_args)
    for flag, why in OWN_BENCH_FLAGS.items():
        if any(a == flag or a.startswith(flag + "=") for a in bench_extra):
            raise ServeABError(f"--bench-args must not set {flag}: {why}")
    pythons = {
        "upstream": _check_python("upstream", ns.upstream_python) if "upstream" in engines else "",
        "patched": _check_python("patched", ns.patched_python) if "patched" in engines else "",
    }
    bench_python = _check_python("bench", ns.bench_python or ns.patched_python)
    load_format = ns.load_format or (None if has_weights(model) else "dummy")
    draft = check_mtp_draft(ns.mtp_draft) if ns.mtp_draft else None
    env = dict(os.environ)
    if os.path.isdir(model):
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
    dataset_path = os.path.abspath(ns.dataset_path) if ns.dataset_path else None
    if dataset_path and not os.path.isfile(dataset_path):
        raise ServeABError(f"--dataset-path {dataset_path} does not exist")
    plan = Plan(
        model=model, workloads=workloads, pythons=pythons, bench_python=bench_python, engines=engines,
        port=ns.port, ready_timeout_s=ns.ready_timeout, bench_timeout_s=ns.bench_timeout,
        server_cmd=ns.server_cmd, extra_server_args=shlex.split(ns.server_args), bench_extra=bench_extra,
        load_format=load_format, num_prompts=num_prompts, num_prompts_for=num_prompts_for,
        after_passes=ns.after_passes, repeats=ns.repeats,
        log_dir=os.path.join(os.path.abspath(ns.log_dir), ns.name), dataset_path=dataset_path,
        warmup_prompts=ns.warmup_prompts, base_seed=ns.base_seed, order=ns.order,
        mtp_flags=kv_budget.mtp_args(draft) if draft else [], flush=not ns.no_flush, env=env, bench_mode=ns.bench_mode,
    )
    for wl in workloads:  # fail early on a workload whose arguments cannot be rewritten
        plan.passes(wl)
    # Engine facts: the engines of this run, and the patched engine's manifest for the commit when it exists.
    probes: Dict[str, Dict[str, Any]] = {e: probe_engine(pythons[e]) for e in engines}
    patched_probe = probes.get("patched")
    if patched_probe is None:
        with contextlib.suppress(ServeABError):
            patched_probe = probe_engine(_check_python("patched", ns.patched_python))
    meta = {
        "model": model, "model_arg": ns.model, "load_format": load_format, "device": stamp.gpu_line(driver=False) or "no GPU (CPU machine)",
        "date": stamp.utc_now(),
        **commit_info(patched_probe),
        "engines": engines, "engine_info": probes,
        "bench_client": {"python": bench_python, "version": probe_engine(bench_python).get("version"),
                         "mode": ns.bench_mode},
        "order_mode": ns.order,
        "order": [{"profile": p.name, "engines": plan.engine_order(i), "workloads": [w.name for w in p.workloads]}
                  for i, p in enumerate(plan.profiles())],
        "repeats": ns.repeats, "warmup_prompts": ns.warmup_prompts, "base_seed": ns.base_seed,
        "seeds": {"warmup": ns.base_seed, "timed": [ns.base_seed + 1 + r for r in range(ns.repeats)]},
        "num_prompts_override": ns.num_prompts, "flush_before_pass": plan.flush,
        "server_cmd_template": ns.server_cmd, "extra_server_args": plan.extra_server_args,
        "mtp": ({"draft": draft, "flags": plan.mtp_flags, "algorithm": "NEXTN (sglang promotes it to FROZEN_KV_MTP "
                 f"for a Gemma-4 assistant), {kv_budget.MTP_STEPS} steps, topk {kv_budget.MTP_TOPK}, "
                 f"{kv_budget.MTP_DRAFT_TOKENS} draft tokens"}
                if draft else None),
        "extra_bench_args": plan.bench_extra, "log_dir": plan.log_dir, "argv": list(sys.argv[1:]),
    }
    return plan, meta


def print_plan(plan: Plan, meta: Dict[str, Any]) -> None:
    print(f"plan: model {plan.model}, load format {plan.load_format or 'server default'}, engines "
          f"{', '.join(plan.engines)}, order {plan.order}, {plan.repeats} timed repeat(s) after one warm-up pass")
    print(f"commit {meta['commit']} (from {meta['commit_source']})")
    for e in plan.engines:
        p = meta["engine_info"][e]
        print(f"engine {e}: {p['python']} sglang {p.get('version') or 'unknown'}, series {series_label(p)}")
    n = 0
    for i, profile in enumerate(plan.profiles()):
        for engine in plan.engine_order(i):
            n += 1
            env = " ".join(f"{k}={v}" for k, v in profile.server_env)
            print(f"server {n}: {engine} {profile.name} ({', '.join(w.name for w in profile.workloads)})"
                  f"{' env ' + env if env else ''}")
            print("  $ " + " ".join(shlex.quote(c) for c in server_command(plan, engine, profile)))
            for wl in profile.workloads:
                for kind, rep, seed, prompts in plan.passes(wl):
                    label = "warm-up" if kind == "warmup" else f"repeat {rep}"
                    out = os.path.join(plan.log_dir, f"bench-{pass_tag(engine, wl, kind, rep)}.jsonl")
                    cmd = bench_command(plan, wl, out, seed, prompts)
                    print(f"  {wl.name} {label} (seed {seed}, {prompts} prompts)")
                    print("    $ " + " ".join(shlex.quote(c) for c in cmd))


def parse_workloads(spec: str) -> List[Workload]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ServeABError("--workloads is empty")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ServeABError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)} "
                           "(bench_serving 0.5.23 has no video dataset)")
    if len(set(names)) != len(names):
        raise ServeABError(f"--workloads names a workload twice: {spec!r}")
    return [WORKLOADS[n] for n in names]


def cmd_run(ns: argparse.Namespace) -> int:
    plan, meta = _make_plan(ns)
    if ns.dry_run:
        print_plan(plan, meta)
        return 0
    os.makedirs(plan.log_dir, exist_ok=True)
    doc: Dict[str, Any] = {
        "format": FORMAT, "kind": "run", "status": "running", "error": None, "meta": meta,
        "workloads": {wl.name: plan.definition(wl, p.name) for p in plan.profiles() for wl in p.workloads},
        "servers": [], "runs": [],
    }
    jpath = os.path.join(ns.out, ns.name + ".json")
    recorder = Recorder(jpath, doc)
    recorder.write()
    try:
        run_ab(plan, recorder)
    except ServeABError as e:
        doc["status"], doc["error"] = "failed", str(e)
        recorder.write()
        print(f"finished passes kept in {jpath}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        doc["status"], doc["error"] = "interrupted", "interrupted"
        recorder.write()
        print(f"finished passes kept in {jpath}", file=sys.stderr)
        raise
    doc["status"] = "complete"
    recorder.write()
    md = render_markdown(doc)
    jpath, mpath = write_outputs(ns.out, ns.name, doc, md)
    print(md)
    print(f"wrote {jpath} and {mpath}")
    return 0


def cmd_merge(ns: argparse.Namespace) -> int:
    _check_name(ns.name)
    jpath = os.path.abspath(os.path.join(ns.out, ns.name + ".json"))
    if jpath in {os.path.abspath(f) for f in ns.files}:
        raise ServeABError(f"merge output {jpath} is one of its inputs; pick another --name")
    doc = merge_docs(ns.files, parse_take(ns.take, ns.files))
    names = list(doc["workloads"])
    doc["summary"] = summarise(doc["runs"], names)
    doc["rows"] = compare_rows(doc["summary"], names)
    md = render_markdown(doc)
    jpath, mpath = write_outputs(ns.out, ns.name, doc, md)
    print(md)
    print(f"wrote {jpath} and {mpath}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "merge", "-h", "--help"):
        argv = ["run"] + argv  # flags only: the Makefile's bench-serving target
    ns = build_parser().parse_args(argv)
    try:
        return cmd_merge(ns) if ns.command == "merge" else cmd_run(ns)
    except ServeABError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
