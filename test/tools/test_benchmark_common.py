"""The benchmark scripts' shared helpers: benchmark/gemma4/stamp.py (device, date, commit of a result) and
benchmark/gemma4/graph_timing.py (per-launch time of a CUDA-graph-captured launch sequence).

graph_timing runs here against a stand-in of torch.cuda's Stream / CUDAGraph / Event API that records what is
launched where and reports a fixed time per replayed launch: it checks the capture holds exactly the timed
launches, the warm-up stays outside it, and the per-launch arithmetic. The real-GPU path runs in the router and
page-table benchmarks on the GPU machine.
"""

import contextlib
import os
import re
import stat
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "benchmark", "gemma4"))
import graph_timing  # noqa: E402
import stamp  # noqa: E402


# ------------------------------------------------------------------------------------------------ stamp
def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q")
    (r / "a.txt").write_text("a\n")
    (r / "b.txt").write_text("b\n")
    _git(r, "add", "a.txt", "b.txt")
    _git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    monkeypatch.setattr(stamp, "REPO", str(r))
    for name in stamp.COMMIT_ENV:
        monkeypatch.delenv(name, raising=False)
    return r


def test_commit_order_and_dirtiness(repo, monkeypatch):
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert stamp.checkout_head() == (head, False)
    assert stamp.commit() == head
    (repo / "b.txt").write_text("changed\n")
    assert stamp.checkout_head() == (head, True) and stamp.commit() == head + "-dirty"
    assert stamp.checkout_commit() == head + "-dirty" and stamp.checkout_commit(("a.txt",)) == head
    # Dirtiness limited to the files a result depends on.
    assert stamp.commit(paths=("a.txt",)) == head and stamp.commit(paths=("b.txt",)) == head + "-dirty"
    (repo / "new.txt").write_text("untracked files do not count\n")
    assert stamp.commit(paths=("a.txt",)) == head
    # An explicit value wins over the environment, which wins over the checkout.
    monkeypatch.setenv("BENCH_COMMIT", "feed123")
    assert stamp.commit() == "feed123" and stamp.commit("abc1234") == "abc1234"
    monkeypatch.delenv("BENCH_COMMIT")
    monkeypatch.setenv("DECODE_PROFILE_COMMIT", "0ld0ld0")
    assert stamp.commit() == "0ld0ld0"


def test_commit_outside_a_checkout(repo, monkeypatch):
    sub = repo / "sub"
    sub.mkdir()
    monkeypatch.setattr(stamp, "REPO", str(sub))  # inside a checkout, but not its top: not ours
    assert stamp.checkout_head() == (None, None) and stamp.checkout_commit() is None
    assert stamp.commit() == "unknown"
    with pytest.raises(SystemExit, match="pass --commit SHA or set BENCH_COMMIT"):
        stamp.commit(required=True)
    assert stamp.commit("abc1234", required=True) == "abc1234"


def test_utc_now_format():
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", stamp.utc_now())


def test_gpu_line_from_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "$1" > "$(dirname "$0")/query"\n'
                    'printf "NVIDIA H200, 143771 MiB, 580.1\\nNVIDIA H200, 143771 MiB, 580.1\\n"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert stamp.gpu_line() == "NVIDIA H200, 143771 MiB, 580.1; NVIDIA H200, 143771 MiB, 580.1"
    assert (tmp_path / "query").read_text().strip() == "--query-gpu=name,memory.total,driver_version"
    stamp.gpu_line(driver=False)
    assert (tmp_path / "query").read_text().strip() == "--query-gpu=name,memory.total"
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert stamp.gpu_line() is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert stamp.gpu_line() is None


def test_device_name():
    class Cuda:
        def __init__(self, ok):
            self.ok = ok

        def is_available(self):
            return self.ok

        def get_device_name(self, index=0):
            return f"GPU{index}"

    class Torch:
        def __init__(self, ok):
            self.cuda = Cuda(ok)

    assert stamp.device_name(Torch(True)) == "GPU0"
    cpu = stamp.device_name(None)
    assert cpu and stamp.device_name(Torch(False)) == cpu
    assert stamp.device_name(Torch(True), cuda=False) == cpu  # the result did not come from the GPU


