"""serve_ab's video client (benchmark/gemma4/benchkit/ab_video.py, command line video_client.py) on CPU.

What it sends (the chat body and its content parts, the AVI file read back by a reader of its own and its JPEG
frames by Pillow, seeds that differ per pass and request and repeat exactly), its argument checks, the metrics
it writes (bench_serving's keys, run through serve_ab's own result reader, summary and report), its timing and
concurrency against the fake sglang server (test/srt/fake_sglang_server.py) in this process, which checks every
video it receives, and, where this machine has a decoder sglang 0.5.23 uses (torchcodec with FFmpeg's
libraries, or decord), the video decoded by sglang's own loader and cut by the Gemma-4 processor's frame
sampling. The end-to-end runs of serve_ab with the video workloads are in
test_gemma4_e2e_serve_ab.py (against the same fake server, run as a program).
"""

import base64
import io
import json
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "benchmark", "gemma4")
sys.path.insert(0, BENCH)
from benchkit import ab_video as av  # noqa: E402
from benchkit.ab_client import read_result  # noqa: E402
from benchkit.ab_report import render_markdown  # noqa: E402
from benchkit.ab_summary import compare_rows, summarise  # noqa: E402
from benchkit.ab_workloads import METRICS, WORKLOADS  # noqa: E402

# The fake server, and its AVI reader (written apart from the client's writer).
import fake_sglang_server as fake  # noqa: E402


def _opts(**kw):
    base = dict(host="127.0.0.1", port=1, model=None, frames=3, height=32, width=48, fps=1, quality=85,
                num_prompts=4, max_concurrency=2, output_len=5, warmup_requests=1, seed=2, output_file=None,
                ready_timeout_s=5.0, request_timeout_s=30.0)
    base.update(kw)
    return av.Options(**base)


def _video_of(body_bytes):
    body = json.loads(body_bytes)
    (video,) = fake.video_parts(body["messages"][0]["content"])
    return video


# --------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------
def test_resolution_is_height_by_width_and_bad_ones_are_refused():
    assert av.parse_resolution("480x480") == (480, 480)
    assert av.parse_resolution(" 360X640 ") == (360, 640)
    assert av.parse_resolution("32x32") == (32, 32)
    for bad in ("480", "480x", "x480", "0x480", "480x0", "48.5x64", "-4x4", "4x4x4", "axb", "5000x100",
                "31x480", "480x16"):
        with pytest.raises(av.VideoClientError, match="--resolution"):
            av.parse_resolution(bad)


@pytest.mark.parametrize("argv, message", [
    (["--frames", "0"], "--frames must be at least 1, got 0"),
    (["--frames", "2000"], "--frames above 1024"),
    (["--num-prompts", "0"], "--num-prompts must be at least 1"),
    (["--output-len", "0"], "--output-len must be at least 1"),
    (["--fps", "0"], "--fps must be at least 1"),
    (["--max-concurrency", "-1"], "--max-concurrency must be at least 0"),
    (["--warmup-requests", "-2"], "--warmup-requests must be at least 0"),
    (["--quality", "0"], "--quality must be 1-95"),
    (["--quality", "96"], "--quality must be 1-95"),
    (["--port", "70000"], "--port 70000 is not a TCP port"),
    (["--resolution", "48"], "--resolution must be HEIGHTxWIDTH"),
    (["--resolution", "480x24"], "--resolution must be at least 32x32"),
    (["--request-timeout", "0"], "--request-timeout > 0"),
])
def test_bad_arguments_exit_2_with_the_flag_named(argv, message, capsys):
    with pytest.raises(av.VideoClientError) as e:
        av.parse_args(argv)
    assert message in str(e.value)
    assert av.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_good_arguments_and_ignored_foreign_flags():
    o = av.parse_args(["--frames", "32", "--resolution", "360x640", "--num-prompts", "7", "--max-concurrency", "0",
                       "--seed", "9", "--random-input-len", "8", "--disable-tqdm"])
    assert (o.frames, o.height, o.width, o.num_prompts, o.max_concurrency, o.seed) == (32, 360, 640, 7, 0, 9)
    assert o.ignored_args == ["--random-input-len", "8", "--disable-tqdm"]
    d = av.parse_args([])
    assert (d.frames, d.height, d.width, d.output_len, d.fps, d.quality) == (8, 480, 480, 10, 1, 85)


