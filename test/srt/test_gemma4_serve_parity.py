"""Output-parity harness (benchmark/gemma4/serve_parity.py), CPU only.

* ``collect`` against a stand-in HTTP server that answers ``/generate`` in sglang's response shape (text,
  output_ids, meta_info with prompt_tokens, output_token_logprobs, output_top_logprobs): the requests it
  sends (greedy, logprobs, top-2, images as PNG base64 with the chat-format placeholders), prompt order under
  concurrency, reproducible prompts and images, bad answers;
* ``serve``: starts a server command with the parity flags, collects, stops it;
* ``report`` on constructed inputs: identical, divergent at k (near tie or not), engine-vs-transformers
  deltas on padded and unpadded images, bad input -> exit 2;
* ``hf`` on the tiny random-weight checkpoint: teacher forcing reproduces transformers' own greedy logprobs
  for its own generated ids (text and image prompts), prompt-length mismatches are named.
"""

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import fake_sglang_server as fake

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "benchmark", "gemma4")
SCRIPT = os.path.join(BENCH, "serve_parity.py")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


sp = _load("gemma4_serve_parity", SCRIPT)
mmd = _load("gemma4_make_model_dir_for_parity", os.path.join(BENCH, "make_model_dir.py"))

# The stand-in for sglang's HTTP server is test/srt/fake_sglang_server.py (the fake_sglang_server fixture): its
# /generate output tokens are a deterministic function of the prompt text (fake_sglang_server.answer), answers
# are delayed by a prompt-dependent amount so that concurrent requests finish out of order.


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return mmd.write_model_dir("tiny", str(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def collected(fake_sglang_server, tiny_dir):
    fake_sglang_server.requests.clear()
    res = sp.collect(fake_sglang_server.url, tiny_dir, "stock", text_n=12, image_k=6, max_new_tokens=16,
                     image_max_new_tokens=5, seed=11, concurrency=4)
    return res, list(fake_sglang_server.requests)


# ------------------------------------------------------------------------------------------- collect


def test_collect_sends_greedy_logprob_requests(collected, tiny_dir):
    res, requests = collected
    assert len(requests) == 18
    for req in requests:
        params = req["sampling_params"]
        assert params["temperature"] == 0.0 and params["ignore_eos"] is True
        assert req["return_logprob"] is True and req["top_logprobs_num"] == 2
    by_text = {r["text"]: r for r in requests}
    for rec in res["text"]:
        assert by_text[rec["text"]]["sampling_params"]["max_new_tokens"] == 16
        assert "image_data" not in by_text[rec["text"]]
    for rec in res["image"]:
        req = by_text[rec["text"]]
        assert req["sampling_params"]["max_new_tokens"] == 5
        assert rec["text"].count("<|image|>") == len(req["image_data"]) == len(rec["image_sizes"])
        # Images arrive as PNG base64 data URLs of the recorded sizes and regenerate from (seed, sizes).
        from PIL import Image

        regen = sp.prompt_images(rec)
        for url, (h, w), png in zip(req["image_data"], rec["image_sizes"], regen):
            assert url.startswith("data:image/png;base64,")
            raw = base64.b64decode(url.split(",", 1)[1])
            assert raw == png
            assert Image.open(io.BytesIO(raw)).size == (w, h)
    assert res["meta"]["engine"] == "stock" and res["meta"]["seed"] == 11 and res["meta"]["concurrency"] == 4
    assert res["meta"]["server_info"]["version"] == fake.VERSION


def test_collect_records_answers_in_prompt_order(collected):
    res, _ = collected
    for kind in ("text", "image"):
        assert [r["index"] for r in res[kind]] == list(range(len(res[kind])))
        for rec in res[kind]:
            ans = fake.answer({"text": rec["text"], "sampling_params": {"max_new_tokens": len(rec["output_ids"])},
                               "image_data": [0] * len(rec.get("image_sizes", []))})
            assert rec["output_ids"] == ans["output_ids"]
            assert rec["prompt_tokens"] == ans["meta_info"]["prompt_tokens"]
            assert rec["logprobs"] == [e[0] for e in ans["meta_info"]["output_token_logprobs"]]
            assert rec["top2"] == [[e[:2] for e in step] for step in ans["meta_info"]["output_top_logprobs"]]
            assert len(rec["top2"]) == len(rec["output_ids"]) and all(len(s) == 2 for s in rec["top2"])


def test_text_prompts_vary_in_length_and_use_the_vocab(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    words = set(sp.vocab_words(tiny_dir))
    assert words and not any(w.startswith("<") for w in words)
    prompts = sp.text_prompts(sp.vocab_words(tiny_dir), 24, 5)
    lengths = [len(tok(p["text"])["input_ids"]) for p in prompts]
    assert min(lengths) < 16 and max(lengths) > 150 and max(lengths) <= 340
    assert len(set(lengths)) > 12
    for p in prompts:
        body = p["text"].replace("<|turn>user\n", "").replace("<turn|>\n<|turn>model\n", "")
        assert set(body.split()) <= words
    assert sum(p["chat"] for p in prompts) == 6
    assert sp.text_prompts(sp.vocab_words(tiny_dir), 24, 5) == prompts
    assert sp.text_prompts(sp.vocab_words(tiny_dir), 24, 6) != prompts


def test_image_prompts_match_the_chat_template_and_cover_padding(tiny_dir):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_dir)
    prompts = sp.image_prompts(sp.vocab_words(tiny_dir), len(sp.IMAGE_PROMPTS), 0)
    padded = []
    for p in prompts:
        content = [{"type": "image", "image": {"url": "x"}} for _ in p["image_sizes"]]
        question = p["text"].split("\n\n")[-1].split("<turn|>")[0]
        content.append({"type": "text", "text": question})
        rendered = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            tokenize=False)
        assert rendered == "<bos>" + p["text"]
        images = [Image.open(io.BytesIO(b)) for b in sp.prompt_images(p)]
        pos = proc(text=[p["text"]], images=images, return_tensors="pt")["image_position_ids"]
        padded.append([int((q[:, 0] < 0).sum()) for q in pos])
    assert padded[0] == [216] and padded[1] == [0]  # 768x768 padded, 672x960 not
    assert max(max(x) for x in padded) >= 800
    assert any(len(x) == 2 for x in padded)
    with pytest.raises(sp.BadInput, match="at most"):
        sp.image_prompts(["a"] * 20, len(sp.IMAGE_PROMPTS) + 1, 0)


def test_collect_bad_answers_and_http_errors(fake_sglang_server, tiny_dir):
    base = fake_sglang_server.url
    fake_sglang_server.bad_generate = True
    try:
        with pytest.raises(sp.BadInput, match="text prompt 0: unexpected /generate answer"):
            sp.collect(base, tiny_dir, "x", text_n=1, image_k=0)
    finally:
        fake_sglang_server.bad_generate = False
    with pytest.raises(RuntimeError, match="HTTP 400"):
        sp._request(base, {"index": 3, "text": "<fail>"}, 4, 10)
    with pytest.raises(sp.BadInput, match="no tokenizer.json"):
        sp.collect(base, os.path.dirname(tiny_dir), "x", text_n=1, image_k=0)
    with pytest.raises(sp.BadInput, match="differ from output_ids"):
        sp.parse_generate({"output_ids": [1, 2], "meta_info": {"prompt_tokens": 3, "output_token_logprobs": [
            [-1.0, 1, None], [-1.0, 3, None]]}}, "p")


def test_collect_cli_writes_file(fake_sglang_server, tiny_dir, tmp_path):
    port = fake_sglang_server.port
    out = tmp_path / "c.json"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, SCRIPT, "collect", "--port", str(port), "--model-dir", tiny_dir,
                           "--engine", "series", "--out", str(out), "--text-prompts", "24", "--image-prompts", "6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = sp.load_collected(str(out))
    assert len(data["text"]) == 24 and len(data["image"]) == 6 and data["meta"]["engine"] == "series"
    assert time.monotonic() - t0 < 60
    bad = subprocess.run([sys.executable, SCRIPT, "collect", "--port", str(port), "--model-dir", str(tmp_path),
                          "--engine", "x", "--out", str(tmp_path / "d.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no tokenizer.json" in bad.stderr


def test_serve_starts_collects_and_stops(tmp_path, tiny_dir, monkeypatch):
    """``serve`` launches ``python -m sglang.launch_server`` with the parity flags (and MTP flags for a draft),
    waits for /health, collects and stops the server's process group."""
    import socket

    # the server opens its port only after 0.5 s (serve waits through refused connections), then is ready
    monkeypatch.setenv("PYTHONPATH", fake.write_launch_server_package(str(tmp_path / "fake"), listen_delay_s=0.5,
                                                                      startup_s=0.0))
    log = tmp_path / "requests.log"
    monkeypatch.setenv(fake.REQUEST_LOG_ENV, str(log))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "serve.json"
    rc = sp.main(["serve", "--python", sys.executable, "--model-dir", tiny_dir, "--draft-dir", "/x/draft",
                  "--engine", "series", "--port", str(port), "--out", str(out), "--text-prompts", "3",
                  "--image-prompts", "1", "--server-args", "--attention-backend triton"])
    assert rc == 0
    data = sp.load_collected(str(out))
    argv = json.loads(log.read_text().splitlines()[0])["argv"]
    for flag in ("--disable-radix-cache", "--sampling-backend", "--load-format", "--random-seed"):
        assert flag in argv
    assert argv[argv.index("--speculative-draft-model-path") + 1] == "/x/draft"
    assert argv[argv.index("--speculative-algorithm") + 1] == "NEXTN" and argv[-2:] == ["--attention-backend", "triton"]
    assert data["meta"]["server_command"][1:3] == ["-m", "sglang.launch_server"]
    assert (tmp_path / "serve.server.log").exists()
    with pytest.raises(OSError):  # stopped
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


# ------------------------------------------------------------------------------------------- report


def _rec(index, ids, lps, top2=None, text=None, **extra):
    return dict(index=index, text=text or f"prompt {index}", prompt_tokens=10 + index, output_ids=ids,
                logprobs=lps, top2=top2 or [[[lp, t], [lp - 1.0, t + 1]] for lp, t in zip(lps, ids)], **extra)


def _coll(engine, text, image=()):
    return {"format": sp.FORMAT, "meta": {"engine": engine, "seed": 0, "max_new_tokens": 4, "image_max_new_tokens": 2,
                                          "concurrency": 1, "model_dir": "/m/e2b", "server_info": {"version": engine}},
            "text": list(text), "image": list(image)}


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


def test_report_identical_and_divergent(tmp_path):
    same = _rec(0, [5, 6, 7, 8], [-1.0, -1.1, -1.2, -1.3])
    # Divergence at 2 at a near tie (top-2 swapped, gaps 0.03 and 0.01).
    a_tie = _rec(1, [5, 6, 10, 9], [-1.0, -1.0, -1.00, -2.0])
    b_tie = _rec(1, [5, 6, 11, 4], [-1.0, -1.0, -1.01, -2.0])
    a_tie["top2"][2] = [[-1.00, 10], [-1.03, 11]]
    b_tie["top2"][2] = [[-1.01, 11], [-1.02, 10]]
    # Divergence at 0, not a near tie (gap 1.5).
    a_far = _rec(2, [3, 3, 3, 3], [-0.2] * 4)
    b_far = _rec(2, [4, 3, 3, 3], [-0.3] * 4)
    a_far["top2"][0] = [[-0.2, 3], [-1.7, 4]]
    b_far["top2"][0] = [[-0.3, 4], [-1.8, 3]]
    # Equal ids, logprobs differ by 0.002 in the common prefix.
    a_eq = _rec(3, [1, 2], [-1.0, -2.0])
    b_eq = _rec(3, [1, 2], [-1.0, -2.002])
    a = _coll("stock", [same, a_tie, a_far, a_eq])
    b = _coll("series", [same, b_tie, b_far, b_eq])
    out = tmp_path / "out"
    rc = sp.main(["report", "--a", _write(tmp_path, "a.json", a), "--b", _write(tmp_path, "b.json", b),
                  "--out", str(out), "--name", "serve_parity_test"])
    assert rc == 0
    rep = json.load(open(out / "serve_parity_test.json"))
    s = rep["summary"]
    assert s["text_prompts"] == 4 and s["text_identical"] == 2
    assert s["text_divergent_near_tie"] == 1 and s["text_divergent_not_near_tie"] == 1
    t = {r["index"]: r for r in rep["text"]}
    assert t[0]["identical"] and t[0]["max_abs_dlogprob_common_prefix"] == 0.0
    assert t[1]["first_divergence"] == 2 and t[1]["near_tie"] and t[1]["swapped_top2"]
    assert t[1]["gap_a"] == pytest.approx(0.03) and t[1]["gap_b"] == pytest.approx(0.01)
    assert t[2]["first_divergence"] == 0 and not t[2]["near_tie"] and t[2]["gap_a"] == pytest.approx(1.5)
    assert t[3]["identical"] and t[3]["max_abs_dlogprob_common_prefix"] == pytest.approx(0.002)
    md = (out / "serve_parity_test.md").read_text()
    assert "2 / 4 token-identical" in md and "1 at a near tie" in md and "1 not a near tie" in md
    for key in ("Device:", "Date:", "Commit:", "random weights"):
        assert key in md
    assert rep["meta"]["commit"] and rep["meta"]["device"] and rep["meta"]["date"]
    # A tighter tie threshold turns the near tie into a real divergence.
    rc = sp.main(["report", "--a", str(tmp_path / "a.json"), "--b", str(tmp_path / "b.json"), "--out", str(out),
                  "--name", "tight", "--tie-eps", "0.02"])
    assert rc == 0 and json.load(open(out / "tight.json"))["summary"]["text_divergent_near_tie"] == 0


def test_report_images_against_transformers(tmp_path):
    pad = dict(image_sizes=[[768, 768]], image_seed=0)
    nopad = dict(image_sizes=[[672, 960]], image_seed=0)
    a = _coll("stock", [], [_rec(0, [7, 8], [-1.0, -2.0], text="i0", **pad), _rec(1, [7, 9], [-1.0, -2.0], text="i1", **nopad)])
    b = _coll("series", [], [_rec(0, [7, 8], [-1.5, -2.1], text="i0", **pad), _rec(1, [7, 9], [-1.0, -2.0], text="i1", **nopad)])

    def hf(coll, lps):
        return {"format": sp.FORMAT + "+hf", "meta": {"engine": coll["meta"]["engine"]}, "text": [],
                "image": [dict(index=r["index"], output_ids=r["output_ids"], hf_logprobs=lp,
                               valid_patches=[2304 if r["index"] == 0 else 2520], total_patches=2520)
                          for r, lp in zip(coll["image"], lps)]}

    hf_a = hf(a, [[-1.6, -2.2], [-1.01, -2.02]])
    hf_b = hf(b, [[-1.49, -2.12], [-1.0, -2.0]])
    paths = [_write(tmp_path, n, o) for n, o in (("a.json", a), ("b.json", b), ("ha.json", hf_a), ("hb.json", hf_b))]
    rc = sp.main(["report", "--a", paths[0], "--b", paths[1], "--hf-a", paths[2], "--hf-b", paths[3],
                  "--out", str(tmp_path / "o"), "--name", "img"])
    assert rc == 0
    rep = json.load(open(tmp_path / "o" / "img.json"))
    r0, r1 = rep["image"]
    assert r0["padded"] and not r1["padded"]
    assert r0["hf_a"]["max"] == pytest.approx(0.6) and r0["hf_a"]["mean"] == pytest.approx(0.4)
    assert r0["hf_a"]["first"] == pytest.approx(0.6)
    assert r0["hf_b"]["max"] == pytest.approx(0.02) and r1["hf_b"]["max"] == 0.0
    s = rep["summary"]
    assert s["image_padded_hf_a_max"] == pytest.approx(0.6) and s["image_padded_hf_b_max"] == pytest.approx(0.02)
    assert s["image_unpadded_hf_a_max"] == pytest.approx(0.02)
    md = (tmp_path / "o" / "img.md").read_text()
    assert "768x768 | 2304/2520 | yes" in md and "672x960 | 2520/2520 | no" in md
    assert "on padded images: stock max 0.6000" in md
    assert s["image_padded_b_closer_to_hf"] == 1 == s["image_padded_with_both_hf"]
    assert "closer to transformers than stock (max |delta|): 1 / 1" in md


def test_report_bad_input_exits_2(tmp_path):
    a = _coll("stock", [_rec(0, [1, 2], [-1.0, -1.0])])
    b_other = _coll("series", [_rec(0, [1, 2], [-1.0, -1.0], text="another prompt")])
    b_more = _coll("series", [_rec(0, [1, 2], [-1.0, -1.0]), _rec(1, [1], [-1.0])])
    hf_wrong = {"format": sp.FORMAT + "+hf", "meta": {}, "image": [], "text": [
        dict(index=0, output_ids=[9, 9], hf_logprobs=[-1.0, -1.0])]}
    pa = _write(tmp_path, "a.json", a)
    cases = [
        (["--b", _write(tmp_path, "b1.json", b_other)], "differs between --a and --b"),
        (["--b", _write(tmp_path, "b2.json", b_more)], "1 in --a, 2 in --b"),
        (["--b", pa, "--hf-a", _write(tmp_path, "h.json", hf_wrong)], "other output ids"),
        (["--b", _write(tmp_path, "b3.json", {"format": "x"})], "not a serve_parity collect file"),
        (["--b", str(tmp_path / "missing.json")], "cannot read"),
        (["--b", pa, "--hf-b", pa], "not a serve_parity hf file"),
    ]
    for extra, msg in cases:
        proc = subprocess.run([sys.executable, SCRIPT, "report", "--a", pa, *extra, "--out", str(tmp_path / "o"),
                               "--name", "x"], capture_output=True, text=True)
        assert proc.returncode == 2 and msg in proc.stderr, (msg, proc.stderr[-500:])


# ------------------------------------------------------------------------------------------- hf


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
    """The tiny random-weight checkpoint and a collect file whose outputs are transformers' own greedy
    decode (float32, KV cache, raw logits) of the harness's text and image prompts."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Gemma4ForConditionalGeneration

    root = tmp_path_factory.mktemp("hf")
    model_dir = str(root / "tiny")
    mmd.write_weights("tiny", model_dir, seed=9, probe=False)
    proc = AutoProcessor.from_pretrained(model_dir)
    model = Gemma4ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    words = sp.vocab_words(model_dir)

    def generate(inputs, m):
        out = model.generate(**inputs, max_new_tokens=m, min_new_tokens=m, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        n = inputs["input_ids"].shape[1]
        ids = out.sequences[0, n:].tolist()
        lps = [float(torch.log_softmax(lg[0].float(), -1)[i]) for lg, i in zip(out.logits, ids)]
        return n, ids, lps

    recs = {"text": [], "image": []}
    for p in sp.text_prompts(words, 3, 0):
        n, ids, lps = generate(dict(proc.tokenizer(p["text"], return_tensors="pt")), 6)
        recs["text"].append(dict(p, prompt_tokens=n, output_ids=ids, logprobs=lps, top2=[]))
    for p in sp.image_prompts(words, 3, 0):
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in sp.prompt_images(p)]
        n, ids, lps = generate(dict(proc(text=[p["text"]], images=images, return_tensors="pt")), 4)
        recs["image"].append(dict(p, prompt_tokens=n, output_ids=ids, logprobs=lps, top2=[]))
    coll = {"format": sp.FORMAT, "meta": {"engine": "transformers-generate", "seed": 0}, **recs}
    path = root / "collected.json"
    path.write_text(json.dumps(coll))
    return {"dir": model_dir, "collected": str(path), "coll": coll, "root": root, "model": model}


def test_hf_teacher_forcing_reproduces_transformers_greedy(hf_case):
    root = hf_case["root"]
    outs = [str(root / "hf1.json"), str(root / "hf2.json")]
    proc = subprocess.run([sys.executable, SCRIPT, "hf", "--model-dir", hf_case["dir"], "--collected",
                           hf_case["collected"], hf_case["collected"], "--out", *outs, "--device", "cpu",
                           "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for out in outs:
        res = json.load(open(out))
        assert res["meta"]["dtype"] == "float32" and res["meta"]["ignored_file_tensors"] == 6
        for kind in ("text", "image"):
            assert len(res[kind]) == len(hf_case["coll"][kind])
            for eng, hf in zip(hf_case["coll"][kind], res[kind]):
                assert hf["output_ids"] == eng["output_ids"]
                assert max(abs(x - y) for x, y in zip(eng["logprobs"], hf["hf_logprobs"])) < 1e-4, (kind, eng["index"])
                assert all(len(t) == 2 and t[0][0] >= t[1][0] for t in hf["hf_top2"])
        assert [r["valid_patches"] for r in res["image"]] == [[2304], [2520], [1674]]
        # This tiny model generates its own image token (id 1002) once: fed back as <pad>, as generate does.
        assert sum(r["output_mm_tokens"] for r in res["image"] + res["text"]) >= 1
        assert all(r["total_patches"] == 2520 for r in res["image"])
    # The report of transformers against itself: all zero deltas.
    rc = sp.main(["report", "--a", hf_case["collected"], "--b", hf_case["collected"], "--hf-a", outs[0],
                  "--hf-b", outs[1], "--out", str(root / "rep"), "--name", "self"])
    assert rc == 0
    s = json.load(open(root / "rep" / "self.json"))["summary"]
    assert s["text_identical"] == 3 and s["image_padded_hf_a_max"] < 1e-4 and s["text_hf_b_max"] < 1e-4


def test_hf_loader_equals_from_pretrained(hf_case):
    import torch

    model, info = sp.load_hf_model(hf_case["dir"], "cpu", "float32")
    ref = hf_case["model"]
    ours = dict(model.named_parameters())
    ours.update(dict(model.named_buffers()))
    theirs = dict(ref.named_parameters())
    theirs.update(dict(ref.named_buffers()))
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), [k for k in theirs if not torch.equal(ours[k], theirs[k])][:5]
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert info["ignored_file_tensors"] == 6


def test_hf_names_prompt_length_mismatch_and_bad_files(hf_case, tmp_path):
    coll = json.loads(json.dumps(hf_case["coll"]))
    coll["image"][1]["prompt_tokens"] += 1
    bad = _write(tmp_path, "bad.json", coll)
    proc = subprocess.run([sys.executable, SCRIPT, "hf", "--model-dir", hf_case["dir"], "--collected", bad,
                           "--out", str(tmp_path / "o.json"), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "image prompt 1" in proc.stderr and "engine counted" in proc.stderr
    partial = json.load(open(tmp_path / "o.json"))  # the other prompts are scored and written
    assert "error" in partial["image"][1] and "hf_logprobs" not in partial["image"][1]
    assert all("hf_logprobs" in r for i, r in enumerate(partial["image"]) if i != 1)
    assert len(partial["errors"]) == 1 and len(partial["text"]) == 3
    rc = sp.main(["report", "--a", bad, "--b", bad, "--hf-a", str(tmp_path / "o.json"), "--out", str(tmp_path / "r"),
                  "--name", "partial"])
    assert rc == 0 and "Not scored by transformers: image prompt 1" in (tmp_path / "r" / "partial.md").read_text()
    proc = subprocess.run([sys.executable, SCRIPT, "hf", "--model-dir", hf_case["dir"], "--collected", bad, bad,
                           "--out", str(tmp_path / "o.json"), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and "2 --collected files but 1 --out" in proc.stderr
    empty = tmp_path / "noweights"
    mmd.write_model_dir("tiny", str(empty))
    proc = subprocess.run([sys.executable, SCRIPT, "hf", "--model-dir", str(empty), "--collected",
                           hf_case["collected"], "--out", str(tmp_path / "o.json"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "model.safetensors.index.json" in proc.stderr


_RESOLVE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import serve_parity as sp
    import sglang.srt.utils.common as common
    from sglang.srt import runtime_context as rc
    from sglang.srt.arg_groups.model_override_base import resolved_view
    from sglang.srt.server_args import prepare_server_args

    common.get_device_memory_capacity = lambda *a, **k: 143771
    target, draft = json.loads(sys.argv[1])
    out = {}
    for name, d in (("plain", None), ("mtp", draft)):
        cmd = sp.server_command(sys.executable, target, 31000, d, ["--device", "cuda", "--skip-tokenizer-init"])
        assert cmd[1:3] == ["-m", "sglang.launch_server"]
        with rc.override_platform(is_sm90=True):
            sa = prepare_server_args(cmd[3:])
            sa.resolve_once()
        v = resolved_view(sa)
        out[name] = {k: str(getattr(v, k)) for k in ("speculative_algorithm", "disable_radix_cache", "sampling_backend",
                     "mm_attention_backend", "load_format", "cuda_graph_max_bs_decode", "context_length", "random_seed")}
        rc.reset_context()
    print("RESULT " + json.dumps(out))
    """
)


def test_parity_server_flags_resolve_in_sglang(tmp_path):
    """The flags ``serve`` passes are valid sglang 0.5.23 server arguments, with and without the MTP draft."""
    target = mmd.write_model_dir("e2b", str(tmp_path / "e2b"))
    draft = mmd.write_model_dir("e2b-assistant", str(tmp_path / "e2b-assistant"))
    proc = subprocess.run([sys.executable, "-c", _RESOLVE, json.dumps([target, draft]), BENCH],
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    for name in ("plain", "mtp"):
        r = got[name]
        assert r["disable_radix_cache"] == "True" and r["sampling_backend"] == "pytorch"
        assert r["mm_attention_backend"] == "triton_attn" and r["load_format"].lower().endswith("safetensors")
        assert r["cuda_graph_max_bs_decode"] == "8" and r["context_length"] == "4096" and r["random_seed"] == "0"
    assert got["plain"]["speculative_algorithm"] == "None"
    assert got["mtp"]["speculative_algorithm"] == "FROZEN_KV_MTP"


def test_hf_text_prompts_use_the_engines_prompt_ids(hf_case, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_case["dir"])
    coll = json.loads(json.dumps(hf_case["coll"]))
    coll["image"] = []
    same, other = coll["text"][0], coll["text"][1]
    same["prompt_token_ids"] = tok(same["text"])["input_ids"]
    other["prompt_token_ids"] = tok(other["text"])["input_ids"][1:]  # an engine that added no <bos>
    other["prompt_tokens"] -= 1
    path = _write(tmp_path, "c.json", coll)
    res = sp.run_hf(hf_case["dir"], [path], [str(tmp_path / "h.json")], "cpu", "float32")[0]
    t0, t1, t2 = res["text"]
    assert t0["prompt_ids_from"] == "engine" and t0["tokenizer_agrees"] is True
    assert max(abs(x - y) for x, y in zip(same["logprobs"], t0["hf_logprobs"])) < 1e-4
    assert t1["prompt_ids_from"] == "engine" and t1["tokenizer_agrees"] is False and "hf_logprobs" in t1
    assert t2["prompt_ids_from"] == "tokenizer" and t2["tokenizer_agrees"] is None