# ----------------------------------------------------------------------------------------- graph_timing
class FakeCuda:
    """torch.cuda's stream / graph / event surface; every replayed launch takes ``us_per_launch``."""

    def __init__(self, us_per_launch):
        self.us, self.where, self.log, self.clock_us = us_per_launch, "default", [], 0.0
        self.graphs = []

    def current_stream(self):
        return FakeStream(self, "default")

    def Stream(self):  # noqa: N802 (torch's name)
        return FakeStream(self, "side")

    @contextlib.contextmanager
    def stream(self, s):
        prev, self.where = self.where, s.name
        yield
        self.where = prev

    def CUDAGraph(self):  # noqa: N802
        g = FakeGraph(self)
        self.graphs.append(g)
        return g

    @contextlib.contextmanager
    def graph(self, g):
        prev, self.where = self.where, g
        yield
        self.where = prev

    def synchronize(self):
        pass

    def Event(self, enable_timing=False):  # noqa: N802
        assert enable_timing
        return FakeEvent(self)

    def launch(self, i):
        if isinstance(self.where, FakeGraph):
            self.where.captured.append(i)
        else:
            self.log.append((self.where, i))


class FakeStream:
    def __init__(self, cuda, name):
        self.cuda, self.name = cuda, name

    def wait_stream(self, other):
        pass


class FakeGraph:
    def __init__(self, cuda):
        self.cuda, self.captured, self.replays = cuda, [], 0

    def replay(self):
        self.replays += 1
        self.cuda.clock_us += self.cuda.us * len(self.captured)


class FakeEvent:
    def __init__(self, cuda):
        self.cuda, self.t = cuda, None

    def record(self):
        self.t = self.cuda.clock_us

    def synchronize(self):
        pass

    def elapsed_time(self, other):  # milliseconds, as torch reports them
        return (other.t - self.t) / 1000.0


class FakeTorch:
    def __init__(self, us):
        self.cuda = FakeCuda(us)


def test_graph_time_us_captures_the_launches_and_divides_by_them():
    t = FakeTorch(2.5)
    us = graph_timing.graph_time_us(t, t.cuda.launch, 40, warmup=3, trials=5, replays_per_trial=2)
    assert us == pytest.approx(2.5)
    (g,) = t.cuda.graphs
    assert g.captured == list(range(40))                       # exactly the timed launches, in order
    assert t.cuda.log == [("side", 0), ("side", 1), ("side", 2)]  # warm-up outside the capture, side stream
    assert g.replays == 1 + 5 * 2                               # one untimed replay, then the trials


def test_graph_time_us_median_of_trials():
    t = FakeTorch(1.0)
    speeds = iter([1.0, 9.0, 2.0])

    real_replay = FakeGraph.replay

    def replay(self):
        if self.replays >= 1:  # after the untimed replay, each trial runs at its own speed
            self.cuda.us = next(speeds)
        real_replay(self)

    FakeGraph.replay = replay
    try:
        us = graph_timing.graph_time_us(t, t.cuda.launch, 10, trials=3)
    finally:
        FakeGraph.replay = real_replay
    assert us == pytest.approx(2.0)


@pytest.mark.parametrize("kw", [{"launches": 0}, {"warmup": 0}, {"trials": 0}, {"replays_per_trial": 0},
                                {"launches": 2.5}])
def test_graph_time_us_rejects_bad_counts(kw):
    args = dict(launches=4)
    args.update(kw)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        graph_timing.graph_time_us(FakeTorch(1.0), lambda i: None, args.pop("launches"), **args)


def test_switches_keep_the_series_triton_decode_and_simulated_accept_settings():
    env = {"SGLANG_GEMMA4_TRITON_KV_SPLITS": "0", "SGLANG_TRITON_DECODE_ATTN_STATIC_KV_SPLITS": "1",
           "SGLANG_SIMULATE_ACC_LEN": "3", "SGLANG_OTHER": "x", "PATH": "/bin", "GEMMA4_NOT_SGLANG": "1"}
    assert stamp.switches(env) == {"SGLANG_GEMMA4_TRITON_KV_SPLITS": "0", "SGLANG_SIMULATE_ACC_LEN": "3",
                                   "SGLANG_TRITON_DECODE_ATTN_STATIC_KV_SPLITS": "1"}
    assert list(stamp.switches(env)) == sorted(stamp.switches(env))