def test_serve_ab_workloads_pass_valid_client_arguments():
    for name, frames, prompts in (("video8", 8, 64), ("video32", 32, 32)):
        wl = WORKLOADS[name]
        assert wl.client == "video" and wl.client_label == "the video client"
        o = av.parse_args(list(wl.bench_args))
        assert (o.frames, o.height, o.width, o.num_prompts, o.output_len, o.max_concurrency, o.warmup_requests) == \
            (frames, 480, 480, prompts, 10, 16, 2)
        assert o.ignored_args == []


# --------------------------------------------------------------------------
# the video file
# --------------------------------------------------------------------------
def test_avi_holds_every_frame_as_an_indexed_jpeg_of_the_generated_pixels():
    key = av.content_key(5, 12, 32, 40, False, 3)
    video = av.make_video(key, 12, 32, 40, fps=4, quality=90)
    info = fake.avi_info(video)
    assert (info["frames"], info["width"], info["height"]) == (12, 40, 32)
    assert (info["handler"], info["codec"], info["rate"]) == (b"MJPG", b"MJPG", (1, 4))  # scale 1, rate 4 fps
    assert len(info["jpegs"]) == 12 and any(len(b) % 2 for _, b in info["jpegs"])  # odd sizes are padded
    # idx1: one key-frame entry per frame, offsets from the 'movi' type field, sizes without the pad byte.
    assert [(e[0], e[1], e[2], e[3]) for e in info["index"]] == \
        [(b"00dc", 0x10, pos - info["movi_at"], len(body)) for pos, body in info["jpegs"]]
    frames = av.random_frames(key, 12, 32, 40)
    decoded = [np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=int) for _, body in info["jpegs"]]
    assert all(d.shape == (32, 40, 3) for d in decoded)
    for i, d in enumerate(decoded):  # frame i is the i-th generated frame (JPEG is lossy: nearest, not equal)
        errs = [np.abs(d - f.astype(int)).mean() for f in frames]
        assert int(np.argmin(errs)) == i and errs[i] < 0.7 * min(e for j, e in enumerate(errs) if j != i)
    with pytest.raises(av.VideoClientError, match="at least one frame"):
        av.avi_mjpeg([], 4, 4, 1)


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------
def test_request_body_has_the_video_part_then_the_text_part():
    body = av.request_body("google/gemma-4-E2B-it", b"\x00RIFF video", "Describe it.", 7)
    assert body == {
        "model": "google/gemma-4-E2B-it",
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "data:video/x-msvideo;base64,"
                                                       + base64.b64encode(b"\x00RIFF video").decode()}},
            {"type": "text", "text": "Describe it."}]}],
        "max_completion_tokens": 7, "temperature": 0.0, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_videos_differ_by_pass_request_and_shape_and_repeat_for_the_same_seed():
    def bodies(**kw):
        o = _opts(**kw)
        return ([r.body for r in av.build_requests(o, "m", warmup=True)],
                [r.body for r in av.build_requests(o, "m", warmup=False)])

    warm, timed = bodies()
    assert len(warm) == 1 and len(timed) == 4
    assert bodies() == (warm, timed)  # both engines' pass r: the same bytes
    videos = [_video_of(b) for b in warm + timed]
    assert len(set(videos)) == 5  # every request of a pass, warm-up requests included, has its own video
    for v in videos:
        info = fake.avi_info(v)
        assert (info["frames"], info["width"], info["height"], len(info["jpegs"])) == (3, 48, 32, 3)
    texts = [json.loads(b)["messages"][0]["content"][1]["text"] for b in timed]
    assert all(t.startswith(av.INSTRUCTION) for t in texts) and len(set(texts)) == 4
    _, other_pass = bodies(seed=3)
    assert not {_video_of(b) for b in other_pass} & set(videos)
    # video8 and video32 on one server with the same seed: not even their first frames agree.
    _, longer = bodies(frames=4)
    first = {fake.avi_info(v)["jpegs"][0][1] for v in videos}
    assert not {fake.avi_info(_video_of(b))["jpegs"][0][1] for b in longer} & first
    _, bigger = bodies(height=40)
    assert fake.avi_info(_video_of(bigger[0]))["height"] == 40


# --------------------------------------------------------------------------
# metrics: bench_serving's keys, read and summarised by serve_ab
# --------------------------------------------------------------------------
def _out(ttft, latency, n, prompt, itl=()):
    return av.Output(success=True, ttft=ttft, latency=latency, output_len=n, prompt_len=prompt, itl=list(itl))


