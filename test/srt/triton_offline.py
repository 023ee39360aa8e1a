"""Compile installed Triton kernels offline for a GPU target, from a CPU test.

Triton's interpreter runs kernels the GPU compiler refuses (a module-level float read inside a kernel passed
under the interpreter and failed on the first H100), so the kernel tests also compile their kernels for sm_90.
The compile runs in a child process without TRITON_INTERPRET, because Triton fixes the mode of a kernel when its
module is imported (test/conftest.py sets the interpreter for the whole session on a machine without a GPU).
"""

import os
import subprocess
import sys


def compile_offline(script: str, tmp_path, expected_kernels: int) -> None:
    """Run ``script`` (which compiles kernels with triton.compile, prints "compiled ..." per kernel and "ok"
    last) in a child process without the interpreter; fail the test unless it compiled that many kernels."""
    path = tmp_path / "triton_offline_compile.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    proc = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    assert proc.stdout.count("compiled ") == expected_kernels, proc.stdout
