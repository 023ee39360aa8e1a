#!/usr/bin/env python3
"""The Gemma-4 series tool: a patch queue over the pinned sglang release.

The series is ``patches/series`` (one patch file name a line) plus ``patches/*.patch`` (a DEP-3 header, then a
unified diff with upstream repo paths ``a/python/sglang/...``) plus the new whole files of the series under
``python/sglang/...``, each claimed by exactly one patch's ``New-Files:`` field.

Commands (``python3 tools/series.py COMMAND --help`` for options):

  fetch        download the pinned upstream wheel for this Python and verify its sha256
  list         print the series: patch, files it touches, summary
  check        apply every patch in order to a pristine tree, in memory; name the patch, file and hunk that fails
  materialise  write pristine + series as a git repo, one commit per patch, for editing (patch-queue workflow)
  refresh      write patches/ (and new files) back from the commits of a materialised repo
  build        build the patched wheel sglang-<version>+gemma4.N (N = number of patches in the series)
  export       write the series as git format-patch files that apply with `git am` to upstream at the tag

Only the standard library is used, plus the ``wheel`` package for ``build``, and git for materialise, refresh
and export.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

REPO_ROOT = Path(__file__).resolve().parent.parent
PKG_PREFIX = "python/"  # patch and overlay paths are upstream-repo paths: python/sglang/...
MANIFEST_PATH = "sglang/srt/gemma4_series.json"  # written into the built wheel
TRAILER = "Series-Patch:"
HEADER_FIELDS_REQUIRED = ("Description",)


class SeriesError(Exception):
    """A problem with the series or its input; the CLI prints it as one line and exits 1."""


# --------------------------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str
    version: str
    label: str
    sha256: dict

    @classmethod
    def load(cls, root: Path) -> "Pin":
        path = root / "pyproject.toml"
        if not path.is_file():
            raise SeriesError(f"no pyproject.toml in {root}: the upstream pin lives there")
        if tomllib is None:
            raise SeriesError("Python 3.11 or newer is needed to read pyproject.toml (tomllib)")
        data = tomllib.loads(path.read_text())
        cfg = data.get("tool", {}).get("gemma4-series")
        if not cfg:
            raise SeriesError(f"{path} has no [tool.gemma4-series] table")
        try:
            return cls(cfg["upstream-name"], cfg["upstream-version"], cfg["local-label"], dict(cfg["sha256"]))
        except KeyError as e:
            raise SeriesError(f"{path}: [tool.gemma4-series] lacks {e.args[0]}") from None


def wheel_name_version(filename: str) -> tuple[str, str]:
    parts = Path(filename).name.split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise SeriesError(f"{filename} is not a wheel file name (name-version-pytag-abitag-platform.whl)")
    return parts[0], parts[1]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_wheel(pin: Pin, wheel: Path) -> None:
    """Refuse a wheel of another project or version, or whose sha256 differs from the recorded one."""
    if not wheel.is_file():
        raise SeriesError(f"upstream wheel {wheel} does not exist")
    name, version = wheel_name_version(wheel.name)
    if name.lower().replace("-", "_") != pin.name.lower().replace("-", "_"):
        raise SeriesError(f"{wheel.name} is {name}, expected {pin.name}")
    if version != pin.version:
        raise SeriesError(
            f"{wheel.name} is {pin.name} {version}; this series targets {pin.name}=={pin.version} only"
        )
    expected = pin.sha256.get(wheel.name)
    if expected is None:
        known = ", ".join(sorted(pin.sha256)) or "none"
        raise SeriesError(f"no sha256 recorded in pyproject.toml for {wheel.name} (recorded: {known})")
    found = sha256_file(wheel)
    if found != expected:
        raise SeriesError(f"sha256 mismatch for {wheel.name}: expected {expected}, found {found}")


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def find_upstream_wheel(root: Path, pin: Pin, tag: str | None = None, fetch: bool = True) -> Path:
    tag = tag or python_tag()
    cache = root / "build" / "upstream"
    pattern = f"{pin.name}-{pin.version}-{tag}-*.whl"
    found = sorted(cache.glob(pattern)) if cache.is_dir() else []
    if found:
        verify_wheel(pin, found[0])
        return found[0]
    if not fetch:
        raise SeriesError(f"no upstream wheel {pattern} under {cache}; run `tools/series.py fetch` first")
    return cmd_fetch_impl(root, pin, tag)


def cmd_fetch_impl(root: Path, pin: Pin, tag: str) -> Path:
    dest = root / "build" / "upstream"
    dest.mkdir(parents=True, exist_ok=True)
    pyver = tag[2:3] + "." + tag[3:]
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", pyver, "-d", str(dest), f"{pin.name}=={pin.version}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cmd[cmd.index(str(dest))] = tmp
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise SeriesError(f"pip download {pin.name}=={pin.version} for {tag} failed: {tail[0]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SeriesError(f"pip download gave {len(wheels)} wheels for {pin.name}=={pin.version}, expected 1")
        verify_wheel(pin, wheels[0])  # before it enters the cache
        target = dest / wheels[0].name
        shutil.move(str(wheels[0]), target)
    return target


# --------------------------------------------------------------------------------------------------------------
# patches: parsing and applying


@dataclasses.dataclass
class Hunk:
    header: str
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    old: list  # lines (with endings) the hunk expects
    new: list  # lines (with endings) it writes


@dataclasses.dataclass
class FilePatch:
    path: str  # python/sglang/...
    old_missing: bool  # --- /dev/null: creates the file
    new_missing: bool  # +++ /dev/null: deletes the file
    hunks: list


@dataclasses.dataclass
class Patch:
    name: str
    header: str  # the DEP-3 header, verbatim, no trailing newline
    fields: dict
    new_files: list
    files: list  # FilePatch
    diff_text: str

    @property
    def summary(self) -> str:
        return self.fields.get("Description", "").splitlines()[0].strip() if self.fields.get("Description") else ""


_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# the lines git writes between "diff --git" and "---"/"+++" that change nothing this tool applies
_GIT_HEADER_RE = re.compile(r"^(index |old mode |new mode |new file mode |deleted file mode )")


def parse_header(text: str, name: str) -> dict:
    fields: dict = {}
    current = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and current:
            fields[current] += "\n" + line.strip()
        elif ":" in line and re.match(r"^[A-Za-z][A-Za-z0-9-]*:", line):
            current, value = line.split(":", 1)
            fields[current] = value.strip()
        elif line.strip() == "":
            current = None
        else:
            raise SeriesError(f"{name}: header line is not a DEP-3 field or continuation: {line!r}")
    for req in HEADER_FIELDS_REQUIRED:
        if not fields.get(req):
            raise SeriesError(f"{name}: DEP-3 header has no {req}: field")
    return fields


def _strip_prefix(path: str, name: str) -> str | None:
    path = path.split("\t", 1)[0].strip()
    if path == "/dev/null":
        return None
    if path.startswith(("a/", "b/")):
        path = path[2:]
    if not path.startswith(PKG_PREFIX):
        raise SeriesError(f"{name}: diff path {path!r} is not under {PKG_PREFIX} (use a/python/sglang/...)")
    return path


def parse_patch(text: str, name: str) -> Patch:
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        s = lines[i].rstrip("\n")
        if s == "---" or s.startswith("diff --git ") or s.startswith("--- "):
            break
        i += 1
    header = "".join(lines[:i]).rstrip("\n")
    fields = parse_header(header, name)
    new_files = [p for p in fields.get("New-Files", "").split() if p]
    for p in new_files:
        if not p.startswith(PKG_PREFIX + "sglang/"):
            raise SeriesError(f"{name}: New-Files entry {p!r} is not under python/sglang/")
    if i < len(lines) and lines[i].rstrip("\n") == "---":
        i += 1
    body_start = i
    files: list = []
    cur: FilePatch | None = None
    where = None  # the file whose diff line i is in, for errors; None before the first file's diff
    git_header = False  # between "diff --git" and its ---/+++ lines
    after_hunk = None  # the hunk that ended just before line i
    while i < len(lines):
        s = lines[i].rstrip("\n")
        prev_hunk, after_hunk = after_hunk, None
        if s.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old = _strip_prefix(s[4:], name)
            new = _strip_prefix(lines[i + 1][4:].rstrip("\n"), name)
            if old is None and new is None:
                raise SeriesError(f"{name}: a diff goes from /dev/null to /dev/null")
            cur = FilePatch(path=new or old, old_missing=old is None, new_missing=new is None, hunks=[])
            files.append(cur)
            where, git_header = cur.path, False
            i += 2
            continue
        if s.startswith("diff --git "):
            cur, where, git_header = None, s.rsplit(" b/", 1)[-1], True
            i += 1
            continue
        if git_header and _GIT_HEADER_RE.match(s):
            i += 1
            continue
        m = _HUNK_RE.match(s)
        if m:
            if cur is None:
                raise SeriesError(f"{name}: line {i + 1}: hunk {s!r} before any ---/+++ file header")
            old_len = int(m.group(2)) if m.group(2) is not None else 1
            new_len = int(m.group(4)) if m.group(4) is not None else 1
            hunk = Hunk(s, int(m.group(1)), old_len, int(m.group(3)), new_len, [], [])
            start = i
            i += 1
            seen_old = seen_new = 0
            last = None
            while i < len(lines) and (seen_old < old_len or seen_new < new_len or lines[i].startswith("\\")):
                raw = lines[i]
                if raw.startswith("\\"):  # "\ No newline at end of file" for the previous line
                    if last is not None:
                        for seq in last:
                            seq[-1] = seq[-1].rstrip("\n")
                    i += 1
                    continue
                tag, body = (raw[0], raw[1:]) if raw not in ("\n", "") else (" ", "\n")
                if not body.endswith("\n"):
                    body += "\n"
                if tag == " ":
                    hunk.old.append(body)
                    hunk.new.append(body)
                    seen_old += 1
                    seen_new += 1
                    last = (hunk.old, hunk.new)
                elif tag == "-":
                    hunk.old.append(body)
                    seen_old += 1
                    last = (hunk.old,)
                elif tag == "+":
                    hunk.new.append(body)
                    seen_new += 1
                    last = (hunk.new,)
                elif _HUNK_RE.match(raw) or raw.startswith("diff --git "):
                    break  # the hunk ended early: the count check below names it
                else:
                    bad = raw.rstrip("\n")
                    raise SeriesError(f"{name}: {cur.path}: line {i + 1}: bad line in hunk {hunk.header!r}: {bad!r}")
                i += 1
            if seen_old != old_len or seen_new != new_len:
                raise SeriesError(
                    f"{name}: {cur.path}: hunk {hunk.header!r} at line {start + 1} has {seen_old} old and "
                    f"{seen_new} new lines; its header says {old_len} and {new_len}"
                )
            cur.hunks.append(hunk)
            after_hunk = hunk
            continue
        if where is not None or s.startswith("@"):  # text before the first file's diff (a diffstat) is skipped
            if s.startswith("@"):
                what = "malformed hunk header"
            elif prev_hunk is not None and s[:1] in ("", " ", "-", "+"):
                what = f"hunk {prev_hunk.header!r} has more lines than its header says"
            else:
                what = "not a file header, hunk header or hunk line"
            raise SeriesError(f"{name}: {where or '(no file header yet)'}: line {i + 1}: {what}: {s!r}")
        i += 1
    if not files and not new_files:
        raise SeriesError(f"{name}: the patch changes nothing (no diff and no New-Files)")
    return Patch(name, header, fields, new_files, files, "".join(lines[body_start:]))


class ApplyError(SeriesError):
    pass


def _first_difference(old: list, have: list, at: int) -> str:
    for k, want in enumerate(old):
        got = have[at + k] if at + k < len(have) else "<end of file>"
        if got != want:
            return f"line {at + k + 1}: expected {want.rstrip()!r}, found {got.rstrip()!r}"
    return ""


def apply_file_patch(patch_name: str, fp: FilePatch, content: str | None) -> str | None:
    """Apply one file's hunks to its text (None = absent). Exact context, offset search, no fuzz."""
    if fp.old_missing:
        if content is not None:
            raise ApplyError(f"patch {patch_name} does not apply: {fp.path} already exists (the patch creates it)")
        content = ""
    elif content is None:
        raise ApplyError(f"patch {patch_name} does not apply: {fp.path} does not exist in the tree")
    have = content.splitlines(keepends=True)
    out: list = []
    pos = 0  # first line of `have` not yet consumed
    offset = 0
    for n, h in enumerate(fp.hunks, 1):
        base = h.old_start - 1 if h.old_len else h.old_start  # 0-based line the hunk starts at
        expected = max(base + offset, pos)
        found = -1
        span = len(h.old)
        for delta in range(0, len(have) + 1):
            for cand in ((expected + delta, expected - delta) if delta else (expected,)):
                if pos <= cand <= len(have) - span and have[cand:cand + span] == h.old:
                    found = cand
                    break
            if found >= 0:
                break
        if found < 0:
            # report against the closest partial match: most lines equal, then nearest to where it should be
            def score(at):
                return (sum(1 for k, ln in enumerate(h.old) if at + k < len(have) and have[at + k] == ln),
                        -abs(at - expected))
            near = max(range(pos, max(len(have) - span, pos) + 1), key=score)
            why = _first_difference(h.old, have, near)
            raise ApplyError(
                f"patch {patch_name} does not apply: {fp.path} hunk #{n} ({h.header}): "
                f"context not found ({why})"
            )
        out.extend(have[pos:found])
        out.extend(h.new)
        pos = found + span
        offset = found - base
    out.extend(have[pos:])
    if fp.new_missing:
        if out:
            raise ApplyError(f"patch {patch_name} does not apply: {fp.path} is not empty after deleting it")
        return None
    return "".join(out)


