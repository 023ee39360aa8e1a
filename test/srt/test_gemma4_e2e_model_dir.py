"""Weights-free Gemma-4 model directories (benchmark/gemma4/make_model_dir.py), CPU only.

* the tiny directory loads with transformers' AutoConfig / AutoTokenizer / AutoProcessor, and the processor
  expands each image into boi + N image tokens + eoi with N derived here from the vision geometry;
* every real variant directory is consistent: committed configs equal the generator's, tokenizer ids cover
  exactly vocab_size, the special ids match config.json;
* SGLang's ServerArgs resolve for every variant directory (and the MTP assistant pairing), in a subprocess;
* bad input fails with a clear error;
* ``weights`` (seeded random checkpoints): shard layout and index, transformers' init and loading, same seed
  same bytes / other seed other weights, logit spread and varied greedy tokens, the residual-norm gain that
  stops large widths from copying the input token, and sglang's real loader (DefaultModelLoader, safetensors)
  filling every parameter of sglang's tiny target and assistant on CPU (poisoned first), plus every tensor of
  every real geometry passing sglang's weight loaders on the meta device.
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
        mmd.config_for("tiny2-assistant")
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


# ------------------------------------------------------------------ random-weight checkpoints (``weights``)


def _shards(path):
    with open(os.path.join(path, mmd.INDEX_FILE)) as f:
        index = json.load(f)
    return index, sorted(set(index["weight_map"].values()))


def _file_tensors(path):
    from safetensors import safe_open

    _, shards = _shards(path)
    out = {}
    for shard in shards:
        with safe_open(os.path.join(path, shard), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    target = str(root / "tiny")
    info = mmd.write_weights("tiny", target, seed=3, shard_bytes=400_000)
    assistant = str(root / "tiny-assistant")
    mmd.write_weights("tiny-assistant", assistant, seed=4)
    return {"target": target, "assistant": assistant, "info": info, "root": root}


def test_weights_checkpoint_layout(tiny_weights):
    path = tiny_weights["target"]
    index, shards = _shards(path)
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    tensors = _file_tensors(path)
    sizes = {s: os.path.getsize(os.path.join(path, s)) for s in shards}
    assert set(index["weight_map"]) == set(tensors)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == nbytes == tiny_weights["info"]["total_size"]
    # Each shard: tensors of at most the cap (a tensor larger than the cap alone), in the index's file.
    for s in shards:
        names = [k for k, v in index["weight_map"].items() if v == s]
        data = sum(tensors[k].numel() * tensors[k].element_size() for k in names)
        assert data <= 400_000 or len(names) == 1, (s, data)
        assert sizes[s] > data
    assert {t.dtype for t in tensors.values()} <= {__import__("torch").bfloat16, __import__("torch").int64}
    assert "lm_head.weight" not in tensors  # tied to model.language_model.embed_tokens.weight
    with open(os.path.join(path, "README.md")) as f:
        readme = f.read()
    assert "RANDOM WEIGHTS" in readme and "not the real Gemma-4 model" in readme
    assert "torch.manual_seed(3)" in readme and "without `--load-format dummy`".lower() in readme.lower()
    with open(os.path.join(path, mmd.INFO_FILE)) as f:
        info = json.load(f)
    assert info["seed"] == 3 and info["model_class"] == "Gemma4ForConditionalGeneration"
    assert info["kv_shared_layer_tensors"] == sorted(
        f"model.language_model.layers.{i}.self_attn.{n}.weight" for i in (4, 5) for n in ("k_norm", "k_proj", "v_proj")
    )


def test_weights_follow_transformers_init(tiny_weights):
    """Linears / embeddings normal(0, initializer_range), norms 1, padding row 0, clip buffers +-inf, the
    assistant's token_ordering a permutation; transformers loads the directory with nothing missing."""
    import torch
    from transformers import Gemma4AssistantForCausalLM, Gemma4ForConditionalGeneration

    t = _file_tensors(tiny_weights["target"])
    emb = t["model.language_model.embed_tokens.weight"].float()
    assert torch.all(emb[0] == 0)  # padding_idx row
    assert abs(emb[1:].std().item() - 0.02) < 0.002 and abs(emb.mean().item()) < 0.002
    q = t["model.language_model.layers.0.self_attn.q_proj.weight"].float()
    assert abs(q.std().item() - 0.02) < 0.003
    assert torch.all(t["model.language_model.layers.0.input_layernorm.weight"] == 1)
    assert torch.all(t["model.language_model.layers.0.layer_scalar"] == 1)
    assert t["model.vision_tower.encoder.layers.0.self_attn.q_proj.input_min"].item() == float("-inf")
    m, info = Gemma4ForConditionalGeneration.from_pretrained(tiny_weights["target"], output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in t.items() if k in sd)
    assert sorted(k for k in t if k not in sd) == json.load(open(os.path.join(tiny_weights["target"], mmd.INFO_FILE)))["kv_shared_layer_tensors"]

    a = _file_tensors(tiny_weights["assistant"])
    order = a["masked_embedding.token_ordering"]
    assert order.dtype == torch.int64 and torch.equal(order.sort().values, torch.arange(1024))
    assert not torch.equal(order, torch.arange(1024))
    am, ainfo = Gemma4AssistantForCausalLM.from_pretrained(tiny_weights["assistant"], output_loading_info=True)
    assert not ainfo["missing_keys"], ainfo
    assert torch.equal(am.masked_embedding.token_ordering, order)
    assert am.lm_head.weight.data_ptr() == am.model.embed_tokens.weight.data_ptr()  # tied, stored once