def test_metrics_follow_bench_serving_and_feed_serve_ab_summary(tmp_path):
    outs = [_out(0.1, 0.5, 5, 600, [0.1] * 4), _out(0.2, 1.0, 9, 610, [0.1] * 8), _out(0.3, 0.3, 1, 620),
            av.Output(success=False, error="HTTP 400 Bad Request: Could not decode video")]
    m = av.compute_metrics(outs, 2.0)
    assert (m["completed"], m["failed"], m["total_output_tokens"], m["total_input_tokens"]) == (3, 1, 15, 1830)
    assert m["request_throughput"] == pytest.approx(1.5) and m["output_throughput"] == pytest.approx(7.5)
    assert m["total_throughput"] == pytest.approx((1830 + 15) / 2.0)
    assert m["median_ttft_ms"] == pytest.approx(200.0) and m["mean_ttft_ms"] == pytest.approx(200.0)
    # TPOT of requests with more than one token only: (0.5-0.1)/4 and (1.0-0.2)/8.
    assert m["median_tpot_ms"] == pytest.approx(100.0) and m["p99_tpot_ms"] == pytest.approx(100.0)
    assert m["median_e2e_latency_ms"] == pytest.approx(500.0) and m["concurrency"] == pytest.approx(0.9)
    assert m["median_itl_ms"] == pytest.approx(100.0)
    # serve_ab reads the line the client appends, and summarises and reports it like bench_serving's.
    path = tmp_path / "bench.jsonl"
    path.write_text("not json\n" + json.dumps(dict(m, server_info={"x": 1}, accept_length=None)) + "\n")
    res = read_result(str(path))
    assert res["completed"] == 3 and "server_info" not in res
    for key, *_ in METRICS:
        assert key in res
    slower = dict(res, median_tpot_ms=200.0, duration=4.0)
    runs = [{"engine": e, "workload": "video8", "kind": "timed", "rep": k, "seed": k + 2, "status": "ok",
             "result": r, "compile_lines": [], "peak_running_requests": None}
            for k in range(3) for e, r in (("upstream", slower), ("patched", res))]
    s = summarise(runs, ["video8"])
    assert s["video8"]["patched"]["metrics"]["median_tpot_ms"]["median"] == pytest.approx(100.0)
    rows = {r["metric"]: r for r in compare_rows(s, ["video8"])}
    assert rows["median_tpot_ms"]["ratio"] == pytest.approx(2.0) and rows["duration"]["ratio"] == pytest.approx(2.0)
    assert rows["request_throughput"]["ratio"] == pytest.approx(1.0)
    doc = {"kind": "run", "status": "complete", "runs": runs, "servers": [], "summary": s,
           "rows": compare_rows(s, ["video8"]),
           "meta": {"model": "m", "engines": ["upstream", "patched"], "device": "d", "date": "t", "commit": "c",
                    "repeats": 3, "seeds": {"timed": [2, 3, 4], "warmup": 1}, "warmup_prompts": 16},
           "workloads": {"video8": {"description": "video", "bench_args": ["--frames", "8"], "server_args": [],
                                    "server_env": {}, "num_prompts": 64, "warmup_prompts": 16, "client": "video"}}}
    md = render_markdown(doc)
    assert "| video8 | median TPOT (ms) | 200.00 [200.00-200.00] n=3 | 100.00 [100.00-100.00] n=3 | 2.00x |" in md
    assert "- video8: video; video client (benchmark/gemma4/video_client.py) --frames 8; 64 prompts" in md


