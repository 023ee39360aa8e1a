"""FROZEN_KV MTP draft backends see the target's sliding-window KV pool.

Gemma-4's MTP draft (FROZEN_KV) owns only a small non-SWA dummy pool but reads
the target's KV cache. Each attention backend Gemma-4 accepts must therefore
turn its SWA translation on for that draft and translate against the target's
SWA pool; otherwise SWA layers read full-pool page indices from the SWA cache.

The backends are built on CPU exactly as the engine builds them (the attention
registry factory for a topk==1 draft, the worker's own builders for topk>1)
with real KV pools and a real SWA allocator, under a runtime context resolved
from a Gemma-4 config. Kernel libraries that do not load without a GPU
(sgl_kernel, flashinfer wrappers) are replaced by inert stand-ins for the
duration of this module; the constructors and the pools are the real ones.
Ascend (NPU) is accepted for Gemma-4 too but lives outside this series' files;
it is not covered here.
"""

import os
import sys
import types

import pytest
import torch

GEMMA4_BACKENDS = ("triton", "trtllm_mha", "fa4", "aiter", "intel_xpu", "intel_amx")
SWA_LAYERS = [0, 1, 2, 3, 4]
FULL_LAYERS = [5]


class _Inert(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class _InertWrapper:
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _sgl_kernel_loads() -> bool:
    try:
        import sgl_kernel  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def engine_env(tmp_path_factory):
    """Resolved Gemma-4 server args in a private runtime context, plus the
    stand-ins needed to construct GPU backends on CPU; all undone afterwards."""
    saved_env = dict(os.environ)
    saved_modules = {
        k: sys.modules.get(k)
        for k in (
            "sgl_kernel",
            "sgl_kernel.flash_attn",
            "sglang.srt.layers.attention.flashattention_backend",
            "sglang.srt.layers.attention.xpu_backend",
        )
    }
    undo = []
    try:
        from transformers import Gemma4Config

        model_dir = tmp_path_factory.mktemp("gemma4")
        cfg = Gemma4Config()
        cfg.architectures = ["Gemma4ForConditionalGeneration"]
        cfg.save_pretrained(model_dir)

        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.runtime_context import (
            create_context,
            override_platform,
            use_context,
        )
        from sglang.srt.server_args import prepare_server_args

        server_args = prepare_server_args(
            [
                "--model-path",
                str(model_dir),
                "--device",
                "cuda",
                "--skip-tokenizer-init",
                "--attention-backend",
                "triton",
            ]
        )
        with override_platform(is_sm90=True):
            ctx = create_context(server_args, role="scheduler")
        with use_context(ctx):
            model_config = ModelConfig.from_server_args(server_args)

        if not _sgl_kernel_loads():
            flash_attn = _Inert("sgl_kernel.flash_attn")
            stub = _Inert("sgl_kernel")
            stub.flash_attn = flash_attn
            sys.modules["sgl_kernel"] = stub
            sys.modules["sgl_kernel.flash_attn"] = flash_attn
            for name in (
                "sglang.srt.layers.attention.flashattention_backend",
                "sglang.srt.layers.attention.xpu_backend",
            ):
                sys.modules.pop(name, None)
            for op in ("decode_attention_cpu", "extend_attention_cpu"):
                if not hasattr(torch.ops.sgl_kernel, op):
                    setattr(torch.ops.sgl_kernel, op, lambda *a, **k: None)
                    undo.append(
                        lambda op=op: delattr(torch.ops.sgl_kernel, op)
                    )

        import sglang.srt.layers.attention.flashinfer_backend as fib
        import sglang.srt.layers.attention.trtllm_mha_backend as tmb

        def patch(mod, name, value):
            old = getattr(mod, name, None)
            had = hasattr(mod, name)
            setattr(mod, name, value)
            undo.append(
                lambda: setattr(mod, name, old) if had else delattr(mod, name)
            )

        for name in (
            "BatchPrefillWithRaggedKVCacheWrapper",
            "BatchPrefillWithPagedKVCacheWrapper",
            "BatchDecodeWithPagedKVCacheWrapper",
        ):
            if getattr(fib, name, None) is None or not fib.is_flashinfer_available():
                patch(fib, name, _InertWrapper)
        if not torch.cuda.is_available():
            patch(
                tmb,
                "make_persistent_multi_ctas_kv_counter_buffer",
                lambda *a, **k: torch.zeros(8, dtype=torch.int32),
            )

        yield types.SimpleNamespace(
            ctx=ctx, use_context=use_context, model_config=model_config, server_args=server_args
        )
    finally:
        for fn in reversed(undo):
            fn()
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        os.environ.clear()
        os.environ.update(saved_env)


def _pools(page_size):
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    size, size_swa = 16 * page_size, 8 * page_size
    target = SWAKVPool(
        size=size,
        size_swa=size_swa,
        page_size=page_size,
        dtype=torch.bfloat16,
        head_num=2,
        head_dim=16,
        swa_attention_layer_ids=SWA_LAYERS,
        full_attention_layer_ids=FULL_LAYERS,
        device="cpu",
        enable_memory_saver=False,
    )
    allocator = SWATokenToKVPoolAllocator(
        size, size_swa, page_size, torch.bfloat16, "cpu", target, need_sort=False
    )
    # The FROZEN_KV worker gives its draft runner a 64-token non-SWA pool.
    draft_pool = MHATokenToKVPool(
        size=64,
        page_size=page_size,
        dtype=torch.bfloat16,
        head_num=2,
        head_dim=16,
        layer_num=1,
        device="cpu",
        enable_memory_saver=False,
    )
    return target, allocator, draft_pool


def _runner(env, pool, allocator, page_size, *, draft, algorithm, backend="triton"):
    from sglang.srt.mem_cache.kv_index_translator import KVIndexTranslator
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    req_to_token_pool = types.SimpleNamespace(
        size=4, req_to_token=torch.zeros(4, 1024, dtype=torch.int32)
    )
    return types.SimpleNamespace(
        token_to_kv_pool=pool,
        token_to_kv_pool_allocator=allocator,
        req_to_token_pool=req_to_token_pool,
        is_draft_worker=draft,
        spec_algorithm=SpeculativeAlgorithm.from_string(algorithm),
        model_config=env.model_config,
        server_args=env.server_args,
        device="cpu",
        gpu_id=0,
        dtype=torch.bfloat16,
        sliding_window_size=512,
        page_size=page_size,
        kv_cache_dtype=torch.bfloat16,
        kv_cache_dtype_str="auto",
        kv_index_translator=KVIndexTranslator(
            req_to_token=req_to_token_pool.req_to_token,
            token_to_kv_pool_allocator=allocator,
            token_to_kv_pool=pool,
            page_size=page_size,
            device="cpu",
            is_draft_worker=draft,
        ),
        decode_num_tokens_per_req=lambda: 1,
        is_hybrid_swa=True,
        use_mla_backend=False,
        max_running_requests=4,
        prefill_attention_backend_str=backend,
        decode_attention_backend_str=backend,
        model=types.SimpleNamespace(modules=lambda: []),
    )


def _build(env, name, runner):
    """The backend as the engine builds it for this runner (registry factory)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    with env.use_context(env.ctx):
        return ATTENTION_BACKENDS[name](runner)


def _resolved_pool_attr(backend):
    for attr in ("_swa_kv_pool", "swa_kv_pool"):
        if hasattr(backend, attr):
            return getattr(backend, attr)
    return None


@pytest.mark.parametrize("page_size", [1, 64])
@pytest.mark.parametrize("name", GEMMA4_BACKENDS)
def test_frozen_kv_draft_backend_sees_target_swa_pool(engine_env, name, page_size):
    from sglang.srt.layers.attention.swa_pool_resolver import resolve_swa_kv_pool
    from sglang.srt.speculative.frozen_kv_mtp_utils import (
        frozen_kv_target_view,
        target_kv_pool_view,
    )

    target, allocator, draft_pool = _pools(page_size)
    runner = _runner(
        engine_env, draft_pool, allocator, page_size, draft=True,
        algorithm="FROZEN_KV_MTP", backend=name,
    )
    assert resolve_swa_kv_pool(runner) is target
    backend = _build(engine_env, name, runner)

    assert backend.use_sliding_window_kv_pool is True, name
    resolved = _resolved_pool_attr(backend)
    if name in ("trtllm_mha", "aiter"):
        assert resolved is target
    assert backend.token_to_kv_pool is draft_pool

    # Plant a full->swa mapping the way the allocator writes it.
    full_loc = torch.tensor([3 * page_size + 1])
    swa_loc = torch.tensor([2 * page_size + 1])
    allocator.set_full_to_swa_mapping(full_loc, swa_loc)

    kv_context = types.SimpleNamespace(target_token_to_kv_pool=target)
    forward_batch = types.SimpleNamespace(spec_info=object())
    for view in (frozen_kv_target_view, target_kv_pool_view):
        with view(forward_batch, kv_context, backend):
            assert backend.token_to_kv_pool is target
            assert backend.use_sliding_window_kv_pool is True
            if resolved is not None:
                assert _resolved_pool_attr(backend) is target
            # The translation the backend applies to SWA layers in the view.
            out = backend.token_to_kv_pool.translate_loc_from_full_to_swa(full_loc)
            assert out.tolist() == swa_loc.tolist()
        assert backend.token_to_kv_pool is draft_pool
        assert backend.use_sliding_window_kv_pool is True


@pytest.mark.parametrize("name", ["triton", "trtllm_mha"])
def test_frozen_kv_topk_draft_builders_see_target_swa_pool(engine_env, name):
    """topk > 1: the worker builds its own triton / trtllm_mha draft backend."""
    from sglang.srt.speculative.frozen_kv_mtp_worker_v2 import FrozenKVMTPDraftWorker

    target, allocator, draft_pool = _pools(64)
    runner = _runner(
        engine_env, draft_pool, allocator, 64, draft=True,
        algorithm="FROZEN_KV_MTP", backend=name,
    )
    worker = types.SimpleNamespace(
        draft_model_runner=runner, req_to_token_pool=runner.req_to_token_pool, topk=2
    )
    builder = {
        "triton": FrozenKVMTPDraftWorker._init_triton_draft_attn_backend,
        "trtllm_mha": FrozenKVMTPDraftWorker._init_trtllm_mha_draft_attn_backend,
    }[name]
    with engine_env.use_context(engine_env.ctx):
        backend = builder(worker)
    assert backend.use_sliding_window_kv_pool is True


@pytest.mark.parametrize("name", GEMMA4_BACKENDS)
def test_eagle_draft_keeps_its_own_pool(engine_env, name):
    """An EAGLE-like draft owns its KV: the target's SWA mapping must not apply."""
    from sglang.srt.layers.attention.swa_pool_resolver import resolve_swa_kv_pool

    _, allocator, draft_pool = _pools(1)
    runner = _runner(
        engine_env, draft_pool, allocator, 1, draft=True, algorithm="EAGLE", backend=name
    )
    assert resolve_swa_kv_pool(runner) is None
    backend = _build(engine_env, name, runner)
    assert backend.use_sliding_window_kv_pool is False
    assert _resolved_pool_attr(backend) is None


@pytest.mark.parametrize("name", GEMMA4_BACKENDS)
def test_target_runner_uses_its_swa_pool(engine_env, name):
    target, allocator, _ = _pools(1)
    runner = _runner(
        engine_env, target, allocator, 1, draft=False, algorithm="FROZEN_KV_MTP",
        backend=name,
    )
    backend = _build(engine_env, name, runner)
    assert backend.use_sliding_window_kv_pool is True
    if name in ("trtllm_mha", "aiter"):
        assert _resolved_pool_attr(backend) is target


def test_resolver_rules():
    from sglang.srt.layers.attention.swa_pool_resolver import (
        resolve_swa_kv_pool,
        uses_sliding_window_kv_pool,
    )
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    class Algo:
        def __init__(self, frozen):
            self.frozen = frozen

        def is_frozen_kv_mtp(self):
            return self.frozen

    class FakeSWA(SWAKVPool):
        def __init__(self, swa_layers):
            self.swa_layer_nums = swa_layers

    swa, no_layers, plain = FakeSWA(3), FakeSWA(0), object()

    def runner(pool, kv, draft, frozen):
        return types.SimpleNamespace(
            token_to_kv_pool=pool,
            token_to_kv_pool_allocator=types.SimpleNamespace(get_kvcache=lambda: kv),
            is_draft_worker=draft,
            spec_algorithm=Algo(frozen),
        )

    with pytest.raises(ValueError, match="needs a model runner"):
        resolve_swa_kv_pool(None)
    assert resolve_swa_kv_pool(runner(swa, plain, False, False)) is swa
    assert resolve_swa_kv_pool(runner(plain, swa, True, True)) is swa
    assert resolve_swa_kv_pool(runner(plain, swa, True, False)) is None
    assert resolve_swa_kv_pool(runner(plain, plain, True, True)) is None
    # Upstream's target fallback to the allocator pool is kept by default ...
    assert resolve_swa_kv_pool(runner(plain, swa, False, False)) is swa
    # ... and off for backends that translate through their own pool.
    assert not uses_sliding_window_kv_pool(runner(plain, swa, False, False), SWAKVPool)
    assert uses_sliding_window_kv_pool(runner(plain, swa, True, True), SWAKVPool)
    assert not uses_sliding_window_kv_pool(runner(plain, no_layers, True, True), SWAKVPool)
    assert uses_sliding_window_kv_pool(
        runner(plain, no_layers, True, True), SWAKVPool, require_swa_layers=False
    )
