"""Gemma-4 KV rows the target pool holds: no FROZEN_KV draft rows, no KV-shared buffers.

Runs sglang's own layer resolution, KVCacheConfigurator and SWAKVPool on CPU,
and a tiny sglang Gemma-4 text model to read the layer id each attention uses.
"""

import contextlib
import json
import os
import types

import pytest

GIB = 1 << 30
H100_MIB = 81559
ROPE = {
    "full_attention": {
        "partial_rotary_factor": 0.25,
        "rope_theta": 1e6,
        "rope_type": "proportional",
    },
    "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
}


def _layer_types(n, sliding_per_full):
    period = sliding_per_full + 1
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n)]


E2B = dict(
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
    layer_types=_layer_types(35, 4),
)
MOE_26B = dict(
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
    layer_types=_layer_types(30, 5),
)
ASSISTANT_26B = dict(
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
    max_position_embeddings=262144,
    layer_types=["sliding_attention"] * 3 + ["full_attention"],
)
# A tiny text model with the E2B structure: 10 layers, full every 5th, last 4 KV-shared.
TINY = dict(
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
    layer_types=_layer_types(10, 4),
)


def _write(root, name, text, arch="Gemma4ForConditionalGeneration"):
    text = dict(
        {"vocab_size": 262144},
        **text,
        model_type="gemma4_text",
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters=ROPE,
    )
    if arch == "Gemma4AssistantForCausalLM":
        cfg = {
            "architectures": [arch],
            "model_type": "gemma4_assistant",
            "backbone_hidden_size": 2816,
            "num_centroids": 2048,
            "centroid_intermediate_top_k": 32,
            "use_ordered_embeddings": False,
            "text_config": text,
        }
    else:
        cfg = {
            "architectures": [arch],
            "model_type": "gemma4",
            "text_config": text,
            "vision_config": None,
            "audio_config": None,
        }
    cfg.update(tie_word_embeddings=True, torch_dtype="bfloat16")
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gemma4_layout"))
    return {
        "e2b": _write(root, "e2b", E2B),
        "26b": _write(root, "26b", MOE_26B),
        "26b_assistant": _write(
            root, "26b-assistant", ASSISTANT_26B, arch="Gemma4AssistantForCausalLM"
        ),
        "tiny": _write(root, "tiny", TINY, arch="Gemma4ForCausalLM"),
    }


@pytest.fixture(autouse=True)
def isolated():
    saved = dict(os.environ)
    yield
    from sglang.srt import runtime_context as rc

    rc.reset_context()
    os.environ.clear()
    os.environ.update(saved)


@contextlib.contextmanager
def _card(mib):
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


def _resolve(model_path, *extra):
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
        "--swa-full-tokens-ratio",
        "0.8",
        *extra,
    ]
    with _card(H100_MIB), rc.override_platform(is_sm90=True):
        server_args = prepare_server_args(args)
        server_args.resolve_once()
    rc.publish(server_args, role="test")
    return server_args


def _mtp(assistant):
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


def _configurator(server_args, *, device="cuda", is_draft_worker=False):
    import torch

    from sglang.srt.arg_groups.model_override_base import model_config_of, resolved_view
    from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator
    from sglang.srt.model_executor.model_runner_components.layer_setup import resolve_layer_indices
    from sglang.srt.model_executor.model_runner_components.spec_aux_hidden_state import (
        resolve_spec_aux_hidden_state_config,
    )
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    view = resolved_view(server_args)
    mc = model_config_of(server_args)
    algo = SpeculativeAlgorithm.from_string(view.speculative_algorithm)
    return KVCacheConfigurator(
        device=device,
        gpu_id=0,
        attn_dp_size=1,
        pp_size=1,
        pp_group=None,
        model=None,
        model_config=mc,
        server_args=server_args,
        kv_cache_dtype=torch.bfloat16,
        kv_cache_dtype_str="auto",
        model_dtype=torch.bfloat16,
        page_size=1,
        sliding_window_size=mc.hf_text_config.sliding_window - 1,
        spec_algorithm=algo,
        is_draft_worker=is_draft_worker,
        post_capture_kv_active=False,
        spec_aux_config=resolve_spec_aux_hidden_state_config(
            server_args=server_args,
            model_config=mc,
            spec_algorithm=algo,
            is_draft_worker=is_draft_worker,
        ),
        is_hybrid_swa=True,
        is_hybrid_swa_compress=mc.is_hybrid_swa_compress,
        use_mla_backend=False,
        layer_info=resolve_layer_indices(
            model=None, model_config=mc, is_draft_worker=is_draft_worker
        ),
        forward_stream=None,
        req_to_token_pool=None,
        token_to_kv_pool_allocator=None,
        memory_pool_config=None,
    )