class Tree:
    """A lazily read upstream tree with patched overrides; nothing touches the disk until `write_to`."""

    def __init__(self, reader):
        self._reader = reader  # path (python/sglang/...) -> str | None
        self.changed: dict = {}

    def get(self, path: str):
        if path in self.changed:
            return self.changed[path]
        return self._reader(path)

    def apply(self, patch: Patch, overlay_root: Path | None) -> None:
        staged: dict = {}
        for fp in patch.files:
            before = staged[fp.path] if fp.path in staged else self.get(fp.path)
            staged[fp.path] = apply_file_patch(patch.name, fp, before)
        for rel in patch.new_files:
            if self.get(rel) is not None and rel not in staged:
                raise ApplyError(f"patch {patch.name}: new file {rel} already exists upstream; change it with a diff")
            if overlay_root is not None:
                src = overlay_root / rel
                if not src.is_file():
                    raise SeriesError(f"patch {patch.name}: New-Files entry {rel} does not exist in the repo")
                staged[rel] = src.read_text()
        self.changed.update(staged)  # all or nothing per patch


# --------------------------------------------------------------------------------------------------------------
# the series on disk


RESULTS_DIR = "benchmark/gemma4/results"
# A result a header cites: a path under benchmark/ or a bare result-file name (looked up in RESULTS_DIR).
_CITED_RE = re.compile(r"(?<![\w./-])((?:benchmark/[\w./-]+|[\w.-]+)\.(?:md|json|txt|png))(?![\w/])")


