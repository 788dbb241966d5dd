"""Healing is safe and honest: a user's files in --checkpoint-dir survive, optional packages are checked before any
work, the model is saved before the plot, an interrupted run resumes to the uninterrupted result, --resume refuses a
changed budget or data order, the divergence stop is scale-free, an fp16 overflow skips a step instead of stopping
the run, DeepSpeed takes accumulation and clipping from the CLI, QLoRA reads its weights once in 4 bits, and
--data self is refused."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from depthprune import DepthpruneError
from depthprune.cli import main
from depthprune.heal import LossDiverged, apply_lora, heal, train
from depthprune.heal.trainer import (check_launch_settings, deepspeed_plugin, divergence_problem, latest_checkpoint,
                                     make_accelerator)
from test_heal import SEQ, blocks, config, save_tiny_checkpoint
from tiny_models import tiny_model

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(seq_len=32, batch_size=4, max_steps=6, eval_every=3, eval_samples=4, save_every=2)
CLI_SETTINGS = ["--data", "builtin", "--method", "lora", "--targets", "all", "--dropout", "0.1", "--lr", "5e-3",
                "--max-steps", "6", "--seq-len", "32", "--batch-size", "4", "--eval-every", "3", "--eval-samples", "4",
                "--save-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_tokenizer)


class Interrupted(Exception):
    pass


def stop_at(step_to_stop):
    def callback(step, loss):
        if step == step_to_stop:
            raise Interrupted
    return callback


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("depthprune: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------------------------ 1. the checkpoint folder
def test_a_users_files_in_the_checkpoint_dir_survive_force_and_success(checkpoints, tmp_path):
    _, pruned_dir = checkpoints
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "step-00000099").mkdir()                     # looks like a checkpoint, but holds no state file of ours
    (mine / "step-00000099" / "data.bin").write_bytes(b"\x00\x01")
    # an earlier run of ours, interrupted after its checkpoint at step 2
    with pytest.raises(Interrupted):
        heal(str(pruned_dir), output=tmp_path / "first", checkpoint_dir=mine, progress=False, plots=False,
             callback=stop_at(3), **SETTINGS)
    assert latest_checkpoint(mine).name == "step-00000002"
    with pytest.raises(DepthpruneError, match="--resume.*--force"):
        heal(str(pruned_dir), output=tmp_path / "out", checkpoint_dir=mine, progress=False, plots=False, **SETTINGS)
    # --force starts afresh: our checkpoint goes, the user's files stay; after success ours are removed again
    result = heal(str(pruned_dir), output=tmp_path / "out", checkpoint_dir=mine, force=True, progress=False,
                  plots=False, **SETTINGS)
    assert result.metadata["healing"]["resumed_from_step"] is None
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (mine / "step-00000099" / "data.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "step-00000099"]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_default_checkpoint_dir_goes_once_the_model_is_saved_but_a_user_file_in_it_stays(checkpoints, tmp_path):
    _, pruned_dir = checkpoints
    default = tmp_path / "out.checkpoints"
    default.mkdir()
    (default / "keep.txt").write_text("x")
    heal(str(pruned_dir), output=tmp_path / "out", progress=False, plots=False, **SETTINGS)
    assert [p.name for p in default.iterdir()] == ["keep.txt"]
    heal(str(pruned_dir), output=tmp_path / "out2", progress=False, plots=False, **SETTINGS)
    assert not (tmp_path / "out2.checkpoints").exists()      # ours alone: removed with its folder


# ------------------------------------------------------------------------------------ 2. optional packages first
def test_missing_matplotlib_stops_heal_before_loading_and_writes_nothing(checkpoints, tmp_path, monkeypatch, capsys):
    import depthprune.extras
    import depthprune.heal.healing

    _, pruned_dir = checkpoints
    real = depthprune.extras.is_available
    monkeypatch.setattr(depthprune.extras, "is_available", lambda module: module != "matplotlib" and real(module))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing package was reported")

    with monkeypatch.context() as patch:
        patch.setattr(depthprune.heal.healing, "load_model", no_loading)
        out = tmp_path / "healed"
        assert main(["heal", str(pruned_dir), *CLI_SETTINGS, "--output", str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "matplotlib" in line and "pip install" in line and "--no-plots" in line
        assert list(tmp_path.iterdir()) == []                 # no output, no checkpoint folder, no temp folder
    # --no-plots needs no matplotlib: the model is healed and saved, without the plot
    assert main(["heal", str(pruned_dir), *CLI_SETTINGS, "--no-plots", "--output", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "loss_curve.png").exists()


def test_missing_peft_is_reported_before_loading(checkpoints, tmp_path, monkeypatch):
    import depthprune.extras

    _, pruned_dir = checkpoints
    real = depthprune.extras.is_available
    monkeypatch.setattr(depthprune.extras, "is_available", lambda module: module != "peft" and real(module))
    with pytest.raises(DepthpruneError, match=r"needs peft: pip install 'depthprune\[heal\]'"):
        heal(str(pruned_dir), output=tmp_path / "x", method="lora", progress=False, **SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_the_model_is_saved_before_the_plot_is_drawn(checkpoints, tmp_path, monkeypatch, caplog):
    import depthprune.heal.healing

    _, pruned_dir = checkpoints

    def broken_plot(*args, **kwargs):
        raise RuntimeError("no display backend")

    monkeypatch.setattr(depthprune.heal.healing, "curve_png", broken_plot)
    out = tmp_path / "healed"
    heal(str(pruned_dir), output=out, progress=False, **SETTINGS)
    assert (out / "model.safetensors").is_file() and (out / "depthprune.json").is_file()
    assert not (out / "loss_curve.png").exists()
    assert "loss curve could not be drawn" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["healed"]     # no temp folder or checkpoints left


# ------------------------------------------------------------------------------------ 3. a real interruption
# Run in a subprocess: after its first checkpoint is safely on disk, the run announces it and waits, so the test can
# deliver SIGINT mid-run deterministically (a fast tiny run would otherwise finish before the signal arrives).
_INTERRUPTIBLE = """
import sys, time
from pathlib import Path
import depthprune.heal.trainer as trainer
original = trainer._save_checkpoint
def save_then_wait(*args, **kwargs):
    saved = original(*args, **kwargs)
    Path(sys.argv[1]).write_text(saved.name)
    time.sleep(300)
