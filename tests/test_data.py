"""Data sources and their tokenisation into blocks."""

from __future__ import annotations

import copy
import gzip
import json

import pytest
import torch

from depthprune import DataSpec, DepthpruneError, calibration_blocks, load_texts
from depthprune.data import builtin_texts, tokenize_blocks
from tiny_models import tiny_model

DOCS = ["The first document talks about cats and dogs.", "A second one is about the sea and ships.",
        "Third: numbers 1 2 3 4 5 6 7 8 9 10.", "Fourth text, with some punctuation; and more words here."]


def test_builtin_is_offline_and_large():
    texts = builtin_texts()
    assert len(texts) > 50 and sum(map(len, texts)) > 100_000


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".txt", ".parquet", ".jsonl.gz", ".txt.gz"])
def test_local_file_formats_read_the_same_documents(tmp_path, suffix):
    path = tmp_path / f"docs{suffix}"
    if suffix.startswith(".jsonl"):
        raw = "\n".join(json.dumps({"text": d, "url": "x"}) for d in DOCS).encode()
    elif suffix == ".json":
        raw = json.dumps([{"text": d} for d in DOCS]).encode()
    elif suffix.startswith(".txt"):
        raw = "\n\n".join(DOCS).encode()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"text": DOCS, "url": ["u"] * 4}), path)
        raw = None
    if raw is not None:
        path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    assert load_texts(str(path)) == DOCS


def test_text_field_option_and_missing_field_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": d}) for d in DOCS))
    assert load_texts(str(path), text_field="body") == DOCS
    with pytest.raises(DepthpruneError, match="no field 'text'.*--text-field"):
        load_texts(str(path))


def test_folder_reads_every_supported_file_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text(DOCS[1])
    (tmp_path / "a.txt").write_text(DOCS[0])
    (tmp_path / "notes.md").write_text("ignored")
    assert load_texts(str(tmp_path)) == DOCS[:2]


def test_unreadable_and_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(DepthpruneError, match="not found"):
        load_texts(str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json")
    with pytest.raises(DepthpruneError, match="not valid JSON"):
        load_texts(str(bad))
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DepthpruneError, match="cannot read"):
        load_texts(str(broken))


def test_blocks_shape_determinism_and_seed(tiny_tokenizer):
    texts = builtin_texts()
    a = tokenize_blocks(texts, tiny_tokenizer, samples=4, seq_len=32, seed=1)
    b = tokenize_blocks(texts, tiny_tokenizer, samples=4, seq_len=32, seed=1)
    c = tokenize_blocks(texts, tiny_tokenizer, samples=4, seq_len=32, seed=2)
    assert a.shape == (4, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_blocks_are_consecutive_pieces_of_the_shuffled_stream(tiny_tokenizer):
    # independent expectation: the same shuffle, tokenised by hand
    import random
    order = list(range(len(DOCS)))
    random.Random(5).shuffle(order)
    stream = []
    for i in order:
        stream += tiny_tokenizer(DOCS[i] + "\n\n", add_special_tokens=False)["input_ids"]
    blocks = tokenize_blocks(DOCS, tiny_tokenizer, samples=2, seq_len=10, seed=5)
    assert blocks.flatten().tolist() == stream[:20]


def test_bos_is_prepended_when_the_tokenizer_adds_one(tiny_tokenizer):
    from tokenizers.processors import TemplateProcessing
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer.__class__.from_str(
        tiny_tokenizer.backend_tokenizer.to_str()), pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tokenizer("a")["input_ids"][0] == 1
    blocks = tokenize_blocks(builtin_texts(), tokenizer, samples=3, seq_len=16)
    assert blocks[:, 0].tolist() == [1, 1, 1]
    assert (blocks[:, 1:] != 1).all()
    without = tokenize_blocks(builtin_texts(), tiny_tokenizer, samples=3, seq_len=16)
    assert (without[:, 0] != 1).any()


def test_too_little_data_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(DepthpruneError, match="too little data.*lower --samples or --seq-len"):
        tokenize_blocks(DOCS, tiny_tokenizer, samples=50, seq_len=64)


def test_self_generated_data_is_seeded(tiny_tokenizer):
    model = tiny_model("llama", num_layers=2)
    a = calibration_blocks("self", tiny_tokenizer, model=model, samples=2, seq_len=12, seed=3)
    b = calibration_blocks(DataSpec("self", samples=2, seq_len=12, seed=3), tiny_tokenizer, model=model)
    assert a.shape == (2, 12) and torch.equal(a, b)
    with pytest.raises(DepthpruneError, match="needs the model"):
        calibration_blocks("self", tiny_tokenizer, samples=2, seq_len=12)


def test_hf_dataset_offline_fails_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DepthpruneError, match="local file|builtin"):
        load_texts("hf:definitely/not-a-dataset-xyz")


def test_chat_template_wraps_each_document(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    with pytest.raises(DepthpruneError, match="no chat template"):
        tokenize_blocks(DOCS, tokenizer, samples=1, seq_len=8, chat_template=True)
    tokenizer.chat_template = "{% for m in messages %}<s>user: {{ m['content'] }}</s>{% endfor %}"
    blocks = tokenize_blocks(DOCS[:1], tokenizer, samples=1, seq_len=8, chat_template=True)
    expected = tokenizer("<s>user: " + DOCS[0] + "</s>\n\n", add_special_tokens=False)["input_ids"][:8]
    assert blocks[0].tolist() == expected and expected[0] == tokenizer.bos_token_id
