"""The Gemma-4 patch series carried by this sglang build.

The series tool writes ``gemma4_series.json`` next to this module when it builds the patched wheel
(``sglang-<upstream>+gemma4.N``): the upstream release, the sha256 of the upstream wheel it started from, the
series repo's commit it was built from (``series_commit``: short hash, "-dirty" when the patches or new
files had uncommitted changes, "unknown" when built outside a git checkout), and every applied patch with
its summary, sha256 and the files it touches. The engine logs one line from it at start, so a server log says
exactly which series it runs.

``python -m sglang.srt.gemma4_series`` prints the manifest in a readable form.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

MANIFEST_FILE = Path(__file__).with_name("gemma4_series.json")
_REQUIRED_KEYS = ("upstream", "version", "patches")
_OPTIONAL_STRING_KEYS = ("upstream_wheel_sha256", "series_commit")


class SeriesManifestError(ValueError):
    """The manifest exists but cannot be trusted (unreadable, bad JSON, missing keys, wrong types)."""


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SeriesManifestError(f"{path.name} cannot be read: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SeriesManifestError(f"{path.name} is not UTF-8 text (byte {e.start})") from None


def _check(data, name: str) -> dict:
    if not isinstance(data, dict):
        raise SeriesManifestError(f"{name} must hold a JSON object, found {type(data).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise SeriesManifestError(f"{name} lacks key(s): {', '.join(missing)}")
    for key in ("upstream", "version") + tuple(k for k in _OPTIONAL_STRING_KEYS if k in data):
        if not isinstance(data[key], str):
            raise SeriesManifestError(f"{name}: {key!r} must be a string, found {type(data[key]).__name__}")
    patches = data["patches"]
    if not isinstance(patches, list) or not all(isinstance(p, dict) and "name" in p for p in patches):
        raise SeriesManifestError(f"{name}: 'patches' must be a list of objects with a 'name'")
    for i, p in enumerate(patches):
        if not isinstance(p["name"], str):
            raise SeriesManifestError(
                f"{name}: patch {i} 'name' must be a string, found {type(p['name']).__name__}"
            )
        if "summary" in p and not isinstance(p["summary"], str):
            raise SeriesManifestError(f"{name}: patch {p['name']} 'summary' must be a string")
    return data


def load_manifest(path: Path = MANIFEST_FILE) -> Optional[dict]:
    """Return the manifest, or None when this sglang was not built by the series tool.
    Raises SeriesManifestError (and nothing else) when the file exists but cannot be trusted."""
    if not path.is_file():
        return None
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SeriesManifestError(f"{path.name} is not valid JSON: {e}") from None
    return _check(data, path.name)


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
    line = f"Gemma-4 series {manifest['version']} on {manifest['upstream']}: {names}"
    if "series_commit" in manifest:
        line += f"; series commit {manifest['series_commit']}"
    return line


def log_applied_series(logger: logging.Logger, path: Path = MANIFEST_FILE) -> None:
    """Log the series once at engine start; never raises: a broken manifest is logged as a warning."""
    try:
        logger.info(summary_line(path))
    except SeriesManifestError as e:
        logger.warning(f"Gemma-4 series: manifest unreadable ({e})")
    except Exception as e:  # the engine must start whatever the manifest holds
        logger.warning(f"Gemma-4 series: manifest unreadable ({type(e).__name__}: {e})")


def describe(path: Path = MANIFEST_FILE) -> str:
    manifest = load_manifest(path)
    if manifest is None:
        return summary_line(path)
    rows = [
        f"sglang {manifest['version']} (upstream {manifest['upstream']}, "
        f"wheel sha256 {manifest.get('upstream_wheel_sha256', 'unknown')[:16]}...)",
        f"series commit: {manifest.get('series_commit', 'unknown')}",
        f"{len(manifest['patches'])} patch(es) applied:",
    ]
    for p in manifest["patches"]:
        rows.append(f"  {p['name']}: {p.get('summary', '')}")
    return "\n".join(rows)


def main() -> int:
    try:
        print(describe())
    except SeriesManifestError as e:
        print(f"error: Gemma-4 series manifest unreadable: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
