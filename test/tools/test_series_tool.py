"""Tests of tools/series.py on a small fake upstream wheel (no network, no sglang import)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "series.py"

MOD = "".join(f"line {i}\n" for i in range(1, 31))

GOOD_PATCH = """Description: Change line 10 and hook in a new module
 Long text.
Author: Test <t@example.com>
Forwarded: no
Last-Update: 2026-11-22
New-Files: python/sglang/srt/newmod.py
---
--- a/python/sglang/srt/mod.py
+++ b/python/sglang/srt/mod.py
@@ -8,5 +8,6 @@
 line 8
 line 9
-line 10
+line 10 patched
+import newmod
 line 11
 line 12
"""

SECOND_PATCH = """Description: Change line 25
Author: Test <t@example.com>
Forwarded: no
Last-Update: 2026-11-22
---
--- a/python/sglang/srt/mod.py
+++ b/python/sglang/srt/mod.py
@@ -23,5 +24,5 @@
 line 23
 line 24
-line 25
+line 25 patched
 line 26
 line 27
"""

CONFLICT_PATCH = """Description: Expects context that is not there
Author: Test <t@example.com>
Forwarded: no
Last-Update: 2026-11-22
---
--- a/python/sglang/srt/mod.py
+++ b/python/sglang/srt/mod.py
@@ -1,3 +1,3 @@
 line 1
-line 2
+line 2 patched
 line 3
@@ -18,3 +18,3 @@
 line 18
-line 19 (not what upstream has)
+line 19 patched
 line 20
"""


# 0002 over GOOD_PATCH: two hunks; its hunk headers are lines 8 and 15 of the file
TWO_HUNK_PATCH = """Description: Change lines 5 and 25
Author: Test <t@example.com>
Forwarded: no
Last-Update: 2026-11-22
---
--- a/python/sglang/srt/mod.py
+++ b/python/sglang/srt/mod.py
@@ -3,5 +3,5 @@
 line 3
 line 4
-line 5
+line 5 patched
 line 6
 line 7
@@ -23,5 +24,5 @@
 line 23
 line 24
-line 25
+line 25 patched
 line 26
 line 27
