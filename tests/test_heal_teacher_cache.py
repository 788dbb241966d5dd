"""Distillation from a cached teacher: the top-k loss is the hand-worked renormalised KL, the cache holds exactly the
teacher's top-k logits as plain float16/int32 arrays, training on it equals training with the teacher on the fly at
the same k, the teacher runs once per set of blocks (a second run does not load it), and it is not in memory while
the student trains."""

from __future__ import annotations

import gc
import json
import math
import weakref

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from depthprune import DepthpruneError
from depthprune.heal import heal, topk_kd_loss
from depthprune.heal.teacher_cache import INDICES_FILE, VALUES_FILE, bytes_per_token
from test_heal import save_tiny_checkpoint

TOP_K = 8
SETTINGS = dict(seq_len=32, batch_size=4, max_steps=4, eval_every=4, eval_samples=2, save_every=100, lr=1e-3,
                warmup_steps=0, samples=6)    # 6 blocks for 16 micro-batch rows: the cache is reused across epochs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_tokenizer)


def _heal(pruned_dir, output, **extra):
    settings = dict(SETTINGS)
    samples = settings.pop("samples")
    from depthprune.data import DataSpec

    return heal(str(pruned_dir), data=DataSpec(source="builtin", samples=samples), output=output, method="distill",
                top_k=TOP_K, progress=False, plots=False, **settings, **extra)