def missing_citations(patch: "Patch", root: Path) -> list:
    """Result files the patch's header cites that the checkout does not have."""
    missing = []
    for cited in sorted(set(_CITED_RE.findall(patch.header))):
        path = root / cited if "/" in cited else root / RESULTS_DIR / cited
        if not path.is_file():
            missing.append(cited)
    return missing


@dataclasses.dataclass
class Series:
    root: Path
    pin: Pin
    names: list

    @classmethod
    def load(cls, root: Path) -> "Series":
        pin = Pin.load(root)
        sfile = root / "patches" / "series"
        if not sfile.is_file():
            raise SeriesError(f"{sfile.relative_to(root)} does not exist")
        names = []
        for raw in sfile.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line in names:
                raise SeriesError(f"patches/series lists {line} twice")
            names.append(line)
        return cls(root, pin, names)

    def patches(self) -> list:
        out = []
        for name in self.names:
            p = self.root / "patches" / name
            if not p.is_file():
                raise SeriesError(f"patches/series lists {name}, but patches/{name} does not exist")
            out.append(parse_patch(p.read_text(), name))
        claimed: dict = {}
        for patch in out:
            for rel in patch.new_files:
                if rel in claimed:
                    raise SeriesError(f"{rel} is claimed by both {claimed[rel]} and {patch.name} (New-Files)")
                claimed[rel] = patch.name
        overlay = self.root / "python"
        if overlay.is_dir():
            untracked = self._untracked()
            for f in sorted(overlay.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    rel = f.relative_to(self.root).as_posix()
                    if rel in claimed:
                        continue
                    if rel in untracked:  # work in progress: not part of the series, not in any build
                        print(f"warning: ignoring {rel}: untracked and claimed by no patch", file=sys.stderr)
                        continue
                    raise SeriesError(f"{rel} is claimed by no patch (list it under New-Files of one patch)")
        unlisted = sorted(
            p.name for p in (self.root / "patches").glob("*.patch") if p.name not in self.names
        )
        if unlisted:
            raise SeriesError(f"patches/{unlisted[0]} is not listed in patches/series")
        return out


    def _untracked(self) -> set:
        """Files under python/ that git does not track (empty when the root is not a git work tree)."""
        proc = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "python"],
            cwd=self.root, capture_output=True, text=True,
        )
        return set(proc.stdout.split()) if proc.returncode == 0 else set()


