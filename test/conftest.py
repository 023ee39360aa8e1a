"""Shared pytest setup for the Gemma-4 series tests.

Tests under test/srt import ``sglang`` from the installed patched engine (``make engine``), never from this
repository. GPU-marked tests are skipped when no CUDA device is present; each has a CPU twin.
"""

import os
import sys

import pytest

# Helper modules of the tests (gemma4_tiny, fake_sglang_server, ...) live beside them in test/srt.
SRT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "srt")
if SRT not in sys.path:
    sys.path.insert(0, SRT)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Without a GPU, Triton kernels can only run in Triton's interpreter. Triton fixes the mode of a kernel when
# its module is imported, and sglang imports kernel modules transitively (registries keep references), so a
# test that flips TRITON_INTERPRET after something else imported a kernel would call compiled kernels from
# interpreted ones. Choose the mode once, for the whole session, before any test module is imported.
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (CPU twin runs instead)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def fake_sglang_server():
    """A fake sglang HTTP server (test/srt/fake_sglang_server.py) in this process, ready on a free loopback
    port for the module's tests; ``.url``, ``.port``, ``.requests`` (bodies received), ``.bad_generate``."""
    import fake_sglang_server as fake

    srv = fake.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_fake_sglang_server():
    """Start fake sglang HTTP servers with options of a test's own (``fake_sglang_server.start``'s keywords:
    model, token_delay_ms, first_token_ms, fail_every, accept_length, ...); all are stopped after the test."""
    import fake_sglang_server as fake

    servers = []

    def make(**options):
        servers.append(fake.start(**options))
        return servers[-1]

    yield make
    for srv in servers:
        srv.stop()
