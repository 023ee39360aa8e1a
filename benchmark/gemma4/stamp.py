"""Where, when and from which commit a result was measured: one definition for every benchmark script.

Every result file names its device, its UTC date and the commit it measures. The commit is, in this order:
an explicit value (a script's ``--commit``), ``$BENCH_COMMIT`` (for trees copied without a current ``.git``,
e.g. onto the GPU machine; the older names ``$BENCH_GIT_COMMIT`` and ``$DECODE_PROFILE_COMMIT`` are read
too), the checkout's short HEAD with ``-dirty`` when tracked files differ from it (optionally only the files a
result depends on), else ``unknown`` -- or an error where a script must not write an unattributed result.

Standard library only (the GPU machine's helper python has no third-party packages).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from typing import Any, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMIT_ENV = ("BENCH_COMMIT", "BENCH_GIT_COMMIT", "DECODE_PROFILE_COMMIT")


def utc_now() -> str:
    """``YYYY-MM-DD HH:MM UTC``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def git(*args: str, cwd: Optional[str] = None) -> Optional[str]:
    """stdout of ``git ARGS`` in ``cwd`` (default REPO), stripped; None when git is missing or fails."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def checkout_head(paths: Sequence[str] = ()) -> Tuple[Optional[str], Optional[bool]]:
    """(short HEAD, dirty) of the repository these scripts live in; (None, None) when REPO is not the top of
    a git checkout. ``dirty``: tracked files differ from HEAD (only ``paths`` when given); None if unknown."""
    top = git("rev-parse", "--show-toplevel")
    if not top or os.path.realpath(top) != os.path.realpath(REPO):
        return None, None
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no", *(["--", *map(str, paths)] if paths else []))
    return head, (bool(status) if status is not None else None)


def checkout_commit(paths: Sequence[str] = ()) -> Optional[str]:
    """``HEAD`` or ``HEAD-dirty`` of the checkout (see checkout_head); None when this is no checkout."""
    head, dirty = checkout_head(paths)
    return head + ("-dirty" if dirty else "") if head else None


def commit(given: Optional[str] = None, paths: Sequence[str] = (), required: bool = False) -> str:
    """The commit to name in a result (see the module docstring for the order)."""
    if given:
        return given
    for name in COMMIT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    head = checkout_commit(paths)
    if head:
        return head
    if required:
        raise SystemExit("cannot tell the commit (no git checkout here): pass --commit SHA or set BENCH_COMMIT")
    return "unknown"


def gpu_line(driver: bool = True) -> Optional[str]:
    """``name, memory[, driver]`` of every GPU from nvidia-smi (one per line, joined by "; "); None without it."""
    query = "name,memory.total" + (",driver_version" if driver else "")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return "; ".join(line.strip() for line in out.stdout.strip().splitlines())


def device_name(torch: Any = None, cuda: Optional[bool] = None) -> str:
    """The CUDA device torch runs on (``cuda``: whether the result came from it; default: whether CUDA is
    available), else the CPU's name."""
    if torch is not None:
        on_cuda = torch.cuda.is_available() if cuda is None else cuda
        if on_cuda:
            return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


def device_slug(device_name: str) -> str:
    """The short card name result files are named after (h100, h200, ...): the device that ran, not the one asked for."""
    low = device_name.lower()
    for tag in ("h200", "h100", "h20", "b200", "a100", "l40s"):
        if tag in low:
            return tag
    return "cpu" if "nvidia" not in low else low.replace("nvidia", "").strip().replace(" ", "-")[:20]


SWITCH_PREFIXES = ("SGLANG_GEMMA4_", "SGLANG_TRITON_DECODE_", "SGLANG_SIMULATE_ACC_LEN")


def switches(environ) -> dict:
    """The series' switches, the Triton decode ones and the simulated MTP accept length set in ``environ``:
    what a result ran under (e.g. SGLANG_GEMMA4_TRITON_KV_SPLITS=0 measures 0.5.23's split cap)."""
    return {k: environ[k] for k in sorted(environ) if k.startswith(SWITCH_PREFIXES)}
