"""Token perplexity equals a hand computation; offline sources are joined as the papers join them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from depthprune import DepthpruneError
from depthprune.data import builtin_texts
from depthprune.evaluate.perplexity import load_ppl_text, perplexity, token_perplexity, wikitext_rows
from tiny_models import tiny_model
from tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3", num_layers=2)


def test_perplexity_equals_hand_computation(model, tokenizer):
    text = "\n\n".join(builtin_texts()[:3])[:3000]
    seq_len = 32
    ids = tokenizer(text)["input_ids"]
    windows = len(ids) // seq_len
    assert windows >= 3 and len(ids) % seq_len  # a partial tail exists and must be dropped
    total_nll, predicted = 0.0, 0
    for w in range(windows):
        window = ids[w * seq_len:(w + 1) * seq_len]
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([window])).logits[0].double(), dim=-1)
        for position in range(seq_len - 1):  # token position+1 predicted from tokens 0..position of this window
            total_nll -= math.log(probs[position, window[position + 1]].item())
            predicted += 1
    result = token_perplexity(model, tokenizer, text, seq_len=seq_len, batch_size=2)
    assert result["tokens"] == predicted == windows * (seq_len - 1)
    assert result["windows"] == windows and result["seq_len"] == seq_len
    assert result["ppl"] == pytest.approx(math.exp(total_nll / predicted), rel=1e-5)
    limited = token_perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=1)
    assert limited["windows"] == 1 and limited["tokens"] == seq_len - 1


def test_too_short_text_is_a_clear_error(model, tokenizer):
    with pytest.raises(DepthpruneError, match="fewer than one window of 4096"):
        token_perplexity(model, tokenizer, "short text", seq_len=4096)


def test_wikitext_raw_becomes_hugging_face_rows_joined_by_blank_lines(tmp_path):
    raw = " \n = Title = \n \n Some text @-@ here . \n More . \n \n"
    assert wikitext_rows(raw) == ["", " = Title = \n", "", " Some text @-@ here . \n", " More . \n", ""]
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(raw)
    # "" | " = Title = \n" | "" | " Some ... \n" | " More . \n" | "" joined by "\n\n", worked by hand:
    expected = "\n\n" + " = Title = \n" + "\n\n" + "\n\n" + " Some text @-@ here . \n" + "\n\n" + " More . \n" + "\n\n"
    assert load_ppl_text("wikitext2", tmp_path) == expected


def test_ptb_and_c4_are_joined_with_spaces(tmp_path):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text(" no it was n't black monday \n but while the new york \n")
    assert load_ppl_text("ptb", tmp_path) == "no it was n't black monday but while the new york"
    (tmp_path / "c4").mkdir()
    docs = [{"text": f"Document {i}.", "url": "u", "timestamp": "t"} for i in range(1200)]
    (tmp_path / "c4" / "c4_validation.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    text = load_ppl_text("c4", tmp_path)
    assert text.startswith("Document 0. Document 1.") and text.endswith("Document 1099.")  # GPTQ's first 1100


def test_missing_source_file_names_the_path(tmp_path, model, tokenizer):
    with pytest.raises(DepthpruneError, match=str(tmp_path / "wikitext2" / "wiki.test.raw")):
        perplexity(model, tokenizer, "wikitext2", seq_len=16, data_dir=tmp_path)
    with pytest.raises(DepthpruneError, match="Did you mean 'wikitext2'"):
        load_ppl_text("wikitext", tmp_path)


def test_builtin_source_is_offline_and_labelled():
    from depthprune.data import builtin_texts
    from depthprune.evaluate.perplexity import load_ppl_text, source_label

    assert load_ppl_text("builtin") == "\n\n".join(builtin_texts())
    assert source_label("builtin", None).startswith("builtin")
    assert source_label("wikitext2", "/d") == "/d/wikitext2/wiki.test.raw"
