"""One model wrapper for lm-evaluation-harness and our offline evaluator.

``DepthpruneLM`` implements lm-eval's ``LM`` interface (``loglikelihood``, ``loglikelihood_rolling``,
``generate_until``) over a model already in memory, so ``lm_eval.simple_evaluate(model=DepthpruneLM(...))`` and
``depthprune eval`` score through the same code. Tokenisation follows lm-eval's ``HFLM``: trailing spaces of the
context move to the continuation, the pair is encoded whole and split at the length of the encoded context, an
empty context is replaced by the BOS token (EOS when there is none), and over-long inputs are cut on the left.
Inputs are right-padded, so no real token ever attends to padding.

lm-eval is optional: without it the class derives from a small stand-in with the same attributes, and requests may
be plain ``(context, continuation)`` tuples instead of ``Instance`` objects.
"""

from __future__ import annotations

import inspect
from typing import Iterable, Sequence

import torch

try:  # lm-eval is an extra (depthprune[eval]); the wrapper must work without it
    from lm_eval.api.model import LM as _LMBase
    HAVE_LM_EVAL = True
except ImportError:  # pragma: no cover - exercised only where lm-eval is absent
    HAVE_LM_EVAL = False

    class _LMBase:  # the attributes lm-eval's LM.__init__ sets, so code written against it keeps working
        def __init__(self) -> None:
            self._rank = 0
            self._world_size = 1
            self._device = None
            self.cache_hook = None

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size

DEFAULT_MAX_LENGTH = 2048  # lm-eval HFLM's default when neither config nor tokenizer gives a usable length
_MAX_LENGTH_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def _request_args(request) -> tuple:
    """``Instance.args`` for lm-eval requests; plain tuples pass through."""
    return tuple(request.args) if hasattr(request, "args") else tuple(request)


