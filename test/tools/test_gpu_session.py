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


def _gs():
    sys.path.insert(0, os.path.dirname(TOOL))
    try:
        import gpu_session
    finally:
        sys.path.remove(os.path.dirname(TOOL))
    return gpu_session


def _write(tmp_path, doc):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return str(path)


_BUILD = {"name": "build", "cmd": "true"}


# (plan document, words the error must contain: the step and the field). Every case is a plan that the
# runner would otherwise take (or die on after detaching), so each fails if its check is removed.
@pytest.mark.parametrize("doc, words", [
    pytest.param({"steps": [_BUILD, {"name": "bench", "cmd": "true", "timeout": "300"}]},
                 ["step 1 'bench'", "'timeout'", "positive number", "'300'"], id="string-timeout"),
    pytest.param({"steps": [{"name": "bench", "cmd": "true", "timeout": True}]},
                 ["'bench'", "'timeout'", "True"], id="bool-timeout"),
    pytest.param({"steps": [{"name": "bench", "cmd": "true", "timeout": 0}]},
                 ["'bench'", "'timeout'", "positive"], id="zero-timeout"),
    pytest.param({"env": ["A=1"], "steps": [_BUILD]}, ["'env'", "object", "list"], id="list-env"),
    pytest.param({"env": {"CUDA_VISIBLE_DEVICES": 0}, "steps": [_BUILD]},
                 ["'env'", "'CUDA_VISIBLE_DEVICES'", "must be a string"], id="non-string-env-value"),
    pytest.param({"env": {"A=B": "1"}, "steps": [_BUILD]}, ["'env'", "'A=B'"], id="env-name-with-equals"),
    pytest.param({"steps": [_BUILD, {"name": "bench", "cmd": "true", "after": "build"}]},
                 ["step 1 'bench'", "'after'", "must be a list", "['build']"], id="string-after"),
    pytest.param({"steps": [_BUILD, {"name": "bench", "cmd": "true", "after": [1]}]},
                 ["'bench'", "'after'", "strings"], id="non-string-after-entry"),
    pytest.param({"steps": [_BUILD, {"name": "bench", "cmd": "true", "timout": 300}]},
                 ["step 1 'bench'", "unknown key", "'timout'"], id="unknown-step-key"),
    pytest.param({"steps": [_BUILD], "step": []}, ["unknown top-level key", "'step'"], id="unknown-plan-key"),
    pytest.param({"steps": [{"name": "server", "cmd": "true", "background": "yes"}]},
                 ["step 0 'server'", "'background'", "true or false"], id="non-bool-background"),
    pytest.param({"steps": [{"name": "report", "cmd": "true", "always": 1}]},
                 ["'report'", "'always'", "true or false"], id="non-bool-always"),
    pytest.param({"steps": [_BUILD, {"name": "bench", "cmd": ""}]}, ["step 1 'bench'", "'cmd'", "non-empty"],
                 id="empty-cmd"),
    pytest.param({"steps": [_BUILD, {"name": "bench", "cmd": ["echo", "x"]}]}, ["'bench'", "'cmd'", "string"],
                 id="list-cmd"),
    pytest.param({"steps": {"build": _BUILD}}, ["'steps' list"], id="steps-not-a-list"),
    pytest.param([_BUILD], ["must be a JSON object"], id="plan-not-an-object"),
])
def test_whole_plan_is_checked_before_detaching(tmp_path, doc, words):
    plan = _write(tmp_path, doc)
    with pytest.raises(_gs().PlanError) as err:
        _gs().load_plan(plan)
    message = str(err.value)
    assert plan in message
    for w in words:
        assert w in message, (w, message)
    # The CLI refuses it with exit 2 and detaches nothing (no output folder, no session.log).
    out = tmp_path / "res"
    res = _run("start", "--plan", plan, "--out", str(out), check=False)
    assert res.returncode == 2 and message in res.stderr and "plan started" not in res.stdout
    assert not out.exists()


def test_every_committed_plan_loads():
    gs = _gs()
    plans = sorted(p for p in os.listdir(PLANS) if p.endswith(".json"))
    assert plans
    for p in plans:
        doc = gs.load_plan(os.path.join(PLANS, p))
        assert doc["steps"]


def test_start_reports_a_runner_that_dies_before_writing_status(tmp_path, capsys):
    gs = _gs()
    plan = _plan(tmp_path, [{"name": "a", "cmd": "true"}])
    out = tmp_path / "res"
    out.mkdir()
    # A status.json left by an earlier run must not pass for this runner's.
    (out / "status.json").write_text(json.dumps({"pid": 1, "steps": {}, "done": True}))
    dying = [sys.executable, "-c", "import sys; print('runner blew up'); sys.exit(5)"]
    t0 = time.time()
    assert gs.start(plan, str(out), grace=10, runner=dying) == 1
    assert time.time() - t0 < 8  # noticed the exit, did not sit out the grace period
    cap = capsys.readouterr()
    assert "plan started" not in cap.out
    assert "exited with status 5" in cap.err and "runner blew up" in cap.err


def test_start_does_not_hang_on_a_runner_that_is_slow_to_write_status(tmp_path, capsys, monkeypatch):
    gs = _gs()
    plan = _plan(tmp_path, [{"name": "a", "cmd": "true"}])
    started = []
    real_popen = gs.subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(gs.subprocess, "Popen", popen)
    t0 = time.time()
    try:
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        rc = gs.start(plan, str(tmp_path / "res"), grace=0.5, runner=sleeper)
    finally:
        for p in started:  # only the runner this test started
            p.kill()
            p.wait()
    assert rc == 0 and time.time() - t0 < 5
    assert "has not written" in capsys.readouterr().out


def test_start_says_started_once_the_runner_wrote_its_status(tmp_path):
    out = tmp_path / "res"
    res = _run("start", "--plan", _plan(tmp_path, [{"name": "a", "cmd": "sleep 1"}]), "--out", str(out))
    assert "plan started" in res.stdout
    status = json.loads((out / "status.json").read_text())
    assert str(status["pid"]) in res.stdout
    _run("wait", "--out", str(out), "--seconds", "30")


def test_wait_stops_when_the_runner_died_before_the_plan_was_done(tmp_path, capsys):
    gs = _gs()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "res"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"started": time.time(), "pid": dead.pid, "done": False,
                                                 "steps": {"a": {"state": "running"}}}))
    t0 = time.time()
    assert gs.wait(str(out), 30, poll=0.05) == 1
    assert time.time() - t0 < 5
    assert f"runner (pid {dead.pid}) is gone but the plan is not done" in capsys.readouterr().err
    # a live runner is waited for until the deadline, which is no error
    (out / "status.json").write_text(json.dumps({"started": time.time(), "pid": os.getpid(), "done": False,
                                                 "steps": {}}))
    assert gs.wait(str(out), 0.2, poll=0.05) == 0
