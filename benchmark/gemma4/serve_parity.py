"""Output parity of two SGLang engines (stock 0.5.23 and the Gemma-4 series) on random-weight checkpoints.

Checkpoints come from ``make_model_dir.py weights`` (seeded transformers init, loaded through sglang's real
weight loader; ``--load-format dummy`` would make every greedy token the same). Subcommands:

``collect``  against a running server (native ``/generate``): ``--text-prompts`` seeded text prompts of varied
             length (words of the model directory's tokenizer vocab, a few hundred tokens at most), greedy,
             ``--max-new-tokens`` tokens (EOS ignored) with the chosen tokens' logprobs and the top-2 logprobs
             per step; and ``--image-prompts`` prompts of one or two seeded random images (PNG, base64 in
             ``image_data``; sizes whose processed patch grid is padded and one that is not) in the Gemma-4
             chat format, ``--image-max-new-tokens`` tokens. Requests go one at a time by default
             (``--concurrency``): each then runs alone in its batch, so both engines see the same batch shapes.
``serve``    starts a server (``--python``, the parity flags below plus ``--server-args``), waits for it,
             runs ``collect`` and stops it (whole process group), so one command covers one engine.
``hf``       transformers' Gemma4ForConditionalGeneration with the same weights: rebuilds each prompt with
             the directory's Gemma4Processor (same text, the same regenerated images), checks the prompt
             length against the engine's ``prompt_tokens``, teacher-forces the engine's output ids and records
             their logprobs. Several ``--collected``/``--out`` pairs share one model load.
``report``   markdown + JSON: per text prompt identical or the first divergence with both engines' top-2
             logprobs there (near tie or not); per image prompt max / mean / first-token |delta logprob| of
             each engine against transformers, with the image's padding. Exit 0 whatever the outcome (the
             report states it), 2 on bad input.

Parity server flags (``serve`` adds them; pass them yourself to a server that ``collect`` talks to):
``--disable-radix-cache`` (no prefix reuse: every prompt is prefilled whole on both engines),
``--sampling-backend pytorch`` (greedy = torch.argmax; flashinfer is not installed on the GPU machine),
``--mm-attention-backend triton_attn``, ``--random-seed 0``, ``--context-length 4096``,
``--cuda-graph-max-bs-decode 8`` (fast start; requests run at batch size 1) and ``--load-format safetensors``.

Run from the repository root, e.g. (GPU machine; STOCK_PY / SERIES_PY are interpreters with stock 0.5.23 and
with the series installed, M a directory of ``make_model_dir.py weights`` checkpoints):

    python benchmark/gemma4/serve_parity.py serve --python STOCK_PY --model-dir M/e2b \
        --engine stock --port 31000 --out M/e2b_stock.json
    python benchmark/gemma4/serve_parity.py serve --python SERIES_PY --model-dir M/e2b \
        --engine series --port 31000 --out M/e2b_series.json
    python benchmark/gemma4/serve_parity.py hf --model-dir M/e2b \
        --collected M/e2b_stock.json M/e2b_series.json --out M/e2b_hf_stock.json M/e2b_hf_series.json
    python benchmark/gemma4/serve_parity.py report --a M/e2b_stock.json --b M/e2b_series.json \
        --hf-a M/e2b_hf_stock.json --hf-b M/e2b_hf_series.json \
        --out benchmark/gemma4/results --name serve_parity_h200_e2b

Add ``--draft-dir M/e2b-assistant`` to both ``serve`` calls (and ``_mtp`` to the names) for the MTP runs.

``collect`` and ``report`` need only the standard library, numpy and Pillow; ``hf`` needs torch,
transformers and safetensors.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stamp  # noqa: E402  (benchmark/gemma4/stamp.py: device, date and commit of a result)

FORMAT = "gemma4-serve-parity/1"
# Image prompts: one list of (height, width) per prompt. Patches of 16 px, 3x3 pooling, at most 280 soft
# tokens = 2520 patches; the processor pads every image to 2520 patches. Valid / padding patches:
#   768x768 2304 / 216 (its resize is the identity), 672x960 2520 / 0 (not padded, identity resize),
#   40x1260 1674 / 846, 480x640 2394 / 126, 64x1200 1944 / 576, a two-image prompt (768x768 + 672x960),
#   300x1000 2430 / 90, 720x1280 2376 / 144.
IMAGE_PROMPTS: List[List[Tuple[int, int]]] = [
    [(768, 768)],
    [(672, 960)],
    [(40, 1260)],
    [(480, 640)],
    [(64, 1200)],
    [(768, 768), (672, 960)],
    [(300, 1000)],
    [(720, 1280)],
]
PARITY_SERVER_ARGS = [
    "--disable-radix-cache",
    "--sampling-backend", "pytorch",
    "--mm-attention-backend", "triton_attn",
    "--random-seed", "0",
    "--context-length", "4096",
    "--cuda-graph-max-bs-decode", "8",
    "--load-format", "safetensors",
]
MTP_SERVER_ARGS = [
    "--speculative-algorithm", "NEXTN",
    "--speculative-num-steps", "3",
    "--speculative-eagle-topk", "1",
    "--speculative-num-draft-tokens", "4",
]
TIE_EPS = 0.1  # nats: a divergence where both engines' top-2 gap is within this is reported as a near tie


class BadInput(ValueError):
    """Input that the command cannot work with (exit status 2)."""


# ----------------------------------------------------------------------------------------------- prompts


def vocab_words(model_dir: str) -> List[str]:
    """Ordinary (non-special) tokens of the model directory's tokenizer, by id."""
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise BadInput(f"{model_dir} has no tokenizer.json")
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    special = {t["content"] for t in tok.get("added_tokens", [])}
    vocab = tok.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        raise BadInput(f"{path}: no model.vocab mapping (expected the word-level tokenizer make_model_dir writes)")
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])
             if w not in special and w.isalnum()]
    if len(words) < 16:
        raise BadInput(f"{path}: only {len(words)} ordinary words in the vocab")
    return words