class DepthpruneLM(_LMBase):
    """lm-eval ``LM`` over an in-memory causal LM.

    Args:
        model: a ``transformers`` causal LM (eval mode is set here).
        tokenizer: its tokenizer.
        batch_size: sequences per forward pass.
        max_length: longest input in tokens; default from the model config (as lm-eval's HFLM), else 2048.
        add_bos_token: force (True) or suppress (False) the tokenizer's special tokens; None keeps its default,
            which is lm-eval's default too.
        prefix_token_id: token that stands in for an empty context; default BOS, else EOS.
        max_gen_toks: default generation budget for ``generate_until``.
        progress: show tqdm progress bars.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int | None = None,
                 add_bos_token: bool | None = None, prefix_token_id: int | None = None, max_gen_toks: int = 256,
                 progress: bool = True):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.add_bos_token = add_bos_token
        self._max_length = max_length
        self._prefix_token_id = prefix_token_id
        self.max_gen_toks = max_gen_toks
        self.progress = progress
        self._device = next(model.parameters()).device
        # Only the logits we score are computed when the model supports it (saves the vocab projection elsewhere).
        self._has_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    # ------------------------------------------------------------------------------------------- properties
    @property
    def device(self):
        return self._device

    @property
    def max_length(self) -> int:
        if self._max_length:
            return int(self._max_length)
        config = getattr(self.model.config, "get_text_config", lambda: self.model.config)()
        for key in _MAX_LENGTH_KEYS:
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:
            return tokenizer_max
        return DEFAULT_MAX_LENGTH

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self._prefix_token_id is not None:
            return self._prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    # ----------------------------------------------------------------------------------------- tokenising
    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of ``text`` with the tokenizer's default special tokens unless told otherwise."""
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        prefix_text = self.tokenizer.decode([self.prefix_token_id])     # what HFLM compares against
        if add_special_tokens is None and prefix_text and text.startswith(prefix_text):
            kwargs["add_special_tokens"] = False  # the text already carries its BOS
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids exactly as lm-eval splits them (see the module docstring)."""
        if context == "":
            continuation_ids = self.tok_encode(continuation, add_special_tokens=False)
            if continuation_ids and continuation_ids[0] == self.prefix_token_id:
                return continuation_ids[:1], continuation_ids[1:]
            return [self.prefix_token_id], continuation_ids
        trailing = len(context) - len(context.rstrip())
        if trailing:
            continuation = context[-trailing:] + continuation
            context = context[:-trailing]
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        return context_ids, whole[len(context_ids):]

    # ------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def score_token_pairs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "scoring",
                          disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation after its context, and whether greedy decoding gives it.

        Args:
            pairs: ``(context_ids, continuation_ids)``; the context must hold at least one token.
            desc: progress-bar label.

        Returns:
            One ``(logprob, is_greedy)`` per pair, in input order.
        """
        from tqdm.auto import tqdm

        max_length = self.max_length
        prepared = []  # (input ids, continuation ids)
        for context_ids, continuation_ids in pairs:
            if len(continuation_ids) == 0:
                raise ValueError("empty continuation: nothing to score")
            if len(context_ids) == 0:
                raise ValueError("empty context: give at least one token (lm-eval uses BOS)")
            whole = (list(context_ids) + list(continuation_ids))[-(max_length + 1):]
            prepared.append((tuple(whole[:-1]), whole[-len(continuation_ids):]))
        # Requests with the same input (one-token answers after one prompt, e.g. BoolQ, MMLU) share one forward
        # pass, as lm-eval's HFLM does; the result is identical, the work is not repeated.
        by_input: dict[tuple[int, ...], list[int]] = {}
        for index, (input_ids, _) in enumerate(prepared):
            by_input.setdefault(input_ids, []).append(index)
        unique = list(by_input)
        # Longest first, as lm-eval does: similar lengths share a batch and an out-of-memory error comes early.
        unique.sort(key=lambda ids: -len(ids))
        results: list[tuple[float, bool] | None] = [None] * len(prepared)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batches = [unique[start:start + self.batch_size] for start in range(0, len(unique), self.batch_size)]
        for batch in tqdm(batches, desc=desc, unit="batch", disable=disable_tqdm or not self.progress):
            lengths = [len(ids) for ids in batch]
            width = max(lengths)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, :lengths[row]] = torch.tensor(ids)
                attention_mask[row, :lengths[row]] = 1
            # Logits needed: for each row the last len(continuation) real positions. Keep the smallest tail of the
            # padded width that covers all rows.
            longest_target = {ids: max(len(prepared[i][1]) for i in by_input[ids]) for ids in batch}
            first_needed = min(lengths[row] - longest_target[ids] for row, ids in enumerate(batch))
            kwargs = {"logits_to_keep": width - first_needed} if self._has_logits_to_keep else {}
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                use_cache=False, **kwargs).logits
            offset = width - logits.shape[1]  # logits[:, j] belongs to input position offset + j
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (batch, kept positions, vocab)
            for row, ids in enumerate(batch):
                for index in by_input[ids]:
                    target = torch.tensor(prepared[index][1], device=log_probs.device)
                    start = lengths[row] - len(target) - offset
                    row_log_probs = log_probs[row, start:start + len(target)]  # (continuation, vocab)
                    logprob = row_log_probs.gather(1, target[:, None]).sum().item()
                    greedy = bool((row_log_probs.argmax(dim=-1) == target).all())
                    results[index] = (logprob, greedy)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------ lm-eval interface
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(logprob, is_greedy)`` of each ``(context, continuation)`` request (lm-eval's contract)."""
        pairs = [self.encode_pair(*_request_args(request)[:2]) for request in requests]
        return self.score_token_pairs(pairs, desc="log-likelihood", disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string, predicted from the prefix token in disjoint windows.

        Each token is predicted exactly once; the first window starts from the prefix token, later windows carry
        the preceding tokens as context up to ``max_length`` (lm-eval's rolling windows with context length 1).
        The text is encoded with the tokenizer's default special tokens, as HFLM does: a tokenizer that adds BOS
        yields ``[BOS, ...]`` and that BOS is predicted from the prefix token (itself BOS) like any other token, so
        the total equals HFLM's (lm-eval scores it that way, and word-level perplexities follow it).
        """
        totals = []
        for request in requests:
            (text,) = _request_args(request)[:1]
            token_ids = self.tok_encode(text)
            windows = rolling_windows(token_ids, self.prefix_token_id, self.max_length)
            scores = self.score_token_pairs(windows, desc="rolling log-likelihood",
                                            disable_tqdm=disable_tqdm or len(requests) > 1)
            totals.append(sum(logprob for logprob, _ in scores))
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the first stop string (``until``) or ``max_gen_toks``."""
        from tqdm.auto import tqdm

        outputs = []
        for request in tqdm(requests, desc="generating", disable=disable_tqdm or not self.progress):
            context, gen_kwargs = _request_args(request)[:2]
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos_text = self.tokenizer.decode([self.eot_token_id]) if self.eot_token_id is not None else None
            if eos_text and eos_text not in until:
                until.append(eos_text)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            context_ids = self.tok_encode(context)[-(self.max_length - max_new):] or [self.prefix_token_id]
            input_ids = torch.tensor([context_ids], device=self.device)
            generated = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                            max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id
                                            if self.tokenizer.pad_token_id is not None else self.eot_token_id)
            text = self.tokenizer.decode(generated[0, len(context_ids):], skip_special_tokens=False)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            outputs.append(text)
        return outputs


def rolling_windows(token_ids: Sequence[int], prefix_token_id: int,
                    max_length: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint ``(context, targets)`` windows that predict every token of ``token_ids`` once.

    The first window predicts up to ``max_length`` tokens from the prefix token; each later one predicts the next
    up to ``max_length`` tokens, with as much preceding text as context as fits in ``max_length`` inputs.
    """
    windows = []
    done = 0
    while done < len(token_ids):
        count = min(max_length, len(token_ids) - done)
        targets = list(token_ids[done:done + count])
        if done == 0:
            context = [prefix_token_id]
        else:
            # inputs = context + targets[:-1] must fit in max_length, so the context is max_length - count + 1 long
            context = list(token_ids[max(0, done - (max_length - count + 1)):done])
        windows.append((context, targets))
        done += count
    return windows


def loglikelihood_requests(lm: DepthpruneLM, requests: Iterable[tuple[str, str]], desc: str = "log-likelihood"
                           ) -> list[tuple[float, bool]]:
    """Score plain ``(context, continuation)`` pairs through the wrapper (our offline evaluator's entry point)."""
    pairs = [lm.encode_pair(context, continuation) for context, continuation in requests]
    return lm.score_token_pairs(pairs, desc=desc)
