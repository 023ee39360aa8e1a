"""Failed / interrupted bookkeeping: a record's ``status`` and ``error`` set as an error or Ctrl-C leaves it."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type


@contextlib.contextmanager
def recorded(rec: Dict[str, Any], errors: Tuple[Type[BaseException], ...],
             then: Optional[Callable[[], Any]] = None) -> Iterator[Dict[str, Any]]:
    """Run the block; when one of ``errors`` leaves it, ``rec`` gets status "failed" and the error's text, on
    KeyboardInterrupt status and error "interrupted"; the exception then goes on. Success leaves ``rec`` as
    the block left it. ``then`` is called last however the block ended (after the status is set)."""
    try:
        yield rec
    except errors as e:
        rec["status"], rec["error"] = "failed", str(e)
        raise
    except KeyboardInterrupt:
        rec["status"], rec["error"] = "interrupted", "interrupted"
        raise
    finally:
        if then is not None:
            then()