"""


def make_wheel(directory: Path, version: str = "0.5.23") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"sglang-{version}-py3-none-any.whl"
    info = f"sglang-{version}.dist-info"
    files = {
        "sglang/__init__.py": "",
        "sglang/srt/__init__.py": "",
        "sglang/srt/mod.py": MOD,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: sglang\nVersion: {version}\nRequires-Dist: wheel\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    rows = [f"{name},,\n" for name in files] + [f"{info}/RECORD,,\n"]
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr(f"{info}/RECORD", "".join(rows))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path):
    """A project root with the fake wheel pinned, one good patch and its new file."""
    wheel = make_wheel(tmp_path / "wheels")
    root = tmp_path / "proj"
    (root / "patches").mkdir(parents=True)
    (root / "python/sglang/srt").mkdir(parents=True)
    write_pyproject(root, {wheel.name: sha(wheel)})
    (root / "patches/0001-good.patch").write_text(GOOD_PATCH)
    (root / "patches/series").write_text("0001-good.patch\n")
    (root / "python/sglang/srt/newmod.py").write_text("VALUE = 42\n")
    return root, wheel


def write_pyproject(root: Path, hashes: dict) -> None:
    lines = [
        "[tool.gemma4-series]",
        'upstream-name = "sglang"',
        'upstream-version = "0.5.23"',
        'local-label = "gemma4"',
        "[tool.gemma4-series.sha256]",
    ] + [f'"{k}" = "{v}"' for k, v in hashes.items()]
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")


def run(root: Path, *args, wheel: Path | None = None, cwd: Path | None = None):
    cmd = [sys.executable, str(TOOL), "--root", str(root), *args]
    if wheel is not None:
        cmd += ["--wheel", str(wheel)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or root)


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def git(cwd: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------------------------------------------


def test_check_applies_series(project):
    root, wheel = project
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 0, proc.stderr
    assert "1 patches apply cleanly" in proc.stdout


def test_build_labels_version_and_carries_new_file(project, tmp_path):
    root, wheel = project
    (root / "patches/0002-second.patch").write_text(SECOND_PATCH)
    (root / "patches/series").write_text("0001-good.patch\n0002-second.patch\n")
    proc = run(root, "build", "--out", "dist", wheel=wheel)
    assert proc.returncode == 0, proc.stderr
    built = Path(proc.stdout.strip())
    assert built.name == "sglang-0.5.23+gemma4.2-py3-none-any.whl"
    with zipfile.ZipFile(built) as zf:
        names = set(zf.namelist())
        assert "sglang/srt/newmod.py" in names
        assert zf.read("sglang/srt/newmod.py") == b"VALUE = 42\n"
        mod = zf.read("sglang/srt/mod.py").decode()
        assert "line 10 patched\nimport newmod\n" in mod and "line 25 patched\n" in mod
        assert "line 10\n" not in mod
        meta = zf.read("sglang-0.5.23+gemma4.2.dist-info/METADATA").decode()
        assert "Version: 0.5.23+gemma4.2\n" in meta
        assert not any(n.startswith("sglang-0.5.23.dist-info/") for n in names)
        manifest = zf.read("sglang/srt/gemma4_series.json").decode()
        assert '"0001-good.patch"' in manifest and '"0002-second.patch"' in manifest
        # RECORD was regenerated: every file listed with its real hash
        record = zf.read("sglang-0.5.23+gemma4.2.dist-info/RECORD").decode()
        rows = {r[0]: r[1] for r in csv.reader(io.StringIO(record)) if r}
        for name in names:
            if name.endswith("RECORD"):
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(zf.read(name)).digest()).rstrip(b"=").decode()
            assert rows[name] == f"sha256={digest}", name


def test_conflicting_patch_names_patch_file_and_hunk_and_touches_nothing(project, tmp_path):
    root, wheel = project
    (root / "patches/0002-bad.patch").write_text(CONFLICT_PATCH)
    (root / "patches/series").write_text("0001-good.patch\n0002-bad.patch\n")
    before = snapshot(root)
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "patch 0002-bad.patch does not apply" in line
    assert "python/sglang/srt/mod.py hunk #2 (@@ -18,3 +18,3 @@)" in line
    assert "line 19 (not what upstream has)" in line
    dest = tmp_path / "wt"
    proc = run(root, "materialise", "--dest", str(dest), wheel=wheel)
    assert proc.returncode == 1 and "0002-bad.patch" in proc.stderr
    assert not dest.exists()
    proc = run(root, "build", "--out", "dist", wheel=wheel)
    assert proc.returncode == 1
    assert snapshot(root) == before  # no dist/, nothing rewritten


def test_refresh_is_idempotent_and_picks_up_edits(project, tmp_path):
    root, wheel = project
    dest = tmp_path / "wt"
    assert run(root, "materialise", "--dest", str(dest), wheel=wheel).returncode == 0
    assert git(dest, "log", "--format=%s").splitlines() == [
        "Change line 10 and hook in a new module",
        "sglang 0.5.23: pristine upstream wheel contents",
    ]
    first = run(root, "refresh", "--tree", str(dest))
    assert first.returncode == 0, first.stderr
    canonical = snapshot(root)
    again = run(root, "refresh", "--tree", str(dest))
    assert again.returncode == 0 and "already up to date" in again.stdout
    assert snapshot(root) == canonical
    # a fresh materialise of the refreshed series refreshes to the same bytes
    dest2 = tmp_path / "wt2"
    assert run(root, "materialise", "--dest", str(dest2), wheel=wheel).returncode == 0
    assert "already up to date" in run(root, "refresh", "--tree", str(dest2)).stdout
    assert snapshot(root) == canonical
    # a new commit becomes a new patch, with its new file, inserted into the series
    mod = dest / "python/sglang/srt/mod.py"
    mod.write_text(mod.read_text().replace("line 25\n", "line 25 edited\n"))
    (dest / "python/sglang/srt/other.py").write_text("X = 1\n")
    git(dest, "add", "-A")
    msg = ("Edit line 25\n\nDescription: Edit line 25\nAuthor: Test <t@example.com>\nForwarded: no\n"
           "Last-Update: 2026-11-22\n\nSeries-Patch: 0002-edit.patch\n")
    git(dest, "commit", "-q", "-m", msg)
    proc = run(root, "refresh", "--tree", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert (root / "patches/series").read_text() == "0001-good.patch\n0002-edit.patch\n"
    text = (root / "patches/0002-edit.patch").read_text()
    assert "New-Files: python/sglang/srt/other.py" in text and "+line 25 edited" in text
    assert (root / "python/sglang/srt/other.py").read_text() == "X = 1\n"
    assert run(root, "check", wheel=wheel).returncode == 0
    assert "already up to date" in run(root, "refresh", "--tree", str(dest)).stdout


def test_refresh_refuses_dirty_tree_and_writes_nothing(project, tmp_path):
    root, wheel = project
    dest = tmp_path / "wt"
    assert run(root, "materialise", "--dest", str(dest), wheel=wheel).returncode == 0
    (dest / "python/sglang/srt/mod.py").write_text("changed\n")
    before = snapshot(root)
    proc = run(root, "refresh", "--tree", str(dest))
    assert proc.returncode == 1
    assert "has uncommitted changes" in one_error_line(proc)
    assert snapshot(root) == before


def test_refresh_refuses_commit_without_patch_name(project, tmp_path):
    root, wheel = project
    dest = tmp_path / "wt"
    assert run(root, "materialise", "--dest", str(dest), wheel=wheel).returncode == 0
    (dest / "python/sglang/srt/mod.py").write_text("changed\n")
    git(dest, "commit", "-qam", "quick fix")
    before = snapshot(root)
    proc = run(root, "refresh", "--tree", str(dest))
    assert proc.returncode == 1
    assert "('quick fix') has no 'Series-Patch: NNNN-name.patch' line" in one_error_line(proc)
    assert snapshot(root) == before


def test_checksum_mismatch_is_refused(project):
    root, wheel = project
    write_pyproject(root, {wheel.name: "0" * 64})
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"sha256 mismatch for {wheel.name}: expected {'0' * 64}, found {sha(wheel)}" in line


def test_other_version_is_refused(project, tmp_path):
    root, _ = project
    other = make_wheel(tmp_path / "other", version="0.5.22")
    write_pyproject(root, {other.name: sha(other)})
    proc = run(root, "check", wheel=other)
    assert proc.returncode == 1
    assert "is sglang 0.5.22; this series targets sglang==0.5.23 only" in one_error_line(proc)


def test_unrecorded_wheel_is_refused(project, tmp_path):
    root, wheel = project
    write_pyproject(root, {"sglang-0.5.23-cp399-cp399-any.whl": "1" * 64})
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 1
    assert f"no sha256 recorded in pyproject.toml for {wheel.name}" in one_error_line(proc)


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda r: (r / "patches/series").write_text("0001-good.patch\n0009-missing.patch\n"),
         "patches/series lists 0009-missing.patch, but patches/0009-missing.patch does not exist"),
        (lambda r: (r / "patches/0005-stray.patch").write_text(SECOND_PATCH),
         "patches/0005-stray.patch is not listed in patches/series"),
        (lambda r: (r / "python/sglang/srt/orphan.py").write_text("x = 1\n"),
         "python/sglang/srt/orphan.py is claimed by no patch"),
        (lambda r: (r / "python/sglang/srt/newmod.py").unlink(),
         "New-Files entry python/sglang/srt/newmod.py does not exist in the repo"),
        (lambda r: (r / "patches/0001-good.patch").write_text(GOOD_PATCH.replace("Description:", "Summary:")),
         "0001-good.patch: DEP-3 header has no Description: field"),
    ],
)
def test_bad_series_input_gives_one_line_error(project, setup, expected):
    root, wheel = project
    setup(root)
    before = snapshot(root)
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 1
    assert expected in one_error_line(proc)
    assert snapshot(root) == before


def test_two_hunk_patch_applies(project):
    root, wheel = project
    (root / "patches/0002-bad.patch").write_text(TWO_HUNK_PATCH)
    (root / "patches/series").write_text("0001-good.patch\n0002-bad.patch\n")
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("@@ -23,5 +24,5 @@\n", "@ -23,5 +24,5 @\n", "line 15: malformed hunk header: '@ -23,5 +24,5 @'"),
        ("@@ -3,5 +3,5 @@\n", "@@ -3,5 +3,5@@\n", "line 8: malformed hunk header: '@@ -3,5 +3,5@@'"),
        ("-line 5\n", "~line 5\n", "line 11: bad line in hunk '@@ -3,5 +3,5 @@': '~line 5'"),
        (" line 7\n", " line 7\ngarbage\n", "line 15: not a file header, hunk header or hunk line: 'garbage'"),
        ("---\n--- a/", "---\ndiff --git a/python/sglang/srt/mod.py b/python/sglang/srt/mod.py\n"
         "similarity index 90%\n--- a/", "line 7: not a file header, hunk header or hunk line: 'similarity index 90%'"),
        ("@@ -3,5 +3,5 @@\n", "@@ -3,6 +3,6 @@\n",
         "hunk '@@ -3,6 +3,6 @@' at line 8 has 5 old and 5 new lines; its header says 6 and 6"),
        ("@@ -3,5 +3,5 @@\n", "@@ -3,5 +3,6 @@\n",
         "hunk '@@ -3,5 +3,6 @@' at line 8 has 5 old and 5 new lines; its header says 5 and 6"),
        ("@@ -3,5 +3,5 @@\n", "@@ -3,4 +3,4 @@\n",
         "line 14: hunk '@@ -3,4 +3,4 @@' has more lines than its header says: ' line 7'"),
        (" line 27\n", "",
         "hunk '@@ -23,5 +24,5 @@' at line 15 has 4 old and 4 new lines; its header says 5 and 5"),
    ],
    ids=["header-single-at", "header-no-space", "garbage-in-hunk", "garbage-after-hunk", "unknown-git-header",
         "hunk-too-short", "hunk-new-too-short", "hunk-too-long", "last-hunk-too-short"],
)
def test_malformed_diff_line_names_patch_file_and_line(project, old, new, expected):
    """A diff line the parser does not understand, or a hunk whose body disagrees with its header's line counts,
    is an error naming the patch, the file and the line (never silently skipped: check, then build without it)."""
    root, wheel = project
    assert TWO_HUNK_PATCH.count(old) == 1
    (root / "patches/0002-bad.patch").write_text(TWO_HUNK_PATCH.replace(old, new))
    (root / "patches/series").write_text("0001-good.patch\n0002-bad.patch\n")
    before = snapshot(root)
    for cmd in (["check"], ["build", "--out", "dist"]):
        proc = run(root, *cmd, wheel=wheel)
        assert proc.returncode == 1, proc.stdout
        assert one_error_line(proc) == f"error: 0002-bad.patch: python/sglang/srt/mod.py: {expected}"
    assert snapshot(root) == before  # no dist/


def test_unknown_command_is_one_line_error(project):
    root, _ = project
    proc = run(root, "frobnicate")
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in one_error_line(proc)


def test_export_applies_with_git_am_to_upstream_layout(project, tmp_path):
    root, wheel = project
    (root / "patches/0002-second.patch").write_text(SECOND_PATCH)
    (root / "patches/series").write_text("0001-good.patch\n0002-second.patch\n")
    out = tmp_path / "export"
    proc = run(root, "export", "--out", str(out), wheel=wheel)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].startswith("0001-") and files[1].startswith("0002-")
    # an upstream-like repo: python/sglang/... plus unrelated top-level files
    up = tmp_path / "upstream"
    (up / "python/sglang/srt").mkdir(parents=True)
    (up / "python/sglang/srt/mod.py").write_text(MOD)
    (up / "README.md").write_text("upstream\n")
    git(up, "init", "-q", "-b", "main")
    git(up, "-c", "user.name=u", "-c", "user.email=u@example.com", "add", "-A")
    git(up, "-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-qm", "v0.5.23")
    git(up, "-c", "user.name=u", "-c", "user.email=u@example.com", "am", "-q", *[str(out / f) for f in files])
    assert (up / "python/sglang/srt/newmod.py").read_text() == "VALUE = 42\n"
    mod = (up / "python/sglang/srt/mod.py").read_text()
    assert "line 10 patched" in mod and "line 25 patched" in mod
    assert git(up, "log", "-1", "--format=%s") == "Change line 25\n"


def test_real_series_applies_to_pinned_upstream():
    """The committed series applies, in order, to the verified sglang 0.5.23 wheel."""
    if not list((REPO / "build" / "upstream").glob("sglang-0.5.23-*.whl")) and shutil.which("pip") is None:
        pytest.fail("no upstream wheel and no pip to fetch it: run `make engine` first")
    proc = subprocess.run([sys.executable, str(TOOL), "check"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "patches apply cleanly" in proc.stdout


def test_refresh_reproduces_every_committed_patch_byte_for_byte(tmp_path):
    """materialise + refresh on the real series gives back exactly the committed patches and new files."""
    wheels = list((REPO / "build" / "upstream").glob("sglang-0.5.23-*.whl"))
    if not wheels:
        pytest.fail("no upstream wheel in build/upstream: run `make engine` first")
    root = tmp_path / "project"
    for rel in ("pyproject.toml", "patches", "python"):
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, root / rel)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / rel)
    (root / "build" / "upstream").mkdir(parents=True)
    for w in wheels:
        (root / "build" / "upstream" / w.name).symlink_to(w)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and "build" not in p.parts}
    tree = tmp_path / "tree"
    for cmd in (["materialise", "--dest", str(tree)], ["refresh", "--tree", str(tree)]):
        proc = subprocess.run([sys.executable, str(TOOL), "--root", str(root), *cmd], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert "already up to date" in proc.stdout
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and "build" not in p.parts}
    assert after == before


def test_untracked_unclaimed_file_is_ignored_with_warning_but_tracked_one_fails(project):
    root, wheel = project
    git(root, "init", "-q", "-b", "main")
    git(root, "-c", "user.name=u", "-c", "user.email=u@example.com", "add", "-A")
    git(root, "-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-qm", "init")
    (root / "python/sglang/srt/wip.py").write_text("x = 1\n")
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 0, proc.stderr
    assert "warning: ignoring python/sglang/srt/wip.py: untracked and claimed by no patch" in proc.stderr
    proc = run(root, "build", "--out", "dist", wheel=wheel)
    with zipfile.ZipFile(proc.stdout.strip()) as zf:
        assert "sglang/srt/wip.py" not in zf.namelist()
    git(root, "add", "python/sglang/srt/wip.py")
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 1
    assert "python/sglang/srt/wip.py is claimed by no patch" in one_error_line(proc)


def _built_manifest(root: Path, wheel: Path) -> dict:
    import json

    proc = run(root, "build", "--out", "dist", wheel=wheel)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(proc.stdout.strip()) as zf:
        return json.loads(zf.read("sglang/srt/gemma4_series.json"))


def test_build_records_the_series_commit(project):
    root, wheel = project
    assert _built_manifest(root, wheel)["series_commit"] == "unknown"  # not a git checkout
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("dist/\n")
    git(root, "-c", "user.name=u", "-c", "user.email=u@example.com", "add", "-A")
    git(root, "-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-qm", "init")
    head = git(root, "rev-parse", "--short", "HEAD").strip()
    assert _built_manifest(root, wheel)["series_commit"] == head
    (root / "notes.txt").write_text("outside patches/ and python/\n")
    assert _built_manifest(root, wheel)["series_commit"] == head
    (root / "python/sglang/srt/newmod.py").write_text("VALUE = 43\n")
    assert _built_manifest(root, wheel)["series_commit"] == f"{head}-dirty"
    git(root, "checkout", "-q", "--", "python")
    (root / "patches/series").write_text("0001-good.patch\n# comment\n")
    assert _built_manifest(root, wheel)["series_commit"] == f"{head}-dirty"


def test_check_refuses_a_header_citing_a_missing_result(project):
    root, wheel = project
    cited = GOOD_PATCH.replace(" Long text.\n", " Measured: ple_tail_h100.md and benchmark/gemma4/results/x_h200.json.\n")
    (root / "patches/0001-good.patch").write_text(cited)
    line = one_error_line(run(root, "check", wheel=wheel))
    assert "0001-good.patch cites benchmark/gemma4/results/x_h200.json" in line
    assert "0001-good.patch cites ple_tail_h100.md" in line
    results = root / "benchmark/gemma4/results"
    results.mkdir(parents=True)
    (results / "ple_tail_h100.md").write_text("x\n")
    (results / "x_h200.json").write_text("{}\n")
    proc = run(root, "check", wheel=wheel)
    assert proc.returncode == 0, proc.stderr
