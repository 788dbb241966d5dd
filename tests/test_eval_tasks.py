"""The readers turn small samples written here in each original release format into the records of the Hugging Face
dataset lm-eval loads (field by field, written out by hand from the dataset cards), and refuse broken files."""

from __future__ import annotations

import gzip
import json

import pytest

from depthprune import DepthpruneError
from depthprune.evaluate.tasks import TASKS, task_data_for


def _write(path, text: str, gzipped: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gzipped else data)


def _jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_boolq_string_and_boolean_labels_become_0_and_1(tmp_path):
    _write(tmp_path / "boolq" / "val.jsonl", _jsonl([
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": "true"},
        {"question": "do fish fly", "passage": "Fish -- Fish swim.", "idx": 1, "label": False},
    ]))
    assert TASKS["boolq"].records(tmp_path) == {"validation": [
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": 1},
        {"question": "do fish fly", "passage": "Fish -- Fish swim.", "idx": 1, "label": 0}]}


def test_piqa_reads_labels_file_and_checks_its_length(tmp_path):
    _write(tmp_path / "piqa" / "valid.jsonl", _jsonl([
        {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Paint the lid."},
        {"goal": "Dry hands", "sol1": "Use water.", "sol2": "Use a towel."},
    ]))
    _write(tmp_path / "piqa" / "valid-labels.lst", "0\n1\n")
    assert TASKS["piqa"].records(tmp_path)["validation"] == [
        {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Paint the lid.", "label": 0},
        {"goal": "Dry hands", "sol1": "Use water.", "sol2": "Use a towel.", "label": 1}]
    _write(tmp_path / "piqa" / "valid-labels.lst", "0\n")
    with pytest.raises(DepthpruneError, match="1 labels for 2 items"):
        TASKS["piqa"].records(tmp_path)


def test_hellaswag_original_jsonl_is_passed_on_with_a_string_label(tmp_path):
    record = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
              "ctx_b": "then THE man", "ctx": "x", "endings": [" [header] wipes.", "drives.", "sings.", "sleeps."],
              "label": 1}
    _write(tmp_path / "hellaswag" / "hellaswag_val.jsonl", _jsonl([record]))
    assert TASKS["hellaswag"].records(tmp_path) == {"validation": [{**record, "label": "1"}]}
    assert TASKS["hellaswag"].note(tmp_path / "hellaswag") is None


def test_hellaswag_klosax_text_form(tmp_path):
    lines = ["Roof shingle removal: A man is sitting on a roof. he", "3", "is using wrap.", "is ripping tiles.",
             "is holding a cube.", "starts pulling up roofing.",
             "Clean: Step: A woman wipes.", "0", "a", "b", "c", "d"]
    _write(tmp_path / "hellaswag" / "hellaswag_val_full.txt.gz", "\n".join(lines) + "\n", gzipped=True)
    first, second = TASKS["hellaswag"].records(tmp_path)["validation"]
    assert first == {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof. he", "ctx_b": "",
                     "ctx": "A man is sitting on a roof. he", "endings": lines[2:6], "label": "3"}
    assert (second["activity_label"], second["ctx_a"], second["label"]) == ("Clean", "Step: A woman wipes.", "0")
    assert "not capitalised" in TASKS["hellaswag"].note(tmp_path / "hellaswag")
    _write(tmp_path / "hellaswag" / "hellaswag_val_full.txt.gz", "\n".join(lines[:7]) + "\n", gzipped=True)
    with pytest.raises(DepthpruneError, match="not a multiple of 6"):
        TASKS["hellaswag"].records(tmp_path)


def test_winogrande_labels_file_and_answers_must_agree(tmp_path):
    rows = [{"qID": "q1", "sentence": "The trophy doesn't fit in the suitcase because the _ is too big.",
             "option1": "trophy", "option2": "suitcase", "answer": "1"},
            {"qID": "q2", "sentence": "Sarah gave Maria a gift because _ was kind.", "option1": "Sarah",
             "option2": "Maria", "answer": ""}]
    _write(tmp_path / "winogrande" / "dev.jsonl", _jsonl(rows))
    _write(tmp_path / "winogrande" / "dev-labels.lst", "1\n2\n")
    assert TASKS["winogrande"].records(tmp_path)["validation"] == [
        {key: row[key] for key in ("sentence", "option1", "option2")} | {"answer": answer}
        for row, answer in zip(rows, ("1", "2"))]
    _write(tmp_path / "winogrande" / "dev-labels.lst", "2\n2\n")
    with pytest.raises(DepthpruneError, match="matching files"):
        TASKS["winogrande"].records(tmp_path)


@pytest.mark.parametrize("task, filename", [("arc_easy", "ARC-Easy-Test.jsonl"),
                                            ("arc_challenge", "ARC-Challenge-Test.jsonl")])
def test_arc_becomes_the_ai2_arc_layout(tmp_path, task, filename):
    _write(tmp_path / task / filename, _jsonl([
        {"id": "x1", "question": {"stem": "Which is a gas?", "choices": [
            {"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]}, "answerKey": "B"},
        {"id": "x2", "question": {"stem": "Pick four.", "choices": [
            {"text": "3", "label": "3"}, {"text": "4", "label": "4"}]}, "answerKey": "4"},
    ]))
    assert TASKS[task].records(tmp_path) == {"test": [
        {"id": "x1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]},
         "answerKey": "B"},
        {"id": "x2", "question": "Pick four.", "choices": {"text": ["3", "4"], "label": ["3", "4"]},
         "answerKey": "4"}]}
    _write(tmp_path / task / filename, _jsonl([{"id": "x3", "question": {"stem": "?", "choices": [
        {"text": "a", "label": "A"}]}, "answerKey": "E"}]))
    with pytest.raises(DepthpruneError, match="answerKey 'E' not among"):
        TASKS[task].records(tmp_path)


def test_openbookqa_tsv(tmp_path):
    header = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
    row = ("7-980\tThe sun is responsible for\t(A) puppies learning new tricks (B) children growing up "
           "(C) flowers wilting in a vase (D) plants sprouting, blooming and wilting\tThe sun is...\tD\n")
    _write(tmp_path / "openbookqa" / "test.tsv", header + row)
    assert TASKS["openbookqa"].records(tmp_path) == {"test": [
        {"id": "7-980", "question_stem": "The sun is responsible for", "answerKey": "D",
         "choices": {"text": ["puppies learning new tricks", "children growing up", "flowers wilting in a vase",
                              "plants sprouting, blooming and wilting"], "label": ["A", "B", "C", "D"]}}]}


def test_mmlu_reads_one_subject_with_its_dev_split(tmp_path):
    _write(tmp_path / "mmlu" / "dev" / "astronomy_dev.csv",
           "".join(f"D{i},a,b,c,d,{'ABCD'[i % 4]}\n" for i in range(5)))
    _write(tmp_path / "mmlu" / "test" / "astronomy_test.csv",
           '"What orbits, as a rule, the Sun?\n",Earth,"the Moon, mostly",Io,Europa,A\n' 'Second?,w,x,y,z,C\n')
    splits = TASKS["mmlu"].records(tmp_path, "astronomy")
    assert splits["test"] == [
        {"question": "What orbits, as a rule, the Sun?\n", "subject": "astronomy",
         "choices": ["Earth", "the Moon, mostly", "Io", "Europa"], "answer": 0},
        {"question": "Second?", "subject": "astronomy", "choices": ["w", "x", "y", "z"], "answer": 2}]
    assert [r["answer"] for r in splits["dev"]] == [0, 1, 2, 3, 0]
    with pytest.raises(DepthpruneError, match="mmlu/test/anatomy_test.csv is missing"):
        TASKS["mmlu"].records(tmp_path, "anatomy")


def test_missing_files_name_the_expected_path(tmp_path):
    (tmp_path / "piqa").mkdir()
    with pytest.raises(DepthpruneError, match=str(tmp_path / "piqa" / "valid.jsonl")):
        TASKS["piqa"].records(tmp_path)
    with pytest.raises(DepthpruneError, match=f"data folder {tmp_path / 'winogrande'} is missing"):
        TASKS["winogrande"].records(tmp_path)


def test_readers_answer_for_lm_eval_s_datasets():
    assert task_data_for("allenai/ai2_arc", "ARC-Challenge").name == "arc_challenge"
    assert task_data_for("cais/mmlu", "astronomy").name == "mmlu"
    assert task_data_for("allenai/winogrande", "winogrande_debiased").name == "winogrande"   # one dev set for all
    assert task_data_for("aps/super_glue", "rte") is None and task_data_for("gsm8k", "main") is None
