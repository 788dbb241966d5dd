"""Logit distillation from the unpruned model (Minitron, arXiv 2407.14679 / 2408.11796).

loss = (1 - w) * tau^2 * KL(p_teacher || p_student) + w * LM loss, with both distributions softened at
temperature tau. With ``top_k`` 0 the KL covers the whole vocabulary and the teacher runs on the fly in the same
process (its weights cost one more model in memory). With ``top_k`` K the KL covers the teacher's K most likely
next tokens, and the teacher's top-K logits are computed once and read back from a disk cache
(:mod:`depthprune.heal.teacher_cache`): the teacher is not in memory while the student trains. How the student's
side is normalised (``top_k_norm``):

- ``top-k``: both distributions renormalised over the K tokens (as LinearPatch, arXiv 2505.24680, and Minitron's
  top-K logit variant do). The loss then sees only the student's *relative* logits among the K: the mass it puts on
  the other tokens is free, so next-token perplexity stops improving early (bench/RESULTS.md).
- ``vocab``: the student's full-vocabulary probabilities at the K tokens, against the teacher's renormalised ones:
  sum_k p_k (log p_k - log q_k). The student's mass outside the K counts as loss (q sums to at most 1 there, so the
  loss is >= 0 and 0 only when the student puts all its mass on the K in the teacher's proportions).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..errors import DepthpruneError
from ..loading import MODEL_ALIASES, LoadedModel, load_model
from ..saving import read_metadata
from .config import TOP_K_NORMS
from .full import make_trainable
from .methods import HealingMethod, Preset, register

logger = logging.getLogger(__name__)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``, computed in float32.

    Args:
        student_logits, teacher_logits: ``(batch, seq, vocab)``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise DepthpruneError(f"teacher and student logits differ in shape ({tuple(teacher_logits.shape)} vs "
                              f"{tuple(student_logits.shape)}); the teacher must share the student's tokenizer")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # kl_div(input=log q, target=log p, log_target) = p * (log p - log q), summed over the vocabulary
    per_position = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(-1)  # (batch, seq)
    return per_position.mean() * temperature ** 2


def topk_kd_loss(student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor,
                 temperature: float = 1.0, student_norm: str = "top-k") -> torch.Tensor:
    """Mean over positions of ``tau^2 * sum_k p_k (log p_k - log q_k)`` over the teacher's top-k tokens, in float32:
    p is the teacher's distribution renormalised over them; q the student's, renormalised over them (``top-k``: a
    KL) or over the whole vocabulary (``vocab``).

    Args:
        student_logits: ``(batch, seq, vocab)``.
        teacher_values: the teacher's top-k logits ``(batch, seq, k)`` (any float dtype; fp16 from the cache).
        teacher_indices: their token ids ``(batch, seq, k)``.
        student_norm: ``top-k`` or ``vocab`` (see the module docstring).
    """
    if student_logits.shape[:2] != teacher_values.shape[:2] or teacher_values.shape != teacher_indices.shape:
        raise DepthpruneError(f"teacher top-k logits {tuple(teacher_values.shape)} do not fit the student's "
                              f"{tuple(student_logits.shape)}; the teacher must share the student's tokenizer")
    # gather picks k logits per position: the student's full-vocabulary softmax is never formed
    student_topk = student_logits.gather(-1, teacher_indices.long()).float() / temperature    # (batch, seq, k)
    if student_norm == "top-k":
        log_q = F.log_softmax(student_topk, dim=-1)
    elif student_norm == "vocab":
        # log q_k = s_k / tau - logsumexp over the vocabulary: one (batch, seq) reduction, no (.., vocab) softmax kept
        log_q = student_topk - torch.logsumexp(student_logits.float() / temperature, dim=-1, keepdim=True)
    else:
        raise DepthpruneError(f"unknown top-k normalisation {student_norm!r}; use one of {', '.join(TOP_K_NORMS)}")
    log_p = F.log_softmax(teacher_values.float() / temperature, dim=-1)
    per_position = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)    # (batch, seq)
    return per_position.mean() * temperature ** 2


def teacher_source(loaded: LoadedModel, teacher: "str | LoadedModel | None") -> "str | LoadedModel":
    """The teacher to load: ``teacher`` if given (a LoadedModel is used as it is), else the base model named in the
    checkpoint's depthprune.json."""
    if isinstance(teacher, LoadedModel):
        return teacher
    if teacher:
        return str(teacher)
    metadata = read_metadata(loaded.checkpoint_dir) or {}
    if metadata.get("base_model_source"):      # what load_model() accepts (older outputs only describe it)
        return metadata["base_model_source"]
    base = metadata.get("base_model")
    if not base:
        raise DepthpruneError(f"no --teacher given and {loaded.source} has no depthprune.json naming its base model; "
                              "pass --teacher BASE (the unpruned model)")
    for alias, (_, _, description) in MODEL_ALIASES.items():
        if base == description:   # aliases are recorded by description; load them by alias
            return alias
    return base


def teacher_name(source: "str | LoadedModel") -> str:
    return source.description if isinstance(source, LoadedModel) else str(source)


def load_teacher(source: "str | LoadedModel", student_vocab: int, dtype="float32",
                 trust_remote_code: bool = False) -> LoadedModel:
    """Load the teacher frozen in eval mode (on CPU; the trainer moves it) and check it speaks the same vocabulary."""
    try:
        teacher = source if isinstance(source, LoadedModel) else load_model(source, dtype=dtype,
                                                                            trust_remote_code=trust_remote_code)
    except DepthpruneError as error:
        raise DepthpruneError(f"cannot load the teacher: {error}; pass --teacher with the unpruned model") from None
    vocab = teacher.model.get_output_embeddings().weight.shape[0]
    if vocab != student_vocab:
        raise DepthpruneError(f"teacher {source} has a vocabulary of {vocab} but the student {student_vocab}; "
                              "pass the unpruned model the student was pruned from as --teacher")
    teacher.model.requires_grad_(False)
    teacher.model.eval()
    size = sum(p.numel() * p.element_size() for p in teacher.model.parameters())
    logger.info("teacher %s in memory: %.1f MB of weights (plus its logits per batch)", source, size / 2**20)
    return teacher


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


DISTILL = register(HealingMethod(
    name="distill", help="every weight, against the unpruned teacher's next-token distribution (--top-k K: its "
                         "cached top K)",
    presets=(Preset("minitron-kd", "Muralidharan et al. 2024, Minitron (2407.14679) / Sreenivas et al. (2408.11796): "
                    "logit distillation from the unpruned teacher",
                    dict(method="distill", temperature=1.0, lm_loss_weight=0.0, lr=1e-4, betas=(0.9, 0.95),
                         weight_decay=0.1, schedule="cosine", warmup_steps=100)),),
    make_student=make_trainable, settings=("temperature", "lm_loss_weight", "top_k", "top_k_norm"), uses_teacher=True))
