"""Task loaders read small samples written here in each original release format; prompts match lm-eval's YAMLs."""

from __future__ import annotations

import gzip
import json

import pytest

from depthprune import DepthpruneError
from depthprune.evaluate.multiple_choice import build_task_requests, doc_requests, select_docs
from depthprune.evaluate.tasks import TASKS, Doc, get_task, load_task_docs


def _write(path, text: str, gzipped: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gzipped else data)


def _jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_boolq_accepts_string_and_boolean_labels(tmp_path):
    _write(tmp_path / "boolq" / "val.jsonl", _jsonl([
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": "true"},
        {"question": "do fish fly", "passage": "Fish -- Fish swim.", "idx": 1, "label": False},
    ]))
    docs = load_task_docs(TASKS["boolq"], tmp_path)
    assert docs == [
        Doc(query="Sky -- The sky is blue.\nQuestion: is the sky blue?\nAnswer:", choices=("no", "yes"), gold=1),
        Doc(query="Fish -- Fish swim.\nQuestion: do fish fly?\nAnswer:", choices=("no", "yes"), gold=0),
    ]
    assert doc_requests(docs[0])[1] == (docs[0].query, " yes")


def test_piqa_reads_labels_file_and_checks_its_length(tmp_path):
    _write(tmp_path / "piqa" / "valid.jsonl", _jsonl([
        {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Paint the lid."},
        {"goal": "Dry hands", "sol1": "Use water.", "sol2": "Use a towel."},
    ]))
    _write(tmp_path / "piqa" / "valid-labels.lst", "0\n1\n")
    docs = load_task_docs(TASKS["piqa"], tmp_path)
    assert docs[0] == Doc(query="Question: Open a jar\nAnswer:", choices=("Twist the lid.", "Paint the lid."), gold=0)
    assert docs[1].gold == 1
    _write(tmp_path / "piqa" / "valid-labels.lst", "0\n")
    with pytest.raises(DepthpruneError, match="1 labels for 2 items"):
        load_task_docs(TASKS["piqa"], tmp_path)


def test_hellaswag_original_jsonl_gets_lm_eval_preprocessing(tmp_path):
    record = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
              "ctx_b": "then THE man", "endings": [" [header] wipes the window.", "drives [title] away.",
                                                 "sings  loudly.", "sleeps."], "label": "1"}
    _write(tmp_path / "hellaswag" / "hellaswag_val.jsonl", _jsonl([record]))
    (doc,) = load_task_docs(TASKS["hellaswag"], tmp_path)
    # ctx_b.capitalize() lower-cases the rest; strip first, then " [title]" -> ". ", other [tags] dropped (so
    # " [header] wipes" keeps the space after the tag), then one pass of "  " -> " ".
    assert doc.query == "Removing ice from car: Then, the man writes over the snow. Then the man"
    assert doc.choices == (" wipes the window.", "drives. away.", "sings loudly.", "sleeps.")
    assert doc.gold == 1


def test_hellaswag_klosax_text_form(tmp_path):
    lines = ["Roof shingle removal: A man is sitting on a roof. he", "3", "is using wrap.", "is ripping tiles.",
             "is holding a cube.", "starts pulling up roofing.",
             "Clean: [step] A woman wipes.", "0", "a", "b", "c", "d"]
    _write(tmp_path / "hellaswag" / "hellaswag_val_full.txt.gz", "\n".join(lines) + "\n", gzipped=True)
    docs = load_task_docs(TASKS["hellaswag"], tmp_path)
    assert [d.gold for d in docs] == [3, 0]
    assert docs[0].query == lines[0] and docs[0].choices == tuple(lines[2:6])
    assert docs[1].query == "Clean: A woman wipes."
    _write(tmp_path / "hellaswag" / "hellaswag_val_full.txt.gz", "\n".join(lines[:7]) + "\n", gzipped=True)
    with pytest.raises(DepthpruneError, match="not a multiple of 6"):
        load_task_docs(TASKS["hellaswag"], tmp_path)


def test_winogrande_partial_scoring(tmp_path):
    _write(tmp_path / "winogrande" / "dev.jsonl", _jsonl([
        {"qID": "q1", "sentence": "The trophy doesn't fit in the suitcase because the _ is too big.",
         "option1": "trophy", "option2": "suitcase", "answer": "1"},
        {"qID": "q2", "sentence": "Sarah gave Maria a gift because _ was kind.", "option1": "Sarah",
         "option2": "Maria", "answer": "2"},
    ]))
    _write(tmp_path / "winogrande" / "dev-labels.lst", "1\n2\n")
    docs = load_task_docs(TASKS["winogrande"], tmp_path)
    assert docs[0].choices == ("The trophy doesn't fit in the suitcase because the trophy",
                               "The trophy doesn't fit in the suitcase because the suitcase")
    assert docs[0].target == "is too big." and docs[0].gold == 0 and docs[1].gold == 1
    # Each option's sentence start conditions the same continuation.
    assert doc_requests(docs[1]) == [("Sarah gave Maria a gift because Sarah", " was kind."),
                                     ("Sarah gave Maria a gift because Maria", " was kind.")]
    _write(tmp_path / "winogrande" / "dev-labels.lst", "2\n2\n")
    with pytest.raises(DepthpruneError, match="matching files"):
        load_task_docs(TASKS["winogrande"], tmp_path)