@contextlib.contextmanager
def _upstream_draft_rows():
    """0.5.23's rule: every EAGLE-family target reserves draft rows."""
    from sglang.srt.mem_cache import gemma4_kv_layout

    saved = gemma4_kv_layout.target_reserves_draft_kv_rows
    gemma4_kv_layout.target_reserves_draft_kv_rows = lambda spec_algorithm: True
    try:
        yield
    finally:
        gemma4_kv_layout.target_reserves_draft_kv_rows = saved


# ---------------------------------------------------------------- draft rows


def test_frozen_kv_mtp_reserves_no_draft_rows(geo):
    from sglang.srt.model_executor.pool_configurator import create_memory_pool_configurator

    server_args = _resolve(geo["26b"], *_mtp(geo["26b_assistant"]))
    kvc = _configurator(server_args)
    assert kvc.spec_algorithm.is_frozen_kv_mtp()
    assert kvc.spec_aux_config.eagle_draft_num_layers == 4  # the assistant's layers
    conf = create_memory_pool_configurator(kvc)
    assert conf._draft_full_layers_num == 0
    config = kvc.config_from_budget(40 * GIB)
    # 5 full layers x 4096 B + 0.8 x 25 SWA layers x 8192 B = 184320 B per full token.
    assert config.full_max_total_num_tokens == (40 * GIB) // 184320 == 233016
    # The same code with 0.5.23's rule: 4 phantom rows of 4096 B per token.
    with _upstream_draft_rows():
        kvc_up = _configurator(server_args)
        assert create_memory_pool_configurator(kvc_up)._draft_full_layers_num == 4
        up = kvc_up.config_from_budget(40 * GIB)
    assert up.full_max_total_num_tokens == (40 * GIB) // (184320 + 4 * 4096) == 213995


def test_without_mtp_pool_is_unchanged(geo):
    server_args = _resolve(geo["26b"])
    ours = _configurator(server_args).config_from_budget(40 * GIB)
    with _upstream_draft_rows():
        up = _configurator(server_args).config_from_budget(40 * GIB)
    assert ours.full_max_total_num_tokens == up.full_max_total_num_tokens == 233016
    assert ours.swa_max_total_num_tokens == up.swa_max_total_num_tokens == int(233016 * 0.8)


def test_only_frozen_kv_drafts_skip_draft_rows():
    from sglang.srt.mem_cache.gemma4_kv_layout import target_reserves_draft_kv_rows
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    assert not target_reserves_draft_kv_rows(SpeculativeAlgorithm.FROZEN_KV_MTP)
    for algo in (
        SpeculativeAlgorithm.EAGLE,
        SpeculativeAlgorithm.EAGLE3,
        SpeculativeAlgorithm.STANDALONE,
    ):
        assert target_reserves_draft_kv_rows(algo)


# ---------------------------------------------------------- KV-shared layers


