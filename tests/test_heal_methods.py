"""Healing methods live on one registry: every entry builds from its own presets, a throw-away method registered in a
test heals through the Python API and the command line with no other edit, settings of other methods are refused,
``--train-layers touched`` trains exactly the kept layers next to each gap, and ``--mixed-precision auto`` picks
bf16 where the CPU has bf16 arithmetic while the saved weights stay float32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from depthprune import DepthpruneError
from depthprune.cli import main
from depthprune.heal import HEALING_METHODS, HealingMethod, Preset, build_config, heal, touched_layers
from depthprune.heal.full import make_trainable
from test_heal import save_tiny_checkpoint

SETTINGS = dict(seq_len=32, batch_size=4, max_steps=3, eval_every=3, eval_samples=2, save_every=100)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    """Layer 1 of 4 removed: kept 0, 2, 3 (original numbering) are layers 0, 1, 2 of the pruned model."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_tokenizer)


def test_every_registered_method_builds_from_each_of_its_presets():
    assert HEALING_METHODS.names() == ("lora", "qlora", "full", "distill")
    for method in HEALING_METHODS:
        for preset in method.presets:
            built = build_config(preset=preset.name, max_steps=1)
            assert built.method == method.name and built.preset == preset.name
        assert build_config(method=method.name, max_steps=1).preset == method.default_preset


def test_a_setting_only_other_methods_read_is_refused():
    with pytest.raises(DepthpruneError, match=r"--top-k applies to --method distill only"):
        build_config(method="full", top_k=8, max_steps=1)
    with pytest.raises(DepthpruneError, match=r"--rank applies to --method lora, qlora only"):
        build_config(method="distill", rank=4, max_steps=1)
    with pytest.raises(DepthpruneError, match=r"unknown healing method 'lroa' for --method.*did you mean 'lora'"):
        build_config(method="lroa", max_steps=1)


def _norms_only(model, config, layers):
    """A throw-away method: only the RMSNorm weights train."""
    model.requires_grad_(False)
    for name, parameter in model.named_parameters():
        if "norm" in name:
            parameter.requires_grad_(True)
    return model


@pytest.fixture
def norms_method():
    method = HEALING_METHODS.register(HealingMethod(
        name="norms-only", help="only the norm weights (a test method)",
        presets=(Preset("test-norms", "a test", dict(method="norms-only", lr=1e-2, warmup_steps=0)),),
        make_student=_norms_only))
    yield method
    HEALING_METHODS.unregister("norms-only")


def test_a_method_registered_in_one_place_heals_through_the_api_and_the_cli(checkpoints, tmp_path, norms_method):
    _, pruned_dir = checkpoints
    result = heal(str(pruned_dir), output=tmp_path / "api", method="norms-only", progress=False, plots=False,
                  **SETTINGS)
    assert result.metadata["healing"]["preset"] == "test-norms"
    before, after = load_file(pruned_dir / "model.safetensors"), load_file(tmp_path / "api" / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("norm" in name for name in changed)       # exactly what the method trains
    assert main(["heal", str(pruned_dir), "--method", "norms-only", "--max-steps", "2", "--seq-len", "32",
                 "--batch-size", "2", "--eval-samples", "2", "--no-progress", "--no-plots",
                 "--output", str(tmp_path / "cli")]) == 0
    healing = json.loads((tmp_path / "cli" / "depthprune.json").read_text())["healing"]
    assert (healing["method"], healing["steps"]) == ("norms-only", 2)


# ------------------------------------------------------------------------------------------------ touched layers
@pytest.mark.parametrize("kept, total, expected", [
    ([0, 1, 2, 5, 6, 7], 8, [2, 3]),        # 3-4 removed: kept 2 and 5, pruned positions 2 and 3
    ([1, 2, 3], 4, [0]),                    # the first layer removed: only the layer after the gap
    ([0, 1, 2], 4, [2]),                    # the last layer removed: only the layer before it
    ([0, 2, 4], 5, [0, 1, 2]),              # every kept layer borders a gap
])
def test_touched_layers_are_the_kept_neighbours_of_each_gap(kept, total, expected):
    assert touched_layers({"kept_layers": kept, "num_layers_original": total}) == expected


def test_touched_layers_need_a_pruned_model():
    with pytest.raises(DepthpruneError, match="--train-layers touched needs a pruned model"):
        touched_layers({"kept_layers": [0, 1, 2], "num_layers_original": 3})
    with pytest.raises(DepthpruneError, match="--train-layers touched needs a pruned model"):
        touched_layers({})


@pytest.mark.parametrize("method", ["full", "lora"])
def test_train_layers_touched_changes_only_the_layers_next_to_the_gap(checkpoints, tmp_path, method):
    _, pruned_dir = checkpoints
    out = tmp_path / method
    extra = dict(targets="all", lr=1e-2) if method == "lora" else dict(lr=1e-3)
    result = heal(str(pruned_dir), output=out, method=method, train_layers="touched", progress=False, plots=False,
                  **SETTINGS, **extra)
    assert result.metadata["healing"]["trained_layers"] == [0, 1]       # kept 0 and 2 border removed layer 1
    before, after = load_file(pruned_dir / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(name.startswith("model.layers.0.") for name in changed)
    assert any(name.startswith("model.layers.1.") for name in changed)
    assert all(name.startswith(("model.layers.0.", "model.layers.1.")) for name in changed), sorted(changed)


def test_make_trainable_leaves_exactly_the_named_layers_trainable():
    from tiny_models import tiny_model

    model = make_trainable(tiny_model("llama", 3), layers=[1])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if name.startswith("model.layers.1.")}


# ------------------------------------------------------------------------------------------------ mixed precision
def test_cpu_bf16_is_read_from_the_cpu_flags():
    from depthprune.heal.trainer import cpu_has_bf16

    assert cpu_has_bf16("processor : 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16("flags : fpu amx_bf16\n")
    assert not cpu_has_bf16("flags : fpu sse avx512f avx512bw\n")


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change; start and leave a clean one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_mixed_precision_auto_trains_in_bf16_where_the_cpu_has_it_and_saves_float32(checkpoints, tmp_path,
                                                                                    fresh_accelerate_state):
    _, pruned_dir = checkpoints
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    has_bf16 = any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
    result = heal(str(pruned_dir), output=tmp_path / "auto", method="full", mixed_precision="auto", cpu=True,
                  progress=False, plots=False, **SETTINGS)
    assert result.metadata["healing"]["mixed_precision"] == ("bf16" if has_bf16 else "no")
    saved = load_file(tmp_path / "auto" / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}     # fp32 master weights
