"""Tasks scored by lm-eval itself from the release files in --data-dir, with no network.

- Our records fed to lm-eval's own YAML give exactly the prompts and metrics lm-eval gives when it loads the same
  items in the Hugging Face layout itself (written here by hand, read through its own ``datasets`` download path).
- acc and acc_norm equal a slow, obvious computation with the model's own forward pass.
- The HFLM subclass that asks only for the logits it reads scores exactly as plain HFLM (BOS included), with the
  output head run on fewer positions.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from depthprune import DepthpruneError  # noqa: E402
from depthprune.evaluate.harness import build_tasks, hflm_class, run_tasks, task_manager  # noqa: E402
from tiny_models import tiny_model  # noqa: E402
from tiny_tokenizer import build_tiny_tokenizer  # noqa: E402

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_layers=2)


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails, and the Hugging Face libraries are told to stay offline."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network use in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# The same items in the Hugging Face layout lm-eval loads and in the original release formats.
ARC_HF = [{"id": "a1", "question": "Which gas do plants take in?", "answerKey": "B",
           "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]}},
          {"id": "a2", "question": "What melts ice?", "answerKey": "1",
           "choices": {"text": ["heat", "cold air", "darkness"], "label": ["1", "2", "3"]}}]
PIQA_HF = [{"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Paint the lid.", "label": 0},
           {"goal": "Dry your hands", "sol1": "Use more water.", "sol2": "Use a towel.", "label": 1}]
BOOLQ_HF = [{"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": 1},
            {"question": "do fish fly", "passage": "Fish -- Fish swim in water.", "idx": 1, "label": 0}]
WINO_HF = [{"sentence": "The trophy doesn't fit in the suitcase because the _ is too big.", "option1": "trophy",
            "option2": "suitcase", "answer": "1"},
           {"sentence": "Sarah gave Maria a gift because _ was kind.", "option1": "Sarah", "option2": "Maria",
            "answer": "2"}]
HELLA_HF = [{"ind": 1, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
             "ctx_b": "then the man", "ctx": "", "endings": ["[header] wipes the window.", "drives [title] away.",
                                                           "sings loudly.", "sleeps."], "source_id": "s",
             "split": "val", "split_type": "indomain", "label": "1"}]
OBQA_HF = [{"id": "7-980", "question_stem": "The sun is responsible for", "answerKey": "D",
            "choices": {"text": ["puppies learning new tricks", "children growing up", "flowers wilting in a vase",
                                 "plants sprouting, blooming and wilting"], "label": ["A", "B", "C", "D"]}}]
MMLU_DEV = [{"question": f"Dev question {i}?", "subject": "astronomy", "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"],
             "answer": i % 4} for i in range(6)]
MMLU_TEST = [{"question": "What orbits the Sun?", "subject": "astronomy",
              "choices": ["Earth", "the Moon", "Io", "Europa"], "answer": 0},
             {"question": "Second?", "subject": "astronomy", "choices": ["w", "x", "y", "z"], "answer": 2},
             {"question": "Third?", "subject": "astronomy", "choices": ["p", "q", "r", "s"], "answer": 3}]


def _jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_release_files(root: Path) -> None:
    """The items above in each task's original release format, as ../shared/data holds them."""
    _jsonl(root / "arc_easy" / "ARC-Easy-Test.jsonl", [
        {"id": r["id"], "answerKey": r["answerKey"], "question": {"stem": r["question"], "choices": [
            {"text": t, "label": label} for t, label in zip(r["choices"]["text"], r["choices"]["label"])]}}
        for r in ARC_HF])
    _jsonl(root / "piqa" / "valid.jsonl", [{k: r[k] for k in ("goal", "sol1", "sol2")} for r in PIQA_HF])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{r['label']}\n" for r in PIQA_HF))
    _jsonl(root / "boolq" / "val.jsonl", [{**r, "label": "true" if r["label"] else "false"} for r in BOOLQ_HF])
    _jsonl(root / "winogrande" / "dev.jsonl", WINO_HF)
    _jsonl(root / "hellaswag" / "hellaswag_val.jsonl", [{**r, "label": int(r["label"])} for r in HELLA_HF])
    (root / "openbookqa").mkdir(parents=True, exist_ok=True)
    (root / "openbookqa" / "test.tsv").write_text(
        "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n" + "".join(
            f"{r['id']}\t{r['question_stem']}\t" + " ".join(f"({label}) {t}" for t, label in
                                                              zip(r["choices"]["text"], r["choices"]["label"]))
            + f"\tx\t{r['answerKey']}\n" for r in OBQA_HF))
    for split, records in (("dev", MMLU_DEV), ("test", MMLU_TEST)):
        path = root / "mmlu" / split / f"astronomy_{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{r['question']},{','.join(r['choices'])},{'ABCD'[r['answer']]}\n" for r in records))