trainer._save_checkpoint = save_then_wait
from depthprune.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigint_mid_run_leaves_no_output_and_resume_gives_the_uninterrupted_result(checkpoints, tmp_path):
    _, pruned_dir = checkpoints
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    assert main(["heal", str(pruned_dir), *CLI_SETTINGS, "--no-plots", "--output", str(whole)]) == 0

    sentinel = tmp_path / "checkpoint-saved"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, str(sentinel), "heal", str(pruned_dir),
                                *CLI_SETTINGS, "--no-plots", "--output", str(out)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not sentinel.exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never saved its first checkpoint"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert sentinel.read_text() == "step-00000002"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-saved", "resumed.checkpoints", "whole"]
    assert latest_checkpoint(tmp_path / "resumed.checkpoints").name == "step-00000002"

    assert main(["heal", str(pruned_dir), *CLI_SETTINGS, "--no-plots", "--resume", "--output", str(out)]) == 0
    resumed_healing = json.loads((out / "depthprune.json").read_text())["healing"]
    whole_healing = json.loads((whole / "depthprune.json").read_text())["healing"]
    assert resumed_healing["resumed_from_step"] == 2 and resumed_healing["steps"] == 6
    torch.testing.assert_close(torch.tensor(resumed_healing["train_losses"]),
                               torch.tensor(whole_healing["train_losses"]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(resumed_healing["eval_losses"]),
                               torch.tensor(whole_healing["eval_losses"]), atol=1e-6, rtol=1e-6)
    resumed_weights, whole_weights = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert resumed_weights.keys() == whole_weights.keys()
    for name in whole_weights:
        torch.testing.assert_close(resumed_weights[name], whole_weights[name], atol=1e-6, rtol=1e-5, msg=name)
    assert not (tmp_path / "resumed.checkpoints").exists()


# ------------------------------------------------------------------------------------ 4. --resume refuses changes
@pytest.fixture(scope="module")
def interrupted_run(checkpoints, tmp_path_factory):
    """A heal interrupted at step 3 of 6, its checkpoint at step 2 on disk."""
    _, pruned_dir = checkpoints
    folder = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(Interrupted):
        heal(str(pruned_dir), output=folder / "out", progress=False, plots=False, callback=stop_at(3), **SETTINGS)
    return pruned_dir, folder


@pytest.mark.parametrize("change, named", [
    (dict(max_steps=8), r"max_steps \(6 -> 8\).*num_steps \(6 -> 8\)"),
    (dict(max_steps=None, tokens=10_000), r"max_steps \(6 -> None\).*num_steps \(6 -> 79\).*tokens \(None -> 10000\)"),
    (dict(warmup_steps=0), r"warmup_steps \(100 -> 0\)"),
    (dict(samples=8), r"data.samples \(0 -> 8\).*data_fingerprint"),
    (dict(data_source="wikitext-like.txt"), r"data.data \(builtin -> .*wikitext-like.txt\).*data_fingerprint"),
    (dict(eval_samples=2), r"eval_samples \(4 -> 2\).*held_out_fingerprint"),
    (dict(seed=1), r"data_fingerprint.*seed \(0 -> 1\)"),
])
def test_resume_refuses_a_changed_budget_schedule_or_data_order_and_names_it(interrupted_run, change, named):
    from depthprune.data import DataSpec

    pruned_dir, folder = interrupted_run
    settings = dict(SETTINGS)
    data = "builtin"
    if "samples" in change:
        data = DataSpec(source="builtin", samples=change.pop("samples"), seq_len=32)
    if "data_source" in change:
        text = folder / change.pop("data_source")
        text.write_text("\n\n".join(f"Paragraph {i} of some other corpus, with words." * 20 for i in range(40)))
        data = str(text)
    settings.update(change)
    before = sorted(p.name for p in (folder / "out.checkpoints").iterdir())
    with pytest.raises(DepthpruneError, match=f"--resume: .*{named}.* differ from the interrupted run"):
        heal(str(pruned_dir), data=data, output=folder / "out", resume=True, progress=False, plots=False, **settings)
    assert sorted(p.name for p in (folder / "out.checkpoints").iterdir()) == before
    assert not (folder / "out").exists()


def test_resume_refuses_a_data_file_edited_in_place(checkpoints, tmp_path):
    _, pruned_dir = checkpoints
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i}: the quick brown fox jumps over the lazy dog. " * 12
                                   for i in range(60)))
    with pytest.raises(Interrupted):
        heal(str(pruned_dir), data=str(corpus), output=tmp_path / "out", progress=False, plots=False,
             callback=stop_at(3), **SETTINGS)
    corpus.write_text(corpus.read_text().replace("lazy dog", "sleepy cat"))   # same name, same options
    with pytest.raises(DepthpruneError, match=r"--resume: data_fingerprint \(the token blocks differ\), "
                                              r"held_out_fingerprint \(the token blocks differ\) differ"):
        heal(str(pruned_dir), data=str(corpus), output=tmp_path / "out", resume=True, progress=False, plots=False,
             **SETTINGS)


