"""Healing on tiny random models: LoRA learns, merging is exact, resume is exact, distillation is a true KL,
divergence stops the run, bad input is refused. Expected values come from hand-worked formulas, the un-merged
adapter (peft's own forward), an uninterrupted run, or the model's loss computed the plain way."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from depthprune import DepthpruneError, remove_layers, save
from depthprune.heal import (HealConfig, LossDiverged, apply_lora, build_config, default_presets, kd_loss, presets,
                             resolve_targets, train)
from depthprune.heal.trainer import data_order, make_accelerator
from tiny_models import REQUIRED_ARCHITECTURES, VOCAB, tiny_model

SEQ = 32



def blocks(count: int, seed: int = 0, seq_len: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (count, seq_len), generator=torch.Generator().manual_seed(seed))


def plain_lm_loss(model, token_blocks: torch.Tensor) -> float:
    """The model's own causal-LM loss (transformers shifts the labels), in eval mode."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=token_blocks, labels=token_blocks).loss.item()


def config(**overrides) -> HealConfig:
    settings = dict(seq_len=SEQ, batch_size=4, max_steps=6, eval_every=3, eval_samples=4, save_every=2,
                    warmup_steps=0)
    settings.update(overrides)
    return build_config(**settings)


def save_tiny_checkpoint(folder, tokenizer, removed=(1,), num_layers=4, seed=0):
    """A tiny pruned checkpoint with depthprune.json, and its unpruned base beside it."""
    base = tiny_model("llama", num_layers, seed=seed)
    base_dir = folder / "base"
    save(base, tokenizer, base_dir)
    pruned = copy.deepcopy(base)
    remove_layers(pruned, list(removed))
    kept = [i for i in range(num_layers) if i not in removed]
    pruned_dir = folder / "pruned"
    save(pruned, tokenizer, pruned_dir, metadata={"base_model": str(base_dir.resolve()), "kept_layers": kept,
                                                  "removed_layers": list(removed), "num_layers_original": num_layers,
                                                  "method": "manual"})
    return base_dir, pruned_dir


# ------------------------------------------------------------------------------------------------ configuration
def test_every_preset_builds_a_valid_config_of_its_method():
    for name, preset in presets().items():
        built = build_config(preset=name, max_steps=1)
        assert built.preset == name and built.method == preset.settings["method"]
    gromov = build_config(preset="gromov-lora", max_steps=1)
    assert (gromov.targets, gromov.lora_alpha, gromov.dropout, gromov.warmup_steps) == ("mlp", gromov.rank, 0.05, 100)
    cpt = build_config(method="full", max_steps=1)     # a method's default recipe is its paper's preset
    assert (cpt.preset, cpt.betas, cpt.weight_decay) == (default_presets()["full"], (0.9, 0.95), 0.1)
    assert build_config(preset="shortened-lora", max_steps=1).lora_alpha == 16.0


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(preset="gromov-lroa"), "did you mean 'gromov-lora'"),
    (dict(max_steps=3, tokens=100), "either --max-steps or --train-tokens"),
    (dict(method="lora", lm_loss_weight=0.5), "--method distill only"),
    (dict(dropout=1.5), "--dropout"),
    (dict(rnak=4), "did you mean 'rank'"),
])
def test_bad_settings_are_refused_with_the_fix(kwargs, fragment):
    with pytest.raises(DepthpruneError, match=fragment.replace("(", r"\(")):
        build_config(**kwargs)


