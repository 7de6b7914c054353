"""Sharded evaluation: 2 CPU processes (gloo) give the same per-sample results, in order, as 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vlm_fixtures import make_items

from mmunlearn.models.adapters import evaluate_sharded, load_adapter

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def test_single_process_is_a_plain_call():
    calls = []

    def fn(batch):
        calls.append(list(batch))
        return [x * 2 for x in batch]

    assert evaluate_sharded(fn, [1, 2, 3]) == [2, 4, 6]
    assert calls == [[1, 2, 3]]
    assert evaluate_sharded(fn, []) == []


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, model_dir):
    directory = model_dir("llava_next")
    adapter = load_adapter(directory, batch_size=1)
    items = make_items()
    expected_totals = [s.total for s in adapter.answer_logprobs(items)]
    expected_texts = adapter.generate(items, max_new_tokens=4)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "sharded_worker.py"), str(directory), str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in records] == [2, 2] and records[0]["backend"] == "gloo"
    assert [r["local_items"] for r in records] == [3, 3]  # 5 items: 3 + 2, the short shard padded by a repeat
    for record in records:
        assert record["totals"] == pytest.approx(expected_totals, abs=1e-4)
        assert record["texts"] == expected_texts
