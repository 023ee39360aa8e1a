"""benchmark/gemma4/image_breakdown.py runs end to end on CPU (tiny model directory, one request) and reports
what the real sglang path produced: uint8 patches with the series' transport and float32 without, parity of the
two, every stage, the tower on the processor's own output."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "benchmark", "gemma4")


def test_breakdown_runs_on_cpu(tmp_path):
    subprocess.run([sys.executable, os.path.join(BENCH, "make_model_dir.py"), "dir", "tiny", str(tmp_path / "m")],
                   check=True, capture_output=True)
    out = tmp_path / "res" / "bd"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "image_breakdown.py"), "--model-dir", str(tmp_path / "m"),
         "--out", str(out), "--requests", "2", "--repeats", "1", "--backends", "torchvision",
         "--device", "cpu", "--tower-on-cpu"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert res["images_per_request"] == 6 and res["resolution"] == "480x480"
    by_label = {b["label"]: b for b in res["backends"]}
    assert res["uint8_transport_installed"] and len(by_label) == 2
    u8 = by_label["--image-processor-backend torchvision, uint8 pixels"]
    f32 = by_label["--image-processor-backend torchvision, float32 pixels (HF default)"]
    # 480x480 is resized to 768x768: 2304 patches, 256 soft tokens, padded to 2520
    for b in (u8, f32):
        assert b["outputs"]["items"] == 6 and b["outputs"]["image_tokens"] == 6 * 256
        assert b["outputs"]["feature"][0]["shape"] == [1, 2520, 768]
        for stage in ("load", "hf", "combine", "request", "shm_wrap", "encode", "zmq", "decode", "unwrap",
                      "mm_inputs", "pad_ids", "hash_alone", "request_total_serial"):
            assert b["stages"][stage]["n"] == 2 and b["stages"][stage]["median_ms"] >= 0
        assert b["concurrent"][0]["requested"] == 0 and b["concurrent"][0]["images_per_s"] > 0
    assert u8["outputs"]["feature"][0]["dtype"] == "uint8" and f32["outputs"]["feature"][0]["dtype"] == "float32"
    assert 4 * u8["outputs"]["feature"][0]["bytes"] == f32["outputs"]["feature"][0]["bytes"]
    assert u8["parity"]["pixel_values_bit_identical"] and u8["parity"]["positions_identical"]
    assert "parity" not in f32
    tower = res["tower"]
    assert tower["valid_patches_per_image"] == 2304 and tower["soft_tokens_per_image"] == 256
    assert [b["images"] for b in tower["batches"]] == [6, 12]
    assert "## Summary" in md and "Vision tower alone" in md and "bit-identical" in md
    assert str(tmp_path) not in md  # no machine paths in the report