def text_prompts(words: Sequence[str], n: int, seed: int, max_words: int = 320) -> List[Dict[str, Any]]:
    """``n`` prompts of 4..max_words words (log-uniform lengths); every fourth one in the chat format."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = int(round(math.exp(rng.uniform(math.log(4), math.log(max_words)))))
        body = " ".join(rng.choice(words) for _ in range(length))
        chat = i % 4 == 3
        text = f"<|turn>user\n{body}<turn|>\n<|turn>model\n" if chat else body
        out.append({"index": i, "text": text, "words": length, "chat": chat})
    return out


def image_prompt_text(question: str, num_images: int) -> str:
    """One user turn holding the images then the question, as the directory's chat template writes it
    (without the leading <bos>, which the tokenizer adds)."""
    return "<|turn>user\n" + "\n\n<|image|>\n\n" * num_images + question + "<turn|>\n<|turn>model\n"


def image_array(seed: int, prompt: int, k: int, height: int, width: int):
    """Seeded RGB uint8 image: smooth random blobs plus noise (content reproducible from the arguments)."""
    import numpy as np

    rng = np.random.RandomState((seed * 1_000_003 + prompt * 101 + k) % (2**31 - 1))
    coarse = rng.randint(0, 256, size=(max(2, height // 32), max(2, width // 32), 3)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[0] - 1, height)
    xs = np.linspace(0, coarse.shape[1] - 1, width)
    img = coarse[np.round(ys).astype(int)][:, np.round(xs).astype(int)]
    img += rng.normal(0.0, 24.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def image_png(seed: int, prompt: int, k: int, height: int, width: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_array(seed, prompt, k, height, width), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_prompts(words: Sequence[str], k: int, seed: int) -> List[Dict[str, Any]]:
    if k > len(IMAGE_PROMPTS):
        raise BadInput(f"--image-prompts {k}: at most {len(IMAGE_PROMPTS)} image prompts are defined")
    rng = random.Random(seed + 7919)
    out = []
    for i, sizes in enumerate(IMAGE_PROMPTS[:k]):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(6, 16)))
        out.append({"index": i, "text": image_prompt_text(question, len(sizes)),
                    "image_sizes": [list(s) for s in sizes], "image_seed": seed})
    return out


def prompt_images(prompt: Dict[str, Any]) -> List[bytes]:
    return [image_png(prompt["image_seed"], prompt["index"], j, h, w)
            for j, (h, w) in enumerate(prompt["image_sizes"])]


# ----------------------------------------------------------------------------------------------- server I/O


def _http(url: str, payload: Optional[Dict[str, Any]] = None, timeout: float = 300.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def wait_ready(base: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> float:
    """Poll GET /health until it answers 200; returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before it was ready")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{base} not ready after {timeout:.0f} s")
        time.sleep(1.0)


SERVER_INFO_KEYS = (
    "version", "model_path", "served_model_name", "attention_backend", "mm_attention_backend",
    "sampling_backend", "speculative_algorithm", "speculative_draft_model_path", "speculative_num_steps",
    "speculative_num_draft_tokens", "disable_radix_cache", "context_length", "load_format", "dtype",
    "kv_cache_dtype", "random_seed", "cuda_graph_max_bs_decode", "disable_cuda_graph", "swa_full_tokens_ratio",
    "enable_deterministic_inference", "max_running_requests", "chunked_prefill_size",
)


def server_info(base: str) -> Dict[str, Any]:
    for path in ("/server_info", "/get_server_info"):
        try:
            info = _http(base + path, timeout=30)
        except (urllib.error.URLError, OSError, ValueError):
            continue
        if isinstance(info, dict):
            out = {k: info.get(k) for k in SERVER_INFO_KEYS if k in info}
            out["_endpoint"] = path
            return out
    return {}


def _pairs(entries: Any) -> List[Optional[List[float]]]:
    """[[logprob, id, text], ...] -> [[logprob, id], ...]"""
    return [None if e is None else [float(e[0]), int(e[1])] for e in (entries or [])]