# task -> (lm-eval YAML to include, records in the Hugging Face layout, the split lm-eval scores)
HARNESS_TASKS = {
    "arc_easy": ("arc/arc_easy.yaml", ARC_HF, "test"),
    "piqa": ("piqa/piqa.yaml", PIQA_HF, "validation"),
    "boolq": ("super_glue/boolq/default.yaml", BOOLQ_HF, "validation"),
    "winogrande": ("winogrande/default.yaml", WINO_HF, "validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", HELLA_HF, "validation"),
    "openbookqa": ("openbookqa/openbookqa.yaml", OBQA_HF, "test"),
    "mmlu_astronomy": ("mmlu/default/mmlu_astronomy.yaml", MMLU_TEST, "test"),
}


def _hflm(model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=4)


@pytest.fixture(scope="module")
def harness_reference(tmp_path_factory, model, tokenizer):
    """lm-eval's own YAMLs loading the Hugging Face layout from local JSON through its own download path."""
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("harness")
    for name, (yaml_path, records, split) in HARNESS_TASKS.items():
        files = {split: str(_jsonl(root / "hf" / f"{name}.jsonl", records))}
        extra = ""
        if name == "mmlu_astronomy":
            files["dev"] = str(_jsonl(root / "hf" / "mmlu_dev.jsonl", MMLU_DEV))
            extra = "num_fewshot: 5\n"
        (root / "yaml").mkdir(exist_ok=True)
        (root / "yaml" / f"json_{name}.yaml").write_text(
            f"include: {LM_EVAL_TASKS / yaml_path}\ntask: json_{name}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files: {json.dumps(files)}\ntraining_split: null\n"
            f"validation_split: {split if split == 'validation' else 'null'}\n"
            f"test_split: {split if split == 'test' else 'null'}\n" + extra)
    manager = TaskManager(include_path=str(root / "yaml"), include_defaults=False)
    output = lm_eval.simple_evaluate(model=_hflm(model, tokenizer), tasks=[f"json_{n}" for n in HARNESS_TASKS],
                                     task_manager=manager, bootstrap_iters=0, log_samples=True)
    data_dir = root / "release"
    write_release_files(data_dir)
    return output, data_dir


@pytest.mark.parametrize("name", list(HARNESS_TASKS))
def test_release_files_give_lm_eval_s_own_prompts_and_metrics(harness_reference, model, tokenizer, name,
                                                              no_network):
    reference, data_dir = harness_reference
    tasks = build_tasks([name], data_dir, num_fewshot=5 if name == "mmlu_astronomy" else None)
    ours = lm_eval.simple_evaluate(model=_hflm(model, tokenizer), tasks=tasks, bootstrap_iters=0, log_samples=True,
                                   task_manager=task_manager())
    expected = sorted(reference["samples"][f"json_{name}"], key=lambda s: s["doc_id"])
    got = sorted(ours["samples"][name], key=lambda s: s["doc_id"])
    assert len(got) == len(expected) == len(HARNESS_TASKS[name][1])
    for mine, theirs in zip(got, expected):
        assert mine["arguments"] == theirs["arguments"]     # the same contexts and continuations, few-shot included
        assert mine["target"] == theirs["target"]
    for key, value in reference["results"][f"json_{name}"].items():
        if key.startswith(("acc,", "acc_norm,")):
            assert ours["results"][name][key] == pytest.approx(value)


