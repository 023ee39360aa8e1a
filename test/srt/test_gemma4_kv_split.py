"""Gemma-4 full/SWA KV split: the model override and the pool sizes it leads to.

Resolves real ServerArgs through sglang's model-override registry on CPU (the
card size sglang sees is patched in), then sizes the pools with sglang's own
KVCacheConfigurator. The configs are Gemma-4 geometries written to a temp dir.
"""

import math

import pytest

from gemma4_kv_testlib import (
    ASSISTANT_26B_TEXT,
    B200_MIB,
    DENSE_31B_TEXT,
    GIB,
    H100_MIB,
    LARGE_VISION,
    MOE_26B_TEXT,
    card,
    configurator,
    mtp_args,
    resolve,
    restored_process_state,
    write_assistant,
    write_target,
)

_card = card
_resolve = resolve
_mtp_args = mtp_args


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gemma4_geometry"))
    return {
        "26b": write_target(root, "26b", MOE_26B_TEXT, vision=LARGE_VISION),
        "26b_causal": write_target(root, "26b-causal", MOE_26B_TEXT, arch="Gemma4ForCausalLM"),
        "31b": write_target(root, "31b", DENSE_31B_TEXT, vision=LARGE_VISION),
        "26b_assistant": write_assistant(root, "26b-assistant", ASSISTANT_26B_TEXT, 2816),
    }


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    monkeypatch.delenv("SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS", raising=False)
    with restored_process_state():
        yield


def _ratio(server_args):
    from sglang.srt.arg_groups.model_override_base import resolved_view

    return resolved_view(server_args).swa_full_tokens_ratio


def _pools(server_args, budget_bytes, mib=H100_MIB, sm100=False):
    """(full tokens, SWA tokens, configurator, kvc) from sglang's configurator."""
    from sglang.srt import runtime_context as rc
    from sglang.srt.model_executor.pool_configurator import create_memory_pool_configurator

    rc.publish(server_args, role="test")
    kvc = configurator(server_args)
    config = kvc.config_from_budget(budget_bytes)
    return (
        config.full_max_total_num_tokens,
        config.swa_max_total_num_tokens,
        create_memory_pool_configurator(kvc),
        kvc,
    )


def _budget(server_args, assistant=None, mib=H100_MIB):
    from sglang.srt.arg_groups.model_override_base import model_config_of, resolved_view
    from sglang.srt.mem_cache import gemma4_pool_sizing as sizing
    from sglang.srt.utils.hf_transformers_utils import get_config

    draft = 0
    if assistant:
        draft = sizing.estimate_weight_bytes(get_config(assistant, trust_remote_code=False))
    mc = model_config_of(server_args)
    with _card(mib):
        return sizing.estimate_kv_budget_from_args(
            resolved_view(server_args),
            mc.hf_config,
            is_multimodal=mc.is_multimodal,
            draft_weight_bytes=draft,
        )


def _concurrency(server_args, full, swa, request_tokens):
    """(requests the full pool holds, requests the SWA pool holds) by sglang's own cap."""
    from sglang.srt.arg_groups.model_override_base import resolved_view
    from sglang.srt.model_executor.pool_configurator import compute_swa_request_cap

    view = resolved_view(server_args)
    window = 1023
    n_swa = 0
    while (
        compute_swa_request_cap(
            page_size=int(view.page_size),
            window=window,
            attn_dp_size=1,
            max_running_requests=n_swa + 1,
        )
        <= swa
    ):
        n_swa += 1
    return full // request_tokens, n_swa


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch_key", ["26b", "26b_causal"])
def test_override_resolves_through_registry_for_both_architectures(geo, arch_key):
    from sglang.srt.arg_groups import model_override_base
    from sglang.srt.arg_groups.model_override_base import model_config_of
    from sglang.srt.arg_groups.model_overrides.gemma4 import _gemma4_overrides

    arch = {"26b": "Gemma4ForConditionalGeneration", "26b_causal": "Gemma4ForCausalLM"}[arch_key]
    assert _gemma4_overrides in model_override_base._MODEL_OVERRIDE_FNS.get(arch, [])
    server_args = _resolve(geo[arch_key], "--context-length", "9000")
    assert model_config_of(server_args).hf_config.architectures == [arch]
    # Resolution recorded the ratio as declared by the registered Gemma-4 provider.
    sources = [
        src
        for src, declared in server_args._resolved_overrides
        if "swa_full_tokens_ratio" in declared
    ]
    assert sources == [_gemma4_overrides.__qualname__]
    ratio = _ratio(server_args)
    assert 0 < ratio < 0.8  # 9k-token requests need far fewer SWA than full rows