def wheel_reader(zf: zipfile.ZipFile):
    names = set(zf.namelist())

    def read(path: str):
        member = path[len(PKG_PREFIX):]
        if member not in names:
            return None
        return zf.read(member).decode("utf-8")

    return read


def apply_series(series: Series, zf: zipfile.ZipFile) -> tuple[Tree, list]:
    tree = Tree(wheel_reader(zf))
    patches = series.patches()
    for patch in patches:
        tree.apply(patch, series.root)
    return tree, patches


def local_version(series: Series) -> str:
    return f"{series.pin.version}+{series.pin.label}.{len(series.names)}"


# --------------------------------------------------------------------------------------------------------------
# git helpers


def git(cwd: Path, *args, env_extra=None, check=True) -> str:
    env = dict(os.environ)
    env.setdefault("GIT_AUTHOR_NAME", "Gemma-4 series")
    env.setdefault("GIT_AUTHOR_EMAIL", "gemma4-series@users.noreply.github.com")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    if env_extra:
        env.update(env_extra)
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SeriesError(f"git {' '.join(args[:2])} failed in {cwd}: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def _author(patch: Patch) -> dict:
    env = {}
    m = re.match(r"^(.*?)\s*<([^>]+)>", patch.fields.get("Author", ""))
    if m:
        env["GIT_AUTHOR_NAME"], env["GIT_AUTHOR_EMAIL"] = m.group(1), m.group(2)
    date = patch.fields.get("Last-Update", "")
    if re.match(r"^\d{4}-\d{2}-\d{2}$", date):
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"{date}T00:00:00+0000"
    return env


def commit_message(patch: Patch) -> str:
    return f"{patch.summary}\n\n{patch.header}\n\n{TRAILER} {patch.name}\n"


def materialise(series: Series, wheel: Path, dest: Path, for_export: bool = False) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise SeriesError(f"{dest} exists and is not empty; choose a new --dest")
    with zipfile.ZipFile(wheel) as zf:
        tree, patches = apply_series(series, zf)  # fails before anything is written
        dest.mkdir(parents=True, exist_ok=True)
        git(dest, "init", "-q", "-b", "main")
        for info in zf.infolist():
            if info.is_dir() or ".dist-info/" in info.filename:
                continue
            target = dest / "python" / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    (dest / ".gitignore").write_text("__pycache__/\n*.pyc\n")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", f"{series.pin.name} {series.pin.version}: pristine upstream wheel contents",
        env_extra={"GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000"})
    git(dest, "tag", "upstream")
    replay = Tree(lambda path: (dest / path).read_text() if (dest / path).is_file() else None)
    for patch in patches:
        replay.changed.clear()
        replay.apply(patch, series.root)
        for rel, content in replay.changed.items():
            target = dest / rel
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        git(dest, "add", "-A")
        msg = commit_message(patch)
        if for_export:
            msg = msg.rsplit(f"\n{TRAILER}", 1)[0].rstrip() + "\n"
        git(dest, "commit", "-q", "--allow-empty", "-m", msg, env_extra=_author(patch))


