"""Gemma-4 KV rows the target pool holds: no FROZEN_KV draft rows, no KV-shared buffers.

Runs sglang's own layer resolution, KVCacheConfigurator and SWAKVPool on CPU,
and a tiny sglang Gemma-4 text model to read the layer id each attention uses.
"""

import contextlib
import types

import pytest

import gemma4_tiny
from gemma4_kv_testlib import (
    ASSISTANT_26B_TEXT,
    E2B_TEXT,
    GIB,
    MOE_26B_TEXT,
    TINY_TEXT,
    configurator,
    mtp_args,
    resolve,
    restored_process_state,
    write_assistant,
    write_target,
)


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gemma4_layout"))
    return {
        "e2b": write_target(root, "e2b", E2B_TEXT),
        "26b": write_target(root, "26b", MOE_26B_TEXT),
        "26b_assistant": write_assistant(root, "26b-assistant", ASSISTANT_26B_TEXT, 2816),
        "tiny": write_target(root, "tiny", TINY_TEXT, arch="Gemma4ForCausalLM"),
    }


@pytest.fixture(autouse=True)
def isolated():
    with restored_process_state():
        yield


def _resolve(model_path, *extra):
    return resolve(model_path, "--swa-full-tokens-ratio", "0.8", *extra, publish=True)


def _mtp(assistant):
    return mtp_args(assistant)


def _configurator(server_args, *, device="cuda", is_draft_worker=False):
    return configurator(server_args, device=device, is_draft_worker=is_draft_worker, page_size=1)


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
    # the tiny geometry's sharing: each of the last num_kv_shared_layers layers reads the last earlier layer of
    # its own kind that is not shared
    kinds, shared = TINY_TEXT["layer_types"], TINY_TEXT["num_kv_shared_layers"]
    first_shared = len(kinds) - shared
    assert shared > 0 and {kinds[i] for i in range(first_shared, len(kinds))} == set(kinds)  # both kinds shared
    want = {i: max(j for j in range(first_shared) if kinds[j] == kinds[i]) for i in range(first_shared, len(kinds))}
    assert sorted(owners) == list(range(first_shared, len(kinds))) and owners == want
    assert set(pool.layers_mapping) == set(range(first_shared))
    assert pool.full_layer_nums + pool.swa_layer_nums == first_shared

    with gemma4_tiny.sglang_on_cpu():
        from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM

        model = Gemma4ForCausalLM(mc.hf_text_config)
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


def test_pipeline_stage_without_the_owners_is_refused(geo):
    """E2B layers 15..34 read the buffers of layers 13 and 14. A pipeline stage holding only
    15..34 must be refused, not given empty layer lists; a stage holding the owners keeps them."""
    from sglang.srt.arg_groups.model_override_base import model_config_of
    from sglang.srt.mem_cache.gemma4_kv_layout import owning_attention_layer_ids

    mc = model_config_of(_resolve(geo["e2b"]))
    full = {4, 9, 14, 19, 24, 29, 34}
    stage = range(15, 35)
    with pytest.raises(ValueError, match="pipeline stage boundary") as err:
        owning_attention_layer_ids(mc, [i for i in stage if i not in full], [i for i in stage if i in full])
    assert "[13, 14]" in str(err.value)
    first = range(0, 21)
    swa, fl = owning_attention_layer_ids(mc, [i for i in first if i not in full], [i for i in first if i in full])
    assert swa == [i for i in range(15) if i not in full] and fl == [4, 9, 14]


def test_pipeline_stages_keep_only_their_own_kv_shared_layers(geo, monkeypatch):
    """E2B on 3 pipeline stages (sglang's own split of 35 layers: 0..10, 11..22, 23..34), through the
    model runner's layer resolution. Only the KV-shared layers a stage holds decide which owners it
    needs: stage 0 holds no shared layer (and neither owner 13 / 14) and keeps its layers as they are;
    stage 1 holds the owners and drops its shared layers 15..22; stage 2 holds only shared layers, whose
    owners live on stage 1, and is refused."""
    from sglang.srt.arg_groups.model_override_base import model_config_of
    from sglang.srt.distributed.utils import get_pp_indices
    from sglang.srt.mem_cache.gemma4_kv_layout import owning_attention_layer_ids
    from sglang.srt.model_executor.model_runner_components.layer_setup import resolve_layer_indices

    monkeypatch.delenv("SGLANG_PP_LAYER_PARTITION", raising=False)
    mc = model_config_of(_resolve(geo["e2b"]))
    stages = [get_pp_indices(35, rank, 3) for rank in range(3)]
    assert stages == [(0, 11), (11, 23), (23, 35)]

    def stage(rank):
        start, end = stages[rank]
        runner_model = types.SimpleNamespace(start_layer=start, end_layer=end)
        return resolve_layer_indices(model=runner_model, model_config=mc, is_draft_worker=False)

    first = stage(0)
    assert (first.start_layer, first.end_layer) == (0, 11)
    assert first.full_attention_layer_ids == [4, 9]
    assert first.swa_attention_layer_ids == [0, 1, 2, 3, 5, 6, 7, 8, 10]
    middle = stage(1)
    assert middle.full_attention_layer_ids == [14]
    assert middle.swa_attention_layer_ids == [11, 12, 13]
    with pytest.raises(ValueError, match="pipeline stage boundary") as err:
        stage(2)
    assert "[13, 14]" in str(err.value)
    # The function itself, on a stage that ends before the owners (0..12): nothing to drop or refuse.
    full = {4, 9, 14, 19, 24, 29, 34}
    head = range(0, 13)
    assert owning_attention_layer_ids(
        mc, [i for i in head if i not in full], [i for i in head if i in full]
    ) == ([0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12], [4, 9])
