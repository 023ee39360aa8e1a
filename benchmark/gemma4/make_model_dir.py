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
    python benchmark/gemma4/make_model_dir.py weights 26b-a4b OUT_DIR --seed 0 --device cuda

then ``python -m sglang.launch_server --model-path OUT_DIR --load-format dummy`` (``dir``), or without
``--load-format dummy`` for a ``weights`` directory.
Only the standard library is needed for ``configs``; ``dir``/``all`` need the
``tokenizers`` package (a dependency of transformers).

``weights`` also writes a seeded random-weight checkpoint (``model-*.safetensors`` shards of at most 5 GB,
``model.safetensors.index.json``) of transformers' model class for the config (Gemma4ForConditionalGeneration
for targets, Gemma4AssistantForCausalLM for assistants, ``tiny-assistant`` pairs with ``tiny``), initialised
by transformers' own init under ``torch.manual_seed(seed)``; see build_random_model for the three departures
from that init and residual_norm_gain for why. On ``--device cuda`` the model is built on the GPU in the
target dtype (no float32 copy, no host copy of the whole model) and the shards are streamed to disk by
several threads. ``random_weights.json`` records seed, versions, timings and a one-forward logit probe.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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


def tiny_assistant_config() -> Dict[str, Any]:
    """An MTP assistant for ``tiny``: 4 KV-shared layers [sliding x3, full] with the tiny target's KV geometry
    (head_dim 32 sliding / 64 full, one kv head, window 16), ordered (centroid) embeddings as on E2B/E4B."""
    text = _text(
        hidden_size=32, intermediate_size=64, num_hidden_layers_=4, period_=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
        sliding_window=16, max_position_embeddings=4096, vocab_size=TINY_VOCAB,
    )
    text.update(
        num_kv_shared_layers=4, final_logit_softcapping=None, vocab_size_per_layer_input=0,
        hidden_size_per_layer_input=0,
    )
    cfg = assistant_config("e2b")
    cfg.update(
        _mm_token_ids(TINY_IDS), text_config=dict(sorted(text.items())),
        backbone_hidden_size=tiny_config()["text_config"]["hidden_size"],
        num_centroids=32, centroid_intermediate_top_k=4, use_ordered_embeddings=True,
    )
    return cfg


VARIANTS = ["e2b", "e4b", "26b-a4b", "31b"]


def config_for(name: str) -> Dict[str, Any]:
    """``name`` is a variant, ``<variant>-assistant``, ``tiny`` or ``tiny-assistant``."""
    if name == "tiny":
        return tiny_config()
    if name == "tiny-assistant":
        return tiny_assistant_config()
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
    ids = TINY_IDS if name in ("tiny", "tiny-assistant") else REAL_IDS
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


# --------------------------------------------------------------------------
# Random-weight checkpoints (``weights``): the model directory plus a sharded
# safetensors checkpoint of transformers' model class for the config, so the
# server loads it through sglang's real weight loader (``--load-format dummy``
# never calls load_weights and fills tiny uniform values: every greedy token
# is then the same and MTP accepts everything).
# --------------------------------------------------------------------------
SHARD_BYTES = 5 * 10**9
INDEX_FILE = "model.safetensors.index.json"
INFO_FILE = "random_weights.json"
# Output norms of the three residual branches of a Gemma-4 text layer (attention, MLP / MoE, PLE).
RESIDUAL_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm", "post_per_layer_input_norm")
# Target z-score of a token's own logit when it is the current input (see residual_norm_gain).
SELF_LOGIT_Z = 2.5
_DTYPES = ("bfloat16", "float16", "float32")


def residual_norm_gain(text: Dict[str, Any], z: float = SELF_LOGIT_Z) -> float:
    """Weight for the residual-branch output norms so that random weights do not just copy the input token.

    With tied embeddings E (std s) the residual stream keeps sqrt(H) * E[x] of the current token x, and every
    residual branch adds a vector of RMS g (the output norm's weight; transformers' init gives g = 1). After
    the final norm the logit of x itself is about s*H / sqrt(s^2*H + n*g^2) standard deviations above the
    others (n = branches over all layers), while the best of the other 262144 tokens sits about 5 standard
    deviations up. With g = 1 that z-score is about 2.9 for E2B but 6.8 for 26B-A4B and 9.1 for 31B (measured
    on transformers' model at those widths and depths): every greedy token would be the last prompt token.
    Returns the smallest g >= 1 that brings the z-score down to ``z``.
    """
    s = float(text.get("initializer_range") or 0.02)
    h = float(text["hidden_size"])
    n = len(text["layer_types"]) * (3 if text.get("hidden_size_per_layer_input") else 2)
    need = (s * h / z) ** 2 - s * s * h
    return max(1.0, math.sqrt(max(need, 0.0) / n))