def test_e2b_pool_skips_kv_shared_layers(geo):
    from sglang.srt.model_executor.pool_configurator import create_memory_pool_configurator

    server_args = _resolve(geo["e2b"])
    kvc = _configurator(server_args)
    # 35 layers, full at 4, 9, ..., 34; layers 15..34 are KV-shared.
    assert kvc.layer_info.full_attention_layer_ids == [4, 9, 14]
    assert kvc.layer_info.swa_attention_layer_ids == [i for i in range(15) if i not in (4, 9, 14)]
    conf = create_memory_pool_configurator(kvc)
    # full layer: 1 head x (512 + 512) x 2 B; sliding layer: 1 x (256 + 256) x 2 B.
    assert conf._full_cell_bytes() == 3 * 2048 and conf._swa_cell_bytes() == 12 * 1024
    config = kvc.config_from_budget(4 * GIB)
    assert config.full_max_total_num_tokens == int((4 * GIB) // (6144 + 0.8 * 12288))
    # A draft worker's layer lists are left alone.
    assert _configurator(server_args, is_draft_worker=True).layer_info.full_attention_layer_ids == [
        4,
        9,
        14,
        19,
        24,
        29,
        34,
    ]


def test_owners_match_public_e2b_mapping(geo):
    from sglang.srt.arg_groups.model_override_base import model_config_of
    from sglang.srt.mem_cache.gemma4_kv_layout import kv_shared_layer_owners

    server_args = _resolve(geo["e2b"])
    owners = kv_shared_layer_owners(model_config_of(server_args).hf_text_config)
    assert sorted(owners) == list(range(15, 35))
    # E2B: first shared layer 15 reads 13 (last sliding), full layers read 14.
    assert owners[15] == 13 and owners[19] == 14 and owners[34] == 14
    assert set(owners.values()) == {13, 14}


def test_non_gemma_models_and_bad_sharing_configs():
    from sglang.srt.mem_cache.gemma4_kv_layout import (
        kv_shared_layer_owners,
        owning_attention_layer_ids,
    )

    other = types.SimpleNamespace(
        hf_config=types.SimpleNamespace(architectures=["Gemma3ForCausalLM"]),
        hf_text_config=types.SimpleNamespace(num_kv_shared_layers=2),
    )
    assert owning_attention_layer_ids(other, [0, 1], [2]) == ([0, 1], [2])
    assert owning_attention_layer_ids(other, None, None) == (None, None)
    with pytest.raises(ValueError, match="leaves no layer"):
        kv_shared_layer_owners(
            types.SimpleNamespace(
                num_kv_shared_layers=2,
                num_hidden_layers=2,
                layer_types=["sliding_attention", "full_attention"],
            )
        )
    with pytest.raises(ValueError, match="no layer of that kind"):
        kv_shared_layer_owners(
            types.SimpleNamespace(
                num_kv_shared_layers=1,
                num_hidden_layers=3,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            )
        )


def test_tiny_model_attention_reads_only_pooled_layers(geo):
    """Every attention of a real sglang Gemma-4 model reads a layer the pool holds;
    KV-shared layers read their owner's buffer."""
    import torch

    import sglang.srt.layers.rotary_embedding.base as rope_base
    from sglang.srt import runtime_context as rc
    from sglang.srt.arg_groups.model_override_base import model_config_of
    from sglang.srt.mem_cache.gemma4_kv_layout import kv_shared_layer_owners
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    server_args = _resolve(geo["tiny"])
    mc = model_config_of(server_args)
    kvc = _configurator(server_args, device="cpu")
    pool = kvc._build_hybrid_swa_kv_pool(
        full_max_total_num_tokens=64, swa_max_total_num_tokens=32, mha_pool_class=MHATokenToKVPool
    )
    owners = kv_shared_layer_owners(mc.hf_text_config)
    assert sorted(owners) == [6, 7, 8, 9] and owners == {6: 5, 7: 5, 8: 5, 9: 4}
    assert set(pool.layers_mapping) == set(range(6))
    assert pool.full_layer_nums + pool.swa_layer_nums == 6

    saved_is_cpu = rope_base._is_cpu
    rope_base._is_cpu = True  # else the rotary embedding imports vllm
    override = rc._CONTEXT.override_server_args(device="cpu")
    override.install()
    group = types.SimpleNamespace(
        is_first_rank=True, is_last_rank=True, world_size=1, rank_in_group=0
    )
    parallel = rc.get_parallel()
    parallel.override_permanently(
        pp_group=group, tp_group=group, attn_tp_group=group, tp_rank=0, attn_tp_rank=0, pp_rank=0
    )
    try:
        from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM

        model = Gemma4ForCausalLM(mc.hf_text_config)
    finally:
        override.restore()
        parallel.clear_stamp()
        rope_base._is_cpu = saved_is_cpu
    for layer_id, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        read_id = attn.attn.layer_id
        assert read_id in pool.layers_mapping, (layer_id, read_id)
        if layer_id in owners:
            assert attn.is_kv_shared_layer and read_id == owners[layer_id]
        else:
            assert not attn.is_kv_shared_layer and read_id == layer_id
        is_swa = pool.layers_mapping[read_id][1]
        assert is_swa == (mc.hf_text_config.layer_types[layer_id] == "sliding_attention")
        assert isinstance(pool.get_key_buffer(read_id), torch.Tensor)