def parse_generate(resp: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The parts of sglang's /generate answer that parity needs; malformed answers raise BadInput."""
    try:
        meta = resp["meta_info"]
        ids = [int(t) for t in resp["output_ids"]]
        chosen = _pairs(meta["output_token_logprobs"])
        tops = [[[float(e[0]), int(e[1])] for e in (step or [])] for step in meta.get("output_top_logprobs") or []]
        prompt_tokens = int(meta["prompt_tokens"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BadInput(f"{name}: unexpected /generate answer ({type(e).__name__}: {e}); keys {sorted(resp)}")
    if [c[1] for c in chosen] != ids:
        raise BadInput(f"{name}: output_token_logprobs ids {[c[1] for c in chosen][:8]} differ from output_ids {ids[:8]}")
    if tops and len(tops) != len(ids):
        raise BadInput(f"{name}: {len(tops)} top-logprob steps for {len(ids)} output tokens")
    rec = {
        "prompt_tokens": prompt_tokens,
        "output_ids": ids,
        "logprobs": [c[0] for c in chosen],
        "top2": tops,
        "finish_reason": meta.get("finish_reason"),
    }
    if resp.get("prompt_token_ids") is not None:
        rec["prompt_token_ids"] = [int(t) for t in resp["prompt_token_ids"]]
    spec = {k: v for k, v in meta.items() if k.startswith("spec_")}
    if spec:
        rec["spec"] = spec
    return rec


def _request(base: str, prompt: Dict[str, Any], max_new_tokens: int, timeout: float) -> Dict[str, Any]:
    payload: Dict[str, Any] = {
        "text": prompt["text"],
        "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True},
        "return_logprob": True,
        "top_logprobs_num": 2,
        "return_prompt_token_ids": True,
    }
    if "image_sizes" in prompt:
        payload["image_data"] = ["data:image/png;base64," + base64.b64encode(b).decode("ascii")
                                 for b in prompt_images(prompt)]
    t0 = time.monotonic()
    try:
        resp = _http(base + "/generate", payload, timeout=timeout)
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:500]
        raise RuntimeError(f"prompt {prompt['index']}: HTTP {e.code} from /generate: {detail}")
    kind = "image" if "image_sizes" in prompt else "text"
    rec = parse_generate(resp, f"{kind} prompt {prompt['index']}")
    rec["seconds"] = round(time.monotonic() - t0, 3)
    if len(rec["output_ids"]) != max_new_tokens:
        rec["short_output"] = True
    return dict(prompt, **rec)


def collect(base: str, model_dir: str, engine: str, *, text_n: int = 24, image_k: int = 6,
            max_new_tokens: int = 32, image_max_new_tokens: int = 8, seed: int = 0, concurrency: int = 1,
            timeout: float = 300.0) -> Dict[str, Any]:
    if text_n < 0 or image_k < 0 or max_new_tokens < 1 or image_max_new_tokens < 1 or concurrency < 1:
        raise BadInput("prompt counts must be >= 0, token counts and --concurrency >= 1")
    words = vocab_words(model_dir)
    texts = text_prompts(words, text_n, seed)
    images = image_prompts(words, image_k, seed)
    t0 = time.monotonic()
    info = server_info(base)
    jobs = [(p, max_new_tokens) for p in texts] + [(p, image_max_new_tokens) for p in images]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda j: _request(base, j[0], j[1], timeout), jobs))
    seconds = time.monotonic() - t0
    return {
        "format": FORMAT,
        "meta": {
            "engine": engine,
            "server": base,
            "model_dir": os.path.abspath(model_dir),
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "image_max_new_tokens": image_max_new_tokens,
            "concurrency": concurrency,
            "server_info": info,
            "device": (stamp.gpu_line() or "no nvidia-smi (CPU)"),
            "commit": stamp.commit(),
            "date": stamp.utc_now(),
            "seconds": round(seconds, 2),
        },
        "text": results[: len(texts)],
        "image": results[len(texts):],
    }


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def server_command(python: str, model_dir: str, port: int, draft: Optional[str], extra: Sequence[str]) -> List[str]:
    cmd = [python, "-m", "sglang.launch_server", "--model-path", model_dir, "--host", "127.0.0.1",
           "--port", str(port), *PARITY_SERVER_ARGS]
    if draft:
        cmd += [*MTP_SERVER_ARGS, "--speculative-draft-model-path", draft]
    return cmd + list(extra)


