"""serve_ab's servers and their logs: an engine's server process (start, readiness, cache flush, stop with its
process group), and what its log says (pools, scheduler, series and KV split lines, compiles, running requests)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

import stamp
from benchkit.ab_common import HOST, ServeABError

REPO = stamp.REPO


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


_USED_RE = {side: re.compile(r"Decode batch\b[^\n]*?#" + side + r" token: (\d+)") for side in ("full", "swa")}
_UNIFIED_RE = re.compile(r"(\[unified-memory-pool\].*?)\s*$")


def peak_tokens_used(text: str) -> Dict[str, Optional[int]]:
    """The most full-pool and SWA-pool tokens in use any "Decode batch" line of ``text`` reports ("#full token",
    "#swa token"; sampled like the running requests); None for a side no line reports.  Under
    --enable-unified-memory these are the split the workload actually drew from the one buffer."""
    out: Dict[str, Optional[int]] = {}
    for side, pattern in _USED_RE.items():
        counts = [int(m.group(1)) for m in pattern.finditer(text)]
        out[side] = max(counts) if counts else None
    return out


def parse_server_log(text: str) -> Dict[str, Any]:
    """What a server log says about pools and series; None for what it does not say."""
    out: Dict[str, Any] = {"full_layer_tokens": None, "swa_layer_tokens": None, "pool_lines": [],
                           "max_total_num_tokens": None, "chunked_prefill_size": None, "max_prefill_tokens": None,
                           "max_running_requests": None, "context_len": None, "available_mem_gb": None,
                           "series_line": None, "kv_split_lines": [], "unified_pool_lines": [], "compile_lines": []}
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
        m = _UNIFIED_RE.search(line)
        if m:  # --enable-unified-memory: its boot lines (one buffer; the pool lines above are the boot split)
            out["unified_pool_lines"].append(m.group(1))
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


def log_size(path: str) -> int:
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


def tail(path: str, n: int = 40) -> str:
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
            f"{tail(self.log_path)}"
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
                    f"{status or 'no answer'}); log {self.log_path}:\n{tail(self.log_path)}"
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
