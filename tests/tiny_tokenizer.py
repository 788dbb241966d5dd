"""A tiny byte-level BPE tokenizer built offline, for tests that need text with the tiny models.

Its ids stay below ``tiny_models.VOCAB`` (512), it has ``<s>`` (BOS), ``</s>`` (EOS) and ``<pad>``, and it does not
add BOS by default (like GPT-2 or SmolLM2). Trained in well under a second on CPython's documentation text.
"""

from __future__ import annotations

from functools import lru_cache

from tiny_models import VOCAB

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


@lru_cache(maxsize=None)
def _trained(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from depthprune.data import builtin_texts

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(builtin_texts()[:200], trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(vocab_size: int = VOCAB):
    """A fresh ``PreTrainedTokenizerFast`` (the trained vocabulary is cached per process)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_str(_trained(vocab_size))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
