"""Pruning at the file level gives the checkpoint the in-memory path gives, without building the model.

safetensors: for a tiny model of every architecture in the table, the file path and the in-memory path write the same
tensors (byte for byte), the same config.json and models with the same logits after a reload with plain
transformers; sharded checkpoints stay sharded. GGUF: a tiny Llama GGUF written here with the gguf package (Q8_0
weights, a per-layer metadata array) pruned at the file level holds the kept blocks' bytes renumbered and its
per-layer array filtered by the kept indices, and transformers loads it (``gguf_file=``) with the logits of the
dequantised source pruned in memory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune import DepthpruneError, api, remove_layers
from depthprune.cli import main
from tiny_models import HEAD_CASES, tiny_case_model

gguf = pytest.importorskip("gguf", reason="SKIPPED LOUDLY: the gguf package is not installed")

REMOVED = [1, 3]
KEPT = [0, 2, 4, 5]     # of 6 layers


def _tensor_bytes(folder) -> dict[str, bytes]:
    """Every tensor of a checkpoint folder as its raw bytes, read with the safetensors library."""
    from safetensors import safe_open

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                value = handle.get_tensor(name)
                tensors[name] = (str(value.dtype), tuple(value.shape),
                                 value.contiguous().view(torch.uint8).numpy().tobytes())
    return tensors


def _logits(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(0)
    return torch.randint(3, 512, (2, 24))


@pytest.mark.parametrize("case", HEAD_CASES)
def test_file_prune_equals_in_memory_prune(case, ids, tmp_path, tiny_tokenizer):
    source = tmp_path / "source"
    tiny_case_model(case, num_layers=6).save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    api.prune(str(source), layers="1,3", output=tmp_path / "file", surgery="file")
    api.prune(str(source), layers="1,3", output=tmp_path / "memory", surgery="memory")

    assert _tensor_bytes(tmp_path / "file") == _tensor_bytes(tmp_path / "memory")
    file_config = json.loads((tmp_path / "file" / "config.json").read_text())
    assert file_config == json.loads((tmp_path / "memory" / "config.json").read_text())
    file_meta = json.loads((tmp_path / "file" / "depthprune.json").read_text())
    memory_meta = json.loads((tmp_path / "memory" / "depthprune.json").read_text())
    file_meta.pop("created"), memory_meta.pop("created")
    assert file_meta == memory_meta and file_meta["kept_layers"] == KEPT
    assert (tmp_path / "file" / "README.md").read_text() == (tmp_path / "memory" / "README.md").read_text()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "file" / name).read_bytes() == (source / name).read_bytes()   # copied as they are
    expected = _logits(tmp_path / "memory", ids)
    assert torch.equal(_logits(tmp_path / "file", ids), expected)
    # the independent reference: the source loaded whole and pruned in memory by hand
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    remove_layers(reference, REMOVED)
    with torch.no_grad():
        assert torch.allclose(reference(ids).logits, expected, atol=1e-5, rtol=0)


def test_sharded_checkpoint_stays_sharded_with_a_new_index(ids, tmp_path):
    source = tmp_path / "source"
    tiny_case_model("qwen2", num_layers=6).save_pretrained(source, max_shard_size="60KB")
    shards = sorted(source.glob("model-*.safetensors"))
    assert len(shards) > 3
    api.prune(str(source), layers="1,3", output=tmp_path / "file", surgery="file")
    out = tmp_path / "file"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("*.safetensors"))
    assert set(index["weight_map"].values()) == {f.name for f in files}
    count = len(files)
    assert [f.name for f in files] == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    tensors = _tensor_bytes(out)
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(len(raw) for _, _, raw in tensors.values())
    source_tensors = _tensor_bytes(source)
    for name, value in tensors.items():     # each tensor is its source tensor, renumbered
        parts = name.split(".")
        if name.startswith("model.layers."):
            parts[2] = str(KEPT[int(parts[2])])
        assert source_tensors[".".join(parts)] == value
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    remove_layers(reference, REMOVED)
    with torch.no_grad():
        assert torch.allclose(_logits(out, ids), reference(ids).logits, atol=1e-5, rtol=0)


def test_tied_embeddings_stay_tied_and_bf16_stays_bf16(tmp_path):
    source = tmp_path / "source"
    tiny_case_model("llama", num_layers=6).to(torch.bfloat16).save_pretrained(source)   # llama: tied head
    api.prune(str(source), layers="2", output=tmp_path / "out")     # auto: the file level
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "lm_head.weight" not in _tensor_bytes(tmp_path / "out")


def test_auto_says_which_path_it_took(tmp_path, capsys):
    source = tmp_path / "source"
    tiny_case_model("mistral", num_layers=4).save_pretrained(source)
    assert main(["prune", str(source), "--layers", "1", "--output", str(tmp_path / "a")]) == 0
    assert "file level" in capsys.readouterr().err
    assert main(["prune", str(source), "--layers", "1", "--dtype", "bfloat16", "--output", str(tmp_path / "b")]) == 0
    assert "file level" not in capsys.readouterr().err     # a dtype conversion needs the weights in memory
    assert main(["prune", str(source), "--method", "magnitude", "--n", "1", "--surgery", "file",
                 "--output", str(tmp_path / "c")]) == 2
    assert "--surgery file is not possible here" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("quantization, refused", [
    ({"quant_method": "fp8", "modules_to_not_convert": ["lm_head"], "weight_block_size": [128, 128]}, False),
    ({"quant_method": "fp8", "modules_to_not_convert": ["lm_head", "model.layers.3.mlp"]}, True),
    ({"quant_method": "gptq", "bits": 4, "dynamic": {r"-:model\.layers\.2\..*": {}}}, True),
])
def test_quantised_checkpoints_are_carried_unless_their_config_names_layers(quantization, refused, tmp_path):
    source = tmp_path / "source"
    tiny_case_model("llama", num_layers=6).save_pretrained(source)
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = quantization
    (source / "config.json").write_text(json.dumps(config))
    if refused:
        with pytest.raises(DepthpruneError, match="names a layer|set for one layer"):
            api.prune(str(source), layers="1", output=tmp_path / "out", surgery="file")
        assert not (tmp_path / "out").exists()
        return
    api.prune(str(source), layers="1", output=tmp_path / "out", surgery="file")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"] == quantization


# ----------------------------------------------------------------------------------------------------- GGUF
GGUF_HEADS, GGUF_KV_HEADS, GGUF_HIDDEN, GGUF_FF, GGUF_VOCAB = 4, 2, 64, 128, 512
WINDOW_PATTERN = [True, False, True, True, False, False]    # a per-layer array, irregular on purpose


def write_tiny_gguf(path, num_layers: int = 6, weight_type: str = "Q8_0", arch: str = "llama", seed: int = 0,
                    name: str = "tiny-llama", window_pattern: bool = True, ffn: int = GGUF_FF,
                    down_type: str | None = None):
    """A random Llama GGUF with a tokenizer, a chat template and the per-layer array ``WINDOW_PATTERN``.

    ``down_type="Q6_K"`` stores every ffn_down as random Q6_K blocks (``ffn`` must then be a multiple of 256).
    """
    from gguf import GGMLQuantizationType, GGUFWriter, quantize

    rng = np.random.default_rng(seed)
    kind = GGMLQuantizationType[weight_type]
    head_dim = GGUF_HIDDEN // GGUF_HEADS
    writer = GGUFWriter(path, arch=arch)
    writer.add_name(name)
    writer.add_uint32(f"{arch}.block_count", num_layers)
    writer.add_uint32(f"{arch}.context_length", 256)
    writer.add_uint32(f"{arch}.embedding_length", GGUF_HIDDEN)
    writer.add_uint32(f"{arch}.feed_forward_length", ffn)
    writer.add_uint32(f"{arch}.attention.head_count", GGUF_HEADS)
    writer.add_uint32(f"{arch}.attention.head_count_kv", GGUF_KV_HEADS)
    writer.add_uint32(f"{arch}.rope.dimension_count", head_dim)
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_uint32(f"{arch}.vocab_size", GGUF_VOCAB)
    if window_pattern:
        writer.add_array(f"{arch}.attention.sliding_window_pattern", WINDOW_PATTERN[:num_layers])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(GGUF_VOCAB - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(GGUF_VOCAB)])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (GGUF_VOCAB - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def add(tensor_name, shape, scale=0.08, norm=False):
        values = (1.0 + 0.1 * rng.standard_normal(shape) if norm else scale * rng.standard_normal(shape))
        values = values.astype(np.float32)
        if norm or kind == GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, values)
        else:
            writer.add_tensor(tensor_name, quantize(values, kind), raw_dtype=kind)

    def add_q6_k(tensor_name, rows, columns):
        # block_q6_K: ql[128], qh[64], int8 scales[16], f16 d; random codes, small scales
        blocks = rng.integers(0, 256, (rows, columns // 256, 210), dtype=np.uint8)
        blocks[..., 192:208] = rng.integers(-8, 8, (rows, columns // 256, 16)).astype(np.int8).view(np.uint8)
        blocks[..., 208:210] = np.full((rows, columns // 256, 1), 0.002, np.float16).view(np.uint8)
        writer.add_tensor(tensor_name, blocks.reshape(rows, -1), raw_dtype=GGMLQuantizationType.Q6_K)

    add("token_embd.weight", (GGUF_VOCAB, GGUF_HIDDEN), scale=0.5)
    for i in range(num_layers):
        add(f"blk.{i}.attn_norm.weight", (GGUF_HIDDEN,), norm=True)
        add(f"blk.{i}.attn_q.weight", (GGUF_HEADS * head_dim, GGUF_HIDDEN))
        add(f"blk.{i}.attn_k.weight", (GGUF_KV_HEADS * head_dim, GGUF_HIDDEN))
        add(f"blk.{i}.attn_v.weight", (GGUF_KV_HEADS * head_dim, GGUF_HIDDEN))
        add(f"blk.{i}.attn_output.weight", (GGUF_HIDDEN, GGUF_HEADS * head_dim))
        add(f"blk.{i}.ffn_norm.weight", (GGUF_HIDDEN,), norm=True)
        add(f"blk.{i}.ffn_gate.weight", (ffn, GGUF_HIDDEN))
        add(f"blk.{i}.ffn_up.weight", (ffn, GGUF_HIDDEN))
        if down_type == "Q6_K":
            add_q6_k(f"blk.{i}.ffn_down.weight", GGUF_HIDDEN, ffn)
        else:
            add(f"blk.{i}.ffn_down.weight", (GGUF_HIDDEN, ffn))
    add("output_norm.weight", (GGUF_HIDDEN,), norm=True)
    add("output.weight", (GGUF_VOCAB, GGUF_HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_logits(path, ids, remove=None):
    """Logits of a GGUF as transformers reads it (dequantised), optionally with layers removed in memory."""
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    if remove:
        remove_layers(model, remove)
    with torch.no_grad():
        return model(ids).logits


def _field(reader, key):
    field = reader.get_field(key)
    return field.contents() if field is not None else None


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_gguf_prune_copies_kept_blocks_and_filters_per_layer_arrays(tiny_gguf, tmp_path, capsys):
    from gguf import GGUFReader

    out = tmp_path / "pruned.gguf"
    assert main(["prune", str(tiny_gguf), "--layers", "1,3", "--output", str(out)]) == 0
    assert "file level" in capsys.readouterr().err
    source, pruned = GGUFReader(tiny_gguf), GGUFReader(out)
    assert _field(pruned, "llama.block_count") == 4
    assert _field(pruned, "llama.attention.sliding_window_pattern") == [WINDOW_PATTERN[i] for i in KEPT]
    source_tensors = {t.name: t for t in source.tensors}
    expected_names = [t.name for t in source.tensors if not t.name.startswith(("blk.1.", "blk.3."))]
    assert len(pruned.tensors) == len(expected_names)
    for tensor in pruned.tensors:     # kept blocks renumbered, everything else as it was
        original = tensor.name
        if tensor.name.startswith("blk."):
            new = int(tensor.name.split(".")[1])
            original = f"blk.{KEPT[new]}." + tensor.name.split(".", 2)[2]
        source_tensor = source_tensors[original]
        assert tensor.tensor_type == source_tensor.tensor_type
        assert tensor.data.tobytes() == source_tensor.data.tobytes()
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.chat_template", "llama.rope.freq_base", "llama.attention.head_count_kv"):
        assert _field(pruned, key) == _field(source, key)
    assert "pruned" in _field(pruned, "general.name") and "tiny-llama" in _field(pruned, "general.name")
    assert _field(pruned, "depthprune.kept_layers") == KEPT
    assert _field(pruned, "depthprune.removed_layers") == REMOVED
    metadata = json.loads(_field(pruned, "depthprune.metadata"))
    assert metadata["method"] == "manual" and metadata["num_layers_original"] == 6


def test_transformers_reads_the_pruned_gguf_as_the_source_pruned_in_memory(tiny_gguf, tmp_path, ids):
    out = tmp_path / "pruned.gguf"
    api.prune(str(tiny_gguf), layers=REMOVED, output=out)
    expected = gguf_logits(tiny_gguf, ids, remove=REMOVED)
    assert torch.equal(gguf_logits(out, ids), expected)


def test_pruning_a_pruned_gguf_composes_the_original_numbering(tiny_gguf, tmp_path):
    from gguf import GGUFReader

    api.prune(str(tiny_gguf), layers=[1], output=tmp_path / "once.gguf")          # kept 0,2,3,4,5
    api.prune(str(tmp_path / "once.gguf"), layers=[2], output=tmp_path / "twice.gguf")   # drops original 3
    twice = GGUFReader(tmp_path / "twice.gguf")
    assert _field(twice, "depthprune.kept_layers") == [0, 2, 4, 5]
    assert _field(twice, "llama.attention.sliding_window_pattern") == [WINDOW_PATTERN[i] for i in KEPT]
    assert json.loads(_field(twice, "depthprune.metadata"))["removed_layers"] == [1, 3]


def test_gguf_output_needs_a_gguf_source_and_refuses_to_overwrite(tiny_gguf, tmp_path, capsys):
    folder = tmp_path / "hf"
    tiny_case_model("llama", num_layers=4).save_pretrained(folder)
    assert main(["prune", str(folder), "--layers", "1", "--output", str(tmp_path / "x.gguf")]) == 2
    assert "GGUF output is made from a GGUF source" in capsys.readouterr().err
    (tmp_path / "y.gguf").write_bytes(b"keep")
    assert main(["prune", str(tiny_gguf), "--layers", "1", "--output", str(tmp_path / "y.gguf")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "y.gguf").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "y.gguf"]    # no temporary file left


def test_llama_cpp_position_rules_are_enforced(tmp_path):
    path = write_tiny_gguf(tmp_path / "gemma2.gguf", arch="gemma2", name="tiny-gemma2", window_pattern=False)
    with pytest.raises(DepthpruneError, match="sliding-window attention by position"):
        api.prune(str(path), layers=[1], output=tmp_path / "out.gguf")     # layer 2 (sliding) would move to 1 (global)
    api.prune(str(path), layers=[2, 3], output=tmp_path / "ok.gguf")       # a whole period: every kind stays put
    assert (tmp_path / "ok.gguf").is_file()


def test_export_copies_unchanged_tensors_and_requantises_changed_ones(tiny_gguf, tmp_path, ids):
    from gguf import GGUFReader, dequantize

    pruned_dir = tmp_path / "pruned"
    api.prune(str(tiny_gguf), layers=REMOVED, output=pruned_dir, surgery="memory")   # dequantised, float32
    model = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    changed = model.model.layers[1].mlp.down_proj.weight       # new block 1 = source block 2
    with torch.no_grad():
        changed.mul_(1.5)
    model.save_pretrained(pruned_dir)
    out = tmp_path / "exported.gguf"
    report = api.export(str(pruned_dir), to_gguf=out, source=tiny_gguf)
    assert report["quantised"] == {"Q8_0": 1} and report["fallback"] == {}
    source = {t.name: t for t in GGUFReader(tiny_gguf).tensors}
    exported = {t.name: t for t in GGUFReader(out).tensors}
    assert exported["blk.1.ffn_down.weight"].tensor_type.name == "Q8_0"
    assert exported["blk.1.ffn_down.weight"].data.tobytes() != source["blk.2.ffn_down.weight"].data.tobytes()
    new_values = dequantize(exported["blk.1.ffn_down.weight"].data, exported["blk.1.ffn_down.weight"].tensor_type)
    assert np.allclose(new_values, changed.detach().numpy(), atol=0.01)
    for name, tensor in exported.items():
        if name != "blk.1.ffn_down.weight":
            original = name if not name.startswith("blk.") else \
                f"blk.{KEPT[int(name.split('.')[1])]}." + name.split(".", 2)[2]
            assert tensor.data.tobytes() == source[original].data.tobytes(), name
    with torch.no_grad():
        expected = model(ids).logits
    assert torch.allclose(gguf_logits(out, ids), expected, atol=0.05)
    assert (tmp_path / "pruned" / "depthprune.json").is_file()


def test_export_refuses_what_it_cannot_place(tiny_gguf, tmp_path, capsys):
    folder = tmp_path / "hf"
    tiny_case_model("llama", num_layers=4).save_pretrained(folder)     # not made from a GGUF
    assert main(["export", str(folder), "--to-gguf", str(tmp_path / "a.gguf")]) == 2
    assert "--source SRC.gguf" in capsys.readouterr().err
    assert main(["export", str(folder), "--to-gguf", str(tmp_path / "a.gguf"), "--source", str(tiny_gguf)]) == 2
    assert "do not come from tiny.gguf" in capsys.readouterr().err      # 4 layers, not from a 6-block file
    assert main(["export", str(tmp_path / "missing"), "--to-gguf", str(tmp_path / "a.gguf")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "a.gguf").exists()


def test_export_of_an_unchanged_prune_is_the_file_level_prune(tiny_gguf, tmp_path):
    from gguf import GGUFReader

    api.prune(str(tiny_gguf), layers=REMOVED, output=tmp_path / "pruned", surgery="memory")
    report = api.export(str(tmp_path / "pruned"), to_gguf=tmp_path / "exported.gguf")   # source from depthprune.json
    api.prune(str(tiny_gguf), layers=REMOVED, output=tmp_path / "direct.gguf")
    assert report["quantised"] == {} and report["fallback"] == {}
    exported = {t.name: t.data.tobytes() for t in GGUFReader(tmp_path / "exported.gguf").tensors}
    direct = {t.name: t.data.tobytes() for t in GGUFReader(tmp_path / "direct.gguf").tensors}
    assert exported == direct


def test_export_writes_changed_k_quants_as_q8_0_and_says_so(tmp_path, ids, capsys):
    from gguf import GGUFReader, dequantize

    source = write_tiny_gguf(tmp_path / "k.gguf", ffn=256, down_type="Q6_K")
    folder = tmp_path / "pruned"
    api.prune(str(source), layers=REMOVED, output=folder, surgery="memory")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    changed = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        changed.mul_(0.5)
    model.save_pretrained(folder)
    capsys.readouterr()
    report = api.export(str(folder), to_gguf=tmp_path / "out.gguf")
    assert report["fallback"] == {"Q6_K": 1} and report["quantised"] == {}
    notice = capsys.readouterr().err
    assert "1 x Q6_K changed tensors written as Q8_0" in notice and "llama-quantize" in notice
    tensors = {t.name: t for t in GGUFReader(tmp_path / "out.gguf").tensors}
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.1.ffn_down.weight"].tensor_type.name == "Q6_K"      # unchanged: copied as it was
    values = dequantize(tensors["blk.0.ffn_down.weight"].data, tensors["blk.0.ffn_down.weight"].tensor_type)
    assert np.allclose(values, changed.detach().numpy(), atol=0.01 * float(changed.detach().abs().max()))


def test_a_pruned_gguf_loads_with_its_provenance(tiny_gguf, tmp_path):
    from depthprune import load_model
    from depthprune.metadata import evaluated_model

    api.prune(str(tiny_gguf), layers=[1], output=tmp_path / "once.gguf")            # kept 0, 2, 3, 4, 5
    loaded = load_model(tmp_path / "once.gguf")                                    # dequantised into the cache
    assert evaluated_model(loaded)["removed_layers"] == [1] and not evaluated_model(loaded)["dense"]
    api.prune(str(tmp_path / "once.gguf"), layers=[2], output=tmp_path / "twice")   # in memory, to a folder
    metadata = json.loads((tmp_path / "twice" / "depthprune.json").read_text())
    assert metadata["kept_layers"] == KEPT and metadata["removed_layers"] == REMOVED
