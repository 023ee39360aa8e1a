"""benchmark/gemma4/serve_ab.py reports, byte for byte: the markdown and JSON of one run and of one merge.

The inputs (test/srt/data/serve_ab_golden/serve_ab_*.json) are run files that serve_ab wrote against the
stand-in server and client of test_gemma4_e2e_serve_ab.py (two workloads with MTP on both engines, and one
single-engine run per engine), with their paths replaced and a few facts edited so that the report shows more
of its cases (a stock engine, an uncommitted checkout, inputs from different devices, an interrupted input).
The expected outputs beside them (expected/) were written by the report code these tests guard; any change of
the report's formatting or of its summary arithmetic changes them.

To regenerate after an intended change of the report: SERVE_AB_GOLDEN_UPDATE=1 pytest this file, then review
the diff of expected/.
"""

import importlib.util
import json
import os
import shutil
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE_AB = os.path.join(REPO, "benchmark", "gemma4", "serve_ab.py")
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "serve_ab_golden")
EXPECTED = os.path.join(DATA, "expected")
UPDATE = os.environ.get("SERVE_AB_GOLDEN_UPDATE") == "1"
MERGE_DATE = "2026-12-06 15:00 UTC"


def _load_serve_ab():
    name = "serve_ab_golden_under_test"
    spec = importlib.util.spec_from_file_location(name, SERVE_AB)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


sab = _load_serve_ab()


def _compare(out_dir, names):
    for name in names:
        got = open(os.path.join(out_dir, name), "rb").read()
        want_path = os.path.join(EXPECTED, name)
        if UPDATE:
            os.makedirs(EXPECTED, exist_ok=True)
            shutil.copy(os.path.join(out_dir, name), want_path)
            continue
        want = open(want_path, "rb").read()
        assert got == want, f"{name} differs from {want_path}"


def test_run_report_is_unchanged(tmp_path):
    doc = json.load(open(os.path.join(DATA, "serve_ab_both.json")))
    md = sab.render_markdown(doc)
    jpath, mpath = sab.write_outputs(str(tmp_path), "serve_ab_both", doc, md)
    assert (jpath, mpath) == (str(tmp_path / "serve_ab_both.json"), str(tmp_path / "serve_ab_both.md"))
    _compare(str(tmp_path), ["serve_ab_both.md", "serve_ab_both.json"])


def test_merge_report_is_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sab.stamp, "utc_now", lambda: MERGE_DATE)
    monkeypatch.chdir(DATA)  # the inputs are named as given, relative to here
    rc = sab.main(["merge", "serve_ab_upstream.json", "serve_ab_patched.json", "--out", str(tmp_path),
                   "--name", "serve_ab_golden_merged"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    md = (tmp_path / "serve_ab_golden_merged.md").read_text()
    assert out.startswith(md)  # the command prints the table it wrote
    _compare(str(tmp_path), ["serve_ab_golden_merged.md", "serve_ab_golden_merged.json"])


def test_merge_report_with_take_is_unchanged(tmp_path, monkeypatch, capsys):
    """--take keeps some passes of a file that holds both engines."""
    monkeypatch.setattr(sab.stamp, "utc_now", lambda: MERGE_DATE)
    both = json.load(open(os.path.join(DATA, "serve_ab_both.json")))
    other = dict(both, meta=dict(both["meta"], device="NVIDIA H200, 143771 MiB", commit="abc1234"))
    (tmp_path / "serve_ab_other.json").write_text(json.dumps(other))
    shutil.copy(os.path.join(DATA, "serve_ab_both.json"), tmp_path)
    monkeypatch.chdir(tmp_path)
    rc = sab.main(["merge", "serve_ab_both.json", "serve_ab_other.json", "--out", "out",
                   "--name", "serve_ab_golden_take", "--take", "serve_ab_both.json=upstream:chat",
                   "--take", "serve_ab_other.json=patched:chat,patched:images-nocache"])
    assert rc == 0, capsys.readouterr().err
    _compare(str(tmp_path / "out"), ["serve_ab_golden_take.md", "serve_ab_golden_take.json"])


@pytest.mark.skipif(UPDATE, reason="regenerating")
def test_expected_files_are_committed():
    names = sorted(os.listdir(EXPECTED))
    assert names == sorted(f"serve_ab_{n}.{ext}" for n in ("both", "golden_merged", "golden_take")
                           for ext in ("json", "md"))


def test_pool_use_columns_and_unified_lines_appear_only_when_logged():
    doc = json.load(open(os.path.join(DATA, "serve_ab_both.json")))
    plain = sab.render_markdown(doc)
    assert "peak full tokens used" not in plain and "unified memory:" not in plain
    wl = doc["runs"][0]["workload"]
    for i, r in enumerate(r for r in doc["runs"] if r["workload"] == wl and r["kind"] == "timed"):
        r["peak_full_tokens_used"], r["peak_swa_tokens_used"] = 1000 + i, 5000 - i
    server = next(s for s in doc["servers"] if wl in s["workloads"])
    server.setdefault("log_info", {})["unified_pool_lines"] = ["[unified-memory-pool] UnifiedKVPool swa: total=1"]
    md = sab.render_markdown(doc)
    block = md.split(f"Server of `{wl}`:")[1].split("\n\n")[1].splitlines()
    assert block[0].endswith("| peak full tokens used, timed passes | peak SWA tokens used, timed passes |")
    engines = {line.split(" | ")[0].lstrip("| ") for line in block[2:]}
    timed = [r for r in doc["runs"] if r["workload"] == wl and r["kind"] == "timed"]
    for e in engines:
        mine = [r for r in timed if r["engine"] == e]
        row = next(line for line in block[2:] if line.startswith(f"| {e} |"))
        assert row.endswith(f"| {max(r['peak_full_tokens_used'] for r in mine)} | "
                            f"{max(r['peak_swa_tokens_used'] for r in mine)} |")
    assert "unified memory: [unified-memory-pool] UnifiedKVPool swa: total=1" in md


def test_switches_are_named_in_the_report_and_must_agree_to_merge(tmp_path):
    doc = json.load(open(os.path.join(DATA, "serve_ab_both.json")))
    assert "Switches set" not in sab.render_markdown(doc)
    doc["meta"]["switches"] = {"SGLANG_GEMMA4_TRITON_KV_SPLITS": "0", "SGLANG_SIMULATE_ACC_LEN": "3"}
    assert ("Switches set for both engines: SGLANG_GEMMA4_TRITON_KV_SPLITS=0, SGLANG_SIMULATE_ACC_LEN=3."
            in sab.render_markdown(doc))
    up = json.load(open(os.path.join(DATA, "serve_ab_upstream.json")))
    pa = json.load(open(os.path.join(DATA, "serve_ab_patched.json")))
    pa["meta"]["switches"] = {"SGLANG_GEMMA4_FUSED_QKV_NORM_ROPE": "1"}
    paths = []
    for name, d in (("up.json", up), ("pa.json", pa)):
        paths.append(str(tmp_path / name))
        json.dump(d, open(paths[-1], "w"))
    with pytest.raises(sab.ServeABError, match="switches set"):
        sab.merge_docs(paths)
    up["meta"]["switches"] = dict(pa["meta"]["switches"])
    json.dump(up, open(paths[0], "w"))
    assert sab.merge_docs(paths)["kind"] == "merge"
