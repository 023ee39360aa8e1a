"""End-to-end A/B: stock sglang 0.5.23 against the patched engine, measured with ``bench_serving``.

Two commands:

``run`` (also what a call without a command does) serves one model with one or both engines and drives
SGLang's own load generator ``python -m sglang.bench_serving`` against each server (the video workloads: serve_ab's
video client ``benchmark/gemma4/video_client.py``, with bench_serving's result keys). ``merge`` joins the JSON
files of several ``run`` calls (one engine each, or mixed) into one comparison, so that a long matrix can run
in parts.

Protocol of ``run``:

* Workloads that need the same server (same server arguments and environment) form a *server profile*; one
  server is started per (engine, profile) and every workload of the profile runs against it.
* Per workload on a server: one warm-up pass (``--warmup-prompts`` prompts, default 16, capped at the
  workload's count; seed = ``--base-seed``), kept in the JSON as warm-up and never in the medians; then
  ``--repeats`` timed passes (default 3), seed ``base + 1 + rep``. Every pass draws its own prompts (and
  images, videos): bench_serving seeds its sampling with ``--seed``, each pass of a ``random`` workload gets
  its own synthetic ShareGPT file generated from (workload, seed), and the video client generates its videos
  from (seed, request), so no two passes send the same prompt and the radix / multimodal caches cannot hit
  across passes. Both engines get the same seeds, hence the same prompts, in the same repeat.
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

Workloads:

    chat            random 1000/1000, 80 prompts, range ratio 1.0, 2 warm-up requests
    summarization   random 8000/1000, 80 prompts (same settings)
    images          6 random 480x480 images per request, 100 prompts, text 50 in / 10 out, default server
    images-nocache  the same with --disable-radix-cache and SGLANG_VLM_CACHE_SIZE_MB=0 (the vision encoder
                    runs for every request whatever the content)
    video8          one video of 8 random 480x480 frames per request (Motion JPEG in AVI, as a base64 data URL
                    in a ``video_url`` content part), a short text prompt, 10 tokens out (ignore_eos), 64
                    prompts, at most 16 in flight, 2 warm-up requests, default server
    video32         the same with 32 frames per video and 32 prompts

bench_serving 0.5.23 has no video data set, so the video workloads run serve_ab's video client
(``benchmark/gemma4/video_client.py``, ``benchkit/ab_video.py``) instead, with the same passes, seeds, flushes
and log facts, as its own process in either bench mode; its flags: --frames, --resolution HxW, --fps,
--quality, --output-len, --max-concurrency, --warmup-requests (``--bench-args`` reach it too; flags it does not
know are ignored and listed in its result). The server needs a video decoder: sglang 0.5.23 decodes with
torchcodec (with FFmpeg's libraries) or else decord; the GPU kit carries neither, so bring one (the decord 0.6.0
wheel bundles its FFmpeg) into the engines' python before a video run.

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

``--dry-run`` prints every server and pass command (with seeds) and the order, then exits. ``--server-cmd``
replaces the launch command (a template with {python} {model} {host} {port} {engine} {server_args}); the tests
use it to start a stand-in server. Every server started is stopped (its whole process group) on success, on
error and on Ctrl-C. Exit status 0 when every pass completed, 2 on an error (a server that dies, a port already
taken, readiness that times out, bench_serving or the video client failing, merge inputs that disagree), with a
message naming
the engine, the workload and the log file (or the files).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kv_budget  # noqa: E402  (benchmark/gemma4/kv_budget.py: the MTP deployment the planner assumes)
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)
# benchmark/gemma4/benchkit: the modules this command line drives. The names the tests and other scripts use
# from serve_ab are re-exported here (marked F401).
from benchkit.ab_client import ForkServer  # noqa: E402,F401
from benchkit.ab_common import ENGINES, FORMAT, ServeABError  # noqa: E402
from benchkit.ab_engines import (  # noqa: E402
    check_mtp_draft, check_python, commit_info, has_weights, probe_engine, series_label)
from benchkit.ab_merge import merge_docs, parse_take  # noqa: E402
from benchkit.ab_passes import run_ab  # noqa: E402
from benchkit.ab_plan import Plan, bench_command, ensure_dataset, pass_tag, server_command  # noqa: E402,F401
from benchkit.ab_report import Recorder, render_markdown, write_outputs  # noqa: E402
from benchkit.ab_servers import parse_server_log, peak_running_requests, peak_tokens_used  # noqa: E402,F401
from benchkit.ab_summary import compare_rows, ratio, spread, summarise  # noqa: E402,F401
from benchkit.ab_workloads import (  # noqa: E402,F401
    OWN_BENCH_FLAGS, WORKLOADS, get_flag, parse_num_prompts, parse_workloads, set_flag)
from benchkit.outcome import recorded  # noqa: E402

REPO = stamp.REPO
DEFAULT_PYTHON = {
    "upstream": os.path.join(".venv-upstream", "bin", "python"),
    "patched": os.path.join(".venv", "bin", "python"),
}
DEFAULT_SERVER_CMD = "{python} -m sglang.launch_server --model-path {model} --host {host} --port {port} {server_args}"


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
    ap.add_argument("--bench-python", default=None,
                    help="python that runs bench_serving and the video client (default: patched)")
    ap.add_argument("--bench-mode", choices=["fork", "process"], default="fork",
                    help="fork: every pass forked from one process that imported bench_serving once "
                         "(bench_forkserver.py; saves the import, ~20 s per pass); process: one "
                         "`python -m sglang.bench_serving` per pass")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for each server")
    ap.add_argument("--bench-timeout", type=float, default=3600.0,
                    help="seconds for one pass of bench_serving or the video client")
    ap.add_argument("--server-cmd", default=DEFAULT_SERVER_CMD,
                    help="launch template; placeholders {python} {model} {host} {port} {engine} {server_args}")
    ap.add_argument("--server-args", default="", help="extra server arguments for both engines (one string)")
    ap.add_argument("--mtp-draft", default=None, help="Gemma-4 assistant draft (dir or hub id): adds MTP flags")
    ap.add_argument("--bench-args", default="",
                    help="extra arguments of every pass's client (bench_serving, video client), appended last "
                         "(one string)")
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
        "upstream": check_python("upstream", ns.upstream_python) if "upstream" in engines else "",
        "patched": check_python("patched", ns.patched_python) if "patched" in engines else "",
    }
    bench_python = check_python("bench", ns.bench_python or ns.patched_python)
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
            patched_probe = probe_engine(check_python("patched", ns.patched_python))
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
        "switches": stamp.switches(os.environ),  # both engines' servers inherit them
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
        with recorded(doc, (ServeABError,)):
            run_ab(plan, recorder)
    except (ServeABError, KeyboardInterrupt):
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