# --------------------------------------------------------------------------
# one pass against a streaming server in this process
# --------------------------------------------------------------------------
def test_one_pass_times_streams_and_bounds_concurrency(tmp_path, capsys, make_fake_sglang_server):
    # 80 ms to the first token, 20 ms before each one after it
    srv = make_fake_sglang_server(model="served-model", first_token_ms=80, token_delay_ms=20, accept_length=2.5)
    out = tmp_path / "r.jsonl"
    rc = av.main(["--port", str(srv.port), "--frames", "2", "--resolution", "32x32", "--num-prompts", "6",
                  "--max-concurrency", "2", "--output-len", "4", "--warmup-requests", "1", "--seed", "4",
                  "--output-file", str(out), "--random-output-len", "9"])
    assert rc == 0, capsys.readouterr()
    res = json.loads(out.read_text().splitlines()[-1])
    assert (res["completed"], res["failed"], res["model"], res["accept_length"]) == (6, 0, "served-model", 2.5)
    assert len(srv.requests) == 7 and srv.peak_in_flight == 2  # 1 warm-up + 6 timed, never more than 2 in flight
    assert all(b["model"] == "served-model" and b["max_completion_tokens"] == 4 for b in srv.requests)
    # the server's usage: 10 + 64 prompt tokens per frame of the request's video
    assert (res["total_output_tokens"], res["total_input_tokens"]) == (24, 6 * (10 + 64 * 2))
    videos = [ln for ln in srv.log_lines if ln.startswith("stand-in video ")]
    assert len(videos) == 7 and all(re.fullmatch(r"stand-in video frames=2 size=32x32 codec=MJPG bytes=\d+", ln)
                                    for ln in videos)
    # 80 ms to the first token, 20 ms per token after it; 6 requests, 2 at a time: 3 rounds of about 140 ms.
    assert 75 <= res["median_ttft_ms"] < 200 and 18 <= res["median_tpot_ms"] < 60
    assert 0.4 <= res["duration"] < 2.0 and res["request_throughput"] == pytest.approx(6 / res["duration"])
    assert res["ignored_args"] == ["--random-output-len", "9"] and res["frames_per_video"] == 2
    assert "Successful requests:                     6" in capsys.readouterr().out


def test_failed_requests_are_counted_and_reported(tmp_path, capsys, make_fake_sglang_server):
    srv = make_fake_sglang_server(model="served-model", token_delay_ms=0, fail_every=2)
    out = tmp_path / "r.jsonl"
    rc = av.main(["--port", str(srv.port), "--frames", "1", "--resolution", "32x32", "--num-prompts", "4",
                  "--max-concurrency", "1", "--warmup-requests", "0", "--output-file", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert (res["completed"], res["failed"]) == (2, 2)
    assert res["errors"] == ['HTTP 400 Bad Request: {"object": "error", "message": '
                             '"Could not decode video: refused (--fail-every 2)"}'] * 2
    assert "request error: HTTP 400" in capsys.readouterr().out


def test_server_that_never_answers_exits_1(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert av.main(["--port", str(port), "--ready-check-timeout-sec", "0.5"]) == 1
    assert f"server 127.0.0.1:{port} not ready after" in capsys.readouterr().err


# --------------------------------------------------------------------------
# sglang 0.5.23's own loader, where this machine has its decoder
# --------------------------------------------------------------------------
def test_sglang_loader_decodes_the_video_and_gemma4_keeps_its_frames():
    """load_video on the data URL as the chat endpoint passes it (torchcodec, or decord where torchcodec does not
    import), then the Gemma-4 processor's frame sampling: 8 frames kept, 40 cut to its 32."""
    from types import SimpleNamespace

    from sglang.srt.utils.common import load_video
    from sglang.srt.utils.video_decoder import _BACKEND

    key = av.content_key(1, 8, 48, 64, False, 0)
    video = av.make_video(key, 8, 48, 64)
    try:
        wrapper = load_video(av.data_url(video), use_gpu=False)
    except (ImportError, ValueError) as e:
        if "libtorchcodec" in str(e) or "decord" in str(e):
            pytest.skip(f"no video decoder on this machine for sglang ({_BACKEND}): {str(e).splitlines()[0]}")
        raise
    from sglang.srt.multimodal.processors.gemma4 import Gemma4SGLangProcessor

    assert len(wrapper) == 8 and wrapper.frame_shape == (48, 64)
    proc = SimpleNamespace(_processor=SimpleNamespace(video_processor=SimpleNamespace(num_frames=32)))
    t = Gemma4SGLangProcessor._video_decoder_to_tensor(proc, wrapper)
    assert tuple(t.shape) == (8, 3, 48, 64)
    # Frame i decoded is Pillow's decoding of JPEG i, up to the colour conversion (FFmpeg's chroma upsampling
    # differs from libjpeg's, a lot on noise), and far from every other frame.
    refs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=int).transpose(2, 0, 1)
            for _, b in fake.avi_info(video)["jpegs"]]
    for i in range(8):
        errs = [np.abs(t[i].numpy().astype(int) - r).mean() for r in refs]
        assert int(np.argmin(errs)) == i and errs[i] < 20 and errs[i] < 0.4 * min(errs[:i] + errs[i + 1:]), errs
    long = load_video(av.data_url(av.make_video("long", 40, 32, 32)), use_gpu=False)
    assert len(long) == 40 and Gemma4SGLangProcessor._video_decoder_to_tensor(proc, long).shape[0] == 32