def test_resume_accepts_a_new_learning_rate(interrupted_run, tmp_path):
    pruned_dir, folder = interrupted_run
    result = heal(str(pruned_dir), output=tmp_path / "out", checkpoint_dir=folder / "out.checkpoints", resume=True,
                  progress=False, plots=False, **dict(SETTINGS, lr=1e-4))
    assert result.metadata["healing"]["resumed_from_step"] == 2 and result.metadata["healing"]["steps"] == 6


# ------------------------------------------------------------------------------------ 5. divergence, fp16
def noisy(center: float, count: int = 30, seed: int = 0) -> list[float]:
    """A positive noisy loss sequence: center * exp(N(0, 0.35^2))."""
    generator = torch.Generator().manual_seed(seed)
    return (center * torch.exp(0.35 * torch.randn(count, generator=generator, dtype=torch.float64))).tolist()


def test_divergence_is_judged_against_the_running_median_whatever_the_scale_of_the_loss():
    kl = noisy(0.05)
    assert max(kl) / min(kl) > 4          # the old rule (4x the lowest so far) stops on this noise itself
    assert divergence_problem(0.2, 1.0, kl, 4.0) is None           # a noisy batch: 4x the median, within the noise
    assert "jumped to 5" in divergence_problem(5.0, 1.0, kl, 4.0)  # a real explosion
    for scale in (1e-4, 1.0, 60.0, 1e4):                            # scale-free: the same verdicts at every scale
        history = [scale * x for x in kl]
        assert divergence_problem(scale * 0.2, 1.0, history, 4.0) is None
        assert divergence_problem(scale * 5.0, 1.0, history, 4.0) is not None
    lm = [3.0 + 0.01 * math.sin(i) for i in range(20)]                # a steady LM loss
    assert divergence_problem(4.0, 1.0, lm, 4.0) is None             # 33% up is not an explosion ...
    assert divergence_problem(12.5, 1.0, lm, 4.0) is not None        # ... four times the median is
    assert divergence_problem(100.0, 1.0, lm[:2], 4.0) is None       # too little history to judge a jump
    # a median, not the minimum: one early outlier does not lower the bar
    assert divergence_problem(0.3, 1.0, [0.001] + noisy(0.1, 20), 4.0) is None