def test_weights_same_seed_same_bytes_other_seed_other_weights(tiny_weights, tmp_path):
    import torch

    again = mmd.write_weights("tiny", str(tmp_path / "again"), seed=3, shard_bytes=400_000, probe=False)
    other = mmd.write_weights("tiny", str(tmp_path / "other"), seed=5, shard_bytes=400_000, probe=False)
    _, shards = _shards(tiny_weights["target"])
    for s in shards:
        with open(os.path.join(tiny_weights["target"], s), "rb") as f1, open(tmp_path / "again" / s, "rb") as f2:
            assert f1.read() == f2.read(), s
    assert again["total_size"] == other["total_size"]
    a, b = _file_tensors(tiny_weights["target"]), _file_tensors(str(tmp_path / "other"))
    assert set(a) == set(b)
    differ = [k for k in a if a[k].is_floating_point() and a[k].numel() > 1 and a[k].float().std() > 0 and not torch.equal(a[k], b[k])]
    random_like = [k for k in a if a[k].is_floating_point() and a[k].numel() > 1 and a[k].float().std() > 0]
    assert random_like and differ == random_like


def test_weights_logit_spread_and_greedy_tokens_vary(tiny_weights):
    """Random weights must give a usable greedy decode: logits spread out and greedy tokens not one id."""
    import torch
    from transformers import AutoProcessor, Gemma4ForConditionalGeneration

    probe = tiny_weights["info"]["probe"]
    assert probe["logit_std_mean"] > 0.05 and probe["distinct_argmax"] >= 16
    assert probe["argmax_is_input_fraction"] < 0.5
    m = Gemma4ForConditionalGeneration.from_pretrained(tiny_weights["target"], dtype=torch.float32).eval()
    tok = AutoProcessor.from_pretrained(tiny_weights["target"]).tokenizer
    ids = tok("the of and to in is that it for was on are as with his", return_tensors="pt")["input_ids"]
    out = m.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    assert len(set(out)) >= 8, out


def test_residual_norm_gain():
    gains = {v: mmd.residual_norm_gain(mmd.config_for(v)["text_config"]) for v in mmd.VARIANTS}
    assert gains["31b"] > gains["26b-a4b"] > 2.5 and 1.0 < gains["e2b"] < 1.5
    assert mmd.residual_norm_gain(mmd.config_for("tiny")["text_config"]) == 1.0
    # The predicted self-logit z-score at the chosen gain is the target.
    for v, g in gains.items():
        t = mmd.config_for(v)["text_config"]
        s, h = t["initializer_range"], t["hidden_size"]
        n = len(t["layer_types"]) * (3 if t["hidden_size_per_layer_input"] else 2)
        z = s * h / (s * s * h + n * g * g) ** 0.5
        assert abs(z - mmd.SELF_LOGIT_Z) < 1e-6 or g == 1.0, (v, z)