@pytest.mark.parametrize("task, filename", [("arc_easy", "ARC-Easy-Test.jsonl"),
                                            ("arc_challenge", "ARC-Challenge-Test.jsonl")])
def test_arc_letter_and_numeric_keys(tmp_path, task, filename):
    _write(tmp_path / task / filename, _jsonl([
        {"id": "x1", "question": {"stem": "Which is a gas?", "choices": [
            {"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}, {"text": "rock", "label": "C"}]},
         "answerKey": "B"},
        {"id": "x2", "question": {"stem": "Pick four.", "choices": [
            {"text": "1", "label": "1"}, {"text": "2", "label": "2"}, {"text": "3", "label": "3"},
            {"text": "4", "label": "4"}]}, "answerKey": "4"},
    ]))
    docs = load_task_docs(TASKS[task], tmp_path)
    assert docs[0] == Doc(query="Question: Which is a gas?\nAnswer:", choices=("ice", "steam", "rock"), gold=1)
    assert docs[1].gold == 3 and len(docs[1].choices) == 4


def test_openbookqa_tsv(tmp_path):
    header = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
    row = ("7-980\tThe sun is responsible for\t(A) puppies learning new tricks (B) children growing up "
           "(C) flowers wilting in a vase (D) plants sprouting, blooming and wilting\tThe sun is...\tD\n")
    _write(tmp_path / "openbookqa" / "test.tsv", header + row)
    (doc,) = load_task_docs(TASKS["openbookqa"], tmp_path)
    assert doc == Doc(query="The sun is responsible for", gold=3, choices=(
        "puppies learning new tricks", "children growing up", "flowers wilting in a vase",
        "plants sprouting, blooming and wilting"))


def _mmlu_files(root):
    dev = "".join(f'"Dev question {i}?",a{i},b{i},c{i},d{i},{"ABCD"[i % 4]}\n' for i in range(6))
    _write(root / "mmlu" / "dev" / "astronomy_dev.csv", dev)
    _write(root / "mmlu" / "test" / "astronomy_test.csv",
           '"What orbits, as a rule, the Sun?\n",Earth,"the Moon, mostly",Io,Europa,A\n' 'Second?,w,x,y,z,C\n')
    _write(root / "mmlu" / "dev" / "high_school_physics_dev.csv",
           "".join(f"P{i},p,q,r,s,B\n" for i in range(5)))
    _write(root / "mmlu" / "test" / "high_school_physics_test.csv", "Force?,F,G,H,I,D\n")


def test_mmlu_csv_and_five_shot_context(tmp_path):
    _mmlu_files(tmp_path)
    task = TASKS["mmlu"]
    docs = load_task_docs(task, tmp_path)
    assert [(d.group, d.gold) for d in docs] == [("astronomy", 0), ("astronomy", 2), ("high_school_physics", 3)]
    assert docs[0].query == "What orbits, as a rule, the Sun?\nA. Earth\nB. the Moon, mostly\nC. Io\nD. Europa\nAnswer:"
    requests = build_task_requests(task, docs, 5, task.load_fewshot(tmp_path / "mmlu"))
    shots = "".join(f"Dev question {i}?\nA. a{i}\nB. b{i}\nC. c{i}\nD. d{i}\nAnswer: {'ABCD'[i % 4]}\n\n"
                    for i in range(5))  # first five of the dev split, the sixth never used
    expected_context = ("The following are multiple choice questions (with answers) about astronomy.\n\n"
                        + shots + docs[0].query)
    assert requests[0] == [(expected_context, " A"), (expected_context, " B"), (expected_context, " C"),
                           (expected_context, " D")]
    assert requests[2][0][0].startswith("The following are multiple choice questions (with answers) about high "
                                        "school physics.\n\nP0\nA. p")
    # --limit counts per subject, as lm-eval limits each MMLU sub-task.
    assert [d.group for d in select_docs(task, docs, 1)] == ["astronomy", "high_school_physics"]


def test_missing_file_names_the_expected_path(tmp_path):
    (tmp_path / "piqa").mkdir()
    with pytest.raises(DepthpruneError, match=str(tmp_path / "piqa" / "valid.jsonl")):
        load_task_docs(TASKS["piqa"], tmp_path)
    with pytest.raises(DepthpruneError, match=str(tmp_path / "winogrande")):
        load_task_docs(TASKS["winogrande"], tmp_path)
    with pytest.raises(DepthpruneError, match="mmlu/test/<subject>_test.csv"):
        (tmp_path / "mmlu").mkdir()
        load_task_docs(TASKS["mmlu"], tmp_path)


def test_unknown_task_suggests_the_closest():
    with pytest.raises(DepthpruneError, match="Did you mean 'hellaswag'"):
        get_task("helaswag")
