"""serve_ab's workloads (load generator and its arguments, server profile, data set), their metrics, and the
parsing of --workloads and --num-prompts, with the flag rewriting the pass commands need."""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchkit.ab_common import ServeABError
from benchkit.flags import get_flag  # noqa: F401  (serve_ab and ab_plan take it from here)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmark/gemma4
VIDEO_CLIENT = os.path.join(HERE, "video_client.py")  # benchkit/ab_video.py's command line
# Load generators: bench_serving (``python -m sglang.bench_serving``) or serve_ab's video client.
CLIENT_LABELS = {"bench_serving": "bench_serving", "video": "the video client"}


@dataclass(frozen=True)
class Workload:
    name: str
    bench_args: Tuple[str, ...]  # the arguments of its client (bench_serving or the video client)
    server_args: Tuple[str, ...] = ()
    server_env: Tuple[Tuple[str, str], ...] = ()
    needs_sharegpt: bool = False
    description: str = ""
    client: str = "bench_serving"

    @property
    def client_label(self) -> str:
        return CLIENT_LABELS[self.client]


_COMMON = ("--backend", "sglang-oai-chat", "--random-range-ratio", "1.0", "--warmup-requests", "2")
_IMAGES = _COMMON + ("--dataset-name", "image", "--image-count", "6", "--image-resolution", "480x480",
                     "--image-content", "random", "--random-input-len", "50", "--random-output-len", "10",
                     "--num-prompts", "100")
_VIDEO = ("--resolution", "480x480", "--output-len", "10", "--max-concurrency", "16", "--warmup-requests", "2")
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
    # serve_ab's video client (benchkit/ab_video.py): bench_serving 0.5.23 has no video data set.
    "video8": Workload(
        "video8", ("--frames", "8") + _VIDEO + ("--num-prompts", "64"), client="video",
        description="one 8-frame 480x480 random video per request (Motion JPEG AVI), short text prompt, 10 "
                    "tokens out, 64 prompts, 16 in flight; default server (content differs per pass)",
    ),
    "video32": Workload(
        "video32", ("--frames", "32") + _VIDEO + ("--num-prompts", "32"), client="video",
        description="one 32-frame 480x480 random video per request (Motion JPEG AVI), short text prompt, 10 "
                    "tokens out, 32 prompts, 16 in flight; default server (content differs per pass)",
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


# Flags serve_ab sets itself on every pass command (bench_serving or the video client); --bench-args must not set
# them.
OWN_BENCH_FLAGS = {
    "--seed": "serve_ab sets it per pass; use --base-seed",
    "--num-prompts": "use --num-prompts",
    "--output-file": "serve_ab writes one file per pass",
    "--host": "serve_ab points bench_serving at the server it started",
    "--port": "use --port",
    "--base-url": "serve_ab points bench_serving at the server it started",
    "--dataset-path": "use --dataset-path",
}


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




def write_sharegpt(path: str, n: int, seed: Any = 1) -> str:
    """A ShareGPT-format file of ``n`` two-turn conversations of plain words, generated from ``seed``
    (bench_serving's ``random`` dataset shuffles these with its --seed and cuts/repeats them to length)."""
    sys.path.insert(0, HERE)
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


def parse_workloads(spec: str) -> List[Workload]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ServeABError("--workloads is empty")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ServeABError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    if len(set(names)) != len(names):
        raise ServeABError(f"--workloads names a workload twice: {spec!r}")
    return [WORKLOADS[n] for n in names]