def test_residual_norm_gain_stops_input_copying_at_26b_width():
    """At 26B-A4B's width and depth transformers' init makes every argmax the current input token; the gain
    breaks that (measured on transformers' own model with a small vocab, few heads and experts)."""
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    t = mmd.config_for("26b-a4b")["text_config"]
    cfg = Gemma4TextConfig(
        vocab_size=4096, hidden_size=t["hidden_size"], intermediate_size=128, num_hidden_layers=len(t["layer_types"]),
        layer_types=t["layer_types"], num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
        sliding_window=64, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
        hidden_size_per_layer_input=0, final_logit_softcapping=30.0, max_position_embeddings=1024,
    )
    ids = torch.randint(10, 4096, (1, 48), generator=torch.Generator().manual_seed(0))

    def copy_fraction(gain):
        torch.manual_seed(0)
        m = Gemma4ForCausalLM(cfg).eval()
        with torch.no_grad():
            for layer in m.model.layers:
                for norm in mmd.RESIDUAL_NORMS:
                    if hasattr(layer, norm):
                        getattr(layer, norm).weight.fill_(gain)
            return float((m(ids).logits[0].argmax(-1) == ids[0]).float().mean())

    assert copy_fraction(1.0) > 0.9
    assert copy_fraction(mmd.residual_norm_gain(t)) < 0.3


def test_weights_gain_lands_in_residual_norms_only(tmp_path):
    mmd.write_weights("tiny", str(tmp_path / "g"), seed=0, gain=1.75, probe=False)
    t = _file_tensors(str(tmp_path / "g"))
    for i in range(6):
        pre = f"model.language_model.layers.{i}."
        for norm in mmd.RESIDUAL_NORMS:
            assert t[pre + norm + ".weight"].float().eq(1.75).all(), (i, norm)
        for norm in ("input_layernorm", "pre_feedforward_layernorm"):
            assert t[pre + norm + ".weight"].float().eq(1.0).all(), (i, norm)
    assert t["model.language_model.norm.weight"].float().eq(1.0).all()
    assert t["model.vision_tower.encoder.layers.0.post_attention_layernorm.weight"].float().eq(1.0).all()
    with open(tmp_path / "g" / "README.md") as f:
        assert "1.7500 instead of 1" in f.read()


