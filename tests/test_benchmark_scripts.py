"""The benchmark scripts still run: each on a micro world and model (4 text layers, so every whitebox attack
and the resumed probe states have layers to work on), writing its JSON. Figures are not checked here, only
that a script ends well and that its side-by-side checks hold (same outcomes, same pixels)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

SCRIPTS = {  # script: (its options, config overrides beside the micro ones, keys its JSON must have)
    "whitebox_suite.py": (["--facts", "4", "--repeats", "1", "--group", "2"], ["unlok.n_facts=8"],
                          {"ratio", "group_ratio", "probe_states_whole_ms"}),
    "protocol_phases.py": (["--groups", "1"], ["unlok.n_facts=8", "unlok.batch_facts=2"], {"median", "groups"}),
    "batched_edits.py": (["--facts", "2", "--slots", "2", "--repeats", "1", "--protocol"], ["unlok.n_facts=8"],
                         {"ratio", "same_outcomes"}),
    "unlearning_cost.py": (["--steps", "2"], [], {"text", "multimodal", "matmul_flops_per_s"}),
    "train_step.py": (["--batches", "1", "--repeats", "1"], [], {"rows", "real_tokens"}),
    "warmup_cost.py": (["--images", "16", "--cards", "4", "--steps", "2", "--repeats", "1"], [],
                       {"rows", "largest_pixel_difference", "largest_weight_difference"}),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("benchmark-cache")


@pytest.mark.slow
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_benchmark_script_runs_and_writes_its_json(script, cache, tmp_path, micro_overrides):
    options, overrides, keys = SCRIPTS[script]
    micro = [o if not o.startswith("model.text_layers=") else "model.text_layers=4" for o in micro_overrides]
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, script, *options, "--out", str(out), *overrides, *micro,
                           f"paths.cache_dir={cache}"], cwd=BENCHMARKS, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert keys <= set(result)
    if script == "batched_edits.py":
        assert result["same_outcomes"] == result["outcomes"]
    if script == "warmup_cost.py":
        assert result["largest_pixel_difference"] == 0 and result["largest_weight_difference"] == 0


@pytest.mark.slow
def test_whitebox_suite_runs_with_the_edit_at_layer_zero(cache, tmp_path, micro_overrides):
    """On 2 text layers the edit sits at layer 0, where nothing below it can be skipped: the script reports
    the resumed variant as not applicable, as the protocol runs the whole model there, instead of failing."""
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "whitebox_suite.py", "--facts", "4", "--repeats", "1", "--group", "2",
                           "--out", str(out), "unlok.n_facts=8", "unlok.attack_params.pd2.layers=all", *micro_overrides,
                           f"paths.cache_dir={cache}"],
                          cwd=BENCHMARKS, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not applicable: the edit is at layer 0" in proc.stdout
    result = json.loads(out.read_text())
    assert result["probe_states_resumed_ms"] is None and result["probe_states_above_down_max_difference"] == 0.0
