"""bench_serving passes forked from one process that imported it once (used by serve_ab.py).

``python -m sglang.bench_serving`` spends most of a short pass importing sglang (about 21 s on the 2-core CPU
machine; on the H200 machine every pass of the 2026-12-01 holds took 28-56 s of wall time for 4-9 s of
measured duration). This process imports bench_serving's entry point once, then for every request it reads
forks a child that runs exactly what ``python -m sglang.bench_serving ARGS`` runs (the module's ``cli_main``
with ``sys.argv`` set to ARGS, in the given working directory and environment, stdout and stderr appended to
the pass's log). The child starts its own process group (the caller kills the pass with killpg), writes its
exit status to ``rc_file`` and leaves with it; children are reaped by the kernel (SIGCHLD ignored here, reset
to the default in each child).

Protocol, one JSON object per line on the server's original stdout (whatever else is printed there goes to
stderr): the server prints ``{"ready": true, "entry": ...}`` once the import is
done; each request ``{"argv": [...], "log": PATH, "rc_file": PATH, "cwd": DIR, "env": {...}}`` is answered
with ``{"pid": N}`` (or ``{"error": "..."}``). End of input ends the server.

    python benchmark/gemma4/bench_forkserver.py [module:function]   # default sglang.bench_serving:cli_main
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback

DEFAULT_ENTRY = "sglang.bench_serving:cli_main"


def _child(target, req) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    rc = 1
    try:
        os.setsid()
        fd = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["sglang.bench_serving", *req["argv"]]
        try:
            target()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 -- the pass's log gets the traceback, the caller the status
            traceback.print_exc()
            rc = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        try:
            with open(req["rc_file"], "w", encoding="utf-8") as f:
                f.write(str(rc))
        finally:
            os._exit(rc)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    entry = argv[0] if argv else DEFAULT_ENTRY
    # The protocol keeps the original stdout to itself; anything else printed to stdout (by the import, say)
    # goes to stderr, i.e. the fork server's log.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    mod, _, fn = entry.partition(":")
    if not mod or not fn:
        print(json.dumps({"error": f"entry {entry!r} is not module:function"}), file=out, flush=True)
        return 2
    target = getattr(importlib.import_module(mod), fn)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print(json.dumps({"ready": True, "entry": entry}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            missing = [k for k in ("argv", "log", "rc_file", "cwd", "env") if k not in req]
            if missing:
                raise ValueError(f"request lacks {', '.join(missing)}")
        except ValueError as e:
            print(json.dumps({"error": str(e)}), file=out, flush=True)
            continue
        out.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            out.close()
            _child(target, req)
        print(json.dumps({"pid": pid}), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