def slow_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Summed log-probability of the continuation after the context: one unpadded forward pass, position by
    position, with the split lm-eval uses (the whole string encoded, cut at the encoded context's length)."""
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
    return sum(log_probs[position - 1, whole[position]].item() for position in range(len(context_ids), len(whole)))


def test_acc_and_acc_norm_equal_the_models_own_forward(model, tokenizer, tmp_path, no_network):
    _jsonl(tmp_path / "arc_easy" / "ARC-Easy-Test.jsonl", [
        {"id": "1", "question": {"stem": "Pick one", "choices": [{"text": "alpha", "label": "A"},
                                                                 {"text": "beta gamma", "label": "B"}]},
         "answerKey": "A"},
        {"id": "2", "question": {"stem": "And now?", "choices": [
            {"text": "x", "label": "A"}, {"text": "yy", "label": "B"}, {"text": "zzz", "label": "C"}]},
         "answerKey": "C"},
        {"id": "3", "question": {"stem": "Last one", "choices": [{"text": "the end", "label": "A"},
                                                                {"text": "a start", "label": "B"}]}, "answerKey": "B"}])
    results, _ = run_tasks(model, tokenizer, build_tasks(["arc_easy"], tmp_path), batch_size=3)
    hits = {"acc": 0, "acc_norm": 0}
    for stem, choices, gold in [("Pick one", ["alpha", "beta gamma"], 0), ("And now?", ["x", "yy", "zzz"], 2),
                                ("Last one", ["the end", "a start"], 1)]:
        lls = [slow_loglikelihood(model, tokenizer, f"Question: {stem}\nAnswer:", " " + c) for c in choices]
        normed = [ll / len(c) for ll, c in zip(lls, choices)]   # acc_norm: by characters of the choice
        hits["acc"] += max(range(len(lls)), key=lambda i: (lls[i], -i)) == gold
        hits["acc_norm"] += max(range(len(normed)), key=lambda i: (normed[i], -i)) == gold
    arc = results["arc_easy"]
    assert arc["acc"] == pytest.approx(hits["acc"] / 3) and arc["acc_norm"] == pytest.approx(hits["acc_norm"] / 3)
    assert arc["n"] == 3 and arc["num_fewshot"] == 0 and arc["split"] == "test"
    assert arc["data"] == "--data-dir arc_easy/"


def test_limit_counts_per_task_and_lm_eval_s_progress_bar_shows(model, tokenizer, tmp_path, no_network, capsys):
    write_release_files(tmp_path)
    results, _ = run_tasks(model, tokenizer, build_tasks(["mmlu_astronomy", "piqa"], tmp_path), limit=2)
    assert results["piqa"]["n"] == 2 and results["mmlu_astronomy"]["n"] == 2
    assert results["mmlu_astronomy"]["num_fewshot"] == 0     # lm-eval's YAML default for a single subject
    assert "Running loglikelihood requests" in capsys.readouterr().err


def test_mmlu_group_is_five_shot_with_one_aggregate_and_limit_per_subject(model, tokenizer, tmp_path, no_network):
    subjects = sorted(path.stem.removeprefix("mmlu_")
                      for path in (LM_EVAL_TASKS / "mmlu" / "default").glob("mmlu_*.yaml"))
    assert len(subjects) == 57
    for subject in subjects:
        for split, records in (("dev", MMLU_DEV), ("test", MMLU_TEST)):
            path = tmp_path / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{r['question']},{','.join(r['choices'])},{'ABCD'[r['answer']]}\n"
                                    for r in records))
    results, _ = run_tasks(model, tokenizer, build_tasks(["mmlu"], tmp_path), limit=1, batch_size=8)
    mmlu = results["mmlu"]
    assert mmlu["num_fewshot"] == 5 and mmlu["n"] == 57 and 0 <= mmlu["acc"] <= 1
    leaves = {name: entry for name, entry in mmlu["subtasks"].items() if name.startswith("mmlu_")}
    assert len(leaves) == 57 and all(entry["n"] == 1 for entry in leaves.values())
    # Every subject scores its first test question: lm-eval's aggregate is their plain mean here.
    assert mmlu["acc"] == pytest.approx(sum(entry["acc"] for entry in leaves.values()) / 57)


