"""Run a list of GPU steps as one detached job, so that a short-lived device lease loses no time between calls.

The lent GPU machine takes commands of at most 10 minutes and goes back 30 s after a call ends, while an
end-to-end matrix (server starts of 1-3 minutes, warm-up passes, repeats) takes longer. ``start`` launches
the plan in its own process session and returns at once; later calls ``wait`` (sleep until the plan ends or
a deadline passes, printing progress) and ``pack`` (copy what is finished so far into the folder the device
tool brings back). Every step runs with its own time limit and log; a failed step is recorded and the plan
goes on with the steps that do not depend on it.

    python benchmark/gemma4/gpu_session.py start --plan PLAN.json --out /tmp/res
    python benchmark/gemma4/gpu_session.py wait --out /tmp/res --seconds 540
    python benchmark/gemma4/gpu_session.py pack --out /tmp/res --dest "$OUT"

PLAN.json: {"comment": "...", "env": {...}, "steps": [{"name": "...", "cmd": "...", "timeout": 300,
             "after": ["name", ...], "background": false, "always": false}, ...]}
A ``background`` step starts and the plan moves on; a later step that lists it in ``after`` waits for it.
An ``always`` step runs even when a step in its ``after`` failed. ``{out}`` in a command is replaced by the
step's own output folder. ``load_plan`` checks the whole plan before anything is detached: ``env`` maps names
to strings (numbers are refused: write "1", not 1), ``steps`` is a non-empty list, ``cmd`` a non-empty string,
``timeout`` a positive number of seconds (default 600), ``after`` a list of names of earlier steps,
``background`` and ``always`` true or false; any other key is refused. ``comment`` (top level) is ignored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from typing import Any, Dict, List, Optional

STATUS = "status.json"
PART_BYTES = 15 * (1 << 20)


class PlanError(ValueError):
    pass


PLAN_KEYS = ("comment", "env", "steps")
STEP_KEYS = ("name", "cmd", "timeout", "after", "background", "always")
DEFAULT_TIMEOUT = 600


def load_plan(path: str) -> Dict[str, Any]:
    """Read and check a whole plan; a PlanError names the plan file, the step and the field at fault."""
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise PlanError(f"cannot read plan {path}: {e}") from None
    if not isinstance(plan, dict):
        raise PlanError(f"plan {path} must be a JSON object with a 'steps' list, not {type(plan).__name__}")
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise PlanError(f"plan {path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(PLAN_KEYS)}")
    env = plan.get("env", {})
    if not isinstance(env, dict):
        raise PlanError(f"plan {path}: 'env' must be an object of names to strings, not {type(env).__name__}")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise PlanError(f"plan {path}: 'env' name {key!r} must be non-empty, without '=' or NUL")
        if not isinstance(value, str) or "\0" in value:
            raise PlanError(f"plan {path}: 'env' value of {key!r} must be a string (write \"1\", not 1), "
                            f"not {value!r}")
    steps = plan.get("steps")
    if not isinstance(steps, list) or not steps:
        raise PlanError(f"plan {path} has no 'steps' list (a non-empty list of steps is needed)")
    names = set()
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise PlanError(f"plan {path}: step {i} must be an object, not {type(step).__name__}")
        name = step.get("name")
        where = f"plan {path}: step {i}" + (f" {name!r}" if isinstance(name, str) else "")
        if not isinstance(name, str) or "cmd" not in step:
            raise PlanError(f"{where} needs a 'name' and a 'cmd'")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise PlanError(f"{where}: step name {name!r} must be letters, digits, '-' and '_'")
        if name in names:
            raise PlanError(f"{where}: two steps are named {name!r}")
        unknown = sorted(set(step) - set(STEP_KEYS))
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(STEP_KEYS)}")
        cmd = step["cmd"]
        if not isinstance(cmd, str) or not cmd.strip():
            raise PlanError(f"{where}: 'cmd' must be a non-empty string, not {cmd!r}")
        if "timeout" in step:
            t = step["timeout"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise PlanError(f"{where}: 'timeout' must be a positive number of seconds, not {t!r}")
        for flag in ("background", "always"):
            if flag in step and not isinstance(step[flag], bool):
                raise PlanError(f"{where}: {flag!r} must be true or false, not {step[flag]!r}")
        after = step.get("after", [])
        if not isinstance(after, list):
            raise PlanError(f"{where}: 'after' must be a list of step names (e.g. [{after!r}]), not {after!r}")
        for dep in after:
            if not isinstance(dep, str):
                raise PlanError(f"{where}: 'after' must list step names (strings), not {dep!r}")
            if dep not in names:
                raise PlanError(f"{where}: step {name!r} runs after {dep!r} ('after'), which is not an earlier step")
        names.add(name)
    return plan


def _write_status(out: str, status: Dict[str, Any]) -> None:
    tmp = os.path.join(out, STATUS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(status, f, indent=1)
    os.replace(tmp, os.path.join(out, STATUS))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def run_plan(plan: Dict[str, Any], out: str) -> int:
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    env.update({k: str(v) for k, v in plan.get("env", {}).items()})
    env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.time()
    status: Dict[str, Any] = {"started": t0, "pid": os.getpid(), "steps": {}, "done": False}
    running: Dict[str, Any] = {}  # name -> (proc, deadline, log handle, start)

    def finish(name: str) -> None:
        proc, deadline, log, start = running.pop(name)
        timed_out = False
        while proc.poll() is None:
            if time.time() > deadline:
                timed_out = True
                _stop(proc)
                break
            time.sleep(1)
        log.close()
        rc = proc.returncode
        status["steps"][name].update(
            rc=rc, seconds=round(time.time() - start, 1), state="timeout" if timed_out else ("ok" if rc == 0 else "failed")
        )
        _write_status(out, status)

    for step in plan["steps"]:
        name = step["name"]
        for dep in step.get("after", []):
            if dep in running:
                finish(dep)
        failed = [d for d in step.get("after", []) if status["steps"].get(d, {}).get("state") != "ok"]
        step_out = os.path.join(out, name)
        os.makedirs(step_out, exist_ok=True)
        if failed and not step.get("always", False):
            status["steps"][name] = {"state": "skipped", "because": failed}
            _write_status(out, status)
            continue
        cmd = step["cmd"].replace("{out}", shlex.quote(step_out))
        log = open(os.path.join(out, f"{name}.log"), "w", encoding="utf-8")
        log.write(f"$ {cmd}\n")
        log.flush()
        start = time.time()
        proc = subprocess.Popen(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        running[name] = (proc, start + float(step.get("timeout", DEFAULT_TIMEOUT)), log, start)
        status["steps"][name] = {"state": "running", "at": round(start - t0, 1), "cmd": cmd}
        _write_status(out, status)
        if not step.get("background", False):
            finish(name)
    for name in list(running):
        finish(name)
    status["done"] = True
    status["seconds"] = round(time.time() - t0, 1)
    _write_status(out, status)
    return 0


def start(plan_path: str, out: str, grace: float = 3.0, runner: Optional[List[str]] = None) -> int:
    """Check the plan, launch the runner in its own session, and wait up to ``grace`` seconds for it to write
    ``status.json`` (with its own pid). A runner that exits first is reported with the tail of session.log and
    exit status 1. ``runner`` replaces the runner's command line (for tests)."""
    load_plan(plan_path)  # refuse a bad plan before detaching
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "session.log")
    with open(log_path, "a", encoding="utf-8") as log:
        argv = runner or [sys.executable, os.path.abspath(__file__), "run", "--plan", plan_path, "--out", out]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + grace
    while True:
        if read_status(out).get("pid") == proc.pid:  # not a status.json left by an earlier run
            print(f"plan started in its own session, pid {proc.pid}; progress: {os.path.join(out, STATUS)}")
            return 0
        rc = proc.poll()
        if rc is not None:
            if read_status(out).get("pid") == proc.pid:  # wrote it and ended between the two checks
                continue
            try:
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    tail = "".join(f.readlines()[-20:])
            except OSError:
                tail = ""
            print(f"error: the plan runner (pid {proc.pid}) exited with status {rc} before writing "
                  f"{os.path.join(out, STATUS)}; the plan did not start. {log_path}:\n{tail}", file=sys.stderr)
            return 1
        if time.time() >= deadline:
            print(f"plan runner started in its own session, pid {proc.pid}, but has not written "
                  f"{os.path.join(out, STATUS)} yet after {grace:g} s; check {log_path}")
            return 0
        time.sleep(0.05)


