"""Speed figures a person can trust: interleaved runs, median with spread, implausible ratios flagged, no deprecated
cache argument, a progress bar."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest

from depthprune.evaluate import speed as speed_module
from depthprune.evaluate.runner import markdown_table
from depthprune.evaluate.speed import check_plausible, compare_speed
from depthprune import remove_layers
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def base_and_pruned():
    base = tiny_model("llama", num_layers=6)
    pruned = copy.deepcopy(base)
    remove_layers(pruned, [2, 3])
    return base, pruned


def test_runs_are_interleaved_and_reported_as_median_with_min_max(base_and_pruned, monkeypatch):
    base, pruned = base_and_pruned
    calls = []
    # Seconds per call, hand-picked: pruned prefill 1, 3, 2 s; base prefill 2, 6, 2 s (decode = prefill / 2).
    prefill_times = {"pruned": iter([9.0, 1.0, 3.0, 2.0]), "base": iter([9.0, 2.0, 6.0, 2.0])}

    def fake_timing(model, *args):
        name = "pruned" if model is pruned else "base"
        calls.append(name)
        seconds = next(prefill_times[name])
        return seconds, seconds / 2

    monkeypatch.setattr(speed_module, "_prefill_and_decode", fake_timing)
    result = compare_speed(pruned, base, batch_sizes=(2,), prompt_len=10, new_tokens=5, repeats=3, warmup=1,
                           progress=False)
    assert calls == ["pruned", "base"] * 4                     # A B A B ..., warm-up included
    entry = result["model"]["batches"][2]
    assert entry["prefill_s"] == 2.0 and entry["prefill_s_runs"] == [1.0, 3.0, 2.0]   # warm-up dropped
    assert entry["prefill_tokens_per_s"] == pytest.approx(20 / 2.0)
    assert entry["prefill_tokens_per_s_min"] == pytest.approx(20 / 3.0)
    assert entry["prefill_tokens_per_s_max"] == pytest.approx(20 / 1.0)
    ratio = result["ratios"][2]
    assert ratio["prefill"] == pytest.approx(1.0)              # medians 2 s and 2 s
    assert ratio["prefill_min"] == pytest.approx(1.0)          # pairs: 2/1, 6/3, 2/2
    assert ratio["prefill_max"] == pytest.approx(2.0)
    assert ratio["decode"] == pytest.approx(1.0)
    assert result["settings"]["order"].startswith("interleaved")


def test_ratio_above_ideal_or_below_one_is_flagged_as_noise():
    assert check_plausible(1.10, 1.154)["plausible"]
    assert check_plausible(1.154 * 1.09, 1.154)["plausible"]
    flagged = check_plausible(4.3, 1.154)                      # the demo's prefill figure
    assert not flagged["plausible"] and "above the ideal 1.15x" in flagged["reason"]
    below = check_plausible(0.40, 1.118)                       # the demo's batch-4 figure
    assert not below["plausible"] and "below 1" in below["reason"]


def test_implausible_measurement_is_warned_in_cli_output(base_and_pruned, monkeypatch):
    base, pruned = base_and_pruned
    # the pruned model "runs" 5x faster than its base although only 2 of 6 layers are gone: impossible
    monkeypatch.setattr(speed_module, "_prefill_and_decode",
                        lambda model, *args: (0.2, 0.2) if model is pruned else (1.0, 1.0))
    speed = compare_speed(pruned, base, batch_sizes=(1,), prompt_len=4, new_tokens=2, repeats=2, warmup=0,
                          progress=False)
    layers_ideal = 6 / 4
    verdict = speed["plausibility"][1]["prefill"]
    assert verdict["ideal"] == pytest.approx(layers_ideal) and not verdict["plausible"]
    assert speed["plausibility"][1]["decode"]["ideal"] == pytest.approx(speed["ideal"]["weights_read"])
    assert len(speed["warnings"]) == 2 and all("re-run on an idle machine" in w for w in speed["warnings"])
    table = markdown_table({"model": "m", "speed": speed})
    assert "NOISE" in table and table.count("WARNING: batch 1") == 2
    assert "5.000 (5.000-5.000) (1.500) NOISE" in table


def test_speed_uses_the_current_cache_api_and_shows_progress(base_and_pruned, capsys):
    import transformers.utils.logging as hf_logging

    base, pruned = base_and_pruned
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger().addHandler(handler)
    hf_logging.warning_once.cache_clear()      # a warning shown earlier in this process would be hidden otherwise
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compare_speed(pruned, base, batch_sizes=(1,), prompt_len=8, new_tokens=3, repeats=2, warmup=0)
    finally:
        hf_logging.get_logger().removeHandler(handler)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in records]
    assert not [m for m in messages if "deprecated" in m], messages
    assert result["model"]["batches"][1]["decode_tokens_per_s"] > 0
    assert "speed" in capsys.readouterr().err                  # the tqdm bar
