"""Logit distillation from the unpruned model (Minitron, arXiv 2407.14679 / 2408.11796).

loss = (1 - w) * tau^2 * KL(p_teacher || p_student) + w * LM loss, with both distributions softened at
temperature tau; the teacher runs on the fly in the same process (its weights cost one more model in memory).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..errors import DepthpruneError
from ..loading import MODEL_ALIASES, LoadedModel, load_model
from ..saving import read_metadata

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


def teacher_source(loaded: LoadedModel, teacher: str | None) -> str:
    """The teacher to load: ``teacher`` if given, else the base model named in the checkpoint's depthprune.json."""
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


def load_teacher(source: str, student_vocab: int, dtype="float32", trust_remote_code: bool = False) -> LoadedModel:
    """Load the teacher frozen in eval mode (on CPU; the trainer moves it) and check it speaks the same vocabulary."""
    try:
        teacher = load_model(source, dtype=dtype, trust_remote_code=trust_remote_code)
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
