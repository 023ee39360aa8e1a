"""Gemma-4 decode on the Triton backend: how many KV splits one request's decode attention may use.

0.5.23 caps the flash-decoding split count at ``--triton-attention-num-kv-splits`` (8).  Gemma-4 has
one KV head per layer (E2B, E4B) or few, so a decode step of one request launches one head tile per
split: 8 programs on a 132-SM H100.  The split scheduler (get_num_kv_splits_triton) already shrinks
the count when the batch fills the device; only the cap keeps small batches on 8 programs.  The
series raises the cap for Gemma-4 models; the scheduler still decides per step.

One switch, ``SGLANG_GEMMA4_TRITON_KV_SPLITS`` (registered in sglang.srt.environ): the cap for
Gemma-4 models, never below the configured one (a larger ``--triton-attention-num-kv-splits`` wins);
0 keeps 0.5.23's cap.  Deterministic inference still replaces the cap with its fixed tile size.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable

logger = logging.getLogger(__name__)

GEMMA4_ARCHITECTURES = frozenset(
    {
        "Gemma4ForConditionalGeneration",
        "Gemma4ForCausalLM",
        "Gemma4UnifiedForConditionalGeneration",
        "Gemma4AssistantForCausalLM",
        "Gemma4UnifiedAssistantForCausalLM",
    }
)
# The grid's third dimension and the per-token fp32 partial-result buffers grow with the cap
# (num_heads x cap x head_dim x 4 bytes per graph token); above this the buffers cost more than
# any measured split count gains.
MAX_CAP = 256
ENV_NAME = "SGLANG_GEMMA4_TRITON_KV_SPLITS"


def is_gemma4(architectures: Iterable[str] | None) -> bool:
    return any(arch in GEMMA4_ARCHITECTURES for arch in (architectures or ()))


def requested_cap() -> int:
    """The switch's value, checked: 0 (off) or a cap from 1 to MAX_CAP."""
    from sglang.srt.environ import envs

    raw = os.environ.get(ENV_NAME)
    if raw is not None:
        try:  # the registry would warn and fall back to its default; a typo here is an error
            int(raw)
        except ValueError:
            raise ValueError(
                f"{ENV_NAME}={raw!r} is not a whole number; expected 0 (keep the configured cap) "
                f"or a split count from 1 to {MAX_CAP}"
            ) from None
    value = envs.SGLANG_GEMMA4_TRITON_KV_SPLITS.get()
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CAP:
        raise ValueError(
            f"{ENV_NAME}={value!r}: expected 0 (keep the configured cap) or a split count "
            f"from 1 to {MAX_CAP}"
        )
    return value


def max_kv_splits(model_config: Any, configured: int) -> int:
    """The Triton decode's split cap for this model: the configured cap, raised for Gemma-4."""
    hf_config = getattr(model_config, "hf_config", None)
    if not is_gemma4(getattr(hf_config, "architectures", None)):
        return configured
    cap = requested_cap()
    if cap <= configured:
        return configured
    logger.info(
        "Gemma-4 Triton decode: up to %d KV splits per request (configured %d; %s)",
        cap,
        configured,
        ENV_NAME,
    )
    return cap