def _torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(_DTYPES)}")
    return getattr(torch, name)


def _check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda", "meta") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")


def build_random_model(model_dir: str, seed: int, *, device: str = "cpu", dtype: str = "bfloat16",
                       gain: Optional[float] = None):
    """transformers' model for ``model_dir`` built on ``device`` in ``dtype`` and initialised by its own
    ``post_init`` (``_init_weights``) under ``torch.manual_seed(seed)`` (which seeds CUDA too).

    Returns ``(model, tensors, info)``: ``tensors`` is the checkpoint, name -> tensor, in the hub
    checkpoints' names (``model.language_model.*``, ``model.vision_tower.*``, ... for targets; ``model.*``,
    ``pre_projection``, ``masked_embedding.*`` for assistants), tied copies left out. Three departures from
    transformers' init, each recorded in ``info``:

    * targets: the residual-branch output norms get ``gain`` (default ``residual_norm_gain``) instead of 1;
    * KV-shared layers get ``k_proj`` (and ``v_proj`` unless K = V) and ``k_norm`` like the hub checkpoints,
      which transformers drops on load and sglang loads into its fused qkv (and never reads);
    * the assistant's ``masked_embedding.token_ordering`` is a seeded permutation of the vocab (transformers'
      init is all zeros, which maps every centroid to token 0).
    """
    import torch
    import transformers

    _check_device(device)
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    assistant = cfg.model_type == "gemma4_assistant"
    cls = transformers.Gemma4AssistantForCausalLM if assistant else transformers.Gemma4ForConditionalGeneration
    text_cfg = cfg.get_text_config()
    if gain is None:
        gain = 1.0 if assistant else residual_norm_gain(text_cfg.to_dict())
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls._from_config(cfg, dtype=_torch_dtype(dtype))
    model.eval()
    text_model = model.model if assistant else model.model.language_model
    prefix = "model." if assistant else "model.language_model."
    std = float(text_cfg.initializer_range or 0.02)
    extra: Dict[str, Any] = {}
    with torch.no_grad():
        if not assistant:
            for layer in text_model.layers:
                for norm in RESIDUAL_NORMS:
                    if hasattr(layer, norm):
                        getattr(layer, norm).weight.fill_(gain)
        for i, layer in enumerate(text_model.layers):
            attn = layer.self_attn
            if not attn.is_kv_shared_layer:
                continue
            geo = text_cfg.per_layer_config[i]
            rows, hidden = geo.num_key_value_heads * attn.head_dim, text_cfg.hidden_size
            pre = f"{prefix}layers.{i}.self_attn."
            like = attn.q_proj.weight
            extra[pre + "k_proj.weight"] = torch.empty(rows, hidden, dtype=like.dtype, device=like.device).normal_(0.0, std)
            if not attn.use_alternative_attention:
                extra[pre + "v_proj.weight"] = torch.empty(rows, hidden, dtype=like.dtype, device=like.device).normal_(0.0, std)
            extra[pre + "k_norm.weight"] = torch.ones(attn.head_dim, dtype=like.dtype, device=like.device)
        emb = getattr(model, "masked_embedding", None)
        if emb is not None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            emb.token_ordering.copy_(torch.randperm(emb.vocab_size, generator=gen).to(emb.token_ordering.device))
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    tensors = {k: v for k, v in model.state_dict().items() if k not in tied}
    clash = set(tensors) & set(extra)
    if clash:
        raise RuntimeError(f"KV-shared layer tensors already in the model: {sorted(clash)[:4]}")
    tensors.update(extra)
    info = {
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "model_class": cls.__name__,
        "init": "transformers post_init / _init_weights under torch.manual_seed(seed): linears and embeddings "
                f"normal(0, {std}), norms 1, buffers per Gemma-4's _init_weights",
        "residual_norm_gain": None if assistant else gain,
        "kv_shared_layer_tensors": sorted(extra),
        "token_ordering": "seeded permutation" if emb is not None else None,
        "tied_left_out": sorted(tied),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    return model, tensors, info


def _st_dtype(t) -> str:
    import torch

    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    if t.dtype not in names:
        raise ValueError(f"no safetensors dtype for {t.dtype}")
    return names[t.dtype]


def plan_shards(tensors: Dict[str, Any], shard_bytes: int = SHARD_BYTES) -> List[List[str]]:
    """Consecutive groups of tensor names of at most ``shard_bytes`` each (a larger tensor gets its own)."""
    shards: List[List[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nb = t.numel() * t.element_size()
        if shards[-1] and size + nb > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nb
    return [s for s in shards if s]


def _write_shard(path: str, names: List[str], tensors: Dict[str, Any]) -> int:
    """One safetensors file: 8-byte little-endian header length, JSON header, raw little-endian data."""
    import struct

    import torch

    header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        t = tensors[name]
        nb = t.numel() * t.element_size()
        header[name] = {"dtype": _st_dtype(t), "shape": list(t.shape), "data_offsets": [offset, offset + nb]}
        offset += nb
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            t = tensors[name].detach()
            cpu = t.to("cpu").contiguous().reshape(-1)
            if cpu.numel():
                f.write(cpu.view(torch.uint8).numpy().data)
    os.replace(tmp, path)
    return offset


def write_checkpoint(out_dir: str, tensors: Dict[str, Any], *, shard_bytes: int = SHARD_BYTES,
                     workers: int = 4) -> Dict[str, Any]:
    """Shards ``model-0000i-of-0000n.safetensors`` and ``model.safetensors.index.json`` into ``out_dir``."""
    from concurrent.futures import ThreadPoolExecutor

    for fname in os.listdir(out_dir):  # stale shards of an earlier run
        if (fname.startswith("model-") and fname.endswith(".safetensors")) or fname == "model.safetensors":
            os.remove(os.path.join(out_dir, fname))
    shards = plan_shards(tensors, shard_bytes)
    n = len(shards)
    files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, n))) as pool:
        sizes = list(pool.map(lambda a: _write_shard(os.path.join(out_dir, a[0]), a[1], tensors), zip(files, shards)))
    weight_map = {name: fname for fname, names in zip(files, shards) for name in names}
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        f.write(_dump(index))
    return {"total_size": sum(sizes), "shards": n, "tensors": len(tensors), "max_shard_bytes": max(sizes)}


