"""Weights-free Gemma-4 model directories for SGLang (``--load-format dummy``).

No checkpoint can be downloaded where this series is built and tested, so the
benchmarks need model directories that carry the *real* Gemma-4 geometry but no
weights.  This script writes, for each variant:

* ``config.json``: the published geometry of the Hugging Face checkpoint
  (text, vision, audio towers; special token ids), see GEOMETRY below and
  benchmark/gemma4/configs/SOURCES.md for where every value comes from;
* a tokenizer built locally with the ``tokenizers`` library: the Gemma-4
  control and multimodal tokens at their real ids, a small word-level vocab
  for ordinary text, ``tokenizer.json`` / ``tokenizer_config.json`` and the
  Gemma-4 chat template (``chat_template.jinja``);
* ``processor_config.json`` with the image and video processor settings of
  transformers' Gemma4Processor (patch 16, pooling 3, 280 soft tokens per
  image), and ``generation_config.json``.

The model's ``vocab_size`` stays the published 262144; the tokenizer covers
fewer ids (the ids it has are below vocab_size, the multimodal ids are the
real ones), which is all a dummy-weight server and bench_serving need.

Usage (repository root):

    python benchmark/gemma4/make_model_dir.py configs            # benchmark/gemma4/configs/*/config.json
    python benchmark/gemma4/make_model_dir.py dir e2b OUT_DIR     # one loadable model directory
    python benchmark/gemma4/make_model_dir.py dir tiny OUT_DIR    # tiny variant for CPU tests
    python benchmark/gemma4/make_model_dir.py all OUT_ROOT        # every variant under OUT_ROOT/<name>

then ``python -m sglang.launch_server --model-path OUT_DIR --load-format dummy``.
Only the standard library is needed for ``configs``; ``dir``/``all`` need the
``tokenizers`` package (a dependency of transformers).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS_DIR = os.path.join(HERE, "configs")

# --------------------------------------------------------------------------
# Special tokens of the Gemma-4 tokenizer (ids as published in the checkpoints'
# config.json / tokenizer: pad 0, eos 1, bos 2, unk 3, mask 4; the chat turn
# markers; the multimodal markers).  ``TINY`` remaps them for the tiny model.
# --------------------------------------------------------------------------
PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
BOI_ID, BOA_ID = 255_999, 256_000
IMAGE_ID, AUDIO_ID, EOI_ID, EOA_ID, VIDEO_ID = 258_880, 258_881, 258_882, 258_883, 258_884
VOCAB_SIZE = 262_144

# Vision towers.  E2B and E4B share the ~150 M-parameter tower (768 x 16);
# 26B-A4B and 31B share the ~550 M-parameter tower (1152 x 27).
_VISION_SMALL = {
    "model_type": "gemma4_vision",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 16,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "head_dim": 64,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-06,
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "position_embedding_size": 10240,
    "rope_parameters": {"rope_theta": 100.0, "rope_type": "default"},
    "use_clipped_linears": True,
    "standardize": False,
    "dtype": "bfloat16",
}
_VISION_LARGE = dict(
    _VISION_SMALL,
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=72,
    use_clipped_linears=False,
    standardize=True,
)
# Audio tower (E2B / E4B only; the large variants have none).
_AUDIO = {
    "model_type": "gemma4_audio",
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "hidden_act": "silu",
    "subsampling_conv_channels": [128, 32],
    "conv_kernel_size": 5,
    "residual_weight": 0.5,
    "attention_chunk_size": 12,
    "attention_context_left": 13,
    "attention_context_right": 0,
    "attention_logit_cap": 50.0,
    "attention_invalid_logits_value": -1.0e9,
    "use_clipped_linears": True,
    "rms_norm_eps": 1e-06,
    "gradient_clipping": 1.0e10,
    "output_proj_dims": 1536,
    "dtype": "bfloat16",
}
_ROPE = {
    "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
}


def layer_types(num_layers: int, period: int) -> List[str]:
    """Every ``period``-th layer is full attention, the others sliding."""
    return ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(num_layers)]


def _text(**kw: Any) -> Dict[str, Any]:
    base = {
        "model_type": "gemma4_text",
        "vocab_size": VOCAB_SIZE,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": None,
        "attention_k_eq_v": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-06,
        "initializer_range": 0.02,
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
        "use_cache": True,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "rope_parameters": copy.deepcopy(_ROPE),
        "hidden_size_per_layer_input": 0,
        "vocab_size_per_layer_input": VOCAB_SIZE,
        "num_kv_shared_layers": 0,
        "use_double_wide_mlp": False,
        "enable_moe_block": False,
        "num_experts": None,
        "top_k_experts": None,
        "moe_intermediate_size": None,
        "use_bidirectional_attention": None,
        "dtype": "bfloat16",
    }
    base.update(kw)
    base["layer_types"] = layer_types(base.pop("num_hidden_layers_"), base.pop("period_"))
    base["num_hidden_layers"] = len(base["layer_types"])
    return dict(sorted(base.items()))


# The published text geometry of each instruction-tuned checkpoint.
_TEXT = {
    "e2b": _text(
        hidden_size=1536, intermediate_size=6144, num_hidden_layers_=35, period_=5,
        num_attention_heads=8, num_key_value_heads=1, sliding_window=512,
        max_position_embeddings=131072, hidden_size_per_layer_input=256,
        num_kv_shared_layers=20, use_double_wide_mlp=True,
    ),
    "e4b": _text(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers_=42, period_=6,
        num_attention_heads=8, num_key_value_heads=2, sliding_window=512,
        max_position_embeddings=131072, hidden_size_per_layer_input=256,
        num_kv_shared_layers=18,
    ),
    "26b-a4b": _text(
        hidden_size=2816, intermediate_size=2112, num_hidden_layers_=30, period_=6,
        num_attention_heads=16, num_key_value_heads=8, num_global_key_value_heads=2,
        attention_k_eq_v=True, sliding_window=1024, max_position_embeddings=262144,
        enable_moe_block=True, num_experts=128, top_k_experts=8, moe_intermediate_size=704,
        use_bidirectional_attention="vision",
    ),
    "31b": _text(
        hidden_size=5376, intermediate_size=21504, num_hidden_layers_=60, period_=6,
        num_attention_heads=32, num_key_value_heads=16, num_global_key_value_heads=4,
        attention_k_eq_v=True, sliding_window=1024, max_position_embeddings=262144,
        use_bidirectional_attention="vision",
    ),
}

# MTP assistant (draft) text stacks: 4 layers [sliding x3, full], all KV-shared
# with the target, no PLE, no softcap, no MoE.
_ASSISTANT_TEXT = {
    "e2b": dict(hidden_size=256, intermediate_size=2048, num_attention_heads=4, num_key_value_heads=1,
                num_global_key_value_heads=None, attention_k_eq_v=False, sliding_window=512,
                max_position_embeddings=131072),
    "e4b": dict(hidden_size=256, intermediate_size=2048, num_attention_heads=4, num_key_value_heads=2,
                num_global_key_value_heads=None, attention_k_eq_v=False, sliding_window=512,
                max_position_embeddings=131072),
    "26b-a4b": dict(hidden_size=1024, intermediate_size=8192, num_attention_heads=16, num_key_value_heads=8,
                    num_global_key_value_heads=2, attention_k_eq_v=True, sliding_window=1024,
                    max_position_embeddings=262144),
    "31b": dict(hidden_size=1024, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=16,
                num_global_key_value_heads=4, attention_k_eq_v=True, sliding_window=1024,
                max_position_embeddings=262144),
}

HUB_IDS = {
    "e2b": "google/gemma-4-E2B-it",
    "e4b": "google/gemma-4-E4B-it",
    "26b-a4b": "google/gemma-4-26B-A4B-it",
    "31b": "google/gemma-4-31B-it",
}


def _mm_token_ids(ids: Dict[str, int]) -> Dict[str, Any]:
    return {
        "boi_token_id": ids["boi"],
        "eoi_token_id": ids["eoi"],
        "image_token_id": ids["image"],
        "video_token_id": ids["video"],
        "boa_token_id": ids["boa"],
        "eoa_token_id": ids["eoa"],
        "eoa_token_index": ids["eoa"],
        "audio_token_id": ids["audio"],
    }


REAL_IDS = {
    "pad": PAD_ID, "eos": EOS_ID, "bos": BOS_ID, "unk": UNK_ID, "mask": MASK_ID,
    "sot": START_OF_TURN_ID, "eot": END_OF_TURN_ID,
    "boi": BOI_ID, "boa": BOA_ID, "image": IMAGE_ID, "audio": AUDIO_ID,
    "eoi": EOI_ID, "eoa": EOA_ID, "video": VIDEO_ID,
}


def target_config(variant: str) -> Dict[str, Any]:
    """config.json of a target checkpoint (Gemma4ForConditionalGeneration)."""
    if variant not in _TEXT:
        raise ValueError(f"unknown Gemma-4 variant {variant!r}; known: {', '.join(sorted(_TEXT))}, tiny")
    large = variant in ("26b-a4b", "31b")
    cfg: Dict[str, Any] = {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "dtype": "bfloat16",
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "eos_token_id": [EOS_ID, END_OF_TURN_ID],
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        **_mm_token_ids(REAL_IDS),
        "text_config": copy.deepcopy(_TEXT[variant]),
        "vision_config": copy.deepcopy(_VISION_LARGE if large else _VISION_SMALL),
        "vision_soft_tokens_per_image": 280,
        "transformers_version": "5.19.0",
    }
    if not large:
        cfg["audio_config"] = copy.deepcopy(_AUDIO)
    return cfg


def assistant_config(variant: str) -> Dict[str, Any]:
    """config.json of the variant's MTP assistant (Gemma4AssistantForCausalLM)."""
    if variant not in _ASSISTANT_TEXT:
        raise ValueError(f"no assistant geometry for {variant!r}; known: {', '.join(sorted(_ASSISTANT_TEXT))}")
    text = _text(num_hidden_layers_=4, period_=4, **_ASSISTANT_TEXT[variant])
    text.update(
        num_kv_shared_layers=4,
        final_logit_softcapping=None,
        vocab_size_per_layer_input=0,
        hidden_size_per_layer_input=0,
    )
    return {
        "architectures": ["Gemma4AssistantForCausalLM"],
        "model_type": "gemma4_assistant",
        "dtype": "bfloat16",
        "backbone_hidden_size": _TEXT[variant]["hidden_size"],
        "num_centroids": 2048,
        "centroid_intermediate_top_k": 32,
        "use_ordered_embeddings": variant in ("e2b", "e4b"),
        "tie_word_embeddings": True,
        **_mm_token_ids(REAL_IDS),
        "text_config": dict(sorted(text.items())),
        "transformers_version": "5.19.0",
    }


