"""``--dtype auto`` (the default everywhere) keeps the checkpoint's own dtype.

A bf16 checkpoint pruned with default options must come out in bf16 and smaller than it went in; ``auto`` reads
the dtype from config.json (``dtype``, or the older ``torch_dtype``), else from the safetensors themselves. The
CLI and every Python entry point share the default.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from safetensors import safe_open

from depthprune import api
from depthprune.cli import COMMANDS, main, parse_args
from depthprune.loading import checkpoint_dtype, load_model
from tiny_models import tiny_model


def _stored_dtypes(folder) -> set[str]:
    """The dtypes of every tensor in a folder's safetensors, read from the files (not from config.json)."""
    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            dtypes |= {str(handle.get_tensor(name).dtype) for name in handle.keys()}
    return dtypes


def _size(folder) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("bf16") / "tiny-llama-bf16"
    tiny_model("llama", num_layers=4).to(torch.bfloat16).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    assert _stored_dtypes(folder) == {"torch.bfloat16"}
    return folder


def test_cli_prune_with_defaults_keeps_bf16_and_gets_smaller(bf16_checkpoint, tmp_path):
    out = tmp_path / "pruned"
    assert main(["prune", str(bf16_checkpoint), "--layers", "1", "--output", str(out)]) == 0
    assert _stored_dtypes(out) == {"torch.bfloat16"}
    assert _size(out) < _size(bf16_checkpoint)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_api_prune_with_defaults_keeps_bf16(bf16_checkpoint, tmp_path):
    out = tmp_path / "pruned"
    api.prune(str(bf16_checkpoint), layers="1", output=out)
    assert _stored_dtypes(out) == {"torch.bfloat16"}


def test_an_explicit_dtype_still_converts(bf16_checkpoint, tmp_path):
    out = tmp_path / "pruned-fp32"
    assert main(["prune", str(bf16_checkpoint), "--layers", "1", "--output", str(out), "--dtype", "float32"]) == 0
    assert _stored_dtypes(out) == {"torch.float32"}


def test_auto_reads_the_safetensors_when_config_names_no_dtype(bf16_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "no-dtype"
    shutil.copytree(bf16_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype(folder) == torch.bfloat16
    assert next(load_model(folder).model.parameters()).dtype == torch.bfloat16
    config["torch_dtype"] = "float16"        # configs written by transformers 4 use the older key
    (folder / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype(folder) == torch.float16


def test_score_records_the_dtype_it_ran_in(bf16_checkpoint):
    from depthprune.data import DataSpec

    scores = api.score(str(bf16_checkpoint), metrics="bi", data=DataSpec("builtin", samples=4, seq_len=64),
                       show_progress=False)
    assert scores["dtype"] == "torch.bfloat16"


def test_auto_is_the_default_of_every_verb_and_api_function():

    with_dtype = [verb for verb in COMMANDS if "dtype" in inspect.signature(getattr(
        api, "evaluate" if verb == "eval" else verb)).parameters]
    assert {"prune", "score", "collapse", "eval", "sweep", "info"} <= set(with_dtype)
    for verb in with_dtype:
        if verb == "heal":
            continue        # healing trains float32 master weights by design (see the heal docs)
        required = {"prune": ["--layers", "1"], "eval": ["--output", "o"], "score": ["--output", "o"],
                    "sweep": ["--output", "o"]}.get(verb, [])
        assert parse_args([verb, "M", *required]).dtype == "auto", verb     # the command line
    functions = [api.load_model, api.prune, api.score, api.collapse, api.evaluate, api.sweep, api.info]
    for function in functions:
        assert inspect.signature(function).parameters["dtype"].default == "auto", function.__name__