def test_user_ratio_always_wins(geo):
    server_args = _resolve(
        geo["26b"], "--context-length", "9000", "--swa-full-tokens-ratio", "0.55"
    )
    assert _ratio(server_args) == 0.55
    server_args = _resolve(
        geo["26b"],
        "--context-length",
        "2000",
        "--swa-full-tokens-ratio",
        "0.8",
        *_mtp_args(geo["26b_assistant"]),
    )
    assert _ratio(server_args) == 0.8


def test_no_declared_length_keeps_sglang_default(geo):
    from sglang.srt.arg_groups.overrides import resolution_result

    server_args = _resolve(geo["26b"])
    assert _ratio(server_args) is None
    assert resolution_result(server_args, "swa_full_tokens_ratio") == 0.8


def test_expected_length_env_wins_over_context_length(geo, monkeypatch):
    by_context = _ratio(_resolve(geo["26b"], "--context-length", "33000"))
    monkeypatch.setenv("SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS", "2000")
    by_env = _ratio(_resolve(geo["26b"], "--context-length", "33000"))
    assert by_env > 4 * by_context
    monkeypatch.setenv("SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS", "many")
    with pytest.raises(ValueError, match="SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS"):
        _resolve(geo["26b"])


@pytest.mark.parametrize(
    "key, mtp, tokens, mib",
    [
        ("31b", False, 2000, B200_MIB),
        ("26b", False, 9000, B200_MIB),
        ("26b", True, 9000, H100_MIB),
        ("26b", False, 33000, H100_MIB),
    ],
    ids=[
        "dense-31b-chat",
        "moe-26b-summarization",
        "moe-26b-mtp-summarization",
        "moe-26b-long-h100",
    ],
)
def test_chosen_split_balances_both_pools(geo, key, mtp, tokens, mib):
    """At the chosen ratio both pools run out at the same concurrency (within 2%)."""
    extra = ["--context-length", str(tokens)] + (_mtp_args(geo["26b_assistant"]) if mtp else [])
    server_args = _resolve(geo[key], *extra, mib=mib)
    budget = _budget(server_args, geo["26b_assistant"] if mtp else None, mib=mib)
    full, swa, _, _ = _pools(server_args, budget, mib=mib)
    n_full, n_swa = _concurrency(server_args, full, swa, tokens)
    assert n_full > 0 and n_swa > 0
    assert abs(n_full - n_swa) <= max(1, 0.02 * n_full), (n_full, n_swa, _ratio(server_args))
    # And neither fixed rule serves more requests on the same budget.
    for fixed in (0.8, 0.15):
        other = _resolve(geo[key], *extra, "--swa-full-tokens-ratio", str(fixed), mib=mib)
        f2, s2, _, _ = _pools(other, budget, mib=mib)
        assert min(_concurrency(other, f2, s2, tokens)) <= min(n_full, n_swa)