def test_non_finite_values_stop_the_run_except_an_overflow_under_a_loss_scaler():
    history = noisy(2.0, 10)
    assert "loss became nan" in divergence_problem(float("nan"), 1.0, history, 4.0)
    assert "loss became inf" in divergence_problem(float("inf"), 1.0, [], 4.0)
    assert "gradient norm became inf" in divergence_problem(2.0, float("inf"), history, 4.0)
    assert divergence_problem(2.0, float("inf"), history, 4.0, loss_scaling=True) is None      # the scaler skips it
    assert divergence_problem(2.0, float("nan"), history, 4.0, loss_scaling=True) is None
    assert divergence_problem(float("nan"), 1.0, history, 4.0, loss_scaling=True) is not None  # a NaN loss is not


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change; start and leave a clean one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_an_fp16_overflow_skips_the_step_instead_of_stopping_the_run(fresh_accelerate_state):
    """accelerate's fp16 path with a real GradScaler (on CPU accelerate makes none, so it is handed one, as it would
    make on a GPU); its huge initial scale overflows the first steps, which the scaler skips while halving itself."""
    data = blocks(8)
    run = config(method="full", lr=1e-3, max_steps=10, eval_samples=0, save_every=100)
    accelerator = make_accelerator(run, cpu=True, mixed_precision="fp16")
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=10 ** 6)
    model = tiny_model("llama", 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train(model, data, None, run, accelerator=accelerator, progress=False)
    state = result.state
    assert state.step == 10 and len(state.train_losses) == 10
    assert state.skipped_steps and state.skipped_steps == list(range(1, len(state.skipped_steps) + 1))
    assert len(state.skipped_steps) < 10 and accelerator.scaler.get_scale() < 2.0 ** 24
    assert all(math.isfinite(x) for x in state.train_losses)
    changed = any(not torch.equal(before[name], p) for name, p in result.model.named_parameters())
    assert changed                                      # the steps after the overflow were applied


def test_an_fp16_overflow_on_the_first_step_leaves_the_weights_untouched(fresh_accelerate_state):
    data = blocks(4)
    run = config(method="full", lr=1e-2, max_steps=1, eval_samples=0, save_every=100)
    accelerator = make_accelerator(run, cpu=True, mixed_precision="fp16")
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60)
    model = tiny_model("llama", 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train(model, data, None, run, accelerator=accelerator, progress=False)
    assert result.state.skipped_steps == [1]
    for name, p in result.model.named_parameters():
        assert torch.equal(before[name], p), name


def test_a_diverging_full_precision_run_still_stops(tmp_path):
    data = blocks(8)
    run = config(method="full", lr=1e-3, weight_decay=0.0, max_steps=20, save_every=1, eval_samples=0)
    with pytest.raises(Interrupted):
        train(tiny_model("llama", 2), data, None, run, accelerator=make_accelerator(run), checkpoint_dir=tmp_path,
              callback=stop_at(3), progress=False)
    poisoned = config(method="full", lr=50.0, weight_decay=0.0, max_steps=20, save_every=1, eval_samples=0)
    with pytest.raises(LossDiverged, match="the loss jumped to .* running median"):
        train(tiny_model("llama", 2), data, None, poisoned, accelerator=make_accelerator(poisoned),
              checkpoint_dir=tmp_path, resume=True, progress=False)


# ------------------------------------------------------------------------------------ 6. DeepSpeed plumbing
def test_the_deepspeed_example_takes_accumulation_and_clipping_from_the_cli():
    example = yaml.safe_load((REPO / "examples" / "accelerate" / "deepspeed.yaml").read_text())
    assert example["deepspeed_config"]["gradient_accumulation_steps"] == "auto"
    assert example["deepspeed_config"]["gradient_clipping"] == "auto"
    # what `accelerate launch` puts in the environment from that YAML is accepted for any CLI values
    launched = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "auto",
                "ACCELERATE_GRADIENT_CLIPPING": "auto"}
    check_launch_settings(launched, grad_accum=4, max_grad_norm=0.5)
    check_launch_settings(dict(launched, ACCELERATE_GRADIENT_ACCUMULATION_STEPS="4"), grad_accum=4, max_grad_norm=1)


@pytest.mark.parametrize("env, deepspeed_file, fragment", [
    ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}, None, r"ACCELERATE_GRADIENT_ACCUMULATION_STEPS is 2 but "
                                                              r"--grad-accum is 4"),
    ({"ACCELERATE_GRADIENT_CLIPPING": "1.0"}, None, r"ACCELERATE_GRADIENT_CLIPPING is 1.0 but --max-grad-norm is 0.5"),
    ({}, {"gradient_accumulation_steps": 8}, r"gradient_accumulation_steps in the DeepSpeed config file is 8"),
    ({}, {"gradient_clipping": 2.0}, r"gradient_clipping in the DeepSpeed config file is 2.0"),
    ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "four"}, None, r"not a number; set it to auto"),
])
def test_a_launch_config_that_disagrees_with_the_cli_is_refused(env, deepspeed_file, fragment):
    with pytest.raises(DepthpruneError, match=fragment):
        check_launch_settings(env, grad_accum=4, max_grad_norm=0.5, deepspeed_file=deepspeed_file)


