"""Multiple-choice tasks read from their original release files, with lm-evaluation-harness's prompts.

Each task is one ``TaskConfig`` in ``TASKS``: where its files live under ``--data-dir`` (one folder per task), how a
record becomes a ``Doc`` (the prompt, the choices and the gold index, exactly as lm-eval's task YAML builds them),
which metrics lm-eval reports for it and which one the pruning papers quote.

Prompts (lm-eval 0.4 task files; the continuation is ``" " + choice``):

- boolq: ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, choices ``no`` / ``yes``.
- piqa: ``"Question: {goal}\\nAnswer:"``, choices ``sol1`` / ``sol2``.
- hellaswag: ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``, choices the preprocessed endings.
- winogrande (partial scoring): one context per option, ``sentence[:blank] + option``; the shared continuation is
  the text after the blank; only ``acc`` is reported.
- arc_easy, arc_challenge: ``"Question: {question}\\nAnswer:"``, choices the answer texts.
- openbookqa: ``"{question_stem}"``, choices the four answers.
- mmlu: ``"{question.strip()}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"``, choices ``A``-``D``, 5-shot from the dev
  split (its first five questions of the same subject) after ``"The following are multiple choice questions (with
  answers) about {subject}.\\n\\n"``.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DepthpruneError


@dataclass(frozen=True)
class Doc:
    """One multiple-choice item in lm-eval's terms.

    Attributes:
        query: the prompt (lm-eval ``doc_to_text``); unused for partial scoring, whose contexts are the choices.
        choices: the answer texts (lm-eval ``doc_to_choice``); their character lengths normalise ``acc_norm``.
        gold: index of the correct choice.
        target: for partial scoring (WinoGrande) the continuation shared by all choices, else None.
        group: a sub-task name (MMLU subject), or "".
    """

    query: str
    choices: tuple[str, ...]
    gold: int
    target: str | None = None
    group: str = ""


@dataclass(frozen=True)
class TaskConfig:
    """How to read and score one task (see the module docstring)."""

    name: str
    files: tuple[str, ...]                      # expected files, relative to DATA_DIR/<name>/
    load: Callable[[Path], list[Doc]]           # task folder -> evaluation docs
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    paper_metric: str = "acc"
    default_fewshot: int = 0
    load_fewshot: Callable[[Path], list[Doc]] | None = None  # docs to take shots from (first n of the same group)
    description: Callable[[str], str] | None = None          # group -> text put before the shots
    split: str = ""                                          # which split is scored, for the record
    notes: str = ""


# --------------------------------------------------------------------------------------------- file helpers
def _require(path: Path, task: str) -> Path:
    if not path.is_file():
        raise DepthpruneError(f"{task}: expected data file {path} is missing; put the original release file there "
                              "or point --data-dir at a folder that has it")
    return path


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def _read_jsonl(path: Path, task: str) -> list[dict]:
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DepthpruneError(f"{task}: {path} line {number} is not JSON ({error.msg}); give the original "
                                  "JSON Lines file") from None
    return records


def _field(record: dict, key: str, path: Path, task: str):
    if key not in record:
        raise DepthpruneError(f"{task}: {path} has a record without field {key!r} (fields: {', '.join(record)}); "
                              "give the original release file")
    return record[key]


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def _read_labels(path: Path, count: int, task: str) -> list[int]:
    labels = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if len(labels) != count:
        raise DepthpruneError(f"{task}: {path} has {len(labels)} labels for {count} items; use the labels file "
                              "that belongs to the data file")
    try:
        return [int(label) for label in labels]
    except ValueError:
        raise DepthpruneError(f"{task}: {path} holds non-integer labels; give the original labels file") from None


# ------------------------------------------------------------------------------------------------- loaders
def load_boolq(folder: Path) -> list[Doc]:
    """SuperGLUE ``val.jsonl``: ``question``, ``passage``, ``label`` (bool, or the strings "true"/"false")."""
    path = _require(folder / "val.jsonl", "boolq")
    docs = []
    for record in _read_jsonl(path, "boolq"):
        label = _field(record, "label", path, "boolq")
        if isinstance(label, str):
            if label.lower() not in ("true", "false"):
                raise DepthpruneError(f"boolq: {path} has label {label!r}; expected true/false")
            label = label.lower() == "true"
        passage, question = _field(record, "passage", path, "boolq"), _field(record, "question", path, "boolq")
        docs.append(Doc(query=f"{passage}\nQuestion: {question}?\nAnswer:", choices=("no", "yes"), gold=int(label)))
    return docs


def load_piqa(folder: Path) -> list[Doc]:
    """PIQA ``valid.jsonl`` (``goal``, ``sol1``, ``sol2``) with ``valid-labels.lst`` (0 or 1 per line)."""
    path = _require(folder / "valid.jsonl", "piqa")
    records = _read_jsonl(path, "piqa")
    labels = _read_labels(_require(folder / "valid-labels.lst", "piqa"), len(records), "piqa")
    return [Doc(query=f"Question: {_field(r, 'goal', path, 'piqa')}\nAnswer:",
                choices=(_field(r, "sol1", path, "piqa"), _field(r, "sol2", path, "piqa")), gold=label)
            for r, label in zip(records, labels)]


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's clean-up of HellaSwag text: WikiHow ``[title]`` becomes a full stop, other ``[...]`` tags go."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


HELLASWAG_JSONL = ("hellaswag_val.jsonl", "hellaswag_val.jsonl.gz")
HELLASWAG_TEXT = ("hellaswag_val_full.txt.gz", "hellaswag_val_full.txt")


def load_hellaswag(folder: Path) -> list[Doc]:
    """HellaSwag validation: the original ``hellaswag_val.jsonl`` when present (exactly lm-eval's prompt), else
    klosax's text form (6 lines per item: context, label, four endings), whose context lacks the capitalised ``ctx_b``
    (see ../shared/data/hellaswag/SOURCE.md)."""
    original = _first_existing(folder, HELLASWAG_JSONL)
    if original is not None:
        docs = []
        for r in _read_jsonl(original, "hellaswag"):
            context = (_field(r, "ctx_a", original, "hellaswag") + " "
                       + _field(r, "ctx_b", original, "hellaswag").capitalize())
            query = hellaswag_preprocess(_field(r, "activity_label", original, "hellaswag") + ": " + context)
            endings = tuple(hellaswag_preprocess(e) for e in _field(r, "endings", original, "hellaswag"))
            docs.append(Doc(query=query, choices=endings, gold=int(_field(r, "label", original, "hellaswag"))))
        return docs
    path = _first_existing(folder, HELLASWAG_TEXT)
    if path is None:
        raise DepthpruneError(f"hellaswag: expected data file {folder / HELLASWAG_JSONL[0]} or "
                              f"{folder / HELLASWAG_TEXT[0]} is missing; put the original release file there")
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) % 6:
        raise DepthpruneError(f"hellaswag: {path} has {len(lines)} lines, not a multiple of 6 (context, label, 4 "
                              "endings); give the unmodified klosax text file")
    docs = []
    for start in range(0, len(lines), 6):
        context, label, *endings = lines[start:start + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise DepthpruneError(f"hellaswag: {path} line {start + 2} should be a label 0-3, got {label[:40]!r}")
        docs.append(Doc(query=hellaswag_preprocess(context), choices=tuple(hellaswag_preprocess(e) for e in endings),
                        gold=int(label)))
    return docs


def winogrande_doc(sentence: str, option1: str, option2: str, answer: int) -> Doc:
    """Partial scoring: each option fills the blank and conditions the text after it (lm-eval's winogrande)."""
    if sentence.count("_") != 1:
        raise DepthpruneError(f"winogrande: sentence needs exactly one '_' blank: {sentence[:80]!r}")
    blank = sentence.index("_")
    contexts = (sentence[:blank] + option1, sentence[:blank] + option2)
    return Doc(query=contexts[answer], choices=contexts, gold=answer, target=sentence[blank + 1:].strip())


def load_winogrande(folder: Path) -> list[Doc]:
    """WinoGrande 1.1 ``dev.jsonl`` (``sentence``, ``option1``, ``option2``, ``answer``) and/or ``dev-labels.lst``."""
    path = _require(folder / "dev.jsonl", "winogrande")
    records = _read_jsonl(path, "winogrande")
    labels_path = folder / "dev-labels.lst"
    if labels_path.is_file():
        labels = _read_labels(labels_path, len(records), "winogrande")
    else:
        labels = []
        for record in records:
            if "answer" not in record:
                raise DepthpruneError(f"winogrande: {labels_path} is missing and {path} has no 'answer' field; "
                                      "put the labels file beside the data file")
            labels.append(int(record["answer"]))
    docs = []
    for record, label in zip(records, labels):
        if "answer" in record and str(record["answer"]).strip() and int(record["answer"]) != label:
            raise DepthpruneError(f"winogrande: {record.get('qID', '?')} has answer {record['answer']} in {path} but "
                                  f"{label} in {labels_path}; use matching files")
        if label not in (1, 2):
            raise DepthpruneError(f"winogrande: label {label} is not 1 or 2 ({labels_path})")
        docs.append(winogrande_doc(_field(record, "sentence", path, "winogrande"),
                                   _field(record, "option1", path, "winogrande"),
                                   _field(record, "option2", path, "winogrande"), label - 1))
    return docs


def _arc_loader(task: str, filename: str) -> Callable[[Path], list[Doc]]:
    def load(folder: Path) -> list[Doc]:
        path = _require(folder / filename, task)
        docs = []
        for record in _read_jsonl(path, task):
            question = _field(record, "question", path, task)
            choices = _field(question, "choices", path, task)
            labels = [str(c["label"]) for c in choices]
            key = str(_field(record, "answerKey", path, task)).strip()
            if key not in labels:
                raise DepthpruneError(f"{task}: {record.get('id', '?')} has answerKey {key!r} not among its choice "
                                      f"labels {labels} in {path}")
            docs.append(Doc(query=f"Question: {_field(question, 'stem', path, task)}\nAnswer:",
                            choices=tuple(c["text"] for c in choices), gold=labels.index(key)))
        return docs
    load.__doc__ = f"ARC ``{filename}`` (ARC-V1-Feb2018 JSONL: question.stem, question.choices, answerKey)."
    return load


_OBQA_CHOICES = re.compile(r"^\(A\) (.*) \(B\) (.*) \(C\) (.*) \(D\) (.*)$", re.DOTALL)


def load_openbookqa(folder: Path) -> list[Doc]:
    """OpenBookQA main ``test.tsv`` (official TSV: Question Stem, Choices "(A) .. (D) ..", Answer Key), or the
    official ``test.jsonl`` when that is what the folder has."""
    jsonl = folder / "test.jsonl"
    if not (folder / "test.tsv").is_file() and jsonl.is_file():
        return [Doc(query=doc.query.removeprefix("Question: ").removesuffix("\nAnswer:"), choices=doc.choices,
                    gold=doc.gold) for doc in _arc_loader("openbookqa", "test.jsonl")(folder)]
    path = _require(folder / "test.tsv", "openbookqa")
    rows = list(csv.DictReader(_read_text(path).splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    docs = []
    for row in rows:
        for column in ("Question Stem", "Choices", "Answer Key"):
            if row.get(column) is None:
                raise DepthpruneError(f"openbookqa: {path} has no column {column!r}; give the official test.tsv")
        match = _OBQA_CHOICES.match(row["Choices"].strip())
        key = row["Answer Key"].strip()
        if match is None or key not in "ABCD" or not key:
            raise DepthpruneError(f"openbookqa: row {row.get('ID', '?')} of {path} does not have four (A)-(D) "
                                  "choices and an A-D key")
        docs.append(Doc(query=row["Question Stem"], choices=tuple(match.groups()), gold="ABCD".index(key)))
    return docs


MMLU_LETTERS = ("A", "B", "C", "D")


def mmlu_query(question: str, options: list[str]) -> str:
    return (f"{question.strip()}\nA. {options[0]}\nB. {options[1]}\nC. {options[2]}\nD. {options[3]}\nAnswer:")


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _mmlu_split(folder: Path, split: str) -> list[Doc]:
    split_dir = folder / split
    files = sorted(split_dir.glob(f"*_{split}.csv")) if split_dir.is_dir() else []
    if not files:
        raise DepthpruneError(f"mmlu: expected files {split_dir}/<subject>_{split}.csv are missing; unpack the "
                              "hendrycks data.tar (its dev/ and test/ folders) there")
    docs = []
    for path in files:
        subject = path.name[:-len(f"_{split}.csv")]
        for number, row in enumerate(csv.reader(_read_text(path).splitlines(keepends=True)), start=1):
            if len(row) != 6 or row[5].strip() not in MMLU_LETTERS:
                raise DepthpruneError(f"mmlu: {path} row {number} should be question,A,B,C,D,answer (no header)")
            docs.append(Doc(query=mmlu_query(row[0], row[1:5]), choices=MMLU_LETTERS,
                            gold=MMLU_LETTERS.index(row[5].strip()), group=subject))
    return docs


def load_mmlu(folder: Path) -> list[Doc]:
    """MMLU ``test/<subject>_test.csv`` (hendrycks CSVs without header: question, A, B, C, D, answer letter)."""
    return _mmlu_split(folder, "test")


def load_mmlu_dev(folder: Path) -> list[Doc]:
    return _mmlu_split(folder, "dev")


TASKS: dict[str, TaskConfig] = {
    "boolq": TaskConfig("boolq", ("val.jsonl",), load_boolq, metrics=("acc",), split="validation"),
    "piqa": TaskConfig("piqa", ("valid.jsonl", "valid-labels.lst"), load_piqa, split="validation"),
    "hellaswag": TaskConfig("hellaswag", (HELLASWAG_JSONL[0] + " or " + HELLASWAG_TEXT[0],), load_hellaswag,
                            paper_metric="acc_norm", split="validation",
                            notes="klosax text form: ctx_b not capitalised as lm-eval does"),
    "winogrande": TaskConfig("winogrande", ("dev.jsonl", "dev-labels.lst"), load_winogrande, metrics=("acc",),
                             split="dev (winogrande_1.1)", notes="partial scoring"),
    "arc_easy": TaskConfig("arc_easy", ("ARC-Easy-Test.jsonl",), _arc_loader("arc_easy", "ARC-Easy-Test.jsonl"),
                           split="test"),
    "arc_challenge": TaskConfig("arc_challenge", ("ARC-Challenge-Test.jsonl",),
                                _arc_loader("arc_challenge", "ARC-Challenge-Test.jsonl"), paper_metric="acc_norm",
                                split="test"),
    "openbookqa": TaskConfig("openbookqa", ("test.tsv",), load_openbookqa, paper_metric="acc_norm", split="test"),
    "mmlu": TaskConfig("mmlu", ("dev/*_dev.csv", "test/*_test.csv"), load_mmlu, metrics=("acc",), default_fewshot=5,
                       load_fewshot=load_mmlu_dev, description=mmlu_description, split="test"),
}


def get_task(name: str) -> TaskConfig:
    """The task called ``name``; an unknown name lists the valid ones and suggests the closest."""
    if name in TASKS:
        return TASKS[name]
    close = difflib.get_close_matches(name, TASKS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DepthpruneError(f"unknown task {name!r}; choose from {', '.join(TASKS)}.{hint}")


def task_folder(data_dir: str | Path, task: TaskConfig) -> Path:
    return Path(data_dir).expanduser() / task.name


def load_task_docs(task: TaskConfig, data_dir: str | Path) -> list[Doc]:
    """Evaluation docs of ``task`` from ``DATA_DIR/<task name>/``."""
    folder = task_folder(data_dir, task)
    if not folder.is_dir():
        raise DepthpruneError(f"{task.name}: data folder {folder} is missing; it should hold "
                              f"{', '.join(task.files)} in the original release format")
    docs = task.load(folder)
    if not docs:
        raise DepthpruneError(f"{task.name}: no items found in {folder}")
    for doc in docs:
        if not 0 <= doc.gold < len(doc.choices):
            raise DepthpruneError(f"{task.name}: gold index {doc.gold} out of range for {len(doc.choices)} choices")
    return docs


__all__ = ["Doc", "TaskConfig", "TASKS", "get_task", "load_task_docs", "hellaswag_preprocess", "winogrande_doc",
           "mmlu_query", "mmlu_description"]