def test_ratio_follows_workload_and_draft_width(geo):
    chat = _ratio(_resolve(geo["26b"], "--context-length", "2000", mib=B200_MIB))
    summ = _ratio(_resolve(geo["26b"], "--context-length", "9000", mib=B200_MIB))
    # On an 80 GB card neither case reaches the 48-request MTP cap.
    summ_h100 = _ratio(_resolve(geo["26b"], "--context-length", "9000"))
    summ_mtp_h100 = _ratio(
        _resolve(geo["26b"], "--context-length", "9000", *_mtp_args(geo["26b_assistant"]))
    )
    dense_chat = _ratio(_resolve(geo["31b"], "--context-length", "2000", mib=B200_MIB))
    assert chat > summ  # longer requests: relatively fewer SWA rows
    # 4 draft tokens x 128 eviction interval of extra SWA residency per request.
    assert summ_mtp_h100 > summ_h100
    # Dense 31B chat keeps a large SWA side: no regression from a MoE-style 0.15.
    assert dense_chat > 0.5


@pytest.mark.parametrize("declared", [True, False], ids=["9k-requests", "no-length"])
def test_mtp_request_cap_sizes_the_swa_pool(geo, declared):
    """Past the 48-request FROZEN_KV cap, SWA rows cannot be used: the SWA pool holds
    the cap's worst case (sglang's compute_swa_request_cap) and the rest goes to full."""
    from sglang.srt.model_executor.pool_configurator import compute_swa_request_cap

    extra = ["--context-length", "9000"] if declared else []
    server_args = _resolve(geo["26b"], *extra, *_mtp_args(geo["26b_assistant"]), mib=B200_MIB)
    ratio = _ratio(server_args)
    assert ratio is not None and ratio < 0.15
    budget = _budget(server_args, geo["26b_assistant"], mib=B200_MIB)
    full, swa, _, kvc = _pools(server_args, budget, mib=B200_MIB)
    need = compute_swa_request_cap(
        page_size=1, window=1023, attn_dp_size=1, max_running_requests=48
    )
    # Headroom x1.15, plus one cached prefix tail (window + page) per running request.
    assert need <= swa <= 1.2 * need + 48 * (1023 + 1)
    # --swa-prefix-tails is honoured: no tails, a smaller SWA pool.
    no_tails = _resolve(
        geo["26b"],
        *extra,
        "--swa-prefix-tails",
        "0",
        *_mtp_args(geo["26b_assistant"]),
        mib=B200_MIB,
    )
    _, swa0, _, _ = _pools(no_tails, budget, mib=B200_MIB)
    assert need <= swa0 <= 1.2 * need < swa
    assert kvc.resolve_max_num_reqs(full) == 48
    assert full >= 48 * 9000
    # On an 80 GB card the cap's SWA rows do not fit: sglang's default stays.
    if not declared:
        small = _resolve(geo["26b"], *_mtp_args(geo["26b_assistant"]))
        assert _ratio(small) is None


