"""Gemma-4 full/SWA KV split, chosen by a pool configurator from the measured budget.

Resolves real ServerArgs on CPU (the card size sglang sees is patched in), builds sglang's own
KVCacheConfigurator and sizes the pools with ``config_from_budget(available_bytes)``, the call the engine
makes after it measured free memory. Requests that fit are judged here from sglang's own primitives
(``compute_swa_request_cap``, ``KVCacheConfigurator.resolve_max_num_reqs``), not from the module's model.
"""

import logging
import math

import pytest

from gemma4_kv_testlib import (
    ASSISTANT_26B_TEXT,
    DENSE_31B_TEXT,
    E2B_TEXT,
    GIB,
    LARGE_VISION,
    MOE_26B_TEXT,
    configurator,
    layer_types,
    mtp_args,
    resolve,
    restored_process_state,
    write_assistant,
    write_target,
)

H200_MIB = 143771
ENV = "SGLANG_GEMMA4_EXPECTED_REQUEST_TOKENS"
# Layers of the 26B-A4B geometry, 48 of them, with a 2048-token window.
WIDE_WINDOW_TEXT = dict(MOE_26B_TEXT, num_hidden_layers=48, sliding_window=2048, layer_types=layer_types(48, 5))


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gemma4_split"))
    return {
        "26b": write_target(root, "26b", MOE_26B_TEXT, vision=LARGE_VISION),
        "26b_causal": write_target(root, "26b-causal", MOE_26B_TEXT, arch="Gemma4ForCausalLM"),
        "31b": write_target(root, "31b", DENSE_31B_TEXT, vision=LARGE_VISION),
        "e2b": write_target(root, "e2b", E2B_TEXT),
        "wide": write_target(root, "wide", WIDE_WINDOW_TEXT),
        "26b_assistant": write_assistant(root, "26b-assistant", ASSISTANT_26B_TEXT, 2816),
    }


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    from sglang.srt.mem_cache import gemma4_pool_sizing

    monkeypatch.delenv(ENV, raising=False)
    gemma4_pool_sizing._LOGGED.clear()
    with restored_process_state():
        yield


def _kvc(model_path, *extra, mib=H200_MIB):
    server_args = resolve(model_path, *extra, mib=mib, publish=True)
    return server_args, configurator(server_args)


def _sized(model_path, budget, *extra, mib=H200_MIB):
    """(full tokens, SWA tokens, the configurator sglang picks, kvc) for a measured budget."""
    from sglang.srt.model_executor.pool_configurator import create_memory_pool_configurator

    _, kvc = _kvc(model_path, *extra, mib=mib)
    config = kvc.config_from_budget(budget)
    # The same choice again on a configurator we can inspect (the engine's is not kept).
    conf = create_memory_pool_configurator(kvc)
    again = conf.calculate_pool_sizes(budget, int(kvc.page_size))
    full, swa = config.full_max_total_num_tokens, config.swa_max_total_num_tokens
    assert (again.full_max_total_num_tokens, again.swa_max_total_num_tokens) == (full, swa)
    return full, swa, conf, kvc


