"""The wrapper against lm-evaluation-harness itself (skipped where lm-eval is not installed).

- it is an ``lm_eval.api.model.LM`` and scores exactly as lm-eval's own ``HFLM`` on the same in-memory model;
- lm-eval's real task YAMLs (pointed at local JSON files in the Hugging Face layout) run on the wrapper, and give
  the same prompts and the same acc/acc_norm as our offline loaders reading the same items in the original formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402

from depthprune.evaluate.lm_wrapper import DepthpruneLM  # noqa: E402
from depthprune.evaluate.multiple_choice import build_task_requests, evaluate_task  # noqa: E402
from depthprune.evaluate.tasks import TASKS, load_task_docs  # noqa: E402
from tiny_models import tiny_model  # noqa: E402
from tiny_tokenizer import build_tiny_tokenizer  # noqa: E402

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_layers=2)


def test_wrapper_is_an_lm_eval_lm(model, tokenizer):
    lm = DepthpruneLM(model, tokenizer, progress=False)
    assert isinstance(lm, LM)
    assert not getattr(DepthpruneLM, "__abstractmethods__", set())  # every abstract method is implemented
    assert lm.rank == 0 and lm.world_size == 1


def test_scores_equal_lm_eval_hflm_on_the_same_model(model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    requests = [Instance("loglikelihood", {}, ("Question: Which one?\nAnswer:", " the first"), 0),
                Instance("loglikelihood", {}, ("Trailing space ", "moves."), 1),
                Instance("loglikelihood", {}, ("", "Empty context."), 2)]
    text = "A rolling text that needs several windows of sixteen tokens to be scored completely, end to end."
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=16)
    ours = DepthpruneLM(model, tokenizer, batch_size=3, max_length=16, progress=False)
    for (ref_ll, ref_greedy), (ll, greedy) in zip(reference.loglikelihood(requests), ours.loglikelihood(requests)):
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    assert ours.loglikelihood_rolling(rolling)[0] == pytest.approx(reference.loglikelihood_rolling(rolling)[0],
                                                                   abs=1e-3)


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


def test_scores_equal_lm_eval_hflm_with_a_tokenizer_that_adds_bos(model):
    from lm_eval.models.huggingface import HFLM

    tokenizer = bos_adding_tokenizer()
    assert tokenizer.encode("hello")[0] == tokenizer.bos_token_id          # the case today's other tests miss
    text = "A rolling text that needs several windows of sixteen tokens to be scored completely, end to end."
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0),
               Instance("loglikelihood_rolling", {}, ("Short.",), 1),
               Instance("loglikelihood_rolling", {}, ("<s>Already starts with BOS.",), 2)]
    requests = [Instance("loglikelihood", {}, ("Question: Which one?\nAnswer:", " the first"), 0),
                Instance("loglikelihood", {}, ("", "Empty context."), 1)]
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=16)
    ours = DepthpruneLM(model, tokenizer, batch_size=3, max_length=16, progress=False)
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(reference.loglikelihood_rolling(rolling), abs=1e-3)
    for (ref_ll, ref_greedy), (ll, greedy) in zip(reference.loglikelihood(requests), ours.loglikelihood(requests)):
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy


def test_generate_until_stops_at_the_stop_string(model, tokenizer):
    lm = DepthpruneLM(model, tokenizer, progress=False)
    free, = lm.generate_until([Instance("generate_until", {}, ("def f(", {"max_gen_toks": 12}), 0)])
    assert isinstance(free, str) and free
    stop = free[len(free) // 2:len(free) // 2 + 1] or free[0]
    cut, = lm.generate_until([Instance("generate_until", {}, ("def f(", {"max_gen_toks": 12, "until": [stop]}), 0)])
    assert cut == free.split(stop)[0]


# Items in the Hugging Face layout lm-eval reads, and the same items in the original release formats.
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
             "answer": i % 4} for i in range(5)]
MMLU_TEST = [{"question": "What orbits the Sun?", "subject": "astronomy",
              "choices": ["Earth", "the Moon", "Io", "Europa"],
              "answer": 0},
             {"question": "Second?", "subject": "astronomy", "choices": ["w", "x", "y", "z"], "answer": 2}]


def _jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _write_original_formats(root: Path) -> None:
    _jsonl(root / "arc_easy" / "ARC-Easy-Test.jsonl", [
        {"id": r["id"], "answerKey": r["answerKey"], "question": {"stem": r["question"], "choices": [
            {"text": t, "label": label} for t, label in zip(r["choices"]["text"], r["choices"]["label"])]}}
        for r in ARC_HF])
    _jsonl(root / "piqa" / "valid.jsonl", [{k: r[k] for k in ("goal", "sol1", "sol2")} for r in PIQA_HF])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{r['label']}\n" for r in PIQA_HF))
    _jsonl(root / "boolq" / "val.jsonl", [{**r, "label": "true" if r["label"] else "false"} for r in BOOLQ_HF])
    _jsonl(root / "winogrande" / "dev.jsonl", WINO_HF)
    _jsonl(root / "hellaswag" / "hellaswag_val.jsonl", HELLA_HF)
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


# our task -> (lm-eval YAML to include, HF records, extra YAML lines)
HARNESS_TASKS = {
    "arc_easy": ("arc/arc_easy.yaml", ARC_HF, ""),
    "piqa": ("piqa/piqa.yaml", PIQA_HF, ""),
    "boolq": ("super_glue/boolq/default.yaml", BOOLQ_HF, ""),
    "winogrande": ("winogrande/default.yaml", WINO_HF, ""),
    "hellaswag": ("hellaswag/hellaswag.yaml", HELLA_HF, ""),
    "openbookqa": ("openbookqa/openbookqa.yaml", OBQA_HF, ""),
    "mmlu": ("mmlu/default/_default_template_yaml", MMLU_TEST,
             'description: "The following are multiple choice questions (with answers) about astronomy.\\n\\n"\n'
             "num_fewshot: 5\n"),  # lm-eval's own default is 0-shot; the papers (and our default) use 5
}


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory, model, tokenizer):
    """lm-eval's own task files on local JSON, run once on our wrapper with logged samples."""
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("harness")
    names = []
    for name, (yaml_path, records, extra) in HARNESS_TASKS.items():
        files = {"test": str(_jsonl(root / "hf" / f"{name}.jsonl", records))}
        if name == "mmlu":
            files["dev"] = str(_jsonl(root / "hf" / "mmlu_dev.jsonl", MMLU_DEV))
        (root / "yaml").mkdir(exist_ok=True)
        (root / "yaml" / f"local_{name}.yaml").write_text(
            f"include: {LM_EVAL_TASKS / yaml_path}\ntask: local_{name}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files: {json.dumps(files)}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n" + extra)
        names.append(f"local_{name}")
    manager = TaskManager(include_path=str(root / "yaml"), include_defaults=False)
    lm = DepthpruneLM(model, tokenizer, batch_size=4, progress=False)
    output = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, bootstrap_iters=0,
                                     log_samples=True)
    data_dir = root / "original"
    _write_original_formats(data_dir)
    return output, lm, data_dir, manager


