"""The installed engine carries exactly the committed series (run after `make engine`)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

import sglang.srt.gemma4_series as series_mod  # noqa: E402  (the installed patched engine)


def committed_series() -> list:
    lines = (REPO / "patches" / "series").read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def test_installed_engine_is_the_patched_build():
    version = importlib.metadata.version("sglang")
    assert version == f"0.5.23+gemma4.{len(committed_series())}"
    assert "site-packages" in series_mod.__file__, "tests must run against the installed engine"


def test_manifest_lists_the_committed_series_in_order():
    manifest = series_mod.load_manifest()
    assert manifest is not None, "the installed sglang has no gemma4_series.json"
    assert [p["name"] for p in manifest["patches"]] == committed_series()
    assert manifest["upstream"] == "sglang==0.5.23"
    import hashlib

    for entry in manifest["patches"]:
        on_disk = hashlib.sha256((REPO / "patches" / entry["name"]).read_bytes()).hexdigest()
        assert entry["sha256"] == on_disk, f"{entry['name']} changed since the engine was built: make engine"


def test_engine_start_logs_the_series(caplog):
    logger = logging.getLogger("test.engine")
    with caplog.at_level(logging.INFO, logger="test.engine"):
        series_mod.log_applied_series(logger)
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert line.startswith(f"Gemma-4 series 0.5.23+gemma4.{len(committed_series())} on sglang==0.5.23: ")
    assert "0001-gemma4-series-manifest" in line


def test_engine_calls_the_series_log_at_launch():
    import inspect

    from sglang.srt.entrypoints import engine

    src = inspect.getsource(engine.Engine._launch_subprocesses)
    assert "log_applied_series(logger)" in src


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, found list"),
        (json.dumps({"upstream": "sglang==0.5.23"}), "lacks key(s): version, patches"),
        (json.dumps({"upstream": "u", "version": "v", "patches": [{"summary": "x"}]}), "list of objects with a 'name'"),
        (json.dumps({"upstream": "u", "version": "v", "patches": [{"name": 7}]}), "patch 0 'name' must be a string"),
        (json.dumps({"upstream": "u", "version": "v", "patches": [{"name": "a", "summary": 1}]}), "'summary' must be"),
        (json.dumps({"upstream": "u", "version": 3, "patches": []}), "'version' must be a string"),
        (json.dumps({"upstream": "u", "version": "v", "patches": [], "series_commit": 1}), "'series_commit' must be"),
        (json.dumps({"upstream": "u", "version": "v", "patches": [], "upstream_wheel_sha256": None}),
         "'upstream_wheel_sha256' must be"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_malformed_manifest_is_named(tmp_path, caplog, content, message):
    path = tmp_path / "gemma4_series.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(series_mod.SeriesManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        series_mod.load_manifest(path)
    logger = logging.getLogger("test.engine.bad")
    with caplog.at_level(logging.INFO, logger="test.engine.bad"):
        series_mod.log_applied_series(logger, path)  # never raises at engine start
    assert caplog.records[-1].levelno == logging.WARNING and message in caplog.records[-1].getMessage()


def test_unreadable_manifest_is_named(tmp_path, caplog, monkeypatch):
    path = tmp_path / "gemma4_series.json"
    path.write_text("{}")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", denied)
    with pytest.raises(series_mod.SeriesManifestError, match="cannot be read: Permission denied"):
        series_mod.load_manifest(path)
    logger = logging.getLogger("test.engine.unreadable")
    with caplog.at_level(logging.INFO, logger="test.engine.unreadable"):
        series_mod.log_applied_series(logger, path)  # never raises at engine start
    assert caplog.records[-1].levelno == logging.WARNING
    assert "cannot be read" in caplog.records[-1].getMessage()


def test_series_commit_is_logged_and_printed(tmp_path):
    path = tmp_path / "gemma4_series.json"
    manifest = {"upstream": "sglang==0.5.23", "version": "0.5.23+gemma4.1", "series_commit": "c0ffee1-dirty",
                "patches": [{"name": "0001-a.patch", "summary": "A"}]}
    path.write_text(json.dumps(manifest))
    assert series_mod.summary_line(path).endswith("0001-a; series commit c0ffee1-dirty")
    assert "series commit: c0ffee1-dirty" in series_mod.describe(path).splitlines()
    del manifest["series_commit"]  # a manifest of an older build
    path.write_text(json.dumps(manifest))
    assert "series commit" not in series_mod.summary_line(path)
    assert "series commit: unknown" in series_mod.describe(path)


def test_stock_build_says_no_series(tmp_path):
    assert series_mod.load_manifest(tmp_path / "absent.json") is None
    assert "none" in series_mod.summary_line(tmp_path / "absent.json")


def test_cli_prints_the_manifest():
    out = subprocess.run([sys.executable, "-m", "sglang.srt.gemma4_series"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{len(committed_series())} patch(es) applied" in out.stdout
    commit = series_mod.load_manifest()["series_commit"]
    assert commit and f"series commit: {commit}" in out.stdout
    for name in committed_series():
        assert name in out.stdout