# --------------------------------------------------------------------------
# Tiny variant for CPU tests: same structure as E2B (PLE, KV sharing, audio +
# small vision tower, double-wide MLP) with toy sizes and a 1024-id vocab; the
# special tokens are remapped into that range. Six layers (sliding, sliding, full,
# x2) with the last two KV-shared, so each shared layer has an earlier owner of its
# own kind, as sglang's Gemma4Attention requires (layer 4 reads 3, layer 5 reads 2).
# --------------------------------------------------------------------------
TINY_VOCAB = 1024
TINY_IDS = dict(REAL_IDS, boi=1000, boa=1001, image=1002, audio=1003, eoi=1004, eoa=1005, video=1006)


def tiny_config() -> Dict[str, Any]:
    cfg = target_config("e2b")
    text = _text(
        hidden_size=64, intermediate_size=128, num_hidden_layers_=6, period_=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
        sliding_window=16, max_position_embeddings=4096, hidden_size_per_layer_input=8,
        num_kv_shared_layers=2, use_double_wide_mlp=True, vocab_size=TINY_VOCAB,
        vocab_size_per_layer_input=TINY_VOCAB,
    )
    vision = dict(_VISION_SMALL, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    audio = dict(_AUDIO, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 subsampling_conv_channels=[8, 4], output_proj_dims=64)
    cfg.update(_mm_token_ids(TINY_IDS), text_config=text, vision_config=vision, audio_config=audio)
    return cfg


VARIANTS = ["e2b", "e4b", "26b-a4b", "31b"]


def config_for(name: str) -> Dict[str, Any]:
    """``name`` is a variant, ``<variant>-assistant`` or ``tiny``."""
    if name == "tiny":
        return tiny_config()
    if name.endswith("-assistant"):
        return assistant_config(name[: -len("-assistant")])
    return target_config(name)


def all_names() -> List[str]:
    return VARIANTS + [f"{v}-assistant" for v in VARIANTS]


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def write_configs(root: str = CONFIGS_DIR) -> List[str]:
    """benchmark/gemma4/configs/<name>/config.json for every real variant."""
    written = []
    for name in all_names():
        path = os.path.join(root, name, "config.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(_dump(config_for(name)))
        written.append(path)
    return written


# --------------------------------------------------------------------------
# Tokenizer: word-level, dense ids 0..vocab_size-1 so that every id the model
# can emit decodes to one whitespace-separated word and re-encodes to the same
# id (bench_serving counts tokens by re-tokenizing).  The Gemma-4 control and
# multimodal tokens sit at their real ids and are special (never split).
# --------------------------------------------------------------------------
CONTROL_TOKENS = {
    # name: (text, id) for the real vocab; the tiny vocab reuses the low ids.
    "<pad>": PAD_ID, "<eos>": EOS_ID, "<bos>": BOS_ID, "<unk>": UNK_ID, "<mask>": MASK_ID,
    "<|tool>": 46, "<tool|>": 47, "<|tool_call>": 48, "<tool_call|>": 49,
    "<|tool_response>": 50, "<tool_response|>": 51, '<|"|>': 52,
    "<|think|>": 98, "<|channel>": 100, "<channel|>": 101,
    "<|turn>": START_OF_TURN_ID, "<turn|>": END_OF_TURN_ID,
}
MM_TOKEN_TEXT = {
    "boi": "<|image>", "eoi": "<image|>", "image": "<|image|>", "video": "<|video|>",
    "boa": "<|audio>", "eoa": "<audio|>", "audio": "<|audio|>",
}
_WORDS = (
    "user model system the of and to in is that it for was on are as with his they at be this from I have or "
    "by one had not but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time could no make "
    "than first been its who now people my made over did down only way find use may water long little very "
    "after words called just where most know get through back much go good new write our me man too any day "
    "same right look think also around another came come work three word must because does part even place "
    "well such here take why help put different away again off went old number great tell men say small every "
    "found still between name should home big give air line set own under read last never us left end along "
    "while might next sound below saw something thought both few those always show large often together asked "
    "house world going want school important until form food keep children feet land side without boy once "
    "animal life enough took four head above kind began almost live page got earth need far hand high year "
    "mother light country father let night picture being study second soon story since white ever paper hard "
    "near sentence better best across during today however sure knew try told young sun thing whole hear "
    "example heard several change answer room sea against top turned learn point city play toward five himself "
    "usually money seen car morning image video audio question summary text"
).split()

CHAT_TEMPLATE = (
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "{{- '<|turn>' + role + '\\n' -}}\n"
    "{%- if message['content'] is string -%}\n"
    "{{- message['content'] -}}\n"
    "{%- else -%}\n"
    "{%- for item in message['content'] -%}\n"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}\n"
    "{%- elif item['type'] in ['image', 'image_url'] -%}{{- '\\n\\n<|image|>\\n\\n' -}}\n"
    "{%- elif item['type'] in ['video', 'video_url'] -%}{{- '\\n\\n<|video|>\\n\\n' -}}\n"
    "{%- elif item['type'] in ['audio', 'audio_url', 'input_audio'] -%}{{- '<|audio|>' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{{- '<turn|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}\n"
)


def special_tokens(ids: Dict[str, int]) -> Dict[str, int]:
    """text -> id of every special token for a vocab with multimodal ids ``ids``."""
    out = dict(CONTROL_TOKENS)
    for key, text in MM_TOKEN_TEXT.items():
        out[text] = ids[key]
    return out


def build_vocab(vocab_size: int, ids: Dict[str, int]) -> Dict[str, int]:
    """Dense word-level vocab: every id in [0, vocab_size) has one token."""
    specials = special_tokens(ids)
    bad = {t: i for t, i in specials.items() if not 0 <= i < vocab_size}
    if bad:
        raise ValueError(f"special token ids outside vocab_size {vocab_size}: {bad}")
    if len(set(specials.values())) != len(specials):
        raise ValueError("two special tokens share an id")
    by_id = {i: t for t, i in specials.items()}
    words = iter(_WORDS)
    vocab: Dict[str, int] = {}
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tok = next(words, None) or f"w{i}"
        vocab[tok] = i
    return vocab


def build_tokenizer_json(vocab_size: int, ids: Dict[str, int]) -> str:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = build_vocab(vocab_size, ids)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in special_tokens(ids)]
    )
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} ids, expected {vocab_size}")
    return tok.to_str(pretty=False)


