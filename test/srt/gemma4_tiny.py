"""The tiny Gemma-4 model of the CPU tests, and what sglang needs to build one on CPU.

The geometry has one definition: the ``tiny`` variant of benchmark/gemma4/make_model_dir.py (the E2B structure,
toy sizes: PLE, KV-shared layers, double-wide MLP, small vision and audio towers, a 1024-id vocab). Tests take
it from here and change only what they need on top, each saying why where it does.
"""

import contextlib
import copy
import json
import os
import sys
import types

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "benchmark", "gemma4")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
import make_model_dir  # noqa: E402  (benchmark/gemma4/make_model_dir.py: the one definition of the geometry)

_TINY = make_model_dir.tiny_config()


def config():
    """config.json of the tiny target (a fresh copy)."""
    return copy.deepcopy(_TINY)


def text():
    """The tiny target's text_config (a fresh copy)."""
    return config()["text_config"]


def vision():
    """The tiny target's vision_config (a fresh copy)."""
    return config()["vision_config"]


def _with(vision_overrides, audio, dtype):
    cfg = config()
    cfg["vision_config"].update(vision_overrides or {})
    if not audio:
        cfg["audio_config"] = None
    if dtype:
        for sub in (cfg, cfg["text_config"], cfg["vision_config"], cfg["audio_config"]):
            if sub:
                sub["dtype"] = dtype
    return cfg


def hf_config(*, vision_overrides=None, audio=True, dtype=None):
    """transformers' Gemma4Config of the tiny target: ``vision_overrides`` update its vision_config,
    ``audio=False`` leaves the audio tower out, ``dtype`` replaces bfloat16 in every part."""
    from transformers import Gemma4Config

    return Gemma4Config(**_with(vision_overrides, audio, dtype))


def sglang_config(*, vision_overrides=None, audio=True, dtype=None):
    """The same config (same options) as sglang's loader reads it from a model directory: its Gemma-4
    attention shapes flattened (head_dim / swa_head_dim), as the engine's model classes take them."""
    import tempfile

    from sglang.srt.utils.hf_transformers import get_config

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(_with(vision_overrides, audio, dtype), f)
        return get_config(d, trust_remote_code=False)


def randomize_(model):
    """Random weights (from torch's global generator: seed it first) for a model built from a config:
    N(0, 0.5^2), the scales (std_scale, layer_scalar) around 1; rotary frequencies kept."""
    import torch

    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and "inv_freq" not in name:
                shift = 1.0 if ("std_scale" in name or "layer_scalar" in name) else 0.0
                t.copy_(torch.randn_like(t) * 0.5 + shift)
    return model


@contextlib.contextmanager
def sglang_on_cpu():
    """While it is open, sglang model classes construct on CPU as rank 0 of one: the server args say
    device="cpu", every parallel group is a single rank, and the rotary embedding takes its CPU path (else it
    imports vllm). All three are undone on exit."""
    import sglang.srt.layers.rotary_embedding.base as rope_base
    from sglang.srt import runtime_context as rc

    saved_is_cpu = rope_base._is_cpu
    rope_base._is_cpu = True
    override = rc._CONTEXT.override_server_args(device="cpu")
    override.install()
    group = types.SimpleNamespace(is_first_rank=True, is_last_rank=True, world_size=1, rank_in_group=0)
    parallel = rc.get_parallel()
    parallel.override_permanently(pp_group=group, tp_group=group, attn_tp_group=group, tp_rank=0,
                                  attn_tp_rank=0, pp_rank=0)
    try:
        yield
    finally:
        override.restore()
        parallel.clear_stamp()
        rope_base._is_cpu = saved_is_cpu