def test_config_file_is_checked_key_by_key(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("preset: shortened-cpt\nlr: 2.0e-5\nmax-steps: 7\n")
    built = build_config(config_file=str(good), lr=None)
    assert (built.method, built.lr, built.max_steps, built.weight_decay) == ("full", 2e-5, 7, 0.1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning_rate: 1\n")
    with pytest.raises(DepthpruneError, match="lerning_rate"):
        build_config(config_file=str(bad))


def test_token_budget_rounds_up_to_whole_steps():
    built = build_config(tokens=1000, batch_size=2, grad_accum=3, seq_len=64)   # 384 tokens per step
    assert built.resolve_steps(1) == 3 and built.resolve_steps(2) == 2


def test_data_order_is_seeded_epochs_of_permutations():
    order = data_order(5, 12, seed=3)
    assert sorted(order[:5].tolist()) == list(range(5)) and sorted(order[5:10].tolist()) == list(range(5))
    assert torch.equal(order, data_order(5, 12, seed=3)) and not torch.equal(order, data_order(5, 12, seed=4))


# ------------------------------------------------------------------------------------------------ LoRA targets
def test_targets_select_exactly_the_projections_of_the_decoder_layers():
    model = tiny_model("llama", 2)
    mlp, mlp_names = resolve_targets(model, "mlp")
    attn, _ = resolve_targets(model, "attn")
    assert mlp == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    assert attn == ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert len(mlp_names) == 6 and all(name.startswith("model.layers.") for name in mlp_names)
    peft_model = apply_lora(model, config(targets="all"))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 7       # A and B for 7 projections in each of 2 layers; lm_head untouched


@pytest.mark.parametrize("model_type", REQUIRED_ARCHITECTURES)
def test_lora_wraps_every_architecture_and_starts_as_the_base_model(model_type):
    model = tiny_model(model_type, 2)
    ids = blocks(2, seq_len=8)
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
    if model_type == "mixtral":    # experts are fused parameters, not linear modules: refused, not silently skipped
        with pytest.raises(DepthpruneError, match="--targets mlp: no matching"):
            resolve_targets(model, "mlp")
    peft_model = apply_lora(model, config(targets="all")).eval()
    with torch.no_grad():           # B starts at zero, so the adapted model computes exactly the base model
        torch.testing.assert_close(peft_model(input_ids=ids).logits, base_logits)


# ------------------------------------------------------------------------------------------------ training
def test_lora_steps_lower_the_training_loss_and_merging_is_exact():
    torch.manual_seed(0)
    model = tiny_model("llama", 3)
    data = blocks(8)
    before = plain_lm_loss(model, data)
    run = config(method="lora", targets="all", rank=8, lr=1e-2, max_steps=25, dropout=0.0, eval_samples=0)
    first_batch_loss = plain_lm_loss(model, data[data_order(len(data), 4, run.seed)])
    result = train(apply_lora(model, run), data, None, run, accelerator=make_accelerator(run), progress=False)
    losses = result.state.train_losses
    assert len(losses) == 25 and abs(losses[0] - first_batch_loss) < 1e-4     # step 1 sees the untouched model
    peft_model = result.model.eval()
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=data).logits          # base + B A x, peft's un-merged forward
    after = plain_lm_loss(peft_model, data)
    assert after < before - 0.3, (before, after)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(input_ids=data).logits
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged_logits, adapter_logits, atol=2e-5, rtol=1e-5)