def test_max_grad_norm_and_grad_accum_reach_deepspeeds_config(monkeypatch):
    # the environment `accelerate launch --config_file examples/accelerate/deepspeed.yaml` sets
    for key, value in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "auto",
                       "ACCELERATE_GRADIENT_CLIPPING": "auto", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}.items():
        monkeypatch.setenv(key, value)
    plugin = deepspeed_plugin(config(grad_accum=4, max_grad_norm=0.5))   # accelerate's own DeepSpeedPlugin
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == 4
    assert plugin.deepspeed_config["gradient_clipping"] == 0.5
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
    unclipped = deepspeed_plugin(config(grad_accum=1, max_grad_norm=0.0))
    assert "gradient_clipping" not in unclipped.deepspeed_config      # DeepSpeed's default: no clipping


def test_the_accelerator_follows_grad_accum_when_the_environment_says_auto_and_refuses_another_value(monkeypatch):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "auto")
    assert make_accelerator(config(grad_accum=2), cpu=True).gradient_accumulation_steps == 2
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    with pytest.raises(DepthpruneError, match="is 3 but --grad-accum is 2"):
        make_accelerator(config(grad_accum=2), cpu=True)


# ------------------------------------------------------------------------------------ 7. QLoRA reads once, in 4 bits
def test_qlora_reads_the_weights_once_in_4_bits_and_merges_into_one_full_precision_copy(checkpoints, tmp_path,
                                                                                        monkeypatch):
    """No CUDA/bitsandbytes here: the loader is wrapped to record every weight read and, where 4 bits were asked
    for, to read the plain weights instead (bitsandbytes' NF4 layers cannot run on a CPU)."""
    import transformers

    import depthprune.extras
    import depthprune.heal.healing
    import depthprune.heal.qlora

    _, pruned_dir = checkpoints
    monkeypatch.setattr(depthprune.heal.qlora, "qlora_available", lambda: None)
    real_available = depthprune.extras.is_available
    monkeypatch.setattr(depthprune.extras, "is_available",
                        lambda module: module == "bitsandbytes" or real_available(module))
    reads, steps_seen = [], []
    real_from_pretrained = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def recording_from_pretrained(cls, location, *args, quantization_config=None, device_map=None, **kwargs):
        reads.append({"location": str(location), "quantization": quantization_config, "device_map": device_map,
                      "during_training": bool(steps_seen)})
        return real_from_pretrained(cls, location, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(recording_from_pretrained))
    result = heal(str(pruned_dir), output=tmp_path / "q", method="qlora", progress=False, plots=False,
                  callback=lambda step, loss: steps_seen.append(step), **SETTINGS)
    assert result.metadata["healing"]["method_run"] == "qlora"
    before_training = [read for read in reads if not read["during_training"]]
    assert len(reads) == 2 and len(before_training) == 1, reads
    four_bit = before_training[0]["quantization"]
    assert four_bit is not None and four_bit.load_in_4bit and four_bit.bnb_4bit_quant_type == "nf4"
    assert four_bit.bnb_4bit_use_double_quant and before_training[0]["device_map"] == {"": 0}
    merge_read = reads[1]                                      # after training: the full-precision merge target
    assert merge_read["quantization"] is None and merge_read["location"] == str(pruned_dir)
    assert result.train.model is None                          # the 4-bit model was freed before that read
    assert (tmp_path / "q" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------ 8. --data self
def test_heal_refuses_data_self_in_one_line_before_any_work(checkpoints, tmp_path, monkeypatch, capsys):
    import depthprune.heal.healing

    _, pruned_dir = checkpoints
    monkeypatch.setattr(depthprune.heal.healing, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["heal", str(pruned_dir), "--data", "self", "--max-steps", "1", "--output",
                 str(tmp_path / "healed")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--data self" in line and "corpus" in line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ 9. no deprecation warnings
def test_heal_raises_no_deprecation_or_future_warnings(checkpoints, tmp_path):
    _, pruned_dir = checkpoints
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("error", category)
        heal(str(pruned_dir), output=tmp_path / "lora", method="lora", keep_adapter=True, progress=False,
             **dict(SETTINGS, max_steps=2))
        apply_lora(tiny_model("gpt2", 2), config(targets="all"))     # Conv1D projections, said so up front
