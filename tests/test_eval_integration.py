"""The evaluator on the real shared data and SmolLM2-135M-Instruct (integration: skipped loudly when missing)."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import SHARED_DATA, requires_shared_data, requires_smollm2
from depthprune.evaluate.perplexity import load_ppl_text, token_perplexity
from depthprune.evaluate.tasks import TASKS

pytestmark = [pytest.mark.integration, requires_shared_data]

# Quality floors for the dense model on small prefixes of the shared data (data, not code: bench/ checks the same).
# Chance on ARC-Easy is about 25%; published SmolLM2-135M-Instruct acc is 54.1%.
QUALITY_FLOORS = {"arc_easy_first_40_acc": 0.35, "wikitext2_ppl128_first_8_windows_max": 60.0,
                  "wikitext2_ppl128_first_8_windows_min": 5.0}


@pytest.mark.parametrize("task, count, label, gold_counts", [
    ("boolq", 3270, "label", {1: 2033, 0: 1237}),
    ("piqa", 1838, "label", {0: 910, 1: 928}),
    ("hellaswag", 10042, "label", {"0": 2515, "1": 2485, "2": 2584, "3": 2458}),
    ("openbookqa", 500, "answerKey", {"A": 138, "B": 126, "C": 132, "D": 104}),
    ("arc_easy", 2376, None, None),
])
def test_shared_task_files_parse_completely(task, count, label, gold_counts):
    """Counts and label balance as stated in each ../shared/data/*/SOURCE.md."""
    (records,) = TASKS[task].records(SHARED_DATA).values()
    assert len(records) == count
    if gold_counts is not None:
        assert dict(Counter(r[label] for r in records)) == gold_counts
    if task == "arc_easy":  # 2,365 items with 4 choices, 7 with 3, 4 with 5
        assert Counter(len(r["choices"]["text"]) for r in records) == {4: 2365, 3: 7, 5: 4}


def test_shared_wikitext_is_the_hugging_face_test_split():
    text = load_ppl_text("wikitext2", SHARED_DATA)
    # rows "", " = Robert Boulter = \n", "", " Robert Boulter is ..." joined with "\n\n"
    assert text.startswith("\n\n" + " = Robert Boulter = \n" + "\n\n" + "\n\n" + " Robert Boulter is an English film")
    assert text.count("\n\n") >= 4357  # 4,358 rows joined


@requires_smollm2
def test_smollm2_clears_the_quality_floors(smollm2):
    from depthprune.evaluate.harness import build_tasks, run_tasks

    arc = run_tasks(smollm2.model, smollm2.tokenizer, build_tasks(["arc_easy"], SHARED_DATA), limit=40)[0]["arc_easy"]
    assert arc["n"] == 40 and arc["acc"] >= QUALITY_FLOORS["arc_easy_first_40_acc"]
    ppl = token_perplexity(smollm2.model, smollm2.tokenizer, load_ppl_text("wikitext2", SHARED_DATA), seq_len=128,
                           max_windows=8, batch_size=8)
    assert QUALITY_FLOORS["wikitext2_ppl128_first_8_windows_min"] < ppl["ppl"] < \
        QUALITY_FLOORS["wikitext2_ppl128_first_8_windows_max"]
