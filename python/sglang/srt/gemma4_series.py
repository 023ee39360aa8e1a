"""The Gemma-4 patch series carried by this sglang build.

The series tool writes ``gemma4_series.json`` next to this module when it builds the patched wheel
(``sglang-<upstream>+gemma4.N``): the upstream release, the sha256 of the upstream wheel it started from, and
every applied patch with its summary, sha256 and the files it touches. The engine logs one line from it at
start, so a server log says exactly which series it runs.

``python -m sglang.srt.gemma4_series`` prints the manifest in a readable form.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

MANIFEST_FILE = Path(__file__).with_name("gemma4_series.json")
_REQUIRED_KEYS = ("upstream", "version", "patches")


class SeriesManifestError(ValueError):
    """The manifest exists but cannot be trusted (bad JSON, missing keys, wrong types)."""


def load_manifest(path: Path = MANIFEST_FILE) -> Optional[dict]:
    """Return the manifest, or None when this sglang was not built by the series tool."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SeriesManifestError(f"{path.name} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SeriesManifestError(f"{path.name} must hold a JSON object, found {type(data).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise SeriesManifestError(f"{path.name} lacks key(s): {', '.join(missing)}")
    patches = data["patches"]
    if not isinstance(patches, list) or not all(isinstance(p, dict) and "name" in p for p in patches):
        raise SeriesManifestError(f"{path.name}: 'patches' must be a list of objects with a 'name'")
    return data


def applied_patches(path: Path = MANIFEST_FILE) -> list:
    """Names of the applied patches, in series order (empty when there is no manifest)."""
    manifest = load_manifest(path)
    return [p["name"] for p in manifest["patches"]] if manifest else []


def summary_line(path: Path = MANIFEST_FILE) -> str:
    """One line: version and patch names, or why there is none. Raises SeriesManifestError if unreadable."""
    manifest = load_manifest(path)
    if manifest is None:
        return "Gemma-4 series: none (this sglang was not built by the Gemma-4 series tool)"
    names = ", ".join(p["name"].removesuffix(".patch") for p in manifest["patches"]) or "no patches"
    return f"Gemma-4 series {manifest['version']} on {manifest['upstream']}: {names}"


def log_applied_series(logger: logging.Logger, path: Path = MANIFEST_FILE) -> None:
    """Log the series once at engine start; never raises: a broken manifest is logged as a warning."""
    try:
        logger.info(summary_line(path))
    except SeriesManifestError as e:
        logger.warning(f"Gemma-4 series: manifest unreadable ({e})")


def describe(path: Path = MANIFEST_FILE) -> str:
    manifest = load_manifest(path)
    if manifest is None:
        return summary_line(path)
    rows = [
        f"sglang {manifest['version']} (upstream {manifest['upstream']}, "
        f"wheel sha256 {manifest.get('upstream_wheel_sha256', 'unknown')[:16]}...)",
        f"{len(manifest['patches'])} patch(es) applied:",
    ]
    for p in manifest["patches"]:
        rows.append(f"  {p['name']}: {p.get('summary', '')}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe())