def _commits(tree: Path) -> list:
    out = git(tree, "rev-list", "--reverse", "upstream..HEAD").split()
    return out


def _split_message(tree: Path, sha: str) -> tuple[str, str]:
    msg = git(tree, "log", "-1", "--format=%B", sha).rstrip("\n")
    lines = msg.splitlines()
    trailer = [ln for ln in lines if ln.startswith(TRAILER)]
    subject = lines[0] if lines else ""
    if not trailer:
        raise SeriesError(
            f"commit {sha[:12]} ({subject!r}) has no '{TRAILER} NNNN-name.patch' line; add one to its message"
        )
    name = trailer[-1][len(TRAILER):].strip()
    if not re.match(r"^[0-9]{4}-[A-Za-z0-9._-]+\.patch$", name):
        raise SeriesError(f"commit {sha[:12]}: patch name {name!r} is not NNNN-name.patch")
    body = "\n".join(ln for ln in lines[1:] if not ln.startswith(TRAILER)).strip("\n")
    return name, body


def _set_new_files(header: str, new_files: list) -> str:
    lines = header.splitlines()
    out = []
    skip = False
    for ln in lines:
        if ln.startswith("New-Files:"):
            skip = True
            continue
        if skip and ln[:1] in (" ", "\t"):
            continue
        skip = False
        out.append(ln)
    if new_files:
        out.append("New-Files: " + new_files[0])
        out.extend(" " + p for p in new_files[1:])
    return "\n".join(out)


