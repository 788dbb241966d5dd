"""Readers of the tasks' original release files in ``--data-dir``, giving the records of the Hugging Face dataset
that lm-eval's task YAML loads.

lm-eval builds prompts, choices and metrics from those records (its ``process_docs``, ``doc_to_text``,
``doc_to_choice``, ...); this module only turns the release files into the same records, so evaluation works with
no network. Each reader answers for one Hugging Face dataset (``dataset_path`` and ``dataset_name`` in the YAML),
so every lm-eval task over that dataset (``arc_easy``, ``mmlu`` and its 57 subjects, variants with other prompts)
reads its records from here. One folder per task under ``--data-dir``:

- boolq/val.jsonl (SuperGLUE) -> ``aps/super_glue`` boolq, validation split.
- piqa/valid.jsonl + valid-labels.lst -> ``baber/piqa``, validation.
- hellaswag/hellaswag_val.jsonl (original), or klosax's hellaswag_val_full.txt(.gz) -> ``Rowan/hellaswag``,
  validation. The text form joins ``activity_label: ctx`` on one line and has no capitalised ``ctx_b``; its record
  has the whole context in ``ctx_a`` and an empty ``ctx_b``, which lm-eval's preprocessing turns into the same text.
- winogrande/dev.jsonl (+ dev-labels.lst) -> ``allenai/winogrande`` (every size shares the dev set), validation.
- arc_easy/ARC-Easy-Test.jsonl, arc_challenge/ARC-Challenge-Test.jsonl -> ``allenai/ai2_arc``, test.
- openbookqa/test.tsv (or test.jsonl) -> ``allenai/openbookqa`` main, test.
- mmlu/{dev,test}/<subject>_{dev,test}.csv (hendrycks data.tar) -> ``cais/mmlu`` <subject>, test and dev (dev holds
  the 5-shot examples).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DepthpruneError

Records = dict[str, list[dict]]   # split name -> records in the Hugging Face dataset's layout


@dataclass(frozen=True)
class TaskData:
    """Where one task's release files live and which Hugging Face dataset their records stand in for.

    Attributes:
        name: the folder under ``--data-dir`` and the lm-eval task of that name.
        dataset_paths: the dataset's ``dataset_path`` in lm-eval's YAML (older lm-eval names too).
        dataset_name: its ``dataset_name``; None when any name is read (MMLU: the subject).
        files: the expected files, for messages.
        read: ``(task folder, dataset_name) -> {split: records}``.
        note: ``task folder -> text or None``: what differs from lm-eval's own data, recorded in the results.
    """

    name: str
    dataset_paths: tuple[str, ...]
    dataset_name: str | None
    files: tuple[str, ...]
    read: Callable[[Path, str | None], Records]
    note: Callable[[Path], str | None] | None = None

    def folder(self, data_dir) -> Path:
        return Path(data_dir).expanduser() / self.name

    def records(self, data_dir, dataset_name: str | None = None) -> Records:
        """The splits read from ``DATA_DIR/<name>/``; a missing folder or an empty split is an error."""
        folder = self.folder(data_dir)
        if not folder.is_dir():
            raise DepthpruneError(f"{self.name}: data folder {folder} is missing; it should hold "
                                  f"{', '.join(self.files)} in the original release format")
        splits = self.read(folder, dataset_name)
        for split, records in splits.items():
            if not records:
                raise DepthpruneError(f"{self.name}: no items found for the {split} split in {folder}")
        return splits


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


# ------------------------------------------------------------------------------------------------- readers
def read_boolq(folder: Path, _name=None) -> Records:
    """SuperGLUE ``val.jsonl``: ``question``, ``passage``, ``idx``, ``label`` (bool or "true"/"false") -> label 0/1."""
    path = _require(folder / "val.jsonl", "boolq")
    records = []
    for number, record in enumerate(_read_jsonl(path, "boolq")):
        label = _field(record, "label", path, "boolq")
        if isinstance(label, str):
            if label.lower() not in ("true", "false"):
                raise DepthpruneError(f"boolq: {path} has label {label!r}; expected true/false")
            label = label.lower() == "true"
        records.append({"question": _field(record, "question", path, "boolq"),
                        "passage": _field(record, "passage", path, "boolq"),
                        "idx": int(record.get("idx", number)), "label": int(label)})
    return {"validation": records}


def read_piqa(folder: Path, _name=None) -> Records:
    """PIQA ``valid.jsonl`` (``goal``, ``sol1``, ``sol2``) with ``valid-labels.lst`` (0 or 1 per line)."""
    path = _require(folder / "valid.jsonl", "piqa")
    rows = _read_jsonl(path, "piqa")
    labels = _read_labels(_require(folder / "valid-labels.lst", "piqa"), len(rows), "piqa")
    return {"validation": [{key: _field(row, key, path, "piqa") for key in ("goal", "sol1", "sol2")} | {"label": label}
                           for row, label in zip(rows, labels)]}


HELLASWAG_JSONL = ("hellaswag_val.jsonl", "hellaswag_val.jsonl.gz")
HELLASWAG_TEXT = ("hellaswag_val_full.txt.gz", "hellaswag_val_full.txt")


def read_hellaswag(folder: Path, _name=None) -> Records:
    """HellaSwag validation: the original ``hellaswag_val.jsonl`` when present, else klosax's text form (6 lines per
    item: ``activity_label: ctx``, label, four endings; see the module docstring)."""
    original = _first_existing(folder, HELLASWAG_JSONL)
    if original is not None:
        keys = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
        return {"validation": [{**row, **{key: _field(row, key, original, "hellaswag") for key in keys},
                                "label": str(row["label"])} for row in _read_jsonl(original, "hellaswag")]}
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
    records = []
    for start in range(0, len(lines), 6):
        context, label, *endings = lines[start:start + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise DepthpruneError(f"hellaswag: {path} line {start + 2} should be a label 0-3, got {label[:40]!r}")
        activity_label, separator, ctx = context.partition(": ")
        if not separator:
            raise DepthpruneError(f"hellaswag: {path} line {start + 1} has no 'activity label: context' form")
        # lm-eval reads activity_label + ": " + ctx_a + " " + ctx_b.capitalize(), then strips: the same line.
        records.append({"activity_label": activity_label, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                        "endings": endings, "label": label.strip()})
    return {"validation": records}


def _hellaswag_note(folder: Path) -> str | None:
    if _first_existing(folder, HELLASWAG_JSONL) is None:
        return "klosax text form: ctx_b is not capitalised as in lm-eval's own data"
    return None


def read_winogrande(folder: Path, _name=None) -> Records:
    """WinoGrande 1.1 ``dev.jsonl`` (``sentence``, ``option1``, ``option2``, ``answer``) and/or ``dev-labels.lst``."""
    path = _require(folder / "dev.jsonl", "winogrande")
    rows = _read_jsonl(path, "winogrande")
    labels_path = folder / "dev-labels.lst"
    if labels_path.is_file():
        labels = _read_labels(labels_path, len(rows), "winogrande")
    else:
        if any("answer" not in row for row in rows):
            raise DepthpruneError(f"winogrande: {labels_path} is missing and {path} has records without 'answer'; "
                                  "put the labels file beside the data file")
        labels = [int(row["answer"]) for row in rows]
    records = []
    for row, label in zip(rows, labels):
        if str(row.get("answer", "")).strip() and int(row["answer"]) != label:
            raise DepthpruneError(f"winogrande: {row.get('qID', '?')} has answer {row['answer']} in {path} but "
                                  f"{label} in {labels_path}; use matching files")
        if label not in (1, 2):
            raise DepthpruneError(f"winogrande: label {label} is not 1 or 2 ({labels_path})")
        sentence = _field(row, "sentence", path, "winogrande")
        if sentence.count("_") != 1:
            raise DepthpruneError(f"winogrande: sentence needs exactly one '_' blank: {sentence[:80]!r}")
        records.append({"sentence": sentence, "option1": _field(row, "option1", path, "winogrande"),
                        "option2": _field(row, "option2", path, "winogrande"), "answer": str(label)})
    return {"validation": records}


def _arc_records(path: Path, task: str) -> list[dict]:
    """ARC-V1-Feb2018 JSONL (``question.stem``, ``question.choices``, ``answerKey``) in ``allenai/ai2_arc``'s
    layout: ``question`` the stem, ``choices`` ``{"text": [...], "label": [...]}``."""
    records = []
    for row in _read_jsonl(path, task):
        question = _field(row, "question", path, task)
        choices = _field(question, "choices", path, task)
        labels = [str(choice["label"]) for choice in choices]
        key = str(_field(row, "answerKey", path, task)).strip()
        if key not in labels:
            raise DepthpruneError(f"{task}: {row.get('id', '?')} has answerKey {key!r} not among its choice labels "
                                  f"{labels} in {path}")
        records.append({"id": str(row.get("id", "")), "question": _field(question, "stem", path, task),
                        "choices": {"text": [choice["text"] for choice in choices], "label": labels},
                        "answerKey": key})
    return records


def _arc_reader(task: str, filename: str) -> Callable[[Path, str | None], Records]:
    def read(folder: Path, _name=None) -> Records:
        return {"test": _arc_records(_require(folder / filename, task), task)}
    read.__doc__ = f"ARC ``{filename}`` -> the test split."
    return read


_OBQA_CHOICES = re.compile(r"^\(A\) (.*) \(B\) (.*) \(C\) (.*) \(D\) (.*)$", re.DOTALL)


def read_openbookqa(folder: Path, _name=None) -> Records:
    """OpenBookQA main ``test.tsv`` (Question Stem, Choices "(A) .. (D) ..", Answer Key), or the official
    ``test.jsonl`` when that is what the folder has."""
    jsonl = folder / "test.jsonl"
    if not (folder / "test.tsv").is_file() and jsonl.is_file():
        return {"test": [{"id": r["id"], "question_stem": r["question"], "choices": r["choices"],
                          "answerKey": r["answerKey"]} for r in _arc_records(jsonl, "openbookqa")]}
    path = _require(folder / "test.tsv", "openbookqa")
    rows = list(csv.DictReader(_read_text(path).splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    records = []
    for row in rows:
        for column in ("Question Stem", "Choices", "Answer Key"):
            if row.get(column) is None:
                raise DepthpruneError(f"openbookqa: {path} has no column {column!r}; give the official test.tsv")
        match = _OBQA_CHOICES.match(row["Choices"].strip())
        key = row["Answer Key"].strip()
        if match is None or key not in ("A", "B", "C", "D"):
            raise DepthpruneError(f"openbookqa: row {row.get('ID', '?')} of {path} does not have four (A)-(D) "
                                  "choices and an A-D key")
        records.append({"id": row.get("ID", ""), "question_stem": row["Question Stem"],
                        "choices": {"text": list(match.groups()), "label": ["A", "B", "C", "D"]}, "answerKey": key})
    return {"test": records}


MMLU_LETTERS = ("A", "B", "C", "D")


def _mmlu_split(folder: Path, subject: str, split: str) -> list[dict]:
    path = folder / split / f"{subject}_{split}.csv"
    if not path.is_file():
        raise DepthpruneError(f"mmlu: expected data file {path} is missing; unpack the hendrycks data.tar (its dev/ "
                              "and test/ folders, files <subject>_test.csv) there")
    records = []
    for number, row in enumerate(csv.reader(_read_text(path).splitlines(keepends=True)), start=1):
        if len(row) != 6 or row[5].strip() not in MMLU_LETTERS:
            raise DepthpruneError(f"mmlu: {path} row {number} should be question,A,B,C,D,answer (no header)")
        records.append({"question": row[0], "subject": subject, "choices": row[1:5],
                        "answer": MMLU_LETTERS.index(row[5].strip())})
    return records


def read_mmlu(folder: Path, subject: str | None) -> Records:
    """MMLU ``test/<subject>_test.csv`` and ``dev/<subject>_dev.csv`` (hendrycks CSVs without header: question, A, B,
    C, D, answer letter); the dev split holds the few-shot examples."""
    if not subject:
        raise DepthpruneError("mmlu: a subject is needed (lm-eval's mmlu_<subject> tasks name one)")
    return {"test": _mmlu_split(folder, subject, "test"), "dev": _mmlu_split(folder, subject, "dev")}


TASKS: dict[str, TaskData] = {data.name: data for data in (
    TaskData("boolq", ("aps/super_glue", "super_glue"), "boolq", ("val.jsonl",), read_boolq),
    TaskData("piqa", ("baber/piqa", "piqa", "ybisk/piqa"), None, ("valid.jsonl", "valid-labels.lst"), read_piqa),
    TaskData("hellaswag", ("Rowan/hellaswag", "hellaswag"), None,
             (HELLASWAG_JSONL[0] + " or " + HELLASWAG_TEXT[0],), read_hellaswag, note=_hellaswag_note),
    TaskData("winogrande", ("allenai/winogrande", "winogrande"), None, ("dev.jsonl", "dev-labels.lst"),
             read_winogrande),
    TaskData("arc_easy", ("allenai/ai2_arc", "ai2_arc"), "ARC-Easy", ("ARC-Easy-Test.jsonl",),
             _arc_reader("arc_easy", "ARC-Easy-Test.jsonl")),
    TaskData("arc_challenge", ("allenai/ai2_arc", "ai2_arc"), "ARC-Challenge", ("ARC-Challenge-Test.jsonl",),
             _arc_reader("arc_challenge", "ARC-Challenge-Test.jsonl")),
    TaskData("openbookqa", ("allenai/openbookqa", "openbookqa"), "main", ("test.tsv",), read_openbookqa),
    TaskData("mmlu", ("cais/mmlu", "hails/mmlu_no_train"), None, ("dev/*_dev.csv", "test/*_test.csv"), read_mmlu),
)}


def task_data_for(dataset_path: str | None, dataset_name: str | None) -> TaskData | None:
    """The reader standing in for the Hugging Face dataset ``dataset_path``/``dataset_name``, or None."""
    for data in TASKS.values():
        if dataset_path in data.dataset_paths and data.dataset_name in (None, dataset_name):
            return data
    return None


__all__ = ["TASKS", "TaskData", "task_data_for"]
