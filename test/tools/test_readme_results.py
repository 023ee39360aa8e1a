"""tools/readme_results.py: the README's results tables come from the result files and are current."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "readme_results.py"
sys.path.insert(0, str(REPO / "tools"))
import readme_results  # noqa: E402


def test_readme_tables_match_the_result_files():
    proc = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_render_fills_blocks_and_check_names_a_stale_one(tmp_path):
    text = "intro\n<!-- results:a -->\nold\n<!-- /results:a -->\nmiddle\n<!-- results:b -->\n<!-- /results:b -->\n"
    out = readme_results.render(text, {"a": lambda: ["| x |"], "b": lambda: ["y"]})
    assert out == "intro\n<!-- results:a -->\n| x |\n<!-- /results:a -->\nmiddle\n<!-- results:b -->\ny\n<!-- /results:b -->\n"
    with pytest.raises(readme_results.ResultsError, match="no generator: b"):
        readme_results.render(text, {"a": lambda: []})
    readme = tmp_path / "README.md"
    readme.write_text(out.replace("| x |", "| edited by hand |"))
    # The real generators do not know blocks a and b: --check reports the problem instead of passing.
    proc = subprocess.run([sys.executable, str(TOOL), "--check", "--readme", str(readme)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2 and "no generator" in proc.stderr


def test_serve_table_marks_spread_and_missing_cells():
    m = lambda med, lo, hi: {"median": med, "min": lo, "max": hi}  # noqa: E731
    doc = {"summary": {"chat": {"upstream": {"n": 3, "metrics": {"duration": m(10.0, 9.0, 11.0)}},
                                "patched": {"n": 3, "metrics": {"duration": m(5.0, 4.5, 5.5)}}},
                       "images": {"upstream": {"n": 3, "metrics": {"duration": m(4.0, 3.9, 4.1)}}}}}
    rows = readme_results.serve_ab_table(doc, "X")
    chat = next(r for r in rows if "| chat | duration s |" in r)
    assert "2.00x" in chat and "beyond spread" in chat and "3/3" in chat
    images = next(r for r in rows if "| images | duration s |" in r)
    assert "not run" in images and "3/0" in images


def test_check_fails_on_a_hand_edited_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:probe -->\n| 1.0 us |\n<!-- /results:probe -->\n")
    proc = subprocess.run([sys.executable, str(TOOL), "--check", "--readme", str(readme)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 1 and "stale: probe" in proc.stderr
    subprocess.run([sys.executable, str(TOOL), "--readme", str(readme)], check=True, capture_output=True, cwd=REPO)
    assert "| 1.0 us |" not in readme.read_text() and "page_table_probe.md" in readme.read_text()
