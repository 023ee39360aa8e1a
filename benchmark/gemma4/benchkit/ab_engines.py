"""The engines serve_ab compares, as their pythons and directories say: sglang version and series manifest,
the commit to name, whether a model directory has weights, whether an MTP draft is a Gemma-4 assistant."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from typing import Any, Dict, Optional

import stamp
from benchkit.ab_common import ServeABError

REPO = stamp.REPO


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Gemma-4 assistant draft: sglang 0.5.23 promotes NEXTN (or EAGLE) to FROZEN_KV_MTP for it.
GEMMA4_ASSISTANT_ARCHS = ("Gemma4AssistantForCausalLM", "Gemma4UnifiedAssistantForCausalLM")


def has_weights(model: str) -> bool:
    if not os.path.isdir(model):
        return True  # a hub id: the server downloads real weights
    return any(f.endswith(WEIGHT_SUFFIXES) for f in os.listdir(model))


def check_mtp_draft(draft: str) -> str:
    if os.path.exists(draft):
        path = os.path.abspath(draft)
        cfg_path = os.path.join(path, "config.json")
        try:
            with open(cfg_path, "r", encoding="utf-8") as f:
                archs = json.load(f).get("architectures") or []
        except (OSError, ValueError) as e:
            raise ServeABError(f"--mtp-draft {draft}: cannot read {cfg_path} ({e})") from e
        if not any(a in GEMMA4_ASSISTANT_ARCHS for a in archs):
            raise ServeABError(f"--mtp-draft {draft} is not a Gemma-4 assistant (architectures {archs}; "
                               f"expected one of {', '.join(GEMMA4_ASSISTANT_ARCHS)})")
        return path
    if draft.startswith((".", "/")) or draft.count("/") != 1:
        raise ServeABError(f"--mtp-draft {draft!r} is neither an existing directory nor a hub id (org/name)")
    return draft


# Runs in an engine's python: the sglang version and the series manifest. The manifest module is loaded from
# its file (``sglang/srt/gemma4_series.py``, absent in stock sglang) so that sglang itself is not imported.
_PROBE = r"""
import importlib.metadata as md, importlib.util as iu, json, os
out = {"version": None, "series": None, "series_error": None}
try:
    out["version"] = md.version("sglang")
except Exception as e:
    out["version_error"] = type(e).__name__ + ": " + str(e)
spec = iu.find_spec("sglang")
path = None
for d in (spec.submodule_search_locations or []) if spec else []:
    p = os.path.join(d, "srt", "gemma4_series.py")
    if os.path.isfile(p):
        path = p
        break
if path:
    try:
        s = iu.spec_from_file_location("_serve_ab_gemma4_series", path)
        m = iu.module_from_spec(s)
        s.loader.exec_module(m)
        out["series"] = m.load_manifest()
    except Exception as e:
        out["series_error"] = type(e).__name__ + ": " + str(e)
print("SERVE_AB_PROBE " + json.dumps(out))
"""


def probe_engine(python: str) -> Dict[str, Any]:
    """sglang version and Gemma-4 series manifest (None: stock sglang) of the sglang that ``python`` imports."""
    info: Dict[str, Any] = {"python": python, "version": None, "series": None, "series_error": None}
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        info["probe_error"] = str(e)
        return info
    for ln in out.stdout.splitlines():
        if ln.startswith("SERVE_AB_PROBE "):
            with contextlib.suppress(ValueError):
                info.update(json.loads(ln[len("SERVE_AB_PROBE "):]))
            return info
    info["probe_error"] = (out.stderr or out.stdout).strip()[-500:] or f"exit status {out.returncode}"
    return info


def commit_info(patched_probe: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The commit to name in results: the checkout's HEAD, else the patched engine's manifest key
    ``series_commit``, else "unknown"; with where it came from."""
    head, dirty = stamp.checkout_head()
    manifest = (patched_probe or {}).get("series") or {}
    value = manifest.get("series_commit") if isinstance(manifest, dict) else None
    if head:
        # A copied tree can carry a stale .git: the engine's own build commit is recorded beside it.
        return {"commit": head, "commit_source": "git checkout", "commit_dirty": dirty,
                "engine_series_commit": str(value) if value else None}
    if value:
        return {"commit": str(value), "commit_source": "series manifest of the patched engine", "commit_dirty": None}
    return {"commit": "unknown", "commit_dirty": None,
            "commit_source": "none (not a git checkout, and no series_commit in the patched engine's manifest)"}


def check_python(engine: str, python: str) -> str:
    path = python if os.path.isabs(python) else os.path.join(REPO, python)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        hint = {"upstream": "make engine-upstream", "patched": "make engine"}.get(engine, "")
        raise ServeABError(
            f"[{engine}] python {python!r} not found or not executable"
            + (f"; build it with `{hint}` or pass --{engine}-python" if hint else "")
        )
    return path


def series_label(probe: Optional[Dict[str, Any]]) -> str:
    if not probe:
        return "not probed"
    if probe.get("series_error"):
        return f"unreadable ({probe['series_error']})"
    s = probe.get("series")
    if not s:
        return "none"
    return f"{s.get('version', '?')} ({len(s.get('patches') or [])} patches)"