def test_lm_eval_backend_reports_what_the_offline_evaluator_reports(harness_run):
    from depthprune.evaluate.runner import _run_lm_eval

    _, lm, data_dir, manager = harness_run
    results, _ = _run_lm_eval(lm, ["local_piqa", "local_arc_easy"], 0, None, task_manager=manager)
    for name in ("piqa", "arc_easy"):
        offline = evaluate_task(lm, TASKS[name], data_dir)
        assert results[f"local_{name}"]["acc"] == pytest.approx(offline["acc"])
        assert results[f"local_{name}"]["acc_norm"] == pytest.approx(offline["acc_norm"])
        assert results[f"local_{name}"]["n"] == offline["n"]


@pytest.mark.parametrize("name", list(HARNESS_TASKS))
def test_offline_prompts_and_metrics_equal_lm_eval(harness_run, name):
    output, lm, data_dir, _ = harness_run
    task = TASKS[name]
    docs = load_task_docs(task, data_dir)
    fewshot = task.load_fewshot(data_dir / name) if task.load_fewshot else None
    ours = build_task_requests(task, docs, task.default_fewshot, fewshot)
    samples = sorted(output["samples"][f"local_{name}"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs)
    for sample, requests in zip(samples, ours):
        assert [tuple(argument) for argument in sample["arguments"]] == requests
    harness = output["results"][f"local_{name}"]
    result = evaluate_task(lm, task, data_dir)
    for metric in task.metrics:
        assert result[metric] == pytest.approx(harness[f"{metric},none"])