def tokenizer_config(ids: Dict[str, int]) -> Dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "processor_class": "Gemma4Processor",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "image_token": MM_TOKEN_TEXT["image"],
        "boi_token": MM_TOKEN_TEXT["boi"],
        "eoi_token": MM_TOKEN_TEXT["eoi"],
        "audio_token": MM_TOKEN_TEXT["audio"],
        "boa_token": MM_TOKEN_TEXT["boa"],
        "eoa_token": MM_TOKEN_TEXT["eoa"],
        "extra_special_tokens": [MM_TOKEN_TEXT["video"]],
        "padding_side": "left",
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }


def processor_config(vision: Dict[str, Any]) -> Dict[str, Any]:
    """Gemma4Processor settings: image, video and audio front ends."""
    patch, pool = int(vision["patch_size"]), int(vision["pooling_kernel_size"])
    common = {
        "do_convert_rgb": True,
        "do_rescale": True,
        "do_resize": True,
        "rescale_factor": 1.0 / 255.0,
        "resample": 3,
        "image_mean": [0.0, 0.0, 0.0],
        "image_std": [1.0, 1.0, 1.0],
        "patch_size": patch,
        "pooling_kernel_size": pool,
    }
    return {
        "processor_class": "Gemma4Processor",
        "image_seq_length": 280,
        "audio_seq_length": 750,
        "audio_ms_per_token": 40,
        "image_processor": dict(
            common, image_processor_type="Gemma4ImageProcessor", do_normalize=False, max_soft_tokens=280
        ),
        "video_processor": dict(
            common, video_processor_type="Gemma4VideoProcessor", do_normalize=True, max_soft_tokens=70,
            num_frames=32, do_sample_frames=True, return_metadata=False,
        ),
        "feature_extractor": {
            "feature_extractor_type": "Gemma4AudioFeatureExtractor",
            "feature_size": 128,
            "sampling_rate": 16000,
            "frame_length": 320,
            "hop_length": 160,
            "fft_length": 512,
            "min_frequency": 0.0,
            "max_frequency": 8000.0,
            "mel_floor": 0.001,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": True,
        },
    }


