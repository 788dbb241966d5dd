"""The quality gate (``prune --max-ppl-ratio`` / ``--target-params``) and ``--compensate`` through the CLI, the
sweep and the report, on a tiny checkpoint."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune import DepthpruneError, prune, remove_layers
from depthprune.cli import main
from depthprune.compensate import compensate
from depthprune.data import DataSpec, calibration_blocks
from depthprune.plan import PrunePlan
from depthprune.quality_gate import parse_param_count, search_max_count, smallest_count_for_params
from tiny_models import tiny_model

DATA = ["--data", "builtin", "--samples", "4", "--seq-len", "32"]
SPEC = DataSpec(source="builtin", samples=4, seq_len=32)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("depthprune: error:")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    tiny_model("llama", num_layers=6).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_search_stops_at_the_first_count_over_the_bound():
    perplexities = {1: 10.5, 2: 12.0, 3: 14.5, 4: 12.5, 5: 30.0}     # 4 would pass again: the scan stops at 3
    tried = []

    def perplexity_at(n):
        tried.append(n)
        return perplexities[n]

    chosen, steps = search_max_count(perplexity_at, 10.0, 1.3, 5, lambda n: list(range(n)), lambda n: 100 - n)
    assert chosen == 2 and tried == [1, 2, 3]
    assert [(s.n, s.passed) for s in steps] == [(1, True), (2, True), (3, False)]
    assert steps[2].ratio == pytest.approx(1.45) and steps[1].parameters == 98
    chosen, steps = search_max_count(perplexities.get, 10.0, 1.0, 5, lambda n: [], lambda n: 0)
    assert chosen == 0 and len(steps) == 1


def test_parameter_target():
    assert smallest_count_for_params(80, 5, lambda n: 100 - 7 * n) == 3
    with pytest.raises(DepthpruneError, match="still leaves 65 parameters"):
        smallest_count_for_params(10, 5, lambda n: 100 - 7 * n)
    assert parse_param_count("100M") == 100_000_000 and parse_param_count("1.5k") == 1500
    assert parse_param_count(12345) == 12345
    with pytest.raises(DepthpruneError, match="write a parameter count"):
        parse_param_count("lots")


def _calibration_ppl(model, ids) -> float:
    """The slow obvious perplexity: every next-token loss of every block."""
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(float(losses))


def test_gate_records_every_step_and_picks_the_largest_passing_prefix(checkpoint, tiny_tokenizer):
    everything = prune(str(checkpoint), method="bi", data=SPEC, max_ppl_ratio=1e9, dry_run=True, batch_size=4)
    gate = everything.settings["quality_gate"]
    steps = gate["steps"]
    assert [s["n"] for s in steps] == [1, 2, 3, 4] and gate["chosen_n"] == 4 == everything.settings["n"]
    ids = calibration_blocks(SPEC, tiny_tokenizer)
    dense = tiny_model("llama", num_layers=6)
    assert gate["dense_calibration_ppl"] == pytest.approx(_calibration_ppl(dense, ids), rel=1e-4)
    second = copy.deepcopy(dense)
    remove_layers(second, steps[1]["removed_layers"])
    assert steps[1]["ppl"] == pytest.approx(_calibration_ppl(second, ids), rel=1e-4)
    assert steps[1]["parameters"] == sum(p.numel() for p in second.parameters())
    # a bound between the ratios: the largest n whose every smaller count passes
    ratios = [s["ratio"] for s in steps]
    bound = max(ratios[:2]) + 1e-9
    expected = next((i for i, r in enumerate(ratios) if r > bound), len(ratios))
    plan = prune(str(checkpoint), method="bi", data=SPEC, max_ppl_ratio=bound, dry_run=True)
    assert expected >= 2 and plan.settings["n"] == expected and len(plan.removed_layers) == expected
    assert plan.removed_layers == steps[expected - 1]["removed_layers"]
    with pytest.raises(DepthpruneError, match="removing even one layer"):
        prune(str(checkpoint), method="bi", data=SPEC, max_ppl_ratio=ratios[0] - 1e-6, dry_run=True)


def test_target_params_removes_the_fewest_layers_that_fit(checkpoint):
    model = tiny_model("llama", num_layers=6)
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    plan = prune(str(checkpoint), method="magnitude", keep_edges=False, target_params=total - 2 * per_layer - 1,
                 dry_run=True)
    assert plan.settings["n"] == 3 and plan.settings["quality_gate"]["steps"][0]["parameters"] == total - 3 * per_layer


def test_compensated_prune_reloads_with_plain_transformers(checkpoint, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "compensated"
    assert main(["prune", str(checkpoint), "--layers", "2-3", "--compensate", "linear", *DATA,
                 "--output", str(out)]) == 0
    assert "compensated (linear): calibration perplexity dense" in capsys.readouterr().out
    metadata = json.loads((out / "depthprune.json").read_text())
    record = metadata["compensation"]
    assert record["method"] == "linear" and record["calibration_tokens"] == 4 * 32
    assert record["gaps"][0]["removed_layers"] == [2, 3] and record["gaps"][0]["kept_before"] == 1
    assert metadata["plan"]["settings"]["compensate"] == "linear"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = tiny_model("llama", num_layers=6)
    ids = calibration_blocks(SPEC, tiny_tokenizer)
    compensate(expected, PrunePlan(num_layers=6, removed_layers=[2, 3]), "linear", ids, measure=False,
               show_progress=False)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected(input_ids=ids).logits, atol=1e-5)
    plain = tmp_path / "plain"
    assert main(["prune", str(checkpoint), "--layers", "2-3", "--output", str(plain)]) == 0
    assert json.loads((plain / "config.json").read_text()) == json.loads((out / "config.json").read_text())
    from depthprune.report import build_report

    _, markdown, _ = build_report([out])
    assert "Compensation — linear" in markdown and "compensated" in markdown


@pytest.mark.parametrize("arguments, message", [
    (["--layers", "2", "--compensate", "linear"], "--compensate linear is calibrated on data"),
    (["--layers", "2", "--compensate", "lineer", *DATA], "did you mean 'linear'"),
    (["--layers", "2", "--compensate", "scale", "--dry-run", *DATA], "would be ignored with --dry-run"),
    (["--layers", "2", "--max-ppl-ratio", "2", *DATA], "use --method, not --layers"),
    (["--method", "bi", "--n", "2", "--max-ppl-ratio", "2", *DATA], "drop --n/--ratio"),
    (["--method", "sleb", "--max-ppl-ratio", "2", *DATA], "(SLEB's order)"),
    (["--method", "bi", "--max-ppl-ratio", "0", *DATA], "must be positive"),
    (["--method", "bi", "--max-ppl-ratio", "2"], "measures calibration perplexity"),
    (["--layers", "2", "--compensate", "linear", "--keep-edges", *DATA], "--keep-edges would be ignored"),
])
def test_bad_combinations_are_one_line(checkpoint, tmp_path, capsys, arguments, message):
    out = tmp_path / "out"
    assert main(["prune", str(checkpoint), *arguments, "--output", str(out)]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_sweep_draws_a_compensated_curve_beside_each_criterion(checkpoint):
    from depthprune.sweep import sweep

    result = sweep(str(checkpoint), methods="bi", n="0:2", eval="builtin", data="builtin", samples=4, seq_len=32,
                   eval_seq_len=32, max_windows=2, compensate="scale")
    assert result["methods"] == ["bi", "bi+scale"]
    points = {(p["method"], p["n"]): p for p in result["points"]}
    assert points[("bi", 0)]["builtin_ppl"] == points[("bi+scale", 0)]["builtin_ppl"]     # the dense model
    assert points[("bi", 2)]["removed_layers"] == points[("bi+scale", 2)]["removed_layers"]
    assert points[("bi", 2)]["builtin_ppl"] != points[("bi+scale", 2)]["builtin_ppl"]