def test_pure_policy_hand_computed():
    """balanced_swa_full_tokens_ratio on hand-worked numbers."""
    from sglang.srt.mem_cache.gemma4_pool_sizing import (
        Gemma4PoolGeometry,
        balanced_swa_full_tokens_ratio,
        swa_tokens_per_request,
    )

    geometry = Gemma4PoolGeometry(
        full_layers=5,
        swa_layers=25,
        full_bytes_per_layer=4096,
        swa_bytes_per_layer=8192,
        window=1023,
    )
    # 1023 + 128*4 + 1 + 8 = 1544 SWA rows per MTP request.
    w = swa_tokens_per_request(
        window=1023, page_size=1, draft_tokens=4, eviction_interval=128, decode_alloc=8
    )
    assert w == 1544
    # Budget 64 GiB, 9000-token requests, chunk reserve 2*8192+1 = 16385:
    # N = (68719476736 - 16385*204800) / (9000*20480 + 1544*204800)
    #   = 65363828736 / 500531200 = 130.589
    # r = (1544*N + 16385) / (N*9000) = 218014.4 / 1175301 = 0.18550 -> rounded up to 0.186.
    choice = balanced_swa_full_tokens_ratio(
        geometry,
        request_tokens=9000,
        swa_tokens_per_req=w,
        chunk_reserve_tokens=16385,
        kv_budget_bytes=64 * GIB,
    )
    assert choice.expected_concurrency == pytest.approx(130.589, abs=0.001)
    assert choice.ratio == 0.186
    # Requests shorter than their SWA residency keep every token in both pools.
    short = balanced_swa_full_tokens_ratio(
        geometry,
        request_tokens=1000,
        swa_tokens_per_req=w,
        chunk_reserve_tokens=16385,
        kv_budget_bytes=64 * GIB,
    )
    assert short.ratio == 1.0
    # A budget below one request at any split leaves sglang's default alone.
    tiny = balanced_swa_full_tokens_ratio(
        geometry,
        request_tokens=9000,
        swa_tokens_per_req=w,
        chunk_reserve_tokens=16385,
        kv_budget_bytes=1 * GIB,
    )
    assert tiny.ratio is None and "less than one" in tiny.reason
    # No budget: the chunk reserve is shared by the fallback concurrency.
    nobudget = balanced_swa_full_tokens_ratio(
        geometry,
        request_tokens=9000,
        swa_tokens_per_req=w,
        chunk_reserve_tokens=16385,
        kv_budget_bytes=None,
        fallback_concurrency=48,
    )
    assert nobudget.ratio == math.ceil((1544 * 48 + 16385) / (48 * 9000) * 1000) / 1000


def test_pool_sizes_match_hand_computed_values(geo):
    """26B-A4B geometry, 40 GiB, explicit ratio 0.8: sglang's pools equal the formula."""
    server_args = _resolve(geo["26b"], "--swa-full-tokens-ratio", "0.8")
    full, swa, conf, _ = _pools(server_args, 40 * GIB)
    # cell = 5 full layers x 2 heads x (512+512) x 2 B + 0.8 x 25 x 8 heads x (256+256) x 2 B
    #      = 20480 + 0.8 x 204800 = 184320 B per full token
    assert conf._full_cell_bytes() == 20480 and conf._swa_cell_bytes() == 204800
    assert full == (40 * GIB) // 184320 == 233016
    assert swa == int(233016 * 0.8) == 186412


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5", "nan"])
def test_ratio_outside_range_is_a_clear_error(geo, bad):
    with pytest.raises(ValueError, match=r"swa-full-tokens-ratio.*\(0, 1\]|\(0, 1"):
        _resolve(geo["26b"], "--context-length", "9000", "--swa-full-tokens-ratio", bad)


def test_check_ratio_rejects_non_numbers():
    from sglang.srt.mem_cache.gemma4_pool_sizing import check_swa_full_tokens_ratio

    assert check_swa_full_tokens_ratio(1) == 1.0
    for bad in ("0.5", None, True, float("inf")):
        with pytest.raises(ValueError, match="swa_full_tokens_ratio"):
            check_swa_full_tokens_ratio(bad)


def test_config_without_layer_types_is_a_clear_error():
    from types import SimpleNamespace

    from sglang.srt.mem_cache.gemma4_kv_layout import kv_shared_layer_owners, layer_types_of

    for cfg in (
        SimpleNamespace(num_hidden_layers=4),
        SimpleNamespace(num_hidden_layers=4, layer_types=[]),
    ):
        with pytest.raises(ValueError, match="layer_types"):
            layer_types_of(cfg)
        with pytest.raises(ValueError, match="layer_types"):
            kv_shared_layer_owners(SimpleNamespace(num_kv_shared_layers=2, **vars(cfg)))
    with pytest.raises(ValueError, match="unknown layer kinds"):
        layer_types_of(
            SimpleNamespace(num_hidden_layers=2, layer_types=["sliding_attention", "chunked"])
        )
    with pytest.raises(ValueError, match="lists 1 layers"):
        layer_types_of(SimpleNamespace(num_hidden_layers=2, layer_types=["full_attention"]))
