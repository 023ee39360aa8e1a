"""serve_ab's pass protocol: one server per (engine, profile), a cache flush before every pass, warm-up and
timed passes of the workload's load generator (bench_serving, or the video client for the video workloads)
against it, per-pass log facts, the run's JSON rewritten after every change."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shlex
import signal
import subprocess
import time
from typing import Any, Dict, List

import stamp
from benchkit.ab_client import read_result, start_bench
from benchkit.ab_common import HOST, ServeABError
from benchkit.ab_plan import Plan, Profile, bench_command, ensure_dataset, pass_tag, server_command
from benchkit.ab_report import Recorder
from benchkit.ab_servers import (Server, compile_lines, log_size, parse_server_log, peak_running_requests,
                                 peak_tokens_used, read_log, tail)
from benchkit.ab_workloads import Workload
from benchkit.outcome import recorded

REPO = stamp.REPO


def run_pass(plan: Plan, server: Server, engine: str, wl: Workload, profile: str, kind: str, rep: int,
             seed: int, prompts: int, recorder: Recorder) -> Dict[str, Any]:
    tag = pass_tag(engine, wl, kind, rep)
    what = f"workload {wl.name!r}"
    client = wl.client_label
    forked = plan.bench_mode == "fork" and wl.client == "bench_serving"
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
        "log_range": None, "compile_lines": [], "peak_running_requests": None, "peak_full_tokens_used": None,
        "peak_swa_tokens_used": None, "wall_s": None, "result": None,
    }
    recorder.doc["runs"].append(rec)
    with recorded(rec, (ServeABError,), then=recorder.write):
        if plan.flush:
            rec["flush_status"] = server.flush_cache()
            if not server.alive():
                raise server.died_error(f"while its cache was flushed before {what} ({where})")
        start = log_size(server.log_path)
        rec["log_range"] = [start, start]
        t0 = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
            log.flush()
            try:
                proc = start_bench(plan, cmd, log, log_path, out_file, fork=wl.client == "bench_serving")
            except OSError as e:
                raise ServeABError(f"[{engine}/{wl.name}] cannot start {client}: {e}") from e
            try:
                while proc.poll() is None:
                    if not server.alive():
                        raise server.died_error(f"while {client} ran {what} ({where})")
                    if time.monotonic() - t0 > plan.bench_timeout_s:
                        raise ServeABError(
                            f"[{engine}/{wl.name}] {client} did not finish in {plan.bench_timeout_s:.0f}s "
                            f"({where}); log {log_path}:\n{tail(log_path)}"
                        )
                    time.sleep(0.2)
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                end = log_size(server.log_path)
                rec["log_range"] = [start, end]
                pass_log = read_log(server.log_path, start, end)
                rec["compile_lines"] = compile_lines(pass_log)
                rec["peak_running_requests"] = peak_running_requests(pass_log)
                used = peak_tokens_used(pass_log)
                rec["peak_full_tokens_used"], rec["peak_swa_tokens_used"] = used["full"], used["swa"]
                rec["wall_s"] = time.monotonic() - t0
        result = read_result(out_file)
        if proc.returncode != 0 or result is None:
            if not server.alive():
                raise server.died_error(f"while {client} ran {what} ({where})")
            hint = (" (this pass was forked from the bench_serving fork server; `--bench-mode process` runs "
                    "each pass as its own process)" if forked else "")
            raise ServeABError(
                f"[{engine}/{wl.name}] {client} exited with status {proc.returncode} and "
                f"{'no result' if result is None else 'a result'} ({where}){hint}; log {log_path}:\n"
                f"{tail(log_path)}"
            )
        if not result.get("completed"):
            raise ServeABError(f"[{engine}/{wl.name}] {client} completed 0 requests ({where}); log {log_path}")
        rec["result"] = result
        rec["status"] = "ok"
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


def serve_profile(plan: Plan, recorder: Recorder, engine: str, profile: Profile, servers: List[Server]) -> None:
    """One engine's server for one profile: start it, wait for it, run every pass of the profile's workloads
    and the --after-passes command, then stop it and record what its log says."""
    doc = recorder.doc
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

    def stopped() -> None:
        server.stop()
        info = parse_server_log(read_log(log_path))
        srec["log_info"] = info
        in_passes = sum(len(r["compile_lines"]) for r in doc["runs"]
                        if r["engine"] == engine and r["profile"] == profile.name)
        srec["compile_lines_outside_passes"] = len(info["compile_lines"]) - in_passes
        recorder.write()

    with recorded(srec, (ServeABError,), then=stopped):
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


def run_ab(plan: Plan, recorder: Recorder) -> None:
    """Start one server per (engine, server profile), run every pass of its workloads, record as it goes."""
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
                serve_profile(plan, recorder, engine, profile, servers)
    finally:
        for s in servers:
            s.stop(grace_s=10)
        if plan.bench_server is not None:
            plan.bench_server.close()
            plan.bench_server = None
        for s, h in previous.items():
            signal.signal(s, h)