def test_weights_bad_input(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to write"):
        mmd.write_weights("tiny", str(tmp_path / "busy"), seed=0)
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]
    with pytest.raises(ValueError, match="unknown Gemma-4 variant"):
        mmd.write_weights("e3b", str(tmp_path / "x"), seed=0)
    with pytest.raises(ValueError, match="unknown dtype"):
        mmd.write_weights("tiny", str(tmp_path / "y"), seed=0, dtype="int4")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    for args, msg in (
        (["weights", "tiny-assistent", str(tmp_path / "z"), "--seed", "0"], "unknown Gemma-4 variant"),
        (["weights", "tiny", str(tmp_path / "busy"), "--seed", "0"], "refusing to write"),
        (["weights", "tiny", str(tmp_path / "z"), "--seed", "0", "--device", "tpu"], "unknown device"),
    ):
        proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
        assert proc.returncode == 2 and msg in proc.stderr, (args, proc.stderr[-500:])
    proc = subprocess.run([sys.executable, SCRIPT, "weights", "tiny", str(tmp_path / "z")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--seed" in proc.stderr


def test_weights_cli_prints_bytes_and_seconds(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "weights", "tiny-assistant", str(tmp_path / "a"), "--seed", "1"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.load(open(tmp_path / "a" / mmd.INFO_FILE))
    assert f"{info['total_size']} bytes" in proc.stdout and " s (build+init" in proc.stdout
    assert info["model_class"] == "Gemma4AssistantForCausalLM" and "probe" not in info


_SGLANG_LOAD = textwrap.dedent(
    """
    import json, sys, types
    import torch
    sys.path.insert(0, sys.argv[2])
    import make_model_dir as mmd
    import sglang.srt.layers.rotary_embedding.base as rope_base
    import sglang.srt.model_loader.loader as loader_mod
    from sglang.srt import runtime_context as rc
    from sglang.srt.arg_groups.model_override_base import model_config_of
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model_loader
    from sglang.srt.server_args import prepare_server_args
    from safetensors import safe_open

    job = json.loads(sys.argv[1])
    POISON = 12345.0

    def resolve(target, draft):
        args = ["--model-path", target, "--device", "cuda", "--skip-tokenizer-init", "--load-format", "safetensors",
                "--speculative-algorithm", "NEXTN", "--speculative-draft-model-path", draft,
                "--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"]
        import sglang.srt.utils.common as common
        common.get_device_memory_capacity = lambda *a, **k: 143771
        with rc.override_platform(is_sm90=True):
            sa = prepare_server_args(args)
            sa.resolve_once()
        rc.reset_context()
        rc.publish(sa, role="test")
        return model_config_of(sa), ModelConfig.from_server_args(sa, model_path=draft, is_draft_model=True)

    def cpu_context():
        rope_base._is_cpu = True  # else the rotary embedding imports vllm
        rc._CONTEXT.override_server_args(device="cpu").install()
        g = types.SimpleNamespace(is_first_rank=True, is_last_rank=True, world_size=1, rank_in_group=0)
        rc.get_parallel().override_permanently(
            pp_group=g, tp_group=g, attn_tp_group=g, moe_ep_group=g, moe_tp_group=g, tp_rank=0, attn_tp_rank=0,
            pp_rank=0, moe_ep_rank=0, moe_tp_rank=0, moe_dp_rank=0, attn_dp_rank=0, attn_cp_rank=0)

    def persistent(model):
        nonp = {f"{m}.{b}" if m else b for m, mod in model.named_modules() for b in mod._non_persistent_buffers_set}
        out = dict(model.named_parameters())
        out.update({n: t for n, t in model.named_buffers() if n not in nonp})
        return out

    def file_tensors(path):
        index = json.load(open(path + "/model.safetensors.index.json"))
        out = {}
        for shard in sorted(set(index["weight_map"].values())):
            with safe_open(path + "/" + shard, framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
        return out

    out = {}
    # 1) tiny target + tiny assistant through sglang's DefaultModelLoader on CPU, every tensor poisoned first.
    mc, dmc = resolve(job["tiny"], job["tiny_assistant"])
    cpu_context()
    original = loader_mod._initialize_model
    initial = {}

    def poisoned(*a, **k):
        model = original(*a, **k)
        with torch.no_grad():
            for n, t in persistent(model).items():
                initial[n] = float(t.float().max()) if t.numel() <= 16 else None  # constructor value of small tensors
                t.fill_(POISON if t.is_floating_point() else -7)
        return model

    loader_mod._initialize_model = poisoned
    for key, cfg, path in (("target", mc, job["tiny"]), ("assistant", dmc, job["tiny_assistant"])):
        initial.clear()
        loader = get_model_loader(LoadConfig(load_format="safetensors"), cfg)
        model = loader.load_model(model_config=cfg, device_config=DeviceConfig("cpu"))
        state = persistent(model)
        left = {n: initial[n] for n, t in state.items() if (t == (POISON if t.is_floating_point() else -7)).any()}
        f = file_tensors(path)
        def diff(a, b):
            return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        p = dict(model.named_parameters())
        b = dict(model.named_buffers())
        if key == "target":
            L, V = "model.language_model.layers.", "model.vision_tower.encoder.layers.0."
            checks = {
                "embed_tokens": diff(p["language_model.embed_tokens.weight"], f["model.language_model.embed_tokens.weight"]),
                "norm": diff(p["language_model.layers.1.post_attention_layernorm.weight"], f[L + "1.post_attention_layernorm.weight"]),
                "layer_scalar": diff(b["language_model.layers.2.layer_scalar"], f[L + "2.layer_scalar"]),
                "qkv_layer0": diff(p["language_model.layers.0.self_attn.qkv_proj.weight"], torch.cat(
                    [f[L + "0.self_attn.q_proj.weight"], f[L + "0.self_attn.k_proj.weight"], f[L + "0.self_attn.v_proj.weight"]])),
                "qkv_shared_layer4": diff(p["language_model.layers.4.self_attn.qkv_proj.weight"], torch.cat(
                    [f[L + "4.self_attn.q_proj.weight"], f[L + "4.self_attn.k_proj.weight"], f[L + "4.self_attn.v_proj.weight"]])),
                "vision_down_proj": diff(p["vision_tower.encoder.layers.0.mlp.down_proj.linear.weight"], f[V + "mlp.down_proj.linear.weight"]),
                "vision_qkv": diff(p["vision_tower.encoder.layers.0.self_attn.qkv.qkv_proj.weight"], torch.cat(
                    [f[V + "self_attn." + n + "_proj.linear.weight"] for n in "qkv"])),
                "embed_vision": diff(p["embed_vision.embedding_projection.weight"], f["model.embed_vision.embedding_projection.weight"]),
                "ple_embed": diff(p["language_model.embed_tokens_per_layer.weight"], f["model.language_model.embed_tokens_per_layer.weight"]),
            }
        else:
            order = f["masked_embedding.token_ordering"]
            checks = {
                "token_ordering": diff(b["token_ordering"], order),
                "embed_in_centroid_order": diff(p["model.embed_tokens.weight"], f["model.embed_tokens.weight"][order]),
                "pre_projection": diff(p["pre_projection.weight"], f["pre_projection.weight"]),
                "centroids": diff(p["centroids.weight"], f["masked_embedding.centroids.weight"]),
                "qkv_layer3": diff(p["model.layers.3.self_attn.qkv_proj.weight"], torch.cat(
                    [f["model.layers.3.self_attn." + n + "_proj.weight"] for n in "qkv"])),
            }
        out[key] = {"class": type(model).__name__, "left_poisoned": left, "checks": checks, "tensors": len(state)}
    loader_mod._initialize_model = original

    # 2) real geometries on the meta device: every file tensor through sglang's load_weights (shape checks).
    for variant, target, draft in job["real"]:
        mc, dmc = resolve(target, draft)
        cpu_context()
        for key, cfg, path in ((variant, mc, target), (variant + "-assistant", dmc, draft)):
            _, tensors, info = mmd.build_random_model(path, 0, device="meta")
            with torch.device("meta"):
                model = original(cfg, LoadConfig(load_format="safetensors"))
            feed = ((k, torch.zeros(t.shape, dtype=t.dtype) if t.numel() == 1 else t) for k, t in tensors.items())
            loaded = model.load_weights(feed)
            out[key] = {"class": type(model).__name__, "tensors": len(tensors),
                        "unloaded_params": sorted(set(dict(model.named_parameters())) - set(loaded)),
                        "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
                        "gain": info["residual_norm_gain"]}
    print("RESULT " + json.dumps(out))
    """
)


def test_sglang_real_loader_fills_every_parameter(tiny_weights, real_dirs):
    """sglang's DefaultModelLoader (safetensors) loads the checkpoint into sglang's own model classes: every
    parameter and persistent buffer is overwritten from the file (all poisoned before load_weights), fused
    tensors equal the file's pieces; at every real geometry each file tensor passes sglang's loaders."""
    real = [[v, real_dirs[v], real_dirs[v + "-assistant"]] for v in mmd.VARIANTS]
    job = {"tiny": tiny_weights["target"], "tiny_assistant": tiny_weights["assistant"], "real": real}
    proc = subprocess.run(
        [sys.executable, "-c", _SGLANG_LOAD, json.dumps(job), os.path.dirname(SCRIPT)],
        capture_output=True, text=True, timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    got = json.loads(lines[-1][len("RESULT "):])
    tgt, asst = got["target"], got["assistant"]
    assert tgt["class"] == "Gemma4ForConditionalGeneration" and asst["class"] == "Gemma4AssistantForCausalLM"
    # Only the vision layers' layer_scalar (a sglang buffer transformers' vision tower does not have) keeps
    # sglang's own value, which is 1 (no scaling, as in transformers).
    assert set(tgt["left_poisoned"]) == {"vision_tower.encoder.layers.0.layer_scalar",
                                         "vision_tower.encoder.layers.1.layer_scalar"}, tgt["left_poisoned"]
    assert set(tgt["left_poisoned"].values()) == {1.0}
    assert asst["left_poisoned"] == {}, asst["left_poisoned"]
    for side in (tgt, asst):
        assert side["checks"] and all(v == 0.0 for v in side["checks"].values()), side["checks"]
    for v in mmd.VARIANTS:
        for key in (v, v + "-assistant"):
            assert got[key]["unloaded_params"] == [], (key, got[key]["unloaded_params"][:5])
    assert got["26b-a4b"]["class"] == "Gemma4ForConditionalGeneration"
    assert got["26b-a4b-assistant"]["class"] == "Gemma4AssistantForCausalLM"
    # Checkpoint sizes at bf16 (about 2 bytes per parameter of the published models).
    assert 9e9 < got["e2b"]["bytes"] < 11e9 and 50e9 < got["26b-a4b"]["bytes"] < 53e9
    assert 58e9 < got["31b"]["bytes"] < 66e9


def test_weights_probe_failure_keeps_the_checkpoint(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(mmd, "probe_logits", broken)
    info = mmd.write_weights("tiny", str(tmp_path / "p"), seed=0)
    assert info["probe_error"] == "RuntimeError: no kernel" and "probe" not in info
    assert _file_tensors(str(tmp_path / "p"))  # shards written before the probe
    assert json.load(open(tmp_path / "p" / mmd.INFO_FILE))["probe_error"] == "RuntimeError: no kernel"