def refresh(series: Series, tree: Path, only: list | None) -> list:
    if not (tree / ".git").is_dir():
        raise SeriesError(f"{tree} is not a materialised tree (no .git); run `materialise --dest {tree}` first")
    if git(tree, "status", "--porcelain").strip():
        raise SeriesError(f"{tree} has uncommitted changes; commit them to a patch's commit or discard them")
    pristine = set(git(tree, "ls-tree", "-r", "--name-only", "upstream").splitlines())
    commits = _commits(tree)
    if not commits:
        raise SeriesError(f"{tree} has no commits on top of the pristine tree")
    plans = []  # (name, header, diff, new files)
    owner: dict = {}  # new file -> patch name
    seen_names = []
    for sha in commits:
        name, body = _split_message(tree, sha)
        if name in seen_names:
            raise SeriesError(f"two commits in {tree} claim {name}")
        seen_names.append(name)
        fields = parse_header(body, f"commit {sha[:12]} ({name})")
        changed = git(tree, "diff", "--name-status", "--no-renames", f"{sha}^", sha).splitlines()
        upstream_paths, added = [], []
        for row in changed:
            status, path = row.split("\t", 1)
            if path in pristine:
                upstream_paths.append(path)
            elif status == "A" and path not in owner:
                owner[path] = name
                added.append(path)
            elif path not in owner:
                raise SeriesError(f"commit {sha[:12]} ({name}) changes {path}, which is neither upstream nor new")
        listed = [p for p in fields.get("New-Files", "").split() if p in owner and owner[p] == name]
        new_files = listed + sorted(p for p in added if p not in listed)
        diff = ""
        if upstream_paths:
            diff = git(tree, "diff", "--no-color", "--no-ext-diff", "--no-renames", "-U3",
                       f"{sha}^", sha, "--", *upstream_paths)
        if not diff and not new_files:
            raise SeriesError(f"commit {sha[:12]} ({name}) changes nothing")
        plans.append((name, _set_new_files(body, new_files), diff, new_files))
    wanted = set(only) if only else None
    if wanted:
        unknown = wanted - set(seen_names)
        if unknown:
            raise SeriesError(f"--only names {sorted(unknown)[0]}, which no commit in {tree} carries")
    # validate every output before writing anything
    outputs = {}
    for name, header, diff, new_files in plans:
        if wanted and name not in wanted:
            continue
        text = header + "\n---\n" + diff
        parse_patch(text, name)
        outputs[name] = (text, new_files)
    written = []
    for name, (text, new_files) in outputs.items():
        target = series.root / "patches" / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            written.append(f"patches/{name}")
        for rel in new_files:
            src = (tree / rel).read_bytes()
            dst = series.root / rel
            if not dst.exists() or dst.read_bytes() != src:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src)
                written.append(rel)
    # insert new names into patches/series after their predecessor in the tree
    names = list(series.names)
    for idx, name in enumerate(seen_names):
        if name in names or name not in outputs:
            continue
        prev = next((n for n in reversed(seen_names[:idx]) if n in names), None)
        names.insert(names.index(prev) + 1 if prev else 0, name)
    if names != series.names:
        (series.root / "patches" / "series").write_text("\n".join(names) + "\n")
        written.append("patches/series")
    return written