def read_status(out: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(out, STATUS), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"steps": {}, "done": False}


def describe(status: Dict[str, Any]) -> str:
    now = time.time()
    rows = [f"elapsed {now - status.get('started', now):.0f}s, done={status.get('done')}"]
    for name, s in status.get("steps", {}).items():
        extra = f" {s['seconds']}s" if "seconds" in s else ""
        rows.append(f"  {name}: {s.get('state')}{extra}" + (f" rc={s['rc']}" if "rc" in s else ""))
    return "\n".join(rows)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # no pid recorded: cannot tell, keep waiting
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait(out: str, seconds: float, poll: float = 5.0) -> int:
    """Until the plan is done, its runner has died, or ``seconds`` have passed; 1 when the runner
    died before finishing the plan (its status then stops where it died)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        status = read_status(out)
        if status.get("done"):
            break
        if not _alive(status.get("pid")):
            print(describe(status))
            print(f"error: the plan runner (pid {status.get('pid')}) is gone but the plan is not done; "
                  f"see {os.path.join(out, 'session.log')}", file=sys.stderr)
            return 1
        time.sleep(poll)
    print(describe(read_status(out)))
    return 0


def pack(out: str, dest: str, limit_files: int = 7) -> List[str]:
    """A gzip tar of ``out`` (logs, results) cut into parts of at most 15 MiB, at most ``limit_files``."""
    os.makedirs(dest, exist_ok=True)
    archive = os.path.join(dest, "res.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(out, arcname=os.path.basename(out.rstrip("/")) or "res")
    size = os.path.getsize(archive)
    if size <= PART_BYTES:
        return [archive]
    parts = []
    with open(archive, "rb") as f:
        for i in range(limit_files):
            chunk = f.read(PART_BYTES)
            if not chunk:
                break
            path = f"{archive}.part{i}"
            with open(path, "wb") as g:
                g.write(chunk)
            parts.append(path)
        if f.read(1):
            print(f"warning: archive of {size} bytes does not fit {limit_files} parts; the tail is left out",
                  file=sys.stderr)
    os.remove(archive)
    return parts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("start", "run"):
        p = sub.add_parser(name)
        p.add_argument("--plan", required=True)
        p.add_argument("--out", required=True)
    p = sub.add_parser("wait")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=540)
    p = sub.add_parser("pack")
    p.add_argument("--out", required=True)
    p.add_argument("--dest", required=True)
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "start":
            return start(ns.plan, ns.out)
        if ns.cmd == "run":
            return run_plan(load_plan(ns.plan), ns.out)
        if ns.cmd == "wait":
            return wait(ns.out, ns.seconds)
        for p in pack(ns.out, ns.dest):
            print(p)
        return 0
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