def test_topk_loss_is_the_renormalised_kl_worked_by_hand():
    # teacher logits (2, 1, 0, -5): top-2 are tokens 0 and 1, p = (e, 1) / (e + 1)
    # student logits (0, ln 3, 7, 7): over tokens 0 and 1 only, q = (1, 3) / 4
    teacher = torch.tensor([[[2.0, 1.0, 0.0, -5.0]]])
    student = torch.tensor([[[0.0, math.log(3.0), 7.0, 7.0]]])
    top = teacher.topk(2, dim=-1)
    p0, p1 = math.e / (math.e + 1), 1 / (math.e + 1)
    expected = p0 * math.log(p0 / 0.25) + p1 * math.log(p1 / 0.75)
    assert topk_kd_loss(student, top.values, top.indices).item() == pytest.approx(expected, rel=1e-6)
    # tau = 2: both sets of logits halve and the KL is scaled by tau^2
    p0, p1 = math.exp(1) / (math.exp(1) + math.exp(0.5)), math.exp(0.5) / (math.exp(1) + math.exp(0.5))
    q0, q1 = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))
    expected = 4 * (p0 * math.log(p0 / q0) + p1 * math.log(p1 / q1))
    assert topk_kd_loss(student, top.values, top.indices, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_vocab_normalised_topk_loss_worked_by_hand_counts_the_mass_outside_the_top_k():
    # the same teacher and student: over the whole vocabulary q = (1, 3) / Z at tokens 0 and 1, Z = 4 + 2 e^7
    teacher = torch.tensor([[[2.0, 1.0, 0.0, -5.0]]])
    student = torch.tensor([[[0.0, math.log(3.0), 7.0, 7.0]]])
    top = teacher.topk(2, dim=-1)
    p0, p1 = math.e / (math.e + 1), 1 / (math.e + 1)
    z = 4 + 2 * math.exp(7)
    expected = p0 * math.log(p0 / (1 / z)) + p1 * math.log(p1 / (3 / z))
    loss = topk_kd_loss(student, top.values, top.indices, student_norm="vocab")
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # moving mass off tokens 2 and 3 lowers the vocab loss; the renormalised loss cannot see it
    shifted = student - torch.tensor([0.0, 0.0, 10.0, 10.0])
    assert topk_kd_loss(shifted, top.values, top.indices, student_norm="vocab") < loss
    assert topk_kd_loss(shifted, top.values, top.indices).item() == pytest.approx(
        topk_kd_loss(student, top.values, top.indices).item(), rel=1e-6)
    # the student matching the teacher on the top-k and nothing elsewhere: zero
    exact = torch.tensor([[[1.0, 0.0, -1e4, -1e4]]])
    assert topk_kd_loss(exact, top.values, top.indices, student_norm="vocab").item() == pytest.approx(0.0, abs=1e-6)


def test_top_k_norm_needs_top_k_and_a_known_name():
    from depthprune.heal.config import HealConfig

    with pytest.raises(DepthpruneError, match="--top-k-norm applies to --top-k K only"):
        HealConfig(method="distill", top_k_norm="vocab")
    with pytest.raises(DepthpruneError, match="--top-k-norm"):
        HealConfig(method="distill", top_k=8, top_k_norm="full")
    with pytest.raises(DepthpruneError, match="top_k_norm|top-k-norm"):
        HealConfig(method="lora", top_k_norm="vocab")       # another method's setting would be ignored


@pytest.mark.parametrize("top_k_norm", ["top-k", "vocab"])
def test_cached_teacher_equals_the_teacher_on_the_fly_and_runs_once(checkpoints, tmp_path, monkeypatch, top_k_norm):
    import depthprune.heal.healing

    base_dir, pruned_dir = checkpoints
    cache_root = tmp_path / "cache"
    cached = _heal(pruned_dir, tmp_path / "cached", teacher_cache=cache_root, top_k_norm=top_k_norm)
    on_the_fly = _heal(pruned_dir, tmp_path / "fly", teacher_cache="off", top_k_norm=top_k_norm)
    record = cached.metadata["healing"]["teacher_cache"]
    assert record["made_by_this_run"] and record["top_k"] == TOP_K
    assert cached.metadata["healing"]["teacher_weight_bytes"] is None        # not held while training
    assert on_the_fly.metadata["healing"]["teacher_weight_bytes"] > 0
    torch.testing.assert_close(torch.tensor(cached.metadata["healing"]["train_losses"]),
                               torch.tensor(on_the_fly.metadata["healing"]["train_losses"]), atol=1e-6, rtol=1e-5)
    weights_cached, weights_fly = (load_file(tmp_path / name / "model.safetensors") for name in ("cached", "fly"))
    for name in weights_fly:
        torch.testing.assert_close(weights_cached[name], weights_fly[name], atol=1e-6, rtol=1e-5, msg=name)

    # the cache is the teacher's own top-k over the training blocks, in plain arrays (no pickle)
    folder = cache_root / record["folder"].split("/")[-1]
    values = np.load(folder / VALUES_FILE, allow_pickle=False)
    indices = np.load(folder / INDICES_FILE, allow_pickle=False)
    assert values.dtype == np.float16 and indices.dtype == np.int32 and values.shape == (6, 31, TOP_K)
    assert record["bytes"] == 6 * 31 * bytes_per_token(TOP_K) == values.nbytes + indices.nbytes
    assert json.loads((folder / "cache.json").read_text())["blocks"] == 6
    teacher = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    from depthprune.data import DataSpec
    from depthprune.heal.healing import healing_blocks

    blocks, _ = healing_blocks(DataSpec(source="builtin", samples=6, seq_len=32), _tokenizer(pruned_dir), 0, 2)
    with torch.no_grad():
        top = teacher(input_ids=blocks).logits[:, :-1].topk(TOP_K, dim=-1)
    torch.testing.assert_close(torch.from_numpy(values.astype(np.float32)), top.values.half().float())
    assert torch.equal(torch.from_numpy(indices.astype(np.int64)), top.indices)

    # a second run on the same blocks reads the cache: the teacher is not loaded at all
    monkeypatch.setattr(depthprune.heal.healing, "load_teacher",
                        lambda *a, **k: pytest.fail("the teacher was loaded although its logits are cached"))
    again = _heal(pruned_dir, tmp_path / "again", teacher_cache=cache_root, top_k_norm=top_k_norm)
    assert not again.metadata["healing"]["teacher_cache"]["made_by_this_run"]
    assert again.metadata["healing"]["train_losses"] == cached.metadata["healing"]["train_losses"]


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_the_teacher_is_freed_before_the_student_trains(checkpoints, tmp_path, monkeypatch):
    import depthprune.heal.healing

    _, pruned_dir = checkpoints
    real_load = depthprune.heal.healing.load_teacher
    teachers = []

    def recording_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        teachers.append(weakref.ref(loaded.model))
        return loaded

    alive_at_step = []

    def check(step, loss):
        gc.collect()
        alive_at_step.append(teachers[0]() is not None)

    monkeypatch.setattr(depthprune.heal.healing, "load_teacher", recording_load)
    _heal(pruned_dir, tmp_path / "freed", teacher_cache=tmp_path / "cache", callback=check)
    assert len(teachers) == 1 and alive_at_step == [False] * SETTINGS["max_steps"]


def test_teacher_cache_without_top_k_is_refused(checkpoints, tmp_path):
    _, pruned_dir = checkpoints
    with pytest.raises(DepthpruneError, match="--teacher-cache would be ignored"):
        heal(str(pruned_dir), output=tmp_path / "x", method="distill", teacher_cache=tmp_path / "c", progress=False,
             max_steps=1, seq_len=32)
    assert not (tmp_path / "x").exists()


def test_a_distilling_sweep_runs_the_dense_teacher_once_for_every_point(tiny_tokenizer, tmp_path, monkeypatch):
    """Two pruned points healed by distillation: the dense model in memory is the teacher, its top-k logits over
    the (shared) healing blocks are written by the first point and read by the second."""
    import os

    import depthprune.heal.teacher_cache as teacher_cache
    from depthprune import LoadedModel
    from depthprune.data import builtin_texts
    from depthprune.sweep import sweep
    from tiny_models import tiny_model

    (tmp_path / "data" / "wikitext2").mkdir(parents=True)
    (tmp_path / "data" / "wikitext2" / "wiki.test.raw").write_text("\n".join(builtin_texts()[-8:]))
    monkeypatch.setitem(os.environ, "DEPTHPRUNE_CACHE", str(tmp_path / "cache"))
    passes = []
    real_write = teacher_cache.write_cache
    monkeypatch.setattr(teacher_cache, "write_cache", lambda *a, **k: passes.append(1) or real_write(*a, **k))
    loaded = LoadedModel(model=tiny_model("llama", num_layers=4), tokenizer=tiny_tokenizer, source="t",
                         description="t")
    points = sweep(loaded, methods="last", n="1:2", eval="wikitext2", eval_seq_len=32, data_dir=tmp_path / "data",
                   max_windows=2, samples=2, seq_len=32, heal_steps=2, heal_method="distill")["points"]
    assert [p["n"] for p in points] == [1, 2] and all(p["heal_final_loss"] >= 0 for p in points)
    assert len(passes) == 1
    assert len(list((tmp_path / "cache" / "teacher-topk").iterdir())) == 1
