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
import kv_budget  # noqa: E402  (benchmark/gemma4/kv_budget.py: the KV configurator the planner builds)

GIB = 1 << 30
H100_MIB = 81559
B200_MIB = 183359

ROPE = {
    "full_attention": {
        "partial_rotary_factor": 0.25,
        "rope_theta": 1e6,
        "rope_type": "proportional",
    },
    "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
}


def layer_types(n, sliding_per_full):
    period = sliding_per_full + 1
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n)]


E2B_TEXT = dict(
    hidden_size=1536,
    num_hidden_layers=35,
    intermediate_size=6144,
    num_attention_heads=8,
    num_key_value_heads=1,
    head_dim=256,
    global_head_dim=512,
    sliding_window=512,
    num_kv_shared_layers=20,
    hidden_size_per_layer_input=256,
    vocab_size_per_layer_input=262144,
    use_double_wide_mlp=True,
    attention_k_eq_v=False,
    max_position_embeddings=131072,
    layer_types=layer_types(35, 4),
)
MOE_26B_TEXT = dict(
    hidden_size=2816,
    num_hidden_layers=30,
    intermediate_size=2112,
    num_attention_heads=16,
    num_key_value_heads=8,
    num_global_key_value_heads=2,
    head_dim=256,
    global_head_dim=512,
    sliding_window=1024,
    attention_k_eq_v=True,
    enable_moe_block=True,
    num_experts=128,
    top_k_experts=8,
    moe_intermediate_size=704,
    max_position_embeddings=262144,
    hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0,
    layer_types=layer_types(30, 5),
)
DENSE_31B_TEXT = dict(
    hidden_size=5376,
    num_hidden_layers=60,
    intermediate_size=21504,
    num_attention_heads=32,
    num_key_value_heads=16,
    num_global_key_value_heads=4,
    head_dim=256,
    global_head_dim=512,
    sliding_window=1024,
    attention_k_eq_v=True,
    max_position_embeddings=262144,
    hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0,
    layer_types=layer_types(60, 5),
)
ASSISTANT_26B_TEXT = dict(
    hidden_size=1024,
    num_hidden_layers=4,
    intermediate_size=8192,
    num_attention_heads=16,
    num_key_value_heads=8,
    num_global_key_value_heads=2,
    head_dim=256,
    global_head_dim=512,
    attention_k_eq_v=True,
    sliding_window=1024,
    num_kv_shared_layers=4,
    hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0,
    layer_types=["sliding_attention"] * 3 + ["full_attention"],
)
# A tiny text model with the E2B structure: 10 layers, full every 5th, last 4 KV-shared.
TINY_TEXT = dict(
    hidden_size=32,
    num_hidden_layers=10,
    intermediate_size=64,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    global_head_dim=32,
    sliding_window=8,
    num_kv_shared_layers=4,
    hidden_size_per_layer_input=8,
    vocab_size_per_layer_input=64,
    vocab_size=64,
    use_double_wide_mlp=True,
    attention_k_eq_v=False,
    max_position_embeddings=256,
    layer_types=layer_types(10, 4),
)
LARGE_VISION = {
    "model_type": "gemma4_vision",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 72,
    "patch_size": 16,
    "pooling_kernel_size": 3,
}


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


@contextlib.contextmanager
def card(mib):
    """Make resolution see a GPU of ``mib`` MiB (None: no GPU visible)."""
    import sglang.srt.arg_groups.memory_hook as memory_hook
    import sglang.srt.utils.common as common

    targets = [m for m in (common, memory_hook) if hasattr(m, "get_device_memory_capacity")]
    saved = [(m, m.get_device_memory_capacity) for m in targets]
    for m in targets:
        m.get_device_memory_capacity = lambda *a, **k: mib
    try:
        yield
    finally:
        for m, f in saved:
            m.get_device_memory_capacity = f


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


def mtp_args(assistant):
    """FROZEN_KV MTP with the Gemma-4 assistant: 3 steps, topk 1, 4 draft tokens."""
    return [
        "--speculative-algorithm",
        "NEXTN",
        "--speculative-draft-model-path",
        assistant,
        "--speculative-num-steps",
        "3",
        "--speculative-eagle-topk",
        "1",
        "--speculative-num-draft-tokens",
        "4",
    ]


def configurator(server_args, *, device="cuda", is_draft_worker=False, page_size=None):
    """sglang's KVCacheConfigurator for resolved ServerArgs, with no model (the planner's own builder)."""
    return kv_budget.kv_configurator(server_args, device=device, is_draft_worker=is_draft_worker,
                                     page_size=page_size)
