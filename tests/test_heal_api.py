"""``depthprune heal`` end to end on tiny checkpoints with a real (tiny, offline) tokenizer: what lands on disk,
provenance, the adapter, the teacher taken from depthprune.json, and the refusals."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune import DepthpruneError
from depthprune.cli import main
from depthprune.heal import heal
from test_heal import save_tiny_checkpoint

SETTINGS = dict(seq_len=32, batch_size=4, max_steps=6, eval_every=3, eval_samples=4, save_every=2)



@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_tokenizer)


def logits_of(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_heal_saves_a_merged_checkpoint_equal_to_base_plus_adapter(checkpoints, tmp_path):
    from peft import PeftModel

    _, pruned_dir = checkpoints
    out = tmp_path / "healed"
    result = heal(str(pruned_dir), data="builtin", output=out, method="lora", targets="all", lr=1e-2,
                  keep_adapter=True, progress=False, **SETTINGS)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    reloaded = AutoModelForCausalLM.from_pretrained(out)          # plain transformers
    healed_logits = logits_of(reloaded, ids)
    torch.testing.assert_close(healed_logits, logits_of(result.model, ids), atol=1e-5, rtol=1e-5)
    # the pruned base + the saved adapter, loaded by peft itself, is what the merged checkpoint computes
    base = AutoModelForCausalLM.from_pretrained(pruned_dir)
    base_logits = logits_of(base, ids)
    with warnings.catch_warnings():     # peft itself reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        with_adapter = PeftModel.from_pretrained(base, out / "adapter")
    torch.testing.assert_close(logits_of(with_adapter, ids), healed_logits, atol=2e-5, rtol=1e-5)
    assert (healed_logits - base_logits).abs().max() > 1e-3       # training changed something

    metadata = json.loads((out / "depthprune.json").read_text())
    pruned_metadata = json.loads((pruned_dir / "depthprune.json").read_text())
    for key in ("base_model", "kept_layers", "removed_layers", "num_layers_original"):
        assert metadata[key] == pruned_metadata[key]
    healing = metadata["healing"]
    assert healing["method_run"] == "lora" and healing["preset"] == "gromov-lora"
    assert healing["recipe"]["targets"] == "all" and healing["recipe"]["lr"] == 1e-2
    assert healing["steps"] == 6 and healing["tokens_seen"] == 6 * 4 * 32
    assert healing["final_train_loss"] == healing["train_losses"][-1]
    assert [step for step, _ in healing["eval_losses"]] == [0, 3, 6]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "healed.checkpoints").exists()      # removed once the model is safely saved
    with pytest.raises(DepthpruneError, match="already exists"):
        heal(str(pruned_dir), data="builtin", output=out, progress=False, **SETTINGS)


def test_distillation_takes_the_teacher_from_depthprune_json(checkpoints, tmp_path):
    base_dir, pruned_dir = checkpoints
    result = heal(str(pruned_dir), data="builtin", output=tmp_path / "kd", method="distill", progress=False,
                  **SETTINGS)
    healing = result.metadata["healing"]
    assert healing["teacher"] == str(base_dir.resolve())
    assert healing["teacher_weight_bytes"] == sum(p.numel() * 4 for p in
                                                  AutoModelForCausalLM.from_pretrained(base_dir).parameters())
    assert healing["recipe"]["betas"] == [0.9, 0.95] and healing["recipe"]["weight_decay"] == 0.1
    assert all(loss >= 0 for loss in healing["train_losses"])      # a KL divergence


def test_refusals_name_the_problem_and_the_fix(checkpoints, tmp_path):
    base_dir, pruned_dir = checkpoints
    if not torch.cuda.is_available():
        with pytest.raises(DepthpruneError, match="CUDA.*--qlora-fallback"):
            heal(str(pruned_dir), output=tmp_path / "q", method="qlora", progress=False, **SETTINGS)
        fallback = heal(str(pruned_dir), output=tmp_path / "q", method="qlora", qlora_fallback=True,
                        progress=False, **SETTINGS)
        assert fallback.metadata["healing"]["method_run"] == "lora"
    with pytest.raises(DepthpruneError, match="no --teacher given"):
        heal(str(base_dir), output=tmp_path / "kd", method="distill", progress=False, **SETTINGS)
    with pytest.raises(DepthpruneError, match="--keep-adapter needs"):
        heal(str(pruned_dir), output=tmp_path / "f", method="full", keep_adapter=True, progress=False, **SETTINGS)
    with pytest.raises(DepthpruneError, match="no checkpoint"):
        heal(str(pruned_dir), output=tmp_path / "r", resume=True, progress=False, **SETTINGS)
    assert not (tmp_path / "f").exists() and not (tmp_path / "r").exists()


def test_cli_heal_runs_and_reports_errors_in_one_line(checkpoints, tmp_path, capsys):
    _, pruned_dir = checkpoints
    out = tmp_path / "cli"
    assert main(["heal", str(pruned_dir), "--data", "builtin", "--method", "full", "--max-steps", "2",
                 "--seq-len", "32", "--batch-size", "2", "--eval-samples", "2", "--no-progress",
                 "--output", str(out)]) == 0
    assert json.loads((out / "depthprune.json").read_text())["healing"]["preset"] == "shortened-cpt"
    assert main(["heal", str(pruned_dir), "--preset", "gromov-lroa", "--max-steps", "1", "--output",
                 str(tmp_path / "x")]) == 2
    assert "did you mean 'gromov-lora'" in capsys.readouterr().err


def test_a_teacher_recorded_by_alias_description_is_loaded_by_alias(tmp_path):
    from depthprune.heal.distill import teacher_source
    from depthprune.loading import MODEL_ALIASES, LoadedModel

    (tmp_path / "depthprune.json").write_text(json.dumps({"base_model": MODEL_ALIASES["smollm2-135m"][2]}))
    loaded = LoadedModel(model=None, tokenizer=None, source=str(tmp_path), description=str(tmp_path),
                         checkpoint_dir=tmp_path)
    assert teacher_source(loaded, None) == "smollm2-135m"
    assert teacher_source(loaded, "/elsewhere/base") == "/elsewhere/base"


def test_an_interrupted_heal_resumes_from_its_checkpoints_to_the_same_result(checkpoints, tmp_path):
    _, pruned_dir = checkpoints
    settings = dict(SETTINGS, method="lora", dropout=0.1, lr=5e-3, save_every=2)
    whole = heal(str(pruned_dir), data="builtin", output=tmp_path / "whole", progress=False, **settings)

    class Interrupted(Exception):
        pass

    def stop_at_3(step, loss):
        if step == 3:
            raise Interrupted

    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        heal(str(pruned_dir), data="builtin", output=out, progress=False, callback=stop_at_3, **settings)
    assert not out.exists() and (tmp_path / "resumed.checkpoints" / "step-00000002").is_dir()
    with pytest.raises(DepthpruneError, match="--resume"):        # a fresh start would silently discard them
        heal(str(pruned_dir), data="builtin", output=out, progress=False, **settings)
    resumed = heal(str(pruned_dir), data="builtin", output=out, resume=True, progress=False, **settings)
    healing = resumed.metadata["healing"]
    assert healing["resumed_from_step"] == 2 and healing["steps"] == 6
    torch.testing.assert_close(torch.tensor(healing["train_losses"]),
                               torch.tensor(whole.metadata["healing"]["train_losses"]), atol=1e-6, rtol=1e-6)
    ids = torch.arange(32).view(2, 16)
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out), ids),
                               logits_of(AutoModelForCausalLM.from_pretrained(tmp_path / "whole"), ids),
                               atol=1e-5, rtol=1e-5)
    assert not (tmp_path / "resumed.checkpoints").exists()
