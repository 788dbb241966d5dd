"""The batched choice scorer equals a slow loop of single forward passes; acc_norm divides by character lengths."""

from __future__ import annotations

import pytest
import torch

from depthprune.evaluate.lm_wrapper import DepthpruneLM, rolling_windows
from depthprune.evaluate.multiple_choice import evaluate_task, predictions, score_docs
from depthprune.evaluate.tasks import Doc, TASKS
from tiny_models import tiny_model
from tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_layers=2)


def slow_loglikelihood(model, context_ids, continuation_ids, max_length=None):
    """One unpadded forward pass per request; log-probabilities read position by position."""
    whole = list(context_ids) + list(continuation_ids)
    if max_length is not None:
        whole = whole[-(max_length + 1):]
    inputs = torch.tensor([whole[:-1]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(inputs).logits[0].double(), dim=-1)
    total, greedy = 0.0, True
    first = len(whole) - 1 - len(continuation_ids)
    for offset, token in enumerate(continuation_ids):
        row = log_probs[first + offset]
        total += row[token].item()
        greedy = greedy and int(row.argmax()) == token
    return total, greedy


REQUESTS = [
    ("Question: What is the colour of the sky?\nAnswer:", " blue"),
    ("Question: What is the colour of the sky?\nAnswer:", " a deep and endless shade of grey"),
    ("The function returns ", "None."),  # trailing space moves into the continuation
    ("", "An empty context is scored after BOS."),
    ("x", " y"),
    ("A much longer context that goes on and on about modules, classes and functions of the standard library",
     " and then ends."),
]


def test_batched_scores_equal_single_forward_passes(model, tokenizer):
    lm = DepthpruneLM(model, tokenizer, batch_size=4, progress=False)  # mixed lengths: right padding happens
    fast = lm.loglikelihood(REQUESTS)
    for (context, continuation), (logprob, greedy) in zip(REQUESTS, fast):
        context_ids, continuation_ids = lm.encode_pair(context, continuation)
        expected, expected_greedy = slow_loglikelihood(model, context_ids, continuation_ids)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy


def test_greedy_flag_is_true_for_the_models_own_argmax(model, tokenizer):
    lm = DepthpruneLM(model, tokenizer, batch_size=2, progress=False)
    context_ids = tokenizer.encode("def main(")
    ids = list(context_ids)
    with torch.no_grad():
        for _ in range(3):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    greedy_ids = ids[len(context_ids):]
    other_ids = greedy_ids[:-1] + [(greedy_ids[-1] + 1) % 500]  # last token is not the argmax
    (_, greedy), (_, not_greedy) = lm.score_token_pairs([(context_ids, greedy_ids), (context_ids, other_ids)])
    assert greedy and not not_greedy


def test_encode_pair_follows_lm_eval_rules(tokenizer, model):
    lm = DepthpruneLM(model, tokenizer, progress=False)
    context_ids, continuation_ids = lm.encode_pair("Answer: ", "yes")
    assert context_ids == tokenizer.encode("Answer:")  # the trailing space went to the continuation
    assert context_ids + continuation_ids == tokenizer.encode("Answer: yes")
    context_ids, continuation_ids = lm.encode_pair("", "hello")
    assert context_ids == [tokenizer.bos_token_id] and continuation_ids == tokenizer.encode("hello")


def test_identical_inputs_share_one_forward_pass(model, tokenizer):
    # " the" and " a" are single tokens of the tiny tokenizer, so both requests feed the model the same input.
    assert len(tokenizer.encode(" the")) == 1 and len(tokenizer.encode(" a")) == 1
    lm = DepthpruneLM(model, tokenizer, batch_size=1, progress=False)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    context = "Passage text.\nQuestion: which word?\nAnswer:"
    requests = [(context, " the"), (context, " a"), ("Other prompt:", " the")]
    try:
        scores = lm.loglikelihood(requests)
    finally:
        handle.remove()
    assert len(calls) == 2  # one pass per distinct input, not per request
    for (context_text, continuation), (logprob, _) in zip(requests, scores):
        expected, _ = slow_loglikelihood(model, *lm.encode_pair(context_text, continuation))
        assert logprob == pytest.approx(expected, abs=1e-4)


def test_over_long_inputs_are_cut_on_the_left(model, tokenizer):
    lm = DepthpruneLM(model, tokenizer, batch_size=2, max_length=12, progress=False)
    context = "one two three four five six seven eight nine ten eleven twelve thirteen"
    (logprob, _), = lm.loglikelihood([(context, " fourteen")])
    context_ids, continuation_ids = lm.encode_pair(context, " fourteen")
    assert len(context_ids) + len(continuation_ids) > 13
    expected, _ = slow_loglikelihood(model, context_ids, continuation_ids, max_length=12)
    assert logprob == pytest.approx(expected, abs=1e-4)


def test_rolling_windows_predict_every_token_once_with_full_context():
    tokens = list(range(100, 110))
    windows = rolling_windows(tokens, prefix_token_id=1, max_length=4)
    # Worked by hand (lm-eval's docstring example): BOS 0 1 2 -> 0 1 2 3; 3 4 5 6 -> 4..7; 5 6 7 8 -> 8 9.
    assert windows == [([1], [100, 101, 102, 103]), ([103], [104, 105, 106, 107]), ([105, 106, 107], [108, 109])]
    assert [t for _, targets in windows for t in targets] == tokens


def test_loglikelihood_rolling_equals_whole_text_likelihood(model, tokenizer):
    text = "Rolling windows cover every token exactly once, whatever the window size."
    lm = DepthpruneLM(model, tokenizer, progress=False)  # max_length 256: one window
    ids = tokenizer.encode(text)
    expected, _ = slow_loglikelihood(model, [tokenizer.bos_token_id], ids)
    assert lm.loglikelihood_rolling([(text,)])[0] == pytest.approx(expected, abs=1e-4)


def test_acc_norm_divides_by_characters_without_the_leading_space():
    # Worked by hand. By characters: -1.0/1 = -1.0 vs -2.1/3 = -0.7 -> choice 1. Counting the leading space
    # would give -1.0/2 = -0.5 vs -2.1/4 = -0.525 -> choice 0.
    doc = Doc(query="q", choices=("x", "xyz"), gold=1)
    assert predictions([-1.0, -2.1], doc) == (0, 1)
    # Characters, not UTF-8 bytes: -1.8/2 = -0.9 vs -2.1/3 = -0.7 -> 1 (bytes would give -1.8/4 = -0.45 -> 0).
    assert predictions([-1.8, -2.1], Doc(query="q", choices=("éé", "abc"), gold=1)) == (0, 1)


def test_ties_go_to_the_first_choice_and_metrics_average():
    docs = [Doc("q", ("a", "b"), gold=0), Doc("q", ("a", "bb"), gold=1), Doc("q", ("a", "b", "c"), gold=2)]
    result = score_docs(docs, [[-1.0, -1.0], [-1.0, -1.5], [-3.0, -2.0, -2.0]], ("acc", "acc_norm"))
    # doc 1: tie -> 0 (right); doc 2: acc 0 (wrong), norm -1.0 vs -0.75 -> 1 (right); doc 3: tie -> 1 (wrong)
    assert result == {"acc": pytest.approx(1 / 3), "acc_norm": pytest.approx(2 / 3), "n": 3}


def test_evaluate_task_scores_each_doc_by_its_choices(model, tokenizer, tmp_path):
    folder = tmp_path / "arc_easy"
    folder.mkdir()
    folder.joinpath("ARC-Easy-Test.jsonl").write_text(
        '{"id": "1", "question": {"stem": "Pick one", "choices": [{"text": "alpha", "label": "A"}, '
        '{"text": "beta gamma", "label": "B"}]}, "answerKey": "A"}\n'
        '{"id": "2", "question": {"stem": "And now?", "choices": [{"text": "x", "label": "A"}, '
        '{"text": "yy", "label": "B"}, {"text": "zzz", "label": "C"}]}, "answerKey": "C"}\n')
    lm = DepthpruneLM(model, tokenizer, batch_size=3, progress=False)
    result = evaluate_task(lm, TASKS["arc_easy"], tmp_path)
    expected_acc = expected_norm = 0
    for query, choices, gold in [("Question: Pick one\nAnswer:", ["alpha", "beta gamma"], 0),
                                 ("Question: And now?\nAnswer:", ["x", "yy", "zzz"], 2)]:
        lls = [slow_loglikelihood(model, *lm.encode_pair(query, " " + c))[0] for c in choices]
        expected_acc += max(range(len(lls)), key=lambda i: (lls[i], -i)) == gold
        normed = [ll / len(c) for ll, c in zip(lls, choices)]
        expected_norm += max(range(len(normed)), key=lambda i: (normed[i], -i)) == gold
    assert result["acc"] == expected_acc / 2 and result["acc_norm"] == expected_norm / 2 and result["n"] == 2
