"""What every serve_ab module shares: its error, the engines, the result format, the host servers listen on."""

from __future__ import annotations

HOST = "127.0.0.1"
ENGINES = ("upstream", "patched")
FORMAT = "serve_ab/2"
MIN_REPEATS_FOR_CLAIM = 3


class ServeABError(RuntimeError):
    """A run failed; the message names the engine, workload and log."""
