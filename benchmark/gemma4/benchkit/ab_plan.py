"""What a serve_ab run will do: its server profiles, engine order (ABBA), passes with their seeds and prompt
counts, and the exact server and bench_serving commands and data set files."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from benchkit.ab_common import HOST, ServeABError
from benchkit.ab_workloads import Workload, get_flag, set_flag, write_sharegpt

if TYPE_CHECKING:
    from benchkit.ab_client import ForkServer


@dataclass
class Profile:
    name: str
    server_args: Tuple[str, ...]
    server_env: Tuple[Tuple[str, str], ...]
    workloads: List[Workload]


@dataclass
class Plan:
    model: str
    workloads: List[Workload]
    pythons: Dict[str, str]
    bench_python: str
    engines: List[str]
    port: int
    ready_timeout_s: float
    bench_timeout_s: float
    server_cmd: str
    extra_server_args: List[str]
    bench_extra: List[str]
    load_format: Optional[str]
    num_prompts: Optional[int]
    repeats: int
    log_dir: str
    dataset_path: Optional[str]
    warmup_prompts: int = 16
    base_seed: int = 1
    order: str = "alternate"
    mtp_flags: List[str] = field(default_factory=list)
    flush: bool = True
    env: Dict[str, str] = field(default_factory=dict)
    # Per-workload prompt counts (``--num-prompts chat=48,summarization=24``); they win over num_prompts.
    num_prompts_for: Dict[str, int] = field(default_factory=dict)
    # Shell command run against each live server after its passes ({port} {engine} {model} {host}).
    after_passes: Optional[str] = None
    # "fork": passes forked from one process that imported bench_serving once (bench_forkserver.py);
    # "process": one `python -m sglang.bench_serving` per pass.
    bench_mode: str = "fork"
    bench_server: Optional["ForkServer"] = None

    def profiles(self) -> List[Profile]:
        """Workloads grouped by identical server arguments and environment, in order of first appearance."""
        out: List[Profile] = []
        for wl in self.workloads:
            for p in out:
                if p.server_args == wl.server_args and p.server_env == wl.server_env:
                    p.workloads.append(wl)
                    break
            else:
                out.append(Profile(f"p{len(out)}", wl.server_args, wl.server_env, [wl]))
        return out

    def engine_order(self, profile_index: int) -> List[str]:
        """ABBA: the given order for even profiles, reversed for odd ones (``order == 'alternate'``)."""
        if self.order == "alternate" and profile_index % 2 == 1:
            return list(reversed(self.engines))
        return list(self.engines)

    def bench_args(self, wl: Workload) -> List[str]:
        """The workload's bench_serving arguments after the --num-prompts override, plus --bench-args."""
        args = list(wl.bench_args)
        count = self.num_prompts_for.get(wl.name, self.num_prompts)
        if count:
            args = set_flag(args, "--num-prompts", str(count))
        return args + list(self.bench_extra)

    def prompts(self, wl: Workload) -> int:
        return int(get_flag(self.bench_args(wl), "--num-prompts") or 1000)  # bench_serving's default

    def warmup_count(self, wl: Workload) -> int:
        return min(self.warmup_prompts, self.prompts(wl))

    def passes(self, wl: Workload) -> List[Tuple[str, int, int, int]]:
        """(kind, rep, seed, prompts) of every pass of a workload on one server, in order."""
        out = [("warmup", 0, self.base_seed, self.warmup_count(wl))]
        out += [("timed", r, self.base_seed + 1 + r, self.prompts(wl)) for r in range(self.repeats)]
        return out

    def definition(self, wl: Workload, profile: str) -> Dict[str, Any]:
        return {"description": wl.description, "profile": profile, "bench_args": self.bench_args(wl),
                "server_args": list(wl.server_args), "server_env": dict(wl.server_env),
                "num_prompts": self.prompts(wl), "warmup_prompts": self.warmup_count(wl),
                "dataset": ("synthetic ShareGPT file per (workload, seed)" if wl.needs_sharegpt and not
                            self.dataset_path else (self.dataset_path if wl.needs_sharegpt else None))}


def server_command(plan: Plan, engine: str, profile: Profile) -> List[str]:
    server_args: List[str] = []
    if plan.load_format:
        server_args += ["--load-format", plan.load_format]
    server_args += list(profile.server_args) + list(plan.extra_server_args) + list(plan.mtp_flags)
    try:
        text = plan.server_cmd.format(
            python=shlex.quote(plan.pythons[engine]), model=shlex.quote(plan.model), host=HOST,
            port=plan.port, engine=engine, server_args=" ".join(shlex.quote(a) for a in server_args),
        )
    except (KeyError, IndexError) as e:
        raise ServeABError(f"--server-cmd has an unknown placeholder {e}; known: "
                           "{python} {model} {host} {port} {engine} {server_args}") from e
    return shlex.split(text)


def dataset_for(plan: Plan, wl: Workload, seed: int) -> Optional[str]:
    if not wl.needs_sharegpt:
        return None
    if plan.dataset_path:
        return plan.dataset_path
    return os.path.join(plan.log_dir, "datasets", f"sharegpt-{wl.name}-seed{seed}.json")


def ensure_dataset(plan: Plan, wl: Workload, seed: int, prompts: int) -> Optional[str]:
    """The data set file of one pass: for a ``random`` workload without --dataset-path, a synthetic ShareGPT
    file generated from (workload, seed), so that every pass (and workload) draws its own conversations while
    both engines get the same ones for the same seed."""
    path = dataset_for(plan, wl, seed)
    if path and not plan.dataset_path:
        write_sharegpt(path, max(64, prompts + 16), seed=f"{wl.name}:{seed}")
    return path


def bench_command(plan: Plan, wl: Workload, out_file: str, seed: int, prompts: int) -> List[str]:
    args = set_flag(plan.bench_args(wl), "--num-prompts", str(prompts))
    args = set_flag(args, "--seed", str(seed))
    cmd = [plan.bench_python, "-m", "sglang.bench_serving", *args]
    dataset = dataset_for(plan, wl, seed)
    if dataset:
        cmd += ["--dataset-path", dataset]
    cmd += ["--host", HOST, "--port", str(plan.port), "--output-file", out_file,
            "--ready-check-timeout-sec", "30", "--disable-tqdm"]
    return cmd


def pass_tag(engine: str, wl: Workload, kind: str, rep: int) -> str:
    return f"{engine}-{wl.name}-{'warmup' if kind == 'warmup' else f'rep{rep}'}"
