"""Shared helpers of the Gemma-4 KV-pool tests: geometry configs, ServerArgs resolution, the configurator.

Resolution runs sglang's real argument resolution and model-override registry on CPU; the GPU size sglang sees
is patched in (``card``). Geometry values are the public ones (see benchmark/gemma4/configs/SOURCES.md).
"""

import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmark", "gemma4"))
import gemma4_tiny  # noqa: E402  (the tiny geometry, from make_model_dir)
import kv_budget  # noqa: E402  (benchmark/gemma4/kv_budget.py: the KV configurator the planner builds)
import make_model_dir  # noqa: E402  (benchmark/gemma4/make_model_dir.py: the published geometry, one place)

GIB = 1 << 30
H100_MIB = 81559
B200_MIB = 183359

ROPE = make_model_dir.target_config("e2b")["text_config"]["rope_parameters"]


def layer_types(n, sliding_per_full):
    return make_model_dir.layer_types(n, sliding_per_full + 1)


# The published geometry lives in benchmark/gemma4/make_model_dir.py (which also writes configs/*/config.json);
# these are views of it, restricted to the keys the KV tests write into their config.json files.
_TARGET_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "global_head_dim", "sliding_window", "attention_k_eq_v",
                "max_position_embeddings", "hidden_size_per_layer_input", "vocab_size_per_layer_input",
                "layer_types")
_OPTIONAL_KEYS = ("num_global_key_value_heads", "num_kv_shared_layers", "use_double_wide_mlp",
                  "enable_moe_block", "num_experts", "top_k_experts", "moe_intermediate_size")


def _geometry(text, keys=_TARGET_KEYS):
    """The named keys of a published text config, plus the optional ones it sets (not None/False/0)."""
    out = {k: text[k] for k in keys}
    out.update({k: text[k] for k in _OPTIONAL_KEYS if text.get(k)})
    return out


E2B_TEXT = _geometry(make_model_dir.target_config("e2b")["text_config"])
MOE_26B_TEXT = _geometry(make_model_dir.target_config("26b-a4b")["text_config"])
DENSE_31B_TEXT = _geometry(make_model_dir.target_config("31b")["text_config"])
ASSISTANT_26B_TEXT = _geometry(make_model_dir.assistant_config("26b-a4b")["text_config"],
                               keys=tuple(k for k in _TARGET_KEYS if k != "max_position_embeddings"))
# The tiny text model of make_model_dir (the E2B structure: PLE, double-wide MLP, the last layers KV-shared),
# with its own 1024-id vocab.
TINY_TEXT = dict(_geometry(gemma4_tiny.text()), vocab_size=gemma4_tiny.text()["vocab_size"])
LARGE_VISION = {k: make_model_dir.target_config("26b-a4b")["vision_config"][k]
                for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim", "patch_size",
                          "pooling_kernel_size")}


def _dump(root, name, cfg):
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def write_target(root, name, text, arch="Gemma4ForConditionalGeneration", vision=None):
    """A target model directory (config.json only); ``text`` may override the 262144 vocab."""
    text = dict(
        {"vocab_size": 262144},
        **text,
        model_type="gemma4_text",
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters=ROPE,
    )
    cfg = {
        "architectures": [arch],
        "model_type": "gemma4",
        "text_config": text,
        "vision_config": vision,
        "audio_config": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    return _dump(root, name, cfg)


def write_assistant(root, name, text, backbone):
    """An MTP assistant directory (Gemma4AssistantForCausalLM) for a target of hidden size ``backbone``."""
    text = dict(
        text,
        model_type="gemma4_text",
        vocab_size=262144,
        rms_norm_eps=1e-6,
        max_position_embeddings=262144,
        rope_parameters=ROPE,
    )
    cfg = {
        "architectures": ["Gemma4AssistantForCausalLM"],
        "model_type": "gemma4_assistant",
        "backbone_hidden_size": backbone,
        "num_centroids": 2048,
        "centroid_intermediate_top_k": 32,
        "use_ordered_embeddings": False,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "text_config": text,
    }
    return _dump(root, name, cfg)


@contextlib.contextmanager
def restored_process_state():
    """Resolution writes env vars and publish() process-global state: undo both."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        from sglang.srt import runtime_context as rc

        rc.reset_context()
        os.environ.clear()
        os.environ.update(saved)


card = kv_budget.device_capacity  # make resolution see a GPU of ``mib`` MiB (None: no GPU visible)


def resolve(model_path, *extra, mib=H100_MIB, sm100=False, publish=False):
    """Resolved ServerArgs for a model directory, as on an SM90 (or SM100) card of ``mib`` MiB."""
    from sglang.srt import runtime_context as rc
    from sglang.srt.server_args import prepare_server_args

    args = [
        "--model-path",
        model_path,
        "--device",
        "cuda",
        "--skip-tokenizer-init",
        "--load-format",
        "dummy",
        *extra,
    ]
    platform = {"is_sm100": True} if sm100 else {"is_sm90": True}
    with card(mib), rc.override_platform(**platform):
        server_args = prepare_server_args(args)
        server_args.resolve_once()
    if publish:
        rc.publish(server_args, role="test")
    return server_args


mtp_args = kv_budget.mtp_args  # FROZEN_KV MTP with the Gemma-4 assistant: 3 steps, topk 1, 4 draft tokens


def configurator(server_args, *, device="cuda", is_draft_worker=False, page_size=None):
    """sglang's KVCacheConfigurator for resolved ServerArgs, with no model (the planner's own builder)."""
    return kv_budget.kv_configurator(server_args, device=device, is_draft_worker=is_draft_worker,
                                     page_size=page_size)
