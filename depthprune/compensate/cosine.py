"""ReplaceMe, cosine form (arXiv 2505.02819): the least-squares map refined to minimise the cosine distance.

Same gap, activations and fold as :mod:`depthprune.compensate.linear`; T minimises the mean over real calibration
tokens of ``1 - cos(M T, L - Y)`` (ReplaceMe's cosine objective), by Adam over the cached activations in
mini-batches, starting from the least-squares solution (the official code starts from the identity; starting from
the least-squares T keeps its scale, which the cosine objective leaves free). The activations of one gap are held
on CPU in float32 while it is fitted: 3 · tokens · d · 4 bytes (8,192 tokens of a 4096-wide model: 400 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DepthpruneError
from .base import COMPENSATIONS, CompensationEntry
from .linear import LeastSquaresAccumulator, check_fit, check_transform_method, run_transform_fit


@dataclass
class CosineConfig:
    """Options of ``--compensate cosine``.

    Attributes:
        ridge: the least-squares start's ridge (see :class:`~depthprune.compensate.linear.LinearConfig`).
        fit: ``sequential`` or ``dense`` (as for ``linear``).
        epochs: passes of Adam over the cached tokens.
        lr: Adam's learning rate (ReplaceMe: 1e-4).
        batch_tokens: tokens per Adam step.
        seed: order of the tokens.
    """

    ridge: float = 1e-3
    fit: str = "sequential"
    epochs: int = 10
    lr: float = 1e-4
    batch_tokens: int = 1024
    seed: int = 0

    def __post_init__(self):
        check_fit(self.fit)
        for name in ("epochs", "lr", "batch_tokens"):
            if not getattr(self, name) > 0:
                raise DepthpruneError(f"{name} must be positive (got {getattr(self, name)})")


def mean_cosine_distance(mlp_out: torch.Tensor, residual_target: torch.Tensor, transform: torch.Tensor,
                         chunk: int = 4096) -> float:
    """Mean over tokens of ``1 - cos(M T, R)``; ``M``, ``R`` ``(tokens, d)``."""
    total, t = 0.0, transform.to(torch.float32)
    for start in range(0, mlp_out.shape[0], chunk):
        predicted = mlp_out[start:start + chunk].float() @ t
        total += float((1 - torch.nn.functional.cosine_similarity(
            predicted, residual_target[start:start + chunk].float(), dim=-1)).sum())
    return total / max(mlp_out.shape[0], 1)


def refine_cosine(mlp_out: torch.Tensor, residual_target: torch.Tensor, start: torch.Tensor, epochs: int = 10,
                  lr: float = 1e-4, batch_tokens: int = 1024, seed: int = 0,
                  show_progress: bool = True) -> torch.Tensor:
    """Adam on ``mean(1 - cos(M T, R))`` from ``start``; returns T float64 ``(d, d)``. No model needed."""
    from tqdm.auto import tqdm

    transform = start.detach().to(torch.float32).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([transform], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in tqdm(range(epochs), desc="cosine fit", unit="epoch", disable=not show_progress):
            for chunk in torch.randperm(mlp_out.shape[0], generator=generator).split(batch_tokens):
                predicted = mlp_out[chunk].float() @ transform                     # (batch_tokens, d)
                loss = (1 - torch.nn.functional.cosine_similarity(predicted, residual_target[chunk].float(),
                                                                  dim=-1)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return transform.detach().to(torch.float64)


class CosineFit:
    """Per-gap solver: least-squares accumulators plus the cached (M, R) the cosine refinement runs over."""

    def __init__(self, dim: int, config: CosineConfig):
        self.config = config
        self.accumulator = LeastSquaresAccumulator(dim)
        self.mlp_out: list[torch.Tensor] = []
        self.residual_target: list[torch.Tensor] = []

    def update(self, mlp_out: torch.Tensor, stream_out: torch.Tensor, target: torch.Tensor) -> None:
        residual_target = target - (stream_out - mlp_out)         # R = L - Y
        self.accumulator.update(mlp_out, residual_target)
        self.mlp_out.append(mlp_out.float())
        self.residual_target.append(residual_target.float())

    def solve(self, show_progress: bool = True) -> tuple[torch.Tensor, dict]:
        mlp_out, residual_target = torch.cat(self.mlp_out), torch.cat(self.residual_target)
        self.mlp_out, self.residual_target = [], []
        least_squares = self.accumulator.solve(self.config.ridge)
        config = self.config
        transform = refine_cosine(mlp_out, residual_target, least_squares, config.epochs, config.lr,
                                  config.batch_tokens, config.seed, show_progress)
        eye = torch.eye(least_squares.shape[0], dtype=torch.float64)
        stats = self.accumulator.errors(transform)
        stats.update(cosine_distance_plain=mean_cosine_distance(mlp_out, residual_target, eye),
                     cosine_distance_least_squares=mean_cosine_distance(mlp_out, residual_target, least_squares),
                     cosine_distance_compensated=mean_cosine_distance(mlp_out, residual_target, transform))
        return transform, stats


def _run(model, plan, gaps, batches, config, on_pruned, show_progress=True, **allow):
    return run_transform_fit(model, plan, gaps, batches, config, lambda dim: CosineFit(dim, config), "cosine",
                             on_pruned, show_progress, **allow)


COMPENSATIONS.register(CompensationEntry(
    name="cosine", config_class=CosineConfig,
    description="ReplaceMe cosine: the least-squares map refined by Adam on the cosine distance, folded the same way",
    run=_run, check=lambda model, gaps, config: check_transform_method(model, gaps, "cosine")))
