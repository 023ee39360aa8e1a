"""The load generator side of serve_ab: bench_serving passes forked from one fork server (bench_forkserver.py)
or run as their own processes (and video-client passes, always their own), and the result a pass leaves in its
output file."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

import stamp
from benchkit.ab_common import ServeABError
from benchkit.ab_plan import Plan
from benchkit.ab_servers import tail

REPO = stamp.REPO


def read_result(out_file: str) -> Optional[Dict[str, Any]]:
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


FORKSERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_forkserver.py")


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
                               f"{tail(log_path)}")

    def _reply(self, timeout_s: float, what: str) -> Dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise ServeABError(f"bench_serving fork server gave no answer to {what!r} in {timeout_s:.0f}s "
                               f"(exit status {self.proc.poll()}); log {self.log_path}:\n{tail(self.log_path)}")
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
                               f"log {self.log_path}:\n{tail(self.log_path)}") from e
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


def start_bench(plan: Plan, cmd: List[str], log, log_path: str, out_file: str, fork: bool = True):
    """Start one pass: forked from the fork server (started on first use), or as its own process (``--bench-mode
    process``, or ``fork=False``: the video client, which imports no sglang and starts in well under a second)."""
    if plan.bench_mode == "process" or not fork:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=plan.env, cwd=REPO,
                                start_new_session=True)
    if plan.bench_server is None:
        # SERVE_AB_BENCH_ENTRY (module:function, default bench_serving's cli_main): for the tests' stand-in client.
        plan.bench_server = ForkServer(plan.bench_python, plan.env, os.path.join(plan.log_dir, "bench-forkserver.log"),
                                       entry=plan.env.get("SERVE_AB_BENCH_ENTRY") or None)
    log.flush()
    return plan.bench_server.start(cmd[3:], log_path, out_file + ".rc", plan.env)
