"""Tower-call plan of the packed Gemma-4 vision encoder (patch 0010): the same on every TP rank, and the
sdpa budget counts the attention scores.

The tower's qkv / o_proj / down_proj are TP-sharded and all-reduce in every layer, so every rank of the TP
group must cut the batch into the same tower calls.  Each rank caps the chunk budget at half of its own free
device memory; the ranks then agree on the smallest budget (one all-reduce MIN).  Two CPU processes in a gloo
group, with different (mocked) free memory, show it: the plan of 12 full-size images on the 26B/31B tower,
and the tower calls of the real Gemma4ForConditionalGeneration.get_image_feature on a tiny model.
"""

import json
import os
import subprocess
import sys
import types

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


def large_tower_config():
    """26B-A4B / 31B vision tower geometry: 1152 x 27 layers, 16 heads x 72, MLP 4304, patch 16."""
    from transformers import Gemma4VisionConfig

    return Gemma4VisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        num_key_value_heads=16, head_dim=72, patch_size=16, pooling_kernel_size=3,
        position_embedding_size=10240,
    )


def full_size_segments(n, valid=2520):
    """n images whose 2520 patches are all valid (the processor's largest image)."""
    from sglang.srt.models import gemma4_vision_batching as vb

    rows, cols = {2520: (42, 60)}[valid]  # both multiples of the 3x3 pooling kernel
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
    pixels = torch.zeros(1, 768).expand(rows * cols, 768)  # only shape and dtype are read
    items = [types.SimpleNamespace(feature=pixels, image_position_ids=pos) for _ in range(n)]
    plan = vb.plan_items(items, kind="image", text_hidden_size=2816, patch_pixels=768,
                         pooling_kernel_size=3, position_table_size=10240)
    assert all(s.num_valid == rows * cols for s in plan.segments)
    return plan.segments


# --------------------------------------------------------------------------- sdpa: attention-score term


def test_sdpa_budget_counts_the_attention_scores():
    """24 full-size images on the 26B/31B tower at the default 512 MiB: sdpa materialises float32 scores
    (16 heads x 2520 keys per token), so one image per call; without that term it would put 3 per call,
    about 3x over budget.  The varlen kernels need no score term: 3 per call there."""
    from sglang.srt.models import gemma4_vision_batching as vb

    cfg = large_tower_config()
    segs = full_size_segments(24)
    budget = vb.DEFAULT_BUDGET_MB * MIB
    base = vb.encoder_bytes_per_token(cfg, torch.bfloat16, torch.float32)
    with_scores = vb.encoder_bytes_per_token(cfg, torch.bfloat16, torch.float32, attention_len=2520)
    assert with_scores - base == 4 * 16 * 2520
    sdpa = vb.plan_tower_calls(segs, varlen=False, budget_bytes=budget, vision_config=cfg,
                               act_dtype=torch.bfloat16, pixel_dtype=torch.float32)
    assert [len(c.segments) for c in sdpa] == [1] * 24
    assert not any(c.packed for c in sdpa)
    assert 2 * 2520 * with_scores > budget  # two images with their scores do not fit (one runs alone)
    assert 3 * 2520 * base <= budget  # ... where three would, if the scores were not counted
    varlen = vb.plan_tower_calls(segs, varlen=True, budget_bytes=budget, vision_config=cfg,
                                 act_dtype=torch.bfloat16, pixel_dtype=torch.float32)
    assert [len(c.segments) for c in varlen] == [3] * 8 and all(c.packed for c in varlen)


def test_budget_is_capped_by_free_memory_then_agreed(monkeypatch):
    from sglang.srt.models import gemma4_vision_batching as vb

    monkeypatch.setattr(vb, "free_device_bytes", lambda device: 700 * MIB)
    assert vb.resolve_budget_bytes(torch.device("cpu")) == 350 * MIB
    monkeypatch.setattr(vb, "free_device_bytes", lambda device: None)
    assert vb.resolve_budget_bytes(torch.device("cpu"), 3 * MIB) == 3 * MIB
    assert vb.agree_on_budget(123, None) == 123