def test_kd_loss_matches_a_hand_worked_kl():
    # teacher p = (1/2, 1/2); student q = (3/4, 1/4): KL(p || q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    teacher = torch.tensor([[[0.0, 0.0]]])
    student = torch.tensor([[[math.log(3.0), 0.0]]])
    assert kd_loss(student, teacher).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # at tau = 2 the logits halve: q = (sqrt3, 1)/(sqrt3 + 1); the result is scaled by tau^2 = 4
    q0, q1 = math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)
    expected = 4 * (0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / q1))
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)
    logits = torch.randn(2, 5, 11)
    assert kd_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_is_zero_when_the_student_is_the_teacher():
    student = tiny_model("llama", 2)
    teacher = copy.deepcopy(student).requires_grad_(False)
    data = blocks(4)
    run = config(method="distill", max_steps=1, eval_samples=0, lr=1e-3)
    result = train(student.requires_grad_(True), data, None, run, accelerator=make_accelerator(run), teacher=teacher,
                   progress=False)
    assert result.state.train_losses[0] == pytest.approx(0.0, abs=1e-6)
    # mixed with the LM loss, the KL term still vanishes: the loss is w times the plain LM loss
    student = copy.deepcopy(teacher).requires_grad_(True)
    mixed = config(method="distill", max_steps=1, eval_samples=0, lm_loss_weight=0.25)
    result = train(student, data, None, mixed, accelerator=make_accelerator(mixed), teacher=teacher, progress=False)
    assert result.state.train_losses[0] == pytest.approx(0.25 * plain_lm_loss(teacher, data), rel=1e-5)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path, grad_accum):
    data, held_out = blocks(6), blocks(4, seed=1)
    run = config(method="lora", targets="all", lr=5e-3, max_steps=7, dropout=0.1, save_every=2,  # dropout: RNG
                 grad_accum=grad_accum)

    def fresh():
        return apply_lora(tiny_model("llama", 2), run)

    whole = train(fresh(), data, held_out, run, accelerator=make_accelerator(run), checkpoint_dir=tmp_path / "a",
                  progress=False)

    class Interrupted(Exception):
        pass

    def stop_at_5(step, loss):
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(fresh(), data, held_out, run, accelerator=make_accelerator(run), checkpoint_dir=tmp_path / "b",
              callback=stop_at_5, progress=False)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["step-00000002", "step-00000004"]
    resumed = train(fresh(), data, held_out, run, accelerator=make_accelerator(run), checkpoint_dir=tmp_path / "b",
                    resume=True, progress=False)
    assert resumed.resumed_from == 4 and resumed.state.step == 7
    assert resumed.state.tokens_seen == whole.state.tokens_seen == 7 * 4 * grad_accum * SEQ
    torch.testing.assert_close(torch.tensor(resumed.state.train_losses), torch.tensor(whole.state.train_losses),
                               atol=1e-6, rtol=1e-6)
    assert [s for s, _ in resumed.state.eval_losses] == [0, 3, 6, 7]
    torch.testing.assert_close(torch.tensor(resumed.state.eval_losses), torch.tensor(whole.state.eval_losses),
                               atol=1e-6, rtol=1e-6)
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_resume_refuses_changed_settings(tmp_path):
    data = blocks(4)
    run = config(method="full", max_steps=4, save_every=2, eval_samples=0)
    train(tiny_model("llama", 2), data, None, run, accelerator=make_accelerator(run), checkpoint_dir=tmp_path,
          progress=False)
    changed = config(method="full", max_steps=4, save_every=2, eval_samples=0, batch_size=2)
    with pytest.raises(DepthpruneError, match=r"batch_size \(4 -> 2\) differ"):
        train(tiny_model("llama", 2), data, None, changed, accelerator=make_accelerator(changed),
              checkpoint_dir=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("bad_lr, symptom", [(float("inf"), "the loss became nan"), (50.0, "the loss jumped")])
def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, bad_lr, symptom):
    """Three good steps, then a resume with a bad lr (a resumed run may change the lr): step 4 applies it, step 5
    sees the damage and stops before applying anything."""
    data = blocks(8)
    run = config(method="full", lr=1e-3, weight_decay=0.0, max_steps=20, save_every=1, eval_samples=0)

    class Interrupted(Exception):
        pass

    def stop_at_3(step, loss):
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tiny_model("llama", 2), data, None, run, accelerator=make_accelerator(run), checkpoint_dir=tmp_path,
              callback=stop_at_3, progress=False)
    good_losses = json.loads((tmp_path / "step-00000003" / "trainer_state.json").read_text())["train_losses"]
    poisoned = config(method="full", lr=bad_lr, weight_decay=0.0, max_steps=20, save_every=1, eval_samples=0)
    with pytest.raises(LossDiverged, match=f"stopped at step 5: {symptom}.*step-00000003 is kept"):
        train(tiny_model("llama", 2), data, None, poisoned, accelerator=make_accelerator(poisoned),
              checkpoint_dir=tmp_path, resume=True, progress=False)
    # step 4's checkpoint held the weights that diverged and is gone; step 3's is untouched (two are kept at a time)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003"]
    kept = json.loads((tmp_path / "step-00000003" / "trainer_state.json").read_text())
    assert kept["train_losses"] == good_losses and all(math.isfinite(x) and x < 7 for x in good_losses)