# --------------------------------------------------------------------------------------------------------------
# build and export


def series_commit(root: Path) -> str:
    """Short HEAD of the series repo at ``root``, with "-dirty" when patches/ or python/ (what a build
    reads) have uncommitted or untracked changes; "unknown" outside a git checkout."""
    def run_git(*args):
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    head = run_git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    status = run_git("status", "--porcelain", "--", "patches", "python")
    if status is None:
        return "unknown"
    return f"{head}-dirty" if status else head


def build(series: Series, wheel: Path, out_dir: Path, no_patches: bool = False) -> Path:
    import importlib.util

    if importlib.util.find_spec("wheel") is None:  # `python -m wheel pack` regenerates RECORD
        raise SeriesError("building needs the `wheel` package: pip install wheel")
    if no_patches:
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheel.name
        shutil.copyfile(wheel, target)
        return target
    version = local_version(series)
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        tree, patches = apply_series(series, zf)
        stage = Path(tmp) / "stage"
        zf.extractall(stage)  # the unchanged files, as upstream ships them
        old_info = next(stage.glob("*.dist-info"))
        new_info = stage / f"{series.pin.name}-{version}.dist-info"
        old_info.rename(new_info)
        meta = (new_info / "METADATA").read_text()
        meta, count = re.subn(r"(?m)^Version: .*$", f"Version: {version}", meta, count=1)
        if count != 1:
            raise SeriesError(f"{wheel.name}: METADATA has no Version: line")
        (new_info / "METADATA").write_text(meta)
        (new_info / "RECORD").unlink(missing_ok=True)
        for rel, content in tree.changed.items():
            target = stage / rel[len(PKG_PREFIX):]
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        manifest = {
            "upstream": f"{series.pin.name}=={series.pin.version}",
            "upstream_wheel_sha256": sha256_file(wheel),
            "version": version,
            "series_commit": series_commit(series.root),
            "patches": [
                {
                    "name": p.name,
                    "summary": p.summary,
                    "sha256": hashlib.sha256((series.root / "patches" / p.name).read_bytes()).hexdigest(),
                    "files": [f.path for f in p.files] + p.new_files,
                }
                for p in patches
            ],
        }
        (stage / MANIFEST_PATH).write_text(json.dumps(manifest, indent=2) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob(f"{series.pin.name}-{series.pin.version}+{series.pin.label}.*.whl"):
            old.unlink()
        proc = subprocess.run(
            [sys.executable, "-m", "wheel", "pack", str(stage), "-d", str(out_dir)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SeriesError(f"wheel pack failed: {proc.stderr.strip().splitlines()[-1:]}")
    built = sorted(out_dir.glob(f"{series.pin.name}-{version}-*.whl"))
    if len(built) != 1:
        raise SeriesError(f"expected one built wheel {series.pin.name}-{version}-*.whl in {out_dir}")
    return built[0]


def export(series: Series, wheel: Path, out_dir: Path) -> list:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SeriesError(f"{out_dir} exists and is not empty; choose a new --out")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "tree"
        materialise(series, wheel, repo, for_export=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        git(repo, "format-patch", "-q", "--no-signature", "--zero-commit", "-N", "-o", str(out_dir.resolve()),
            "upstream..HEAD")
    return sorted(out_dir.glob("*.patch"))


# --------------------------------------------------------------------------------------------------------------
# CLI


def _root(args) -> Path:
    return Path(args.root).resolve() if args.root else REPO_ROOT


def _wheel(args, series: Series) -> Path:
    if getattr(args, "wheel", None):
        w = Path(args.wheel).resolve()
        verify_wheel(series.pin, w)
        return w
    return find_upstream_wheel(series.root, series.pin, getattr(args, "python_tag", None))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    ap = _Parser(prog="series.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="project root (default: this repo)")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name, help_, wheel=True):
        p = sub.add_parser(name, help=help_, description=help_)
        if wheel:
            p.add_argument("--wheel", help="use this upstream wheel (verified against the recorded sha256)")
            p.add_argument("--python-tag", help="interpreter tag of the upstream wheel, e.g. cp312 (default: this one)")
        return p

    add("fetch", "download the pinned upstream wheel for this Python into build/upstream and verify its sha256")
    sub.add_parser("list", help="print the series")
    add("check", "check that every patch applies, in order, to a pristine upstream tree")
    p = add("materialise", "write pristine + series as a git repo, one commit per patch, for editing")
    p.add_argument("--dest", required=True)
    p = sub.add_parser(
        "refresh",
        help="write patches/ back from a materialised repo",
        description=(
            "Write patches/ and the new files of the series back from the commits of a materialised repo. "
            "Each commit above the `upstream` tag is one patch; its message is: a summary line, a blank line, "
            f"the DEP-3 header, and a last line '{TRAILER} NNNN-name.patch'. Files the commit adds become that "
            "patch's New-Files (later changes to them fold into it). New patch names are inserted in "
            "patches/series after the previous commit's patch."
        ),
    )
    p.add_argument("--tree", required=True)
    p.add_argument("--only", nargs="+", help="refresh only these patches")
    p = add("build", "build the patched wheel into dist/")
    p.add_argument("--out", default="dist")
    p.add_argument("--no-patches", action="store_true", help="copy the verified upstream wheel unchanged")
    p = add("export", "write the series as git format-patch files for `git am` at the upstream tag")
    p.add_argument("--out", required=True)
    sub.add_parser("version", help="print the local version the build gives, e.g. 0.5.23+gemma4.5")

    args = ap.parse_args(argv)
    if not args.cmd:
        ap.print_help()
        return 2
    root = _root(args)
    try:
        if args.cmd == "fetch":
            pin = Pin.load(root)
            w = find_upstream_wheel(root, pin, args.python_tag)
            if args.wheel:
                verify_wheel(pin, Path(args.wheel))
                w = Path(args.wheel)
            print(f"{w.relative_to(root) if w.is_relative_to(root) else w}: sha256 verified")
            return 0
        series = Series.load(root)
        if args.cmd == "version":
            print(local_version(series))
        elif args.cmd == "list":
            for patch in series.patches():
                touched = ", ".join([f.path[len(PKG_PREFIX):] for f in patch.files] + [
                    f"+{p[len(PKG_PREFIX):]}" for p in patch.new_files])
                print(f"{patch.name}: {patch.summary}\n    {touched}")
        elif args.cmd == "check":
            wheel = _wheel(args, series)
            with zipfile.ZipFile(wheel) as zf:
                tree, patches = apply_series(series, zf)
            cites = [f"{p.name} cites {c}" for p in patches for c in missing_citations(p, root)]
            if cites:
                raise SeriesError("a header cites a result file that does not exist: " + "; ".join(cites)
                                  + f" (bare names are looked up in {RESULTS_DIR})")
            print(f"OK: {len(patches)} patches apply cleanly to {wheel.name}; {len(tree.changed)} files changed")
        elif args.cmd == "materialise":
            dest = Path(args.dest).resolve()
            materialise(series, _wheel(args, series), dest)
            print(f"materialised {len(series.names)} patches into {dest} (pristine tree is tag `upstream`)")
        elif args.cmd == "refresh":
            written = refresh(series, Path(args.tree).resolve(), args.only)
            print("\n".join(written) if written else "patches/ already up to date")
        elif args.cmd == "build":
            w = build(series, _wheel(args, series), (root / args.out).resolve(), args.no_patches)
            print(w)
        elif args.cmd == "export":
            files = export(series, _wheel(args, series), Path(args.out).resolve())
            print(f"exported {len(files)} patches to {args.out}")
    except SeriesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