def test_tower_tp_group_comes_from_the_tp_group(monkeypatch):
    import sglang.srt.runtime_context as rc
    from sglang.srt.models import gemma4_vision_batching as vb

    cpu_group = object()
    parallel = types.SimpleNamespace(tp_group=types.SimpleNamespace(world_size=2, cpu_group=cpu_group))
    monkeypatch.setattr(rc, "get_parallel", lambda: parallel)
    assert vb.tower_tp_cpu_group() is cpu_group
    parallel.tp_group = types.SimpleNamespace(world_size=1, cpu_group=cpu_group)
    assert vb.tower_tp_cpu_group() is None

    class Unset:
        @property
        def tp_group(self):
            raise RuntimeError("parallel name 'tp_group' has not been written in this process")

    monkeypatch.setattr(rc, "get_parallel", lambda: Unset())
    assert vb.tower_tp_cpu_group() is None


# --------------------------------------------------------------------------- two ranks, gloo

_RANK_SCRIPT = r"""
import json, sys, types
import torch
import torch.distributed as dist

here, rank, init_file, free_mib = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, here)
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
import test_gemma4_vision_tp_budget as t
from sglang.srt.models import gemma4_vision_batching as vb

MIB = 1 << 20
report = {}
# (1) the plan of 12 full-size images on the 26B/31B tower, fa3 (packed), each rank with its own free memory
vb.free_device_bytes = lambda device: free_mib["large"][rank] * MIB
segs = t.full_size_segments(12)
cfg = t.large_tower_config()
kw = dict(vision_config=cfg, backend="fa3", act_dtype=torch.bfloat16, device=torch.device("cpu"))
report["alone"] = [list(c.segments) for c in vb.plan_encoder_calls(segs, group=None, **kw)]
report["agreed"] = [list(c.segments) for c in vb.plan_encoder_calls(segs, group=dist.group.WORLD, **kw)]

# (2) the tower calls of the real get_image_feature (tiny model, sdpa on CPU); the TP group is this gloo group
import test_gemma4_vision_batching as tb
m = tb._Models()
vb.tower_tp_cpu_group = lambda: dist.group.WORLD
per_tok = vb.encoder_bytes_per_token(m.cfg.vision_config, torch.float32, attention_len=tb.MAX_PATCHES)
vb.free_device_bytes = lambda device: 2 * free_mib["tiny_images"][rank] * tb.MAX_PATCHES * per_tok
images = [tb.make_image(9, 9, seed=200 + i) for i in range(6)]
m.reset_calls()
with torch.no_grad():
    out = m.sg.get_image_feature([tb.image_item([im]) for im in images])
report["tiny_calls"] = m.calls["encoder"]
report["tiny_out"] = [o.sum().item() for o in out]
gathered = [None, None]
dist.all_gather_object(gathered, report)
if rank == 0:
    print("REPORT " + json.dumps(gathered))
dist.destroy_process_group()
"""


def test_tp_ranks_make_the_same_tower_calls(tmp_path):
    """Rank 0 has 900 MiB free, rank 1 700 MiB: alone they would cut 12 full-size images into 4 and 6 calls
    on the 26B tower; agreed, both make the same 6.  Through the real get_image_feature (tiny model, room
    for 3 and 2 images per call): both ranks make the same number of tower calls, with equal results."""
    free = {"large": [900, 700], "tiny_images": [3, 2]}
    init_file = str(tmp_path / "gloo_init")
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, HERE, str(rank), init_file, json.dumps(free)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    line = next(ln for ln in outs[0][0].splitlines() if ln.startswith("REPORT "))
    r0, r1 = json.loads(line[len("REPORT "):])
    # the setup is meaningful: on its own each rank would plan differently
    assert len(r0["alone"]) == 4 and len(r1["alone"]) == 6
    # agreed: the same plan on both ranks, that of the tighter rank
    assert r0["agreed"] == r1["agreed"] == r1["alone"]
    assert r0["tiny_calls"] == r1["tiny_calls"] == 3  # 6 images, 2 per call (rank 1's room)
    assert r0["tiny_out"] == pytest.approx(r1["tiny_out"], rel=1e-6)