def generation_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "bos_token_id": BOS_ID,
        "pad_token_id": PAD_ID,
        "eos_token_id": [EOS_ID, END_OF_TURN_ID],
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 64,
        "top_p": 0.95,
        "transformers_version": cfg.get("transformers_version", "5.19.0"),
    }


def write_model_dir(name: str, out_dir: str, *, force: bool = False) -> str:
    """Write a loadable weights-free model directory for ``name`` into ``out_dir``.

    ``name``: e2b, e4b, 26b-a4b, 31b, <variant>-assistant or tiny.
    """
    cfg = config_for(name)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        existing = os.path.join(out_dir, "config.json")
        if not os.path.isfile(existing):
            raise ValueError(f"{out_dir} exists, is not empty and holds no config.json; refusing to write there")
    os.makedirs(out_dir, exist_ok=True)
    ids = TINY_IDS if name == "tiny" else REAL_IDS
    vocab_size = int(cfg["text_config"]["vocab_size"])
    files = {
        "config.json": _dump(cfg),
        "generation_config.json": _dump(generation_config(cfg)),
        "tokenizer.json": build_tokenizer_json(vocab_size, ids),
        "tokenizer_config.json": _dump(tokenizer_config(ids)),
        "chat_template.jinja": CHAT_TEMPLATE,
        "special_tokens_map.json": _dump(
            {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
        ),
    }
    if "vision_config" in cfg:
        files["processor_config.json"] = _dump(processor_config(cfg["vision_config"]))
    files["README.md"] = (
        f"Weights-free Gemma-4 model directory `{name}` written by benchmark/gemma4/make_model_dir.py.\n"
        f"Geometry: {HUB_IDS.get(name.replace('-assistant', ''), 'tiny test model')}"
        f"{' (MTP assistant)' if name.endswith('-assistant') else ''}; see benchmark/gemma4/configs/SOURCES.md.\n"
        "No weights: start SGLang with `--load-format dummy`. The tokenizer is a local word-level stand-in\n"
        "with the Gemma-4 special tokens at their real ids; text is not the real Gemma-4 tokenization.\n"
    )
    for fname, text in files.items():
        tmp = os.path.join(out_dir, fname + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, fname))
    return out_dir


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("configs", help="write benchmark/gemma4/configs/<name>/config.json")
    c.add_argument("--root", default=CONFIGS_DIR)
    d = sub.add_parser("dir", help="write one loadable model directory")
    d.add_argument("name", help="e2b | e4b | 26b-a4b | 31b | <variant>-assistant | tiny")
    d.add_argument("out_dir")
    d.add_argument("--force", action="store_true", help="write into a non-empty directory")
    a = sub.add_parser("all", help="write every variant (and tiny) under OUT_ROOT/<name>")
    a.add_argument("out_root")
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "configs":
            for p in write_configs(ns.root):
                print(p)
        elif ns.cmd == "dir":
            print(write_model_dir(ns.name, ns.out_dir, force=ns.force))
        else:
            for name in all_names() + ["tiny"]:
                print(write_model_dir(name, os.path.join(ns.out_root, name)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