class Judge:
    """Requests of one length that run at once, from sglang's own functions for a resolved kvc."""

    def __init__(self, kvc, radix=True):
        from sglang.srt.model_executor.pool_configurator import compute_swa_request_cap

        self.kvc = kvc
        self.page = int(kvc.page_size)
        self.window = int(kvc.sliding_window_size)
        cap1, cap2 = (
            compute_swa_request_cap(page_size=self.page, window=self.window, attn_dp_size=1, max_running_requests=n)
            for n in (1, 2)
        )
        self.per_request = cap2 - cap1
        self.chunks = cap1 - self.per_request
        # The radix cache keeps the last window of a running request's cached prefix locked.
        self.tail = self.window + self.page if radix else 0

    def requests(self, length, full, swa):
        cap = self.kvc.resolve_max_num_reqs(full)
        swa_each = min(length + self.page, self.per_request + self.tail)
        return max(0, min(cap, full // length, (swa - self.chunks) // swa_each))


def _lengths(lo, hi, n=120):
    step = (math.log(hi) - math.log(lo)) / (n - 1)
    return sorted({int(math.exp(math.log(lo) + i * step)) for i in range(n)} | {lo, hi})


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def split_log():
    """Messages of the split module's logger (sglang loggers do not reach pytest's caplog)."""
    log = logging.getLogger("sglang.srt.mem_cache.gemma4_pool_sizing")
    handler, level = _Lines(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(level)


def _fixed(model_path, ratio, budget, *extra):
    full, swa, conf, _ = _sized(model_path, budget, "--swa-full-tokens-ratio", str(ratio), *extra)
    return full, swa


# --------------------------------------------------------------------------- where the split is decided


@pytest.mark.parametrize("key", ["26b", "26b_causal", "e2b"])
def test_gemma4_targets_get_the_gemma4_configurator(geo, key):
    from sglang.srt.mem_cache import gemma4_pool_sizing
    from sglang.srt.model_executor.pool_configurator import (
        HybridSWAPoolConfigurator,
        create_memory_pool_configurator,
    )

    cls = gemma4_pool_sizing.configurator_class()
    server_args, kvc = _kvc(geo[key])
    conf = create_memory_pool_configurator(kvc)
    assert type(conf) is cls and isinstance(conf, HybridSWAPoolConfigurator)
    # A draft worker keeps sglang's own configurator.
    draft = configurator(server_args, is_draft_worker=True)
    assert not isinstance(create_memory_pool_configurator(draft), cls)


def test_no_split_is_declared_at_argument_time(geo):
    """The ratio is not estimated while the arguments resolve: no provider declares it."""
    from sglang.srt.arg_groups.overrides import resolution_result

    for extra in ([], ["--context-length", "9000"], mtp_args(geo["26b_assistant"])):
        server_args = resolve(geo["26b"], *extra)
        declared = [src for src, d in server_args._resolved_overrides if "swa_full_tokens_ratio" in d]
        assert declared == []
        assert resolution_result(server_args, "swa_full_tokens_ratio") == 0.8


def test_user_ratio_wins_and_is_logged(geo, split_log):
    budget = 60 * GIB
    full, swa, conf, _ = _sized(geo["26b"], budget, "--swa-full-tokens-ratio", "0.55")
    assert conf.choice is None
    # HybridSWAPoolConfigurator's own sizing: full = budget // (full cell + 0.55 x SWA cell).
    assert full == budget // (20480 + 0.55 * 204800) and swa == int(full * 0.55)
    assert any("keeping the user-set swa_full_tokens_ratio=0.55" in m for m in split_log)


def test_choice_is_logged_once_with_its_reason(geo, split_log):
    _, kvc = _kvc(geo["26b"], *mtp_args(geo["26b_assistant"]))
    first = kvc.config_from_budget(60 * GIB)
    second = kvc.config_from_budget(60 * GIB)
    lines = [m for m in split_log if m.startswith("Gemma-4 KV split")]
    assert len(lines) == 1
    assert f"full {first.full_max_total_num_tokens} / SWA {first.swa_max_total_num_tokens}" in lines[0]
    assert "request cap 48" in lines[0] and "no expected request length declared" in lines[0]
    assert (second.full_max_total_num_tokens, second.swa_max_total_num_tokens) == (
        first.full_max_total_num_tokens,
        first.swa_max_total_num_tokens,
    )


# --------------------------------------------------------------------------- no declared length: never worse than 0.8


@pytest.mark.parametrize(
    "key, mtp, budget_gib, context",
    [
        ("26b", False, 60, None),
        ("26b", True, 60, None),
        ("26b", True, 25, None),
        ("26b", False, 60, 131072),
        ("26b", False, 60, 9000),
        ("31b", False, 45, None),
        ("e2b", False, 100, None),
        ("e2b", False, 100, 131072),
    ],
)
def test_undeclared_length_never_serves_fewer_requests_than_ratio_08(geo, key, mtp, budget_gib, context):
    extra = (mtp_args(geo["26b_assistant"]) if mtp else []) + (
        ["--context-length", str(context)] if context else []
    )
    budget = budget_gib * GIB
    full, swa, conf, kvc = _sized(geo[key], budget, *extra)
    assert conf.choice is not None and conf.choice.lengths[0] == 1024
    ref_full, ref_swa = _fixed(geo[key], 0.8, budget, *extra)
    judge = Judge(kvc)
    ctx = int(kvc.model_config.context_len)
    assert conf.choice.lengths[-1] == ctx
    for n in _lengths(1024, ctx):
        assert judge.requests(n, full, swa) >= judge.requests(n, ref_full, ref_swa), n


@pytest.mark.parametrize("key, mtp, gain", [("26b", True, 3.0), ("e2b", False, 1.15)])
def test_undeclared_length_gains_where_the_full_pool_binds(geo, key, mtp, gain):
    extra = mtp_args(geo["26b_assistant"]) if mtp else []
    budget = (60 if key == "26b" else 100) * GIB
    full, swa, _, kvc = _sized(geo[key], budget, *extra)
    ref_full, ref_swa = _fixed(geo[key], 0.8, budget, *extra)
    judge = Judge(kvc)
    longest = int(kvc.model_config.context_len)
    # Long requests are full-pool bound at 0.8: the split moves SWA rows there.
    assert judge.requests(longest // 4, full, swa) >= gain * judge.requests(longest // 4, ref_full, ref_swa)
    if mtp:
        # 48 requests of any length up to a window's worth still get their SWA rows.
        assert judge.requests(1024, full, swa) == 48


def test_mtp_cap_gets_its_swa_rows_and_the_rest_goes_to_full(geo):
    from sglang.srt.model_executor.pool_configurator import compute_swa_request_cap

    full, swa, conf, kvc = _sized(geo["26b"], 60 * GIB, *mtp_args(geo["26b_assistant"]))
    need = compute_swa_request_cap(page_size=1, window=1023, attn_dp_size=1, max_running_requests=48)
    tails = 48 * (1023 + 1)
    assert need + tails <= swa < need + tails + 0.002 * full  # one ratio step above the need
    assert kvc.resolve_max_num_reqs(full) == 48
    # Without the radix cache no prefix tail is locked: a smaller SWA pool.
    full0, swa0, _, _ = _sized(geo["26b"], 60 * GIB, *mtp_args(geo["26b_assistant"]), "--disable-radix-cache",
                               "--max-running-requests", "64")
    assert swa0 < swa


# --------------------------------------------------------------------------- a declared request length


@pytest.mark.parametrize(
    "key, mtp, length, budget_gib",
    [("26b", False, 9000, 60), ("26b", False, 2000, 60), ("26b", True, 9000, 30), ("31b", False, 9000, 45),
     ("e2b", False, 2000, 100)],
)
def test_declared_length_serves_the_most_requests_of_that_length(geo, monkeypatch, key, mtp, length, budget_gib):
    monkeypatch.setenv(ENV, str(length))
    extra = mtp_args(geo["26b_assistant"]) if mtp else []
    budget = budget_gib * GIB
    full, swa, conf, kvc = _sized(geo[key], budget, *extra)
    assert conf.choice.lengths == (length,)
    judge = Judge(kvc)
    served = judge.requests(length, full, swa)
    for ratio in [r / 100 for r in range(5, 101, 5)] + [0.15, 0.8]:
        monkeypatch.delenv(ENV)
        other = judge.requests(length, *_fixed(geo[key], ratio, budget, *extra))
        monkeypatch.setenv(ENV, str(length))
        assert served >= other, (ratio, served, other)
    assert served > 0


def test_cap_with_a_declared_length_never_loses_requests_to_swa_margin(geo, monkeypatch):
    """48 layers, 2048-token window, 48-request cap, 110 GiB, 9000-token requests: all 48 fit
    (a x1.15 SWA headroom taken from the full pool left 418k < 48 x 9000 full tokens: 46 fit)."""
    monkeypatch.setenv(ENV, "9000")
    full, swa, _, kvc = _sized(geo["wide"], 110 * GIB, "--max-running-requests", "48")
    assert full >= 48 * 9000
    assert Judge(kvc).requests(9000, full, swa) == 48


@pytest.mark.parametrize("bad", ["many", "0", "-5", "1.5"])
def test_bad_expected_length_is_a_clear_error(geo, monkeypatch, bad):
    # refused while the arguments resolve (before the weights load) ...
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ValueError, match=ENV):
        _kvc(geo["26b"])
    # ... and again where the pools are sized, should the variable change after resolution
    monkeypatch.delenv(ENV)
    _, kvc = _kvc(geo["26b"])
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ValueError, match=ENV):
        kvc.config_from_budget(60 * GIB)


# --------------------------------------------------------------------------- the model, by hand


def test_split_model_by_hand():
    from sglang.srt.mem_cache.gemma4_pool_sizing import SplitModel, request_lengths, sglang_request_cap

    m = SplitModel(
        budget_bytes=1_000_000_000, full_cell=20480, swa_cell=204800, page_size=64, swa_per_request=1600,
        prefix_tail_tokens=1088, chunk_reserve=16448, context_len=262144, request_cap=48,
    )
    # full = 1e9 // (20480 + 0.1 x 204800) = 24414 -> 24384 (page 64); SWA = int(24384 x 0.1) -> 2432.
    assert m.pools(0.1) == (24384, 2432)
    # SWA rows per request: short requests hold all of their tokens (+ a page), long ones w + tail.
    assert m.swa_rows(500) == 564 and m.swa_rows(100_000) == 2688
    # (100000 - 16448) // 2688 = 31 by SWA, 500000 // 9000 = 55 by full, cap 48.
    assert m.requests(9000, 500_000, 100_000) == 31
    assert m.requests(9000, 250_000, 1_000_000) == 27
    assert m.requests(9000, 10_000_000, 1_000_000) == 48
    assert sglang_request_cap(10_000, 131072, None) == 2048  # the automatic floor
    assert sglang_request_cap(3_000, 131072, None) == 1500  # full // 2
    assert sglang_request_cap(100_000_000, 131072, None) == 4096
    lengths = request_lengths(262144, None)
    assert lengths[0] == 1024 and lengths[-1] == 262144 and len(lengths) >= 40
    assert request_lengths(262144, 9000) == (9000,)
    with pytest.raises(ValueError, match="budget_bytes"):
        SplitModel(budget_bytes=0, full_cell=1, swa_cell=1, page_size=1, swa_per_request=1,
                   prefix_tail_tokens=0, chunk_reserve=0, context_len=1)


def test_choose_split_balances_one_length_by_hand():
    """One 10000-token length, no cap binding, no chunk reserve: both pools run out together at
    ratio r with r x full / 1000 = full / 10000 -> r = 0.1 (1000 SWA rows per request)."""
    from sglang.srt.mem_cache.gemma4_pool_sizing import SplitModel, choose_split

    m = SplitModel(
        budget_bytes=40 * GIB, full_cell=20000, swa_cell=200000, page_size=1, swa_per_request=1000,
        prefix_tail_tokens=0, chunk_reserve=0, context_len=262144, request_cap=100000,
    )
    choice = choose_split(m, 10000)
    assert choice.ratio == pytest.approx(0.1, abs=0.0015)
    full, swa = m.pools(choice.ratio)
    assert m.requests(10000, full, swa) == max(m.requests(10000, *m.pools(r / 1000)) for r in range(1, 1001))
    assert choice.worst_gain == pytest.approx(m.requests(10000, full, swa) / m.requests(10000, *m.pools(0.8)))


def test_sglang_request_cap_matches_the_engine(geo):
    from sglang.srt.mem_cache.gemma4_pool_sizing import sglang_request_cap

    _, kvc = _kvc(geo["26b"])
    for tokens in (3000, 100_000, 600_000, 5_000_000, 50_000_000):
        assert sglang_request_cap(tokens, int(kvc.model_config.context_len), None) == kvc.resolve_max_num_reqs(tokens)
    _, kvc = _kvc(geo["26b"], *mtp_args(geo["26b_assistant"]))
    for tokens in (50, 1000, 5_000_000):
        assert sglang_request_cap(tokens, 262144, 48) == kvc.resolve_max_num_reqs(tokens)


def test_pool_sizes_match_hand_computed_values(geo):
    """26B-A4B geometry, 40 GiB, explicit ratio 0.8: sglang's pools equal the formula."""
    full, swa, conf, _ = _sized(geo["26b"], 40 * GIB, "--swa-full-tokens-ratio", "0.8")
    # cell = 5 full layers x 2 heads x (512+512) x 2 B + 0.8 x 25 x 8 heads x (256+256) x 2 B
    #      = 20480 + 0.8 x 204800 = 184320 B per full token
    assert conf._full_cell_bytes() == 20480 and conf._swa_cell_bytes() == 204800
    assert full == (40 * GIB) // 184320 == 233016
    assert swa == int(233016 * 0.8) == 186412


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5", "nan"])
def test_ratio_outside_range_is_a_clear_error(geo, bad):
    with pytest.raises(ValueError, match=r"swa.full.tokens.ratio"):
        resolve(geo["26b"], "--swa-full-tokens-ratio", bad)


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


# --------------------------------------------------------------------------- the declaration, checked early


def test_declared_length_above_the_context_is_refused_at_pool_sizing(geo, monkeypatch):
    # 26B-A4B's context is 262144 tokens: a 300000-token request cannot exist (accepting it sized the
    # pools for it: ratio 0.016, 12 requests of 9000 tokens where 0.8 holds 38)
    _, kvc = _kvc(geo["26b"])
    monkeypatch.setenv(ENV, "300000")  # set after resolution, which would refuse it already
    with pytest.raises(ValueError, match=f"{ENV}=300000 is longer than the context length 262144"):
        kvc.config_from_budget(60 * GIB)


def test_declaration_is_checked_at_argument_resolution(geo, monkeypatch):
    """Before the weights load: resolving the server arguments already refuses a bad declaration."""
    monkeypatch.setenv(ENV, "9001")
    with pytest.raises(ValueError, match=f"{ENV}=9001 is longer than the context length 9000"):
        resolve(geo["26b"], "--context-length", "9000")
    monkeypatch.setenv(ENV, "many")
    with pytest.raises(ValueError, match=f"{ENV} must be a positive integer"):
        resolve(geo["26b"])
    # at the context length itself it resolves, and the pools are sized for it
    monkeypatch.setenv(ENV, "9000")
    resolve(geo["26b"], "--context-length", "9000")
    monkeypatch.delenv(ENV)
    resolve(geo["26b"], "--context-length", "9000")


# --------------------------------------------------------------------------- exact choices (each pins one decision)


def test_undeclared_length_serves_the_context_length_itself(geo):
    """26B-A4B, --context-length 2560, 52 GiB: the never-fewer-than-0.8 scan ends AT the context length.

    At 0.8 (302921 full / 242336 SWA tokens) a 2560-token request holds 2177 SWA rows (window tail 1153 +
    locked prefix tail 1024), so 0.8 serves (242336 - 16385) // 2177 = 103 of them. Ratios above 0.8 serve
    more short requests until the full pool binds at 2560 tokens: 0.93 keeps 264689 >= 103 x 2560 full rows.
    0.934, which the mean gain prefers, keeps 263665: 103 requests of 2559 tokens, but only 102 of 2560. A
    scan that stopped one length short of the context length took 0.934."""
    from sglang.srt.mem_cache.gemma4_pool_sizing import serves_at_least

    budget, extra = 52 * GIB, ("--context-length", "2560")
    full, swa, conf, kvc = _sized(geo["26b"], budget, *extra)
    ref_full, ref_swa = _fixed(geo["26b"], 0.8, budget, *extra)
    assert (ref_full, ref_swa) == (302921, 242336)
    assert conf.choice.lengths[0] == 1024 and conf.choice.lengths[-1] == 2560
    judge = Judge(kvc)
    assert judge.requests(2560, ref_full, ref_swa) == 103
    # Every integer length of the range, the last one included.
    for n in range(1024, 2561):
        assert judge.requests(n, full, swa) >= judge.requests(n, ref_full, ref_swa), n
    assert (conf.choice.ratio, full, swa) == (0.93, 264689, 246160)
    assert judge.requests(2560, full, swa) == 103
    # The exact scan itself: 0.934's pools pass up to 2559 tokens and fail at 2560.
    model = conf.split_model(budget, 1)
    short = model.pools(0.934)
    assert short == (263665, 246263)
    assert judge.requests(2559, *short) == 103 and judge.requests(2560, *short) == 102
    assert serves_at_least(model, short, (ref_full, ref_swa), 1024, 2559)
    assert not serves_at_least(model, short, (ref_full, ref_swa), 1024, 2560)


def test_exact_tie_in_distance_from_08_goes_to_the_lower_ratio():
    """Page rounding makes 0.8 itself a dip: at page 32 its SWA pool (14208) is smaller than at 0.799 and
    0.801 (14240 each). 2000-token requests take 2032 SWA rows: 0.8 serves 14208 // 2032 = 6, 0.799 and
    0.801 serve 7 (their full pools hold 8). 0.799 and 0.801 are exactly as far from 0.8 (the same float),
    and serve the same requests: the first found (0.799, one page more of full rows) is kept; a later
    candidate replaces the best only when strictly better."""
    from sglang.srt.mem_cache.gemma4_pool_sizing import SplitModel, choose_split

    m = SplitModel(
        budget_bytes=1_518_338_048, full_cell=32768, swa_cell=65536, page_size=32, swa_per_request=1806,
        prefix_tail_tokens=1024, chunk_reserve=0, context_len=262144, request_cap=48,
    )
    assert abs(0.799 - 0.8) == abs(0.801 - 0.8)
    # full = budget // (32768 + r x 65536) rounded down to 32; SWA = int(full x r) rounded down to 32.
    assert m.pools(0.799) == (17824, 14240) and m.pools(0.801) == (17792, 14240)
    assert m.pools(0.8) == (17792, 14208)
    assert m.swa_rows(2000) == 2032
    assert [m.requests(2000, *m.pools(r)) for r in (0.798, 0.799, 0.8, 0.801, 0.802)] == [6, 7, 6, 7, 7]
    assert max(m.requests(2000, *m.pools(k / 1000)) for k in range(1, 1001)) == 7
    choice = choose_split(m, 2000)
    assert (choice.ratio, choice.full_tokens, choice.swa_tokens) == (0.799, 17824, 14240)
    assert choice.worst_gain == choice.mean_gain == 7 / 6


def test_mtp_split_exact_pools_by_hand(geo):
    """26B-A4B + FROZEN_KV MTP (48 requests), 60 GiB, no declared length: the exact pools.

    From sglang's compute_swa_request_cap (page 1, window 1023): 1 request needs 17929 SWA rows,
    2 need 19473, so a request's window tail is w = 1544 and the prefill chunks hold 17929 - 1544 = 16385.
    With the radix cache each request also locks its prefix's window (1023 + 1). 48 long requests need
    16385 + 48 x (1544 + 1024) = 139649 SWA rows (0.8, with 349525 full rows, serves 48 requests of every
    length up to 349525 // 48 = 7281 tokens). The smallest ratio that still holds them leaves the most full
    rows:
      0.079: full = 64424509440 // (20480 + 0.079 x 204800) = 1757389, SWA = int(1757389 x 0.079) = 138833
             < 139649: 47 requests;
      0.080: full = 64424509440 // 36864 = 1747626, SWA = int(1747626 x 0.08) = 139810 >= 139649: 48.
    (Chunks counted as one window tail more, 17929, would need 141193 and move the split to 0.082.)"""
    from sglang.srt.model_executor.pool_configurator import compute_swa_request_cap

    budget = 60 * GIB
    full, swa, conf, kvc = _sized(geo["26b"], budget, *mtp_args(geo["26b_assistant"]))
    caps = [compute_swa_request_cap(page_size=1, window=1023, attn_dp_size=1, max_running_requests=n)
            for n in (1, 2, 48)]
    assert caps == [17929, 19473, 16385 + 48 * 1544]
    assert conf._full_cell_bytes() == 20480 and conf._swa_cell_bytes() == 204800
    assert budget == 64424509440
    assert (conf.choice.ratio, full, swa) == (0.08, 1747626, 139810)
    judge = Judge(kvc)
    assert (judge.per_request, judge.chunks, judge.tail) == (1544, 16385, 1024)
    assert judge.requests(4096, full, swa) == 48
    assert conf.split_model(budget, 1).pools(0.079) == (1757389, 138833)
    assert judge.requests(4096, 1757389, 138833) == 47


def test_serves_at_least_checks_the_last_length_by_hand():
    """The exact scan compares every length up to AND including ``hi``. 2003 is prime, so a full pool of
    10 x 2003 = 20030 rows and one of 20029 give the same full-pool bound at every length from 1024 to 2002
    (no such length divides 20030) and differ only at 2003: 10 requests against 9. Two cases: 0.8's pools
    bound there by their full pool (the SWA pool holds 200 long requests), and bound by both (10)."""
    from sglang.srt.mem_cache.gemma4_pool_sizing import SplitModel, serves_at_least

    m = SplitModel(
        budget_bytes=1 << 30, full_cell=1, swa_cell=1, page_size=1, swa_per_request=500,
        prefix_tail_tokens=0, chunk_reserve=0, context_len=2003, request_cap=1000,
    )
    for swa in (100_000, 5_000):
        ref, pools = (20030, swa), (20029, swa)
        short = [n for n in range(1024, 2004) if m.requests(n, *pools) < m.requests(n, *ref)]
        assert short == [2003], swa
        assert (m.requests(2003, *ref), m.requests(2003, *pools)) == (10, 9)
        assert serves_at_least(m, pools, ref, 1024, 2002), swa
        assert not serves_at_least(m, pools, ref, 1024, 2003), swa
        assert serves_at_least(m, ref, ref, 1024, 2003)
