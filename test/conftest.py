"""Shared pytest setup for the Gemma-4 series tests.

Tests under test/srt import ``sglang`` from the installed patched engine (``make engine``), never from this
repository. GPU-marked tests are skipped when no CUDA device is present; each has a CPU twin.
"""

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (CPU twin runs instead)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
