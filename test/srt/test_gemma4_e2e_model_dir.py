"""Weights-free Gemma-4 model directories (benchmark/gemma4/make_model_dir.py), CPU only.

* the tiny directory loads with transformers' AutoConfig / AutoTokenizer / AutoProcessor, and the processor
  expands each image into boi + N image tokens + eoi with N derived here from the vision geometry;
* every real variant directory is consistent: committed configs equal the generator's, tokenizer ids cover
  exactly vocab_size, the special ids match config.json;
* SGLang's ServerArgs resolve for every variant directory (and the MTP assistant pairing), in a subprocess;
* bad input fails with a clear error.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmark", "gemma4", "make_model_dir.py")
CONFIGS = os.path.join(REPO, "benchmark", "gemma4", "configs")


def _load_script():
    spec = importlib.util.spec_from_file_location("gemma4_make_model_dir", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mmd = _load_script()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return mmd.write_model_dir("tiny", str(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def real_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return {name: mmd.write_model_dir(name, str(root / name)) for name in mmd.all_names()}


def _expected_soft_tokens(height, width, vision, max_soft_tokens):
    """Soft tokens for one image: the largest aspect-preserving size whose sides are multiples of
    patch*pool and whose patch count fits max_soft_tokens*pool^2, divided by pool^2."""
    patch, pool = vision["patch_size"], vision["pooling_kernel_size"]
    budget_patches = max_soft_tokens * pool * pool
    scale = math.sqrt(budget_patches * patch * patch / (height * width))
    step = patch * pool
    h = int(height * scale // step) * step
    w = int(width * scale // step) * step
    assert h > 0 and w > 0
    return (h // patch) * (w // patch) // (pool * pool)


def test_tiny_dir_loads_with_transformers_auto_classes(tiny_dir):
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    proc = AutoProcessor.from_pretrained(tiny_dir)
    assert cfg.model_type == "gemma4"
    assert type(proc).__name__ == "Gemma4Processor"
    assert len(tok) == cfg.text_config.vocab_size
    assert tok.image_token_id == cfg.image_token_id
    assert tok.convert_tokens_to_ids(tok.boi_token) == cfg.boi_token_id
    assert tok.convert_tokens_to_ids(tok.eoi_token) == cfg.eoi_token_id
    assert tok.convert_tokens_to_ids("<|video|>") == cfg.video_token_id
    assert tok.convert_tokens_to_ids("<turn|>") == mmd.END_OF_TURN_ID
    # Word-level round trip: decoding ids and re-encoding gives the same ids (bench_serving relies on it).
    ids = [i for i in range(200, 260)]
    text = tok.decode(ids)
    assert tok.encode(text, add_special_tokens=False) == ids


@pytest.mark.parametrize("sizes", [[(480, 480)] * 2, [(480, 640), (300, 1000)]])
def test_tiny_processor_expands_images_to_geometry_token_count(tiny_dir, sizes):
    import numpy as np
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    cfg = AutoConfig.from_pretrained(tiny_dir)
    proc = AutoProcessor.from_pretrained(tiny_dir)
    with open(os.path.join(tiny_dir, "config.json")) as f:
        vision = json.load(f)["vision_config"]
    with open(os.path.join(tiny_dir, "processor_config.json")) as f:
        max_soft = json.load(f)["image_processor"]["max_soft_tokens"]
    images = [Image.fromarray(np.full((h, w, 3), 127, dtype=np.uint8)) for h, w in sizes]
    content = [{"type": "image", "image": {"url": "x"}} for _ in images]
    content.append({"type": "text", "text": "what is shown here"})
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.count("<|image|>") == len(images)
    assert prompt.endswith("<|turn>model\n")
    ids = proc(text=[prompt], images=images, return_tensors="pt")["input_ids"][0].tolist()
    expected = [_expected_soft_tokens(h, w, vision, max_soft) for h, w in sizes]
    assert ids.count(cfg.image_token_id) == sum(expected)
    assert ids.count(cfg.boi_token_id) == len(images) == ids.count(cfg.eoi_token_id)
    # Each image is one contiguous run boi, image x N, eoi.
    pos = 0
    for n in expected:
        start = ids.index(cfg.boi_token_id, pos)
        assert ids[start + 1 : start + 1 + n] == [cfg.image_token_id] * n
        assert ids[start + 1 + n] == cfg.eoi_token_id
        pos = start + n + 2


def test_committed_configs_match_generator():
    for name in mmd.all_names():
        with open(os.path.join(CONFIGS, name, "config.json")) as f:
            committed = json.load(f)
        assert committed == json.loads(json.dumps(mmd.config_for(name))), name
    assert os.path.isfile(os.path.join(CONFIGS, "SOURCES.md"))


def test_real_variant_dirs_are_consistent(real_dirs):
    from transformers import AutoConfig

    for name, path in real_dirs.items():
        cfg = AutoConfig.from_pretrained(path)
        text = cfg.text_config
        with open(os.path.join(path, "tokenizer.json")) as f:
            vocab = json.load(f)["model"]["vocab"]
        assert sorted(vocab.values()) == list(range(text.vocab_size)), name
        for key in ("image_token_id", "boi_token_id", "eoi_token_id", "video_token_id", "audio_token_id"):
            tok_text = {v: k for k, v in vocab.items()}[getattr(cfg, key)]
            assert tok_text.startswith("<") and tok_text.endswith(">"), (name, key, tok_text)
        n_full = text.layer_types.count("full_attention")
        assert text.layer_types[-1] == "full_attention", name
        if name.endswith("-assistant"):
            target = AutoConfig.from_pretrained(real_dirs[name[: -len("-assistant")]])
            assert cfg.backbone_hidden_size == target.text_config.hidden_size
            assert text.num_kv_shared_layers == text.num_hidden_layers == 4
            assert not os.path.exists(os.path.join(path, "processor_config.json"))
        else:
            assert os.path.isfile(os.path.join(path, "processor_config.json")), name
            assert n_full * (6 if name != "e2b" else 5) == text.num_hidden_layers, name
            # Full layers carry the global head dim.
            assert text.per_layer_config[text.num_hidden_layers - 1].head_dim == 512


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown Gemma-4 variant"):
        mmd.config_for("e3b")
    with pytest.raises(ValueError, match="no assistant geometry"):
        mmd.config_for("tiny-assistant")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to write"):
        mmd.write_model_dir("tiny", str(tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="outside vocab_size"):
        mmd.build_vocab(1000, mmd.TINY_IDS)
    proc = subprocess.run(
        [sys.executable, SCRIPT, "dir", "e9b", str(tmp_path / "x")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown Gemma-4 variant" in proc.stderr


_RESOLVE = textwrap.dedent(
    """
    import json, sys
    from sglang.srt import runtime_context as rc
    from sglang.srt.arg_groups.model_override_base import model_config_of, resolved_view
    from sglang.srt.server_args import prepare_server_args

    out = {}
    for name, path, draft in json.loads(sys.argv[1]):
        args = ["--model-path", path, "--load-format", "dummy", "--device", "cuda",
                "--skip-tokenizer-init", "--port", "31999"]
        if draft:
            args += ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", "3",
                     "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4",
                     "--speculative-draft-model-path", draft]
        with rc.override_platform(is_sm90=True):
            sa = prepare_server_args(args)
            sa.resolve_once()
            view = resolved_view(sa)
            mc = model_config_of(sa)
        out[name] = {"arch": mc.hf_config.architectures[0], "context": mc.context_len,
                     "multimodal": bool(mc.is_multimodal), "spec": str(view.speculative_algorithm),
                     "load_format": str(view.load_format)}
        rc.reset_context() if hasattr(rc, "reset_context") else None
    print("RESULT " + json.dumps(out))
    """
)


def test_server_args_resolve_for_every_variant(real_dirs, tiny_dir):
    jobs = [[v, real_dirs[v], None] for v in mmd.VARIANTS]
    jobs.append(["26b-a4b+mtp", real_dirs["26b-a4b"], real_dirs["26b-a4b-assistant"]])
    jobs.append(["tiny", tiny_dir, None])
    proc = subprocess.run(
        [sys.executable, "-c", _RESOLVE, json.dumps(jobs)], capture_output=True, text=True, timeout=240
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    for name, path, draft in jobs:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        r = got[name]
        assert r["arch"] == "Gemma4ForConditionalGeneration", name
        assert r["context"] == cfg["text_config"]["max_position_embeddings"], name
        assert r["multimodal"] is True, name
        assert r["load_format"].lower().endswith("dummy"), name
        assert (r["spec"] not in ("None", "")) == bool(draft), (name, r["spec"])