def probe_logits(model, vocab_limit: int, seed: int, n: int = 32) -> Dict[str, Any]:
    """One text forward of ``n`` seeded ordinary tokens: logit spread and whether argmax just copies the input."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    dev = next(model.parameters()).device
    ids = torch.randint(200, vocab_limit, (1, n), generator=gen).to(dev)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    std = logits.std(-1)
    z_self = ((logits.gather(1, ids[0][:, None]).squeeze(1) - logits.mean(-1)) / std)
    top2 = logits.topk(2, dim=-1).values
    arg = logits.argmax(-1)
    return {
        "tokens": n,
        "logit_std_mean": round(float(std.mean()), 4),
        "logit_range_mean": round(float((logits.max(-1).values - logits.min(-1).values).mean()), 4),
        "top1_top2_gap_mean": round(float((top2[:, 0] - top2[:, 1]).mean()), 4),
        "top1_top2_gap_min": round(float((top2[:, 0] - top2[:, 1]).min()), 5),
        "self_logit_z_mean": round(float(z_self.mean()), 3),
        "argmax_is_input_fraction": round(float((arg == ids[0]).float().mean()), 3),
        "distinct_argmax": int(arg.unique().numel()),
    }


def _weights_readme(name: str, info: Dict[str, Any], stats: Dict[str, Any]) -> str:
    geometry = HUB_IDS.get(name.replace("-assistant", ""), "tiny test model")
    gain = info.get("residual_norm_gain")
    lines = [
        f"RANDOM WEIGHTS - this is not the real Gemma-4 model. Directory `{name}` written by",
        "benchmark/gemma4/make_model_dir.py (`weights`).",
        "",
        f"Geometry: {geometry}{' (MTP assistant)' if name.endswith('-assistant') else ''}; see"
        " benchmark/gemma4/configs/SOURCES.md.",
        f"Weights: transformers {info['transformers']} `{info['model_class']}` initialised by its own init"
        f" (post_init / _init_weights) under torch.manual_seed({info['seed']}) on {info['device']}, saved in"
        f" {info['dtype']}: {stats['tensors']} tensors, {stats['total_size']} bytes in {stats['shards']} shard(s).",
        "Same seed, device and versions give byte-identical files.",
    ]
    if gain is not None and gain != 1.0:
        lines.append(f"Departure: residual-branch output norms ({', '.join(RESIDUAL_NORMS)}) set to {gain:.4f}"
                     " instead of 1, so that the tied embeddings do not make every greedy token the last input"
                     " token (see residual_norm_gain).")
    if info["kv_shared_layer_tensors"]:
        lines.append("KV-shared layers carry k_proj / v_proj / k_norm as the hub checkpoints do (random, never"
                     " read by either engine).")
    if info.get("token_ordering"):
        lines.append("masked_embedding.token_ordering is a seeded permutation (transformers' init is zeros).")
    lines += [
        "Start SGLang WITHOUT `--load-format dummy` so that it loads these weights through its weight loader.",
        "The tokenizer is a local word-level stand-in with the Gemma-4 special tokens at their real ids.",
        "",
    ]
    return "\n".join(lines)


def write_weights(name: str, out_dir: str, *, seed: int, device: str = "cpu", dtype: str = "bfloat16",
                  force: bool = False, probe: bool = True, shard_bytes: int = SHARD_BYTES,
                  gain: Optional[float] = None) -> Dict[str, Any]:
    """``write_model_dir`` plus a seeded random-weight checkpoint (see build_random_model)."""
    import time

    import torch

    t0 = time.perf_counter()
    config_for(name)  # bad name: error before anything is written
    _torch_dtype(dtype)
    _check_device(device)
    write_model_dir(name, out_dir, force=force)
    t1 = time.perf_counter()
    model, tensors, info = build_random_model(out_dir, seed, device=device, dtype=dtype, gain=gain)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    stats = write_checkpoint(out_dir, tensors, shard_bytes=shard_bytes, workers=8 if device.startswith("cuda") else 4)
    t3 = time.perf_counter()
    if probe and info["model_class"] == "Gemma4ForConditionalGeneration":
        cfg = config_for(name)
        limit = min(int(cfg["text_config"]["vocab_size"]), int(cfg["boi_token_id"]))
        try:  # after the write: a failing probe costs only the probe
            info["probe"] = probe_logits(model, limit, seed)
        except Exception as e:  # noqa: BLE001 - recorded, the checkpoint is already on disk
            info["probe_error"] = f"{type(e).__name__}: {e}"
    t4 = time.perf_counter()
    info["seconds"] = {"dir": round(t1 - t0, 2), "build_init": round(t2 - t1, 2), "write": round(t3 - t2, 2),
                       "probe": round(t4 - t3, 2), "total": round(t4 - t0, 2)}
    if device.startswith("cuda"):
        info["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    info.update(stats)
    with open(os.path.join(out_dir, INFO_FILE), "w", encoding="utf-8") as f:
        f.write(_dump(info))
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(_weights_readme(name, info, stats))
    del model, tensors
    return info


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("configs", help="write benchmark/gemma4/configs/<name>/config.json")
    c.add_argument("--root", default=CONFIGS_DIR)
    d = sub.add_parser("dir", help="write one loadable model directory")
    d.add_argument("name", help="e2b | e4b | 26b-a4b | 31b | <variant>-assistant | tiny")
    d.add_argument("out_dir")
    d.add_argument("--force", action="store_true", help="write into a non-empty directory")
    w = sub.add_parser("weights", help="write one model directory with a seeded random-weight checkpoint")
    w.add_argument("name", help="e2b | e4b | 26b-a4b | 31b | <variant>-assistant | tiny | tiny-assistant")
    w.add_argument("out_dir")
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--device", default="cpu", help="cpu | cuda (build and initialise the model there)")
    w.add_argument("--dtype", default="bfloat16", choices=_DTYPES)
    w.add_argument("--force", action="store_true", help="write into a non-empty directory")
    w.add_argument("--no-probe", action="store_true", help="skip the one-forward logit-spread probe")
    w.add_argument("--residual-norm-gain", type=float, default=None,
                   help="override the residual-branch output norm weight (default: residual_norm_gain)")
    a = sub.add_parser("all", help="write every variant (and tiny) under OUT_ROOT/<name>")
    a.add_argument("out_root")
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "configs":
            for p in write_configs(ns.root):
                print(p)
        elif ns.cmd == "dir":
            print(write_model_dir(ns.name, ns.out_dir, force=ns.force))
        elif ns.cmd == "weights":
            info = write_weights(ns.name, ns.out_dir, seed=ns.seed, device=ns.device, dtype=ns.dtype,
                                 force=ns.force, probe=not ns.no_probe, gain=ns.residual_norm_gain)
            sec = info["seconds"]
            print(f"{ns.out_dir}: {info['tensors']} tensors, {info['total_size']} bytes"
                  f" ({info['total_size'] / 1e9:.2f} GB) in {info['shards']} shard(s);"
                  f" {sec['total']:.1f} s (build+init {sec['build_init']:.1f} s, write {sec['write']:.1f} s)")
            if "probe" in info:
                print("probe: " + json.dumps(info["probe"]))
            if "probe_error" in info:
                print("probe failed (checkpoint written): " + info["probe_error"])
        else:
            for name in all_names() + ["tiny"]:
                print(write_model_dir(name, os.path.join(ns.out_root, name)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
