"""The real SmolLM2-135M Q4_1 GGUF pruned at the file level: ``prune smollm2-135m --layers 20-27 --output x.gguf``.

The output keeps every tensor's quantisation type and holds 22/30 of the source's block bytes; llama.cpp loads it
and answers a prompt, and its perplexity in llama.cpp and in transformers (which dequantises the same file) agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import requires_smollm2
from depthprune.cli import main

pytestmark = [pytest.mark.integration, requires_smollm2]
gguf = pytest.importorskip("gguf", reason="SKIPPED LOUDLY: the gguf package is not installed")
REMOVED = list(range(20, 28))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from depthprune.loading import resolve_alias

    out = tmp_path_factory.mktemp("smollm2-gguf") / "x.gguf"
    assert main(["prune", "smollm2-135m", "--layers", "20-27", "--output", str(out)]) == 0
    return resolve_alias("smollm2-135m")[0], out


def _blocks(reader) -> dict[int, dict[str, object]]:
    blocks: dict[int, dict[str, object]] = {}
    for tensor in reader.tensors:
        if tensor.name.startswith("blk."):
            _, index, rest = tensor.name.split(".", 2)
            blocks.setdefault(int(index), {})[rest] = tensor
    return blocks


def test_pruned_gguf_keeps_the_quantisation_and_22_of_30_blocks(pruned):
    source_path, out = pruned
    source, result = gguf.GGUFReader(source_path), gguf.GGUFReader(out)
    source_blocks, blocks = _blocks(source), _blocks(result)
    kept = [i for i in range(30) if i not in REMOVED]
    assert sorted(blocks) == list(range(22))
    for new, old in enumerate(kept):
        for rest, tensor in blocks[new].items():
            assert tensor.tensor_type == source_blocks[old][rest].tensor_type
            assert tensor.data.tobytes() == source_blocks[old][rest].data.tobytes()
    block_bytes = sum(int(t.n_bytes) for b in blocks.values() for t in b.values())
    source_block_bytes = sum(int(t.n_bytes) for b in source_blocks.values() for t in b.values())
    assert block_bytes * 30 == source_block_bytes * 22
    kinds = {}
    for b in blocks.values():
        for t in b.values():
            kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + int(t.n_bytes)
    assert max(kinds, key=kinds.get) == "Q4_1"
    assert result.get_field("llama.block_count").contents() == 22


def _text_ids(tokenizer, count: int) -> list[int]:
    from depthprune.data import builtin_texts

    return tokenizer("\n\n".join(builtin_texts()[:40]))["input_ids"][:count]


def _perplexity(logits: np.ndarray, ids: list[int]) -> float:
    logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    losses = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="mean")
    return float(torch.exp(losses))


def test_llama_cpp_answers_and_agrees_with_transformers_on_perplexity(pruned):
    llama_cpp = pytest.importorskip("llama_cpp", reason="SKIPPED LOUDLY: llama-cpp-python is not installed "
                                                        "(make llamacpp builds and installs it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = pruned
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=512, logits_all=True, verbose=False)
    answer = llm.create_chat_completion(messages=[{"role": "user", "content": "What is the capital of France?"}],
                                        max_tokens=16, temperature=0.0)
    assert answer["choices"][0]["message"]["content"].strip()
    tokenizer = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    ids = _text_ids(tokenizer, 256)
    llm.reset()
    llm.eval(ids)
    llama_ppl = _perplexity(llm.scores[:len(ids)], ids)
    model = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name, dtype=torch.float32).eval()
    with torch.no_grad():
        transformers_ppl = _perplexity(model(torch.tensor([ids])).logits[0].numpy(), ids)
    assert abs(llama_ppl / transformers_ppl - 1) < 0.05, (llama_ppl, transformers_ppl)