def serve_and_collect(ns: argparse.Namespace) -> Dict[str, Any]:
    import shlex

    extra = [a for chunk in ns.server_args for a in shlex.split(chunk)]
    cmd = server_command(ns.python, ns.model_dir, ns.port, ns.draft_dir, extra)
    log_path = ns.log or (os.path.splitext(ns.out)[0] + ".server.log")
    print("server: " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            waited = wait_ready(f"http://127.0.0.1:{ns.port}", ns.ready_timeout, proc)
            print(f"server ready after {waited:.0f} s", flush=True)
            result = collect(f"http://127.0.0.1:{ns.port}", ns.model_dir, ns.engine, text_n=ns.text_prompts,
                             image_k=ns.image_prompts, max_new_tokens=ns.max_new_tokens,
                             image_max_new_tokens=ns.image_max_new_tokens, seed=ns.seed,
                             concurrency=ns.concurrency, timeout=ns.request_timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    result["meta"].update(server_command=cmd, server_start_seconds=round(waited, 1),
                          server_log=os.path.basename(log_path),
                          wall_seconds=round(time.monotonic() - t0, 1))
    return result


# ----------------------------------------------------------------------------------------------- transformers


def _read_format(path: str, fmt: str, what: str) -> Dict[str, Any]:
    """A JSON object whose "format" is ``fmt``; BadInput naming ``what`` otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {path}: {e}")
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise BadInput(f"{path} is not {what}")
    return data


def load_collected(path: str) -> Dict[str, Any]:
    data = _read_format(path, FORMAT, f"a serve_parity collect file (format {FORMAT!r})")
    for key in ("meta", "text", "image"):
        if key not in data:
            raise BadInput(f"{path}: missing {key!r}")
    for kind in ("text", "image"):
        for i, rec in enumerate(data[kind]):
            missing = [k for k in ("index", "text", "prompt_tokens", "output_ids", "logprobs") if k not in rec]
            if missing:
                raise BadInput(f"{path}: {kind} prompt {i} lacks {missing}")
            if len(rec["logprobs"]) != len(rec["output_ids"]):
                raise BadInput(f"{path}: {kind} prompt {i}: {len(rec['logprobs'])} logprobs for "
                               f"{len(rec['output_ids'])} output ids")
    return data


def load_hf_model(model_dir: str, device: str = "cpu", dtype: str = "bfloat16",
                  experts_implementation: Optional[str] = None):
    """transformers' Gemma4ForConditionalGeneration built on ``device`` (no init, no host copy of the whole
    model) and filled from the directory's safetensors shards. Every model tensor must come from the files;
    file tensors the model has no slot for must be ones transformers itself ignores on load (the KV-shared
    layers' k/v projections)."""
    import re

    import torch
    import transformers
    from safetensors import safe_open
    from transformers.initialization import no_init_weights

    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if not os.path.isfile(index_path):
        raise BadInput(f"{model_dir} has no model.safetensors.index.json (write it with make_model_dir.py weights)")
    with open(index_path, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    if cfg.model_type != "gemma4":
        raise BadInput(f"{model_dir}: model_type {cfg.model_type!r}, expected a gemma4 target")
    kwargs = {"experts_implementation": experts_implementation} if experts_implementation else {}
    with torch.device(device), no_init_weights():
        model = transformers.Gemma4ForConditionalGeneration._from_config(cfg, dtype=getattr(torch, dtype), **kwargs)
    model.eval()
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    slots = dict(model.named_parameters())
    slots.update(model.state_dict(keep_vars=True))
    needed = {k for k in model.state_dict() if k not in tied}
    ignore = [re.compile(p) for p in (model._keys_to_ignore_on_load_unexpected or [])]
    loaded, unexpected = set(), []
    with torch.no_grad():
        for shard in sorted(set(weight_map.values())):
            with safe_open(os.path.join(model_dir, shard), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    if name not in slots:
                        unexpected.append(name)
                        continue
                    slots[name].copy_(f.get_tensor(name))
                    loaded.add(name)
    missing = sorted(needed - loaded)
    bad = [n for n in unexpected if not any(p.search(n) for p in ignore)]
    if missing or bad:
        raise BadInput(f"{model_dir}: checkpoint does not fill transformers' model: missing {missing[:6]}, "
                       f"unexpected {bad[:6]}")
    model.tie_weights()
    return model, {"ignored_file_tensors": len(unexpected), "loaded_tensors": len(loaded)}


def _processor_kwargs(processor, device: str) -> Dict[str, Any]:
    """sglang runs the fast (torchvision) image processor on the GPU: do the same on cuda."""
    name = type(getattr(processor, "image_processor", None)).__name__
    if device.startswith("cuda") and not name.endswith("Pil"):
        return {"device": device}
    return {}


def teacher_force(model, inputs: Dict[str, Any], output_ids: List[int]) -> Tuple[List[float], List[List[List[float]]]]:
    """Logprob of each engine output token given the prompt and the engine's earlier output tokens."""
    import torch

    dev = next(model.parameters()).device
    prompt = inputs["input_ids"].to(dev)
    m = len(output_ids)
    out = torch.tensor([output_ids], dtype=prompt.dtype, device=dev)
    # A generated image / video / audio token fed back is a plain text position: transformers' generate embeds
    # it as <pad> (no features to scatter), so give it <pad> here too.
    cfg = model.config
    mm = {getattr(cfg, k, None) for k in ("image_token_id", "video_token_id", "audio_token_id")} - {None}
    pad = cfg.get_text_config().pad_token_id
    fed = torch.tensor([[pad if t in mm else t for t in output_ids[:-1]]], dtype=prompt.dtype, device=dev)
    full = torch.cat([prompt, fed], dim=1)
    extra = full.shape[1] - prompt.shape[1]
    kw: Dict[str, Any] = {"input_ids": full, "attention_mask": torch.ones_like(full)}
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            t = inputs[key].to(dev)
            kw[key] = torch.cat([t, torch.zeros((1, extra), dtype=t.dtype, device=dev)], dim=1)
    for key in ("pixel_values", "image_position_ids"):
        if key in inputs:
            kw[key] = inputs[key].to(dev)
    with torch.no_grad():
        logits = model(**kw, logits_to_keep=m).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, out[0][:, None]).squeeze(1).tolist()
    top = logp.topk(2, dim=-1)
    top2 = [[[float(v), int(i)] for v, i in zip(vs, ids)] for vs, ids in zip(top.values.tolist(), top.indices.tolist())]
    return chosen, top2


def hf_score(model, processor, collected: Dict[str, Any], device: str, text_limit: Optional[int] = None,
             image_token_id: Optional[int] = None) -> Dict[str, Any]:
    """transformers' logprobs for every engine output of one collect file.

    Text prompts are fed as the engine's own prompt ids when the collect file has them (the tokenizer's
    ids otherwise; whether the two agree is recorded). Image prompts are rebuilt by the processor from the
    same text and regenerated images; a prompt whose length differs from the engine's ``prompt_tokens`` is
    recorded with an ``error`` (no logprobs) and listed in ``errors``, and the other prompts are scored.
    """
    import torch
    from PIL import Image

    cfg = model.config
    mm_ids = {getattr(cfg, k, None) for k in ("image_token_id", "video_token_id", "audio_token_id")} - {None}
    out: Dict[str, Any] = {"text": [], "image": [], "errors": []}
    texts = collected["text"] if text_limit is None else collected["text"][:text_limit]
    for rec in texts:
        tok_ids = processor.tokenizer(rec["text"])["input_ids"]
        eng = rec.get("prompt_token_ids")
        ids = eng if eng is not None else tok_ids
        info: Dict[str, Any] = {"prompt_ids_from": "engine" if eng is not None else "tokenizer",
                                "tokenizer_agrees": (tok_ids == eng) if eng is not None else None}
        if len(ids) != rec["prompt_tokens"]:
            msg = (f"text prompt {rec['index']}: {len(ids)} prompt ids ({info['prompt_ids_from']}), "
                   f"the engine counted {rec['prompt_tokens']}")
            out["errors"].append(msg)
            out["text"].append(dict(index=rec["index"], output_ids=rec["output_ids"], error=msg))
            continue
        inputs = {"input_ids": torch.tensor([ids], dtype=torch.long)}
        chosen, top2 = teacher_force(model, inputs, rec["output_ids"])
        out["text"].append(dict(index=rec["index"], output_ids=rec["output_ids"], hf_logprobs=chosen, hf_top2=top2,
                                output_mm_tokens=sum(t in mm_ids for t in rec["output_ids"][:-1]), **info))
    for rec in collected["image"]:
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in prompt_images(rec)]
        inputs = processor(text=[rec["text"]], images=images, return_tensors="pt", **_processor_kwargs(processor, device))
        ids = inputs["input_ids"][0].tolist()
        pos = inputs["image_position_ids"]
        base = dict(index=rec["index"], image_sizes=rec["image_sizes"], output_ids=rec["output_ids"],
                    valid_patches=[int((p[:, 0] >= 0).sum()) for p in pos], total_patches=int(pos.shape[1]))
        if len(ids) != rec["prompt_tokens"]:
            msg = (f"image prompt {rec['index']}: transformers' processor gives {len(ids)} prompt tokens, "
                   f"the engine counted {rec['prompt_tokens']}")
            out["errors"].append(msg)
            out["image"].append(dict(base, error=msg))
            continue
        eng = rec.get("prompt_token_ids")
        if eng is not None and len(eng) == len(ids):
            diff = [i for i, (a, b) in enumerate(zip(ids, eng)) if a != b and a != image_token_id]
            base.update(prompt_id_mismatches=len(diff), first_prompt_id_mismatch=diff[0] if diff else None)
        chosen, top2 = teacher_force(model, dict(inputs), rec["output_ids"])
        out["image"].append(dict(base, hf_logprobs=chosen, hf_top2=top2,
                                 output_mm_tokens=sum(t in mm_ids for t in rec["output_ids"][:-1])))
    return out


def run_hf(model_dir: str, collected_paths: Sequence[str], out_paths: Sequence[str], device: str,
           dtype: str = "bfloat16", text_limit: Optional[int] = None,
           experts_implementation: Optional[str] = None) -> List[Dict[str, Any]]:
    import torch
    import transformers

    if len(collected_paths) != len(out_paths):
        raise BadInput(f"{len(collected_paths)} --collected files but {len(out_paths)} --out files")
    if dtype not in ("bfloat16", "float32"):
        raise BadInput(f"--dtype {dtype!r}: use bfloat16 or float32")
    datas = [load_collected(p) for p in collected_paths]
    t0 = time.monotonic()
    model, load_info = load_hf_model(model_dir, device, dtype, experts_implementation)
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    load_s = time.monotonic() - t0
    image_token_id = model.config.image_token_id
    results = []
    for path, data, out_path in zip(collected_paths, datas, out_paths):
        t1 = time.monotonic()
        scored = hf_score(model, processor, data, device, text_limit, image_token_id)
        res = {
            "format": FORMAT + "+hf",
            "meta": {
                "collected": os.path.basename(path),
                "engine": data["meta"].get("engine"),
                "model_dir": os.path.abspath(model_dir),
                "device": device,
                "dtype": dtype,
                "attn_implementation": model.config._attn_implementation,
                "experts_implementation": getattr(model.config.get_text_config(), "_experts_implementation", None),
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "load_seconds": round(load_s, 2),
                "score_seconds": round(time.monotonic() - t1, 2),
                **load_info,
            },
            **scored,
        }
        _write_json(out_path, res)
        results.append(res)
    errors = [f"{os.path.basename(p)}: {e}" for p, r in zip(collected_paths, results) for e in r["errors"]]
    if errors:
        raise BadInput("prompts not scored (the other prompts are in the --out files): " + "; ".join(errors))
    return results


# ----------------------------------------------------------------------------------------------- report


def _top2_gap(top2: Optional[List[List[float]]]) -> Optional[float]:
    if not top2 or len(top2) < 2:
        return None
    return float(top2[0][0]) - float(top2[1][0])


def compare_text(a: Dict[str, Any], b: Dict[str, Any], tie_eps: float = TIE_EPS) -> Dict[str, Any]:
    """One text prompt of both engines: identical, or the first divergence and whether it is a near tie."""
    ia, ib = a["output_ids"], b["output_ids"]
    n = min(len(ia), len(ib))
    k = next((i for i in range(n) if ia[i] != ib[i]), None)
    if k is None and len(ia) != len(ib):
        k = n
    same = k if k is not None else n
    lp_delta = max((abs(x - y) for x, y in zip(a["logprobs"][:same], b["logprobs"][:same])), default=0.0)
    rec: Dict[str, Any] = {
        "index": a["index"], "prompt_tokens": a["prompt_tokens"], "tokens": len(ia),
        "identical": k is None, "max_abs_dlogprob_common_prefix": lp_delta,
    }
    if a["prompt_tokens"] != b["prompt_tokens"]:
        rec["prompt_tokens_b"] = b["prompt_tokens"]
    if k is None:
        return rec
    ta = a["top2"][k] if k < len(a.get("top2") or []) else None
    tb = b["top2"][k] if k < len(b.get("top2") or []) else None
    ga, gb = _top2_gap(ta), _top2_gap(tb)
    swapped = bool(ta and tb and len(ta) > 1 and len(tb) > 1 and ta[0][1] == tb[1][1] and ta[1][1] == tb[0][1])
    near = swapped and ga is not None and gb is not None and max(ga, gb) <= tie_eps
    rec.update(first_divergence=k, top2_a=ta, top2_b=tb, gap_a=ga, gap_b=gb, swapped_top2=swapped, near_tie=near)
    return rec


def _abs_deltas(engine_lp: Sequence[float], hf_lp: Sequence[float]) -> Dict[str, float]:
    d = [abs(x - y) for x, y in zip(engine_lp, hf_lp)]
    return {"max": max(d), "mean": sum(d) / len(d), "first": d[0]} if d else {"max": 0.0, "mean": 0.0, "first": 0.0}


def _hf_by_index(hf: Optional[Dict[str, Any]], kind: str, engine: Dict[str, Any], label: str) -> Dict[int, Dict[str, Any]]:
    if hf is None:
        return {}
    by = {}
    eng = {r["index"]: r for r in engine[kind]}
    for r in hf.get(kind, []):
        if "error" in r:
            continue
        e = eng.get(r["index"])
        if e is None or e["output_ids"] != r["output_ids"]:
            raise BadInput(f"{label}: {kind} prompt {r['index']} was scored for other output ids than the collect "
                           f"file holds (wrong --hf file?)")
        by[r["index"]] = r
    return by


def build_report(a: Dict[str, Any], b: Dict[str, Any], hf_a: Optional[Dict[str, Any]] = None,
                 hf_b: Optional[Dict[str, Any]] = None, tie_eps: float = TIE_EPS) -> Dict[str, Any]:
    for kind in ("text", "image"):
        if len(a[kind]) != len(b[kind]):
            raise BadInput(f"{kind} prompts: {len(a[kind])} in --a, {len(b[kind])} in --b")
        for x, y in zip(a[kind], b[kind]):
            if x["text"] != y["text"] or x.get("image_sizes") != y.get("image_sizes") \
                    or x.get("image_seed") != y.get("image_seed"):
                raise BadInput(f"{kind} prompt {x['index']} differs between --a and --b (other seed or prompt set)")
    ha_t, hb_t = _hf_by_index(hf_a, "text", a, "--hf-a"), _hf_by_index(hf_b, "text", b, "--hf-b")
    ha_i, hb_i = _hf_by_index(hf_a, "image", a, "--hf-a"), _hf_by_index(hf_b, "image", b, "--hf-b")
    text = []
    for x, y in zip(a["text"], b["text"]):
        rec = compare_text(x, y, tie_eps)
        if x["index"] in ha_t:
            rec["hf_a"] = _abs_deltas(x["logprobs"], ha_t[x["index"]]["hf_logprobs"])
        if y["index"] in hb_t:
            rec["hf_b"] = _abs_deltas(y["logprobs"], hb_t[y["index"]]["hf_logprobs"])
        for side, hf in (("a", ha_t), ("b", hb_t)):
            if hf.get(x["index"], {}).get("output_mm_tokens"):
                rec["output_mm_tokens_" + side] = hf[x["index"]]["output_mm_tokens"]
        text.append(rec)
    image = []
    for x, y in zip(a["image"], b["image"]):
        rec = compare_text(x, y, tie_eps)
        rec["image_sizes"] = x["image_sizes"]
        for side, eng, hf in (("a", x, ha_i), ("b", y, hb_i)):
            h = hf.get(eng["index"])
            if h is not None:
                rec["hf_" + side] = _abs_deltas(eng["logprobs"], h["hf_logprobs"])
                rec["valid_patches"], rec["total_patches"] = h["valid_patches"], h["total_patches"]
                if h.get("output_mm_tokens"):
                    rec["output_mm_tokens_" + side] = h["output_mm_tokens"]
        if "valid_patches" in rec:
            rec["padded"] = any(v < rec["total_patches"] for v in rec["valid_patches"])
        image.append(rec)
    hf_errors = [e for h in (hf_a, hf_b) if h for e in h.get("errors", [])]
    div = [t for t in text if not t["identical"]]
    summary: Dict[str, Any] = {
        "text_prompts": len(text),
        "text_identical": sum(t["identical"] for t in text),
        "text_divergent_near_tie": sum(bool(t.get("near_tie")) for t in div),
        "text_divergent_not_near_tie": sum(not t.get("near_tie") for t in div),
        "text_max_abs_dlogprob_common_prefix": max((t["max_abs_dlogprob_common_prefix"] for t in text), default=0.0),
        "image_prompts": len(image),
        "image_identical_outputs": sum(r["identical"] for r in image),
    }
    if hf_errors:
        summary["hf_errors"] = hf_errors
    both = [r for r in image if "hf_a" in r and "hf_b" in r and r.get("padded")]
    if both:
        summary["image_padded_b_closer_to_hf"] = sum(r["hf_b"]["max"] < r["hf_a"]["max"] for r in both)
        summary["image_padded_with_both_hf"] = len(both)
    fed_mm = sum(1 for r in image + text for k in ("output_mm_tokens_a", "output_mm_tokens_b") if r.get(k))
    if fed_mm:
        summary["outputs_feeding_back_mm_tokens"] = fed_mm
    for side in ("a", "b"):
        for pad in (True, False):
            sel = [r["hf_" + side] for r in image if "hf_" + side in r and r.get("padded") is pad]
            if sel:
                key = f"image_{'padded' if pad else 'unpadded'}_hf_{side}"
                summary[key + "_max"] = max(s["max"] for s in sel)
                summary[key + "_mean"] = sum(s["mean"] for s in sel) / len(sel)
        sel = [t["hf_" + side] for t in text if "hf_" + side in t]
        if sel:
            summary[f"text_hf_{side}_max"] = max(s["max"] for s in sel)
            summary[f"text_hf_{side}_mean"] = sum(s["mean"] for s in sel) / len(sel)
    for side, data in (("a", a), ("b", b)):
        specs = [r["spec"] for r in data["text"] + data["image"] if r.get("spec")]
        if specs:
            acc = [s.get("spec_accept_length") for s in specs if s.get("spec_accept_length") is not None]
            rate = [s.get("spec_accept_rate") for s in specs if s.get("spec_accept_rate") is not None]
            summary[f"spec_{side}"] = {
                "requests": len(specs),
                "mean_accept_length": sum(acc) / len(acc) if acc else None,
                "mean_accept_rate": sum(rate) / len(rate) if rate else None,
            }
    return {"summary": summary, "text": text, "image": image, "tie_eps": tie_eps}


def _f(v: Optional[float], nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _d(v: float) -> str:
    """A |delta logprob|: 4 decimals, or two significant digits below 1e-3."""
    return "0" if v == 0 else (f"{v:.1e}" if v < 1e-3 else f"{v:.4f}")


def _top(t: Optional[List[List[float]]]) -> str:
    if not t:
        return "-"
    return ", ".join(f"{int(i)}:{lp:.3f}" for lp, i in t)


def render_markdown(rep: Dict[str, Any], meta: Dict[str, Any]) -> str:
    s = rep["summary"]
    ea, eb = meta["engine_a"], meta["engine_b"]
    lines = [
        f"# {meta['name']}: greedy output parity, {ea} vs {eb}",
        "",
        f"Device: {meta['device']}. Date: {meta['date']} (collected {', '.join(str(d) for d in meta['collect_dates'])})."
        f" Commit: {meta['commit']}"
        + (f" (collected at {', '.join(meta['collect_commits'])})" if meta["collect_commits"]
           and meta["collect_commits"] != [meta["commit"]] else "") + ".",
        f"Model: `{meta['model']}` (random weights from make_model_dir.py weights, not the real model)."
        f" Seed {meta['seed']}; {meta['max_new_tokens']} new tokens per text prompt, {meta['image_max_new_tokens']}"
        f" per image prompt; concurrency {meta['concurrency']}.",
        f"Server ({ea}): {meta['server_a']}",
        f"Server ({eb}): {meta['server_b']}",
        "",
        "## Summary",
        "",
        f"- Text prompts: {s['text_identical']} / {s['text_prompts']} token-identical;"
        f" divergent: {s['text_divergent_near_tie']} at a near tie (top-2 swapped, both gaps <= {rep['tie_eps']} nats),"
        f" {s['text_divergent_not_near_tie']} not a near tie.",
        f"- Largest |logprob {ea} - {eb}| over the common prefixes: {s['text_max_abs_dlogprob_common_prefix']:.3g}.",
        f"- Image prompts: {s['image_identical_outputs']} / {s['image_prompts']} with identical outputs.",
    ]
    for pad in ("padded", "unpadded"):
        parts = []
        for side, eng in (("a", ea), ("b", eb)):
            k = f"image_{pad}_hf_{side}"
            if k + "_max" in s:
                parts.append(f"{eng} max {_d(s[k + '_max'])}, mean {_d(s[k + '_mean'])}")
        if parts:
            lines.append(f"- |logprob engine - transformers| on {pad} images: " + "; ".join(parts) + ".")
    if "image_padded_b_closer_to_hf" in s:
        lines.append(f"- Padded images where {eb} is closer to transformers than {ea} (max |delta|):"
                     f" {s['image_padded_b_closer_to_hf']} / {s['image_padded_with_both_hf']}.")
    for err in s.get("hf_errors", []):
        lines.append(f"- Not scored by transformers: {err}.")
    if s.get("outputs_feeding_back_mm_tokens"):
        lines.append(f"- {s['outputs_feeding_back_mm_tokens']} output(s) feed a generated image/video/audio token back;"
                     " transformers embeds it as <pad>, the engines may not: deltas after it are not comparable.")
    for side, eng in (("a", ea), ("b", eb)):
        if f"text_hf_{side}_max" in s:
            lines.append(f"- |logprob {eng} - transformers| on text prompts: max {_d(s[f'text_hf_{side}_max'])},"
                         f" mean {_d(s[f'text_hf_{side}_mean'])}.")
        if f"spec_{side}" in s:
            sp = s[f"spec_{side}"]
            lines.append(f"- {eng} speculative decoding: mean accept length {_f(sp['mean_accept_length'], 3)},"
                         f" mean accept rate {_f(sp['mean_accept_rate'], 3)} over {sp['requests']} requests.")
    lines += ["", "## Text prompts", "",
              f"| # | prompt tokens | identical | first divergence | {ea} top-2 (id:logprob) | {eb} top-2 | gaps | near tie | max abs dlogprob (prefix) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in rep["text"]:
        if t["identical"]:
            lines.append(f"| {t['index']} | {t['prompt_tokens']} | yes | - | - | - | - | - | {t['max_abs_dlogprob_common_prefix']:.3g} |")
        else:
            lines.append(f"| {t['index']} | {t['prompt_tokens']} | no | {t['first_divergence']} | {_top(t['top2_a'])} |"
                         f" {_top(t['top2_b'])} | {_f(t['gap_a'])} / {_f(t['gap_b'])} | {'yes' if t['near_tie'] else 'no'} |"
                         f" {t['max_abs_dlogprob_common_prefix']:.3g} |")
    lines += ["", "## Image prompts", "",
              "Per prompt: |logprob engine - transformers' Gemma4ForConditionalGeneration| over the engine's own"
              " output tokens (teacher-forced), max / mean / first token.", "",
              f"| # | images (h x w) | valid / total patches | padded | outputs identical | {ea} vs transformers | {eb} vs transformers |",
              "|---|---|---|---|---|---|---|"]
    for r in rep["image"]:
        sizes = " + ".join(f"{h}x{w}" for h, w in r["image_sizes"])
        patches = " + ".join(f"{v}/{r['total_patches']}" for v in r.get("valid_patches", [])) or "-"
        cells = []
        for side in ("a", "b"):
            d = r.get("hf_" + side)
            cells.append("-" if d is None else f"{_d(d['max'])} / {_d(d['mean'])} / {_d(d['first'])}")
        padded = {True: "yes", False: "no"}.get(r.get("padded"), "-")
        lines.append(f"| {r['index']} | {sizes} | {patches} | {padded} | {'yes' if r['identical'] else 'no'} | {cells[0]} | {cells[1]} |")
    lines.append("")
    return "\n".join(lines)


def run_report(ns: argparse.Namespace) -> Dict[str, Any]:
    a, b = load_collected(ns.a), load_collected(ns.b)
    hf_a = _load_hf(ns.hf_a) if ns.hf_a else None
    hf_b = _load_hf(ns.hf_b) if ns.hf_b else None
    rep = build_report(a, b, hf_a, hf_b, ns.tie_eps)
    ma, mb = a["meta"], b["meta"]
    for key in ("seed", "max_new_tokens", "image_max_new_tokens"):
        if ma.get(key) != mb.get(key):
            raise BadInput(f"--a and --b were collected with different {key}: {ma.get(key)} vs {mb.get(key)}")

    def server_line(m: Dict[str, Any]) -> str:
        info = m.get("server_info") or {}
        keys = ("version", "attention_backend", "speculative_algorithm", "disable_radix_cache", "sampling_backend")
        return ", ".join(f"{k}={info.get(k)}" for k in keys if k in info) or "no server info"

    meta = {
        "name": ns.name,
        "engine_a": ma.get("engine", "a"),
        "engine_b": mb.get("engine", "b"),
        "device": ma.get("device") or (stamp.gpu_line() or "no nvidia-smi (CPU)"),
        "date": stamp.utc_now(),
        "commit": stamp.commit(),
        "collect_commits": sorted({str(m.get("commit")) for m in (ma, mb) if m.get("commit")}),
        "collect_dates": [ma.get("date"), mb.get("date")],
        "model": os.path.basename(os.path.normpath(ma.get("model_dir", "?"))),
        "seed": ma.get("seed"),
        "max_new_tokens": ma.get("max_new_tokens"),
        "image_max_new_tokens": ma.get("image_max_new_tokens"),
        "concurrency": ma.get("concurrency"),
        "server_a": server_line(ma),
        "server_b": server_line(mb),
        "collect_a": {k: ma.get(k) for k in ("date", "seconds", "server_info", "server_command")},
        "collect_b": {k: mb.get(k) for k in ("date", "seconds", "server_info", "server_command")},
        "hf": (hf_a or hf_b or {}).get("meta"),
    }
    os.makedirs(ns.out, exist_ok=True)
    _write_json(os.path.join(ns.out, ns.name + ".json"), {"meta": meta, **rep})
    with open(os.path.join(ns.out, ns.name + ".md"), "w", encoding="utf-8") as f:
        f.write(render_markdown(rep, meta))
    return {"meta": meta, **rep}


def _load_hf(path: str) -> Dict[str, Any]:
    return _read_format(path, FORMAT + "+hf", "a serve_parity hf file")


# ----------------------------------------------------------------------------------------------- CLI


def _add_collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True)
    p.add_argument("--engine", required=True, help="label for this engine, e.g. stock or series")
    p.add_argument("--out", required=True)
    p.add_argument("--text-prompts", type=int, default=24)
    p.add_argument("--image-prompts", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--image-max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--request-timeout", type=float, default=300.0)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="collect greedy outputs from a running server")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--wait", type=float, default=600.0, help="seconds to wait for GET /health (default 600)")
    _add_collect_args(c)
    s = sub.add_parser("serve", help="start a server with the parity flags, collect, stop it")
    s.add_argument("--python", required=True, help="Python interpreter that has the engine to serve installed")
    s.add_argument("--port", type=int, default=31000)
    s.add_argument("--draft-dir", default=None, help="MTP assistant directory (adds the MTP flags)")
    s.add_argument("--server-args", action="append", default=[],
                   help="extra server arguments, one shell-quoted string (repeatable), e.g. "
                        "--server-args '--attention-backend triton' or --server-args=--enable-foo")
    s.add_argument("--log", default=None, help="server log (default: OUT without .json + .server.log)")
    s.add_argument("--ready-timeout", type=float, default=900.0)
    _add_collect_args(s)
    h = sub.add_parser("hf", help="teacher-force the engines' outputs through transformers")
    h.add_argument("--model-dir", required=True)
    h.add_argument("--collected", nargs="+", required=True)
    h.add_argument("--out", nargs="+", required=True)
    h.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    h.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    h.add_argument("--text-prompts", type=int, default=None, help="score only the first K text prompts")
    h.add_argument("--experts-implementation", default=None, choices=("eager", "grouped_mm", "batched_mm"),
                   help="transformers' MoE expert kernel (default: transformers' choice, grouped_mm)")
    r = sub.add_parser("report", help="compare two collect files (and their hf files)")
    r.add_argument("--a", required=True)
    r.add_argument("--b", required=True)
    r.add_argument("--hf-a", default=None)
    r.add_argument("--hf-b", default=None)
    r.add_argument("--out", required=True, help="directory for NAME.md and NAME.json")
    r.add_argument("--name", required=True)
    r.add_argument("--tie-eps", type=float, default=TIE_EPS)
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "collect":
            base = f"http://{ns.host}:{ns.port}"
            if ns.wait > 0:
                wait_ready(base, ns.wait)
            res = collect(base, ns.model_dir, ns.engine, text_n=ns.text_prompts, image_k=ns.image_prompts,
                          max_new_tokens=ns.max_new_tokens, image_max_new_tokens=ns.image_max_new_tokens,
                          seed=ns.seed, concurrency=ns.concurrency, timeout=ns.request_timeout)
            _write_json(ns.out, res)
            print(f"{ns.out}: {len(res['text'])} text + {len(res['image'])} image prompts in {res['meta']['seconds']} s")
        elif ns.cmd == "serve":
            res = serve_and_collect(ns)
            _write_json(ns.out, res)
            print(f"{ns.out}: {len(res['text'])} text + {len(res['image'])} image prompts in {res['meta']['seconds']} s"
                  f" (server start {res['meta']['server_start_seconds']} s)")
        elif ns.cmd == "hf":
            import torch

            device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
            results = run_hf(ns.model_dir, ns.collected, ns.out, device, ns.dtype, ns.text_prompts,
                             ns.experts_implementation)
            for res, path in zip(results, ns.out):
                m = res["meta"]
                print(f"{path}: {len(res['text'])} text + {len(res['image'])} image prompts scored"
                      f" (load {m['load_seconds']} s, score {m['score_seconds']} s)")
        else:
            rep = run_report(ns)
            s = rep["summary"]
            print(f"{os.path.join(ns.out, ns.name)}.md: text {s['text_identical']}/{s['text_prompts']} identical,"
                  f" image outputs {s['image_identical_outputs']}/{s['image_prompts']} identical")
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
