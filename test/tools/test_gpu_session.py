"""benchmark/gemma4/gpu_session.py: a detached plan of steps with limits, dependencies and packing."""

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "benchmark", "gemma4", "gpu_session.py")


def _run(*args, check=True):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, check=check, timeout=120)


def _plan(tmp_path, steps):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"env": {"GREETING": "hi"}, "steps": steps}))
    return str(path)


def test_plan_runs_steps_in_order_with_limits_and_dependencies(tmp_path):
    out = tmp_path / "res"
    plan = _plan(tmp_path, [
        {"name": "bg", "cmd": "sleep 1; echo $GREETING > {out}/bg.txt", "background": True},
        {"name": "fails", "cmd": "exit 3"},
        {"name": "slow", "cmd": "sleep 30", "timeout": 1},
        {"name": "needs_fail", "cmd": "echo never > {out}/x", "after": ["fails"]},
        {"name": "needs_bg", "cmd": "cat $(dirname {out})/bg/bg.txt > {out}/seen.txt", "after": ["bg"]},
    ])
    _run("run", "--plan", plan, "--out", str(out))
    status = json.loads((out / "status.json").read_text())
    steps = status["steps"]
    assert status["done"] is True
    assert steps["bg"]["state"] == "ok" and steps["fails"]["rc"] == 3 and steps["fails"]["state"] == "failed"
    assert steps["slow"]["state"] == "timeout" and steps["slow"]["seconds"] < 25
    assert steps["needs_fail"] == {"state": "skipped", "because": ["fails"]}
    assert not (out / "needs_fail" / "x").exists()
    # The dependent step waited for the background one and saw its output and the plan's env.
    assert (out / "needs_bg" / "seen.txt").read_text().strip() == "hi"
    assert (out / "fails.log").read_text().startswith("$ exit 3")


def test_start_detaches_and_wait_reports(tmp_path):
    out = tmp_path / "res"
    plan = _plan(tmp_path, [{"name": "a", "cmd": "sleep 2; echo done > {out}/a.txt"}])
    t0 = time.time()
    _run("start", "--plan", plan, "--out", str(out))
    assert time.time() - t0 < 10  # returned before the step finished
    res = _run("wait", "--out", str(out), "--seconds", "60")
    assert "a: ok" in res.stdout and "done=True" in res.stdout
    assert (out / "a" / "a.txt").read_text().strip() == "done"


def test_pack_cuts_large_results_into_parts(tmp_path):
    out = tmp_path / "res"
    (out / "big").mkdir(parents=True)
    (out / "big" / "noise.bin").write_bytes(os.urandom(20 * (1 << 20)))
    (out / "small.txt").write_text("x")
    dest = tmp_path / "dest"
    listed = _run("pack", "--out", str(out), "--dest", str(dest)).stdout.split()
    assert len(listed) == 2 and all(os.path.getsize(p) <= 15 * (1 << 20) for p in listed)
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join(open(p, "rb").read() for p in listed))
    with tarfile.open(joined) as tar:
        names = tar.getnames()
    assert "res/small.txt" in names and "res/big/noise.bin" in names


@pytest.mark.parametrize("steps, message", [
    ([], "no 'steps'"),
    ([{"name": "a"}], "needs a 'name' and a 'cmd'"),
    ([{"name": "a", "cmd": "true"}, {"name": "a", "cmd": "true"}], "two steps are named"),
    ([{"name": "a", "cmd": "true", "after": ["b"]}], "not an earlier step"),
    ([{"name": "a/b", "cmd": "true"}], "letters, digits"),
])
def test_bad_plans_are_refused_with_a_clear_message(tmp_path, steps, message):
    res = _run("start", "--plan", _plan(tmp_path, steps), "--out", str(tmp_path / "res"), check=False)
    assert res.returncode == 2 and message in res.stderr


PLANS = os.path.join(REPO, "benchmark", "gemma4", "gpu_plans")


@pytest.mark.parametrize("plan", sorted(p for p in os.listdir(PLANS) if p.endswith(".json")))
def test_committed_plans_load_and_their_serve_ab_commands_parse(plan):
    """A committed plan is spent on a 30-minute device lease: its steps must load, and every serve_ab.py run in
    it must parse with serve_ab's own argument parser (a mistyped flag would cost the hold)."""
    import shlex

    sys.path.insert(0, os.path.dirname(TOOL))
    try:
        import gpu_session as gs
        import serve_ab as sab
    finally:
        sys.path.remove(os.path.dirname(TOOL))
    doc = gs.load_plan(os.path.join(PLANS, plan))
    parser = sab.build_parser()
    checked = 0
    for step in doc["steps"]:
        lexer = shlex.shlex(step["cmd"].replace("{out}", "/tmp/out"), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        parts, cur = [], []
        for tok in lexer:  # split into simple commands at ; && || | (quotes respected)
            if tok and set(tok) <= set(";&|"):
                parts.append(cur)
                cur = []
            else:
                cur.append(tok)
        parts.append(cur)
        for words in parts:
            if len(words) > 2 and words[1].endswith("serve_ab.py") and words[2] == "run":
                ns = parser.parse_args(words[2:])  # SystemExit on an unknown flag
                assert ns.command == "run" and ns.model
                sab.parse_workloads(ns.workloads)
                sab.parse_num_prompts(ns.num_prompts, [w.strip() for w in ns.workloads.split(",")])
                checked += 1
    if "serve_ab.py run" in json.dumps(doc):
        assert checked, f"{plan}: a serve_ab.py run was not recognised by the check"
