"""Video requests through sglang's OpenAI-compatible chat endpoint, one synthetic video each, with bench_serving's
result keys: the client serve_ab.py runs for its video workloads (sglang 0.5.23's bench_serving has no video data
set). The logic and what was verified are in benchkit/ab_video.py.

    python benchmark/gemma4/video_client.py --host 127.0.0.1 --port 30000 --frames 8 --resolution 480x480 \\
        --num-prompts 64 --max-concurrency 16 --output-len 10 --seed 2 --output-file /tmp/video.jsonl

Exit status 0 when the pass ran (its result line appended to --output-file; ``completed`` may be short, with
``failed`` and the first errors), 1 when the server never answered or no warm-up request completed, 2 on a bad
argument.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit.ab_video import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