def test_mmlu_group_reads_every_subject_it_needs(tmp_path, no_network):
    write_release_files(tmp_path)
    with pytest.raises(DepthpruneError, match="mmlu/test/abstract_algebra_test.csv is missing"):
        build_tasks(["mmlu"], tmp_path)


def test_another_lm_eval_task_over_the_same_dataset_runs_offline(model, tokenizer, tmp_path, no_network):
    write_release_files(tmp_path)
    results, _ = run_tasks(model, tokenizer, build_tasks(["mmlu_astronomy_continuation"], tmp_path, num_fewshot=0))
    assert results["mmlu_astronomy_continuation"]["n"] == len(MMLU_TEST)
    assert 0 <= results["mmlu_astronomy_continuation"]["acc"] <= 1


def test_few_shot_from_a_split_the_release_files_lack_is_refused(tmp_path, no_network):
    write_release_files(tmp_path)
    with pytest.raises(DepthpruneError, match="boolq: lm-eval draws few-shot examples from the train split"):
        build_tasks(["boolq"], tmp_path, num_fewshot=2)


def test_unknown_task_suggests_the_closest():
    with pytest.raises(DepthpruneError, match="Did you mean 'hellaswag'"):
        build_tasks(["helaswag"])


def test_unreachable_data_is_one_clear_error(no_network):
    with pytest.raises(DepthpruneError, match="piqa: lm-eval could not load its data .*--data-dir"):
        build_tasks(["piqa"])


def bos_adding_tokenizer():
    """The tiny tokenizer with a post-processor that prepends BOS (as Llama's and Gemma's tokenizers do)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from tiny_tokenizer import _trained

    backend = Tokenizer.from_str(_trained(512))
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _instances(kind, args_list):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, args, index) for index, args in enumerate(args_list)]


@pytest.mark.parametrize("bos", [False, True], ids=["plain tokenizer", "tokenizer adding BOS"])
def test_the_tail_logits_subclass_scores_exactly_as_hflm(model, tokenizer, bos):
    from lm_eval.models.huggingface import HFLM

    tokenizer = bos_adding_tokenizer() if bos else tokenizer
    assert (tokenizer.encode("hello")[0] == tokenizer.bos_token_id) == bos
    long_context = "A much longer context that goes on about modules, classes and functions of the library"
    requests = _instances("loglikelihood", [
        ("Question: What is the colour of the sky?\nAnswer:", " blue"),
        ("Question: What is the colour of the sky?\nAnswer:", " a deep and endless shade of grey"),
        ("The function returns ", "None."),        # the trailing space moves into the continuation
        ("", "An empty context."),
        ("x", " y"), (long_context, " and then ends."), (long_context, " the"), (long_context, " a"),
        ("<s>Already starts with BOS.", " Then more."),
        ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen",   # cut left
         " sixteen")])
    rolling = _instances("loglikelihood_rolling", [
        ("A rolling text that needs several windows of sixteen tokens to be scored completely, end to end.",),
        ("Short.",)])
    reference = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=3, max_length=20)
    ours = hflm_class()(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=3, max_length=20)
    positions = {"head": 0}
    handle = model.lm_head.register_forward_hook(lambda module, args, out: positions.__setitem__(
        "head", positions["head"] + out.shape[0] * out.shape[1]))
    try:
        expected = reference.loglikelihood(requests)
        plain_positions, positions["head"] = positions["head"], 0
        got = ours.loglikelihood(requests)
    finally:
        handle.remove()
    assert positions["head"] < plain_positions                 # the head ran on fewer positions
    for (ref_ll, ref_greedy), (ll, greedy) in zip(expected, got):
        assert ll == pytest.approx(ref_ll, abs=1e-5) and greedy == ref_greedy
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(reference.loglikelihood_rolling(rolling), abs=1e-4)
