"""ReplaceMe, least-squares form (arXiv 2505.02819): one linear map folded into the MLP before each gap.

For a gap ``start..end`` after kept layer ``i = start - 1``: ``M`` is layer i's MLP output (before the residual
add), ``Y = h[i+1] - M`` the stream it is added to (the attention output included, also in parallel
attention/MLP blocks such as GPT-NeoX and Falcon, where ``Y`` is simply everything but the MLP term), and ``L``
the dense model's ``h[end+1]``. The pruned layer i then outputs ``Y + M T`` with

    T = argmin_T ||M T - (L - Y)||² + α ||T - I||²,   α = ridge · tr(MᵀM) / d,

solved from two d×d float64 accumulators streamed over the real calibration tokens (padding masked out; the
official code does not). The ridge pulls T towards the identity, i.e. towards the plain cut, not towards zero.
T is folded into layer i's MLP output projection (``W <- Tᵀ W``, ``b <- b T``; the architecture table names it:
down_proj, c_proj, fc2, dense_4h_to_h, ...), so the output is an ordinary checkpoint with unchanged shapes.

Several gaps: ``fit="dense"`` (the default, as the official least-squares code does) fits every gap on the dense
model's activations; ``fit="sequential"`` fits each gap on the pruned model with the earlier gaps already folded,
against the dense model's target, so a later map also tries to absorb what earlier gaps left. Measured on
SmolLM2-135M with BI's 8 layers (two gaps, 8,192 C4 tokens; bench/RESULTS.md), sequential fits the calibration
text better (in-sample) but WikiText-2 worse: 147.6 against 137.4 for the dense fit (plain cut 169.1) — a map of
the MLP output is a poor basis for correcting the upstream error, and that correction does not generalise.

Refused with one line: a gap with no kept layer before it (nothing to fold T into; keep layer 0 or use
``--compensate scale``, which needs none), a mixture-of-experts MLP (one output projection per expert), and
architectures whose branch outputs are normalised before the residual add (Gemma 2/3, OLMo 2) or that normalise
after it (OPT-350m's post-norm layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapter import ModelAdapter
from ..errors import DepthpruneError
from .base import (COMPENSATIONS, FITS, CompensationEntry, Gap, branch_projection, check_foldable,
                   fold_output_transform, iterate_streams, projection_name)


@dataclass
class LinearConfig:
    """Options of ``--compensate linear``.

    Attributes:
        ridge: α relative to the mean eigenvalue of MᵀM (``α = ridge · tr(MᵀM) / d``), pulling T towards I.
        fit: ``dense`` (every gap on the dense model) or ``sequential`` (each gap on the model with earlier gaps
            compensated).
    """

    ridge: float = 1e-3
    fit: str = "dense"

    def __post_init__(self):
        check_fit(self.fit)
        if not self.ridge >= 0:
            raise DepthpruneError(f"ridge must be >= 0 (got {self.ridge})")


def check_fit(fit: str) -> None:
    if fit not in FITS:
        raise DepthpruneError(f"unknown fit {fit!r}; use {' or '.join(FITS)}")


class LeastSquaresAccumulator:
    """Streams ``MᵀM``, ``MᵀR`` and ``ΣRᵀR`` in float64 over token chunks; solves and scores T (no model needed).

    Args:
        dim: the hidden size d.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)      # MᵀM
        self.cross = torch.zeros(dim, dim, dtype=torch.float64)     # MᵀR
        self.target_energy = 0.0                                     # Σ ||R||²
        self.tokens = 0

    def update(self, mlp_out: torch.Tensor, residual_target: torch.Tensor) -> None:
        """Add tokens: ``mlp_out`` M and ``residual_target`` R = L - Y, both ``(tokens, d)``."""
        m = mlp_out.to(torch.float64)
        r = residual_target.to(torch.float64)
        self.gram += m.T @ m
        self.cross += m.T @ r
        self.target_energy += float((r * r).sum())
        self.tokens += m.shape[0]

    def ridge_strength(self, ridge: float) -> float:
        return ridge * float(torch.trace(self.gram)) / self.dim

    def solve(self, ridge: float) -> torch.Tensor:
        """``T = (MᵀM + αI)⁻¹ (MᵀR + αI)``, float64 ``(d, d)``."""
        if self.tokens == 0:
            raise DepthpruneError("no calibration tokens reached the fit; give --data with real text")
        alpha = self.ridge_strength(ridge)
        eye = torch.eye(self.dim, dtype=torch.float64)
        try:
            return torch.linalg.solve(self.gram + alpha * eye, self.cross + alpha * eye)
        except RuntimeError:
            raise DepthpruneError(f"the least-squares system is singular ({self.tokens} calibration tokens for a "
                                  f"{self.dim}x{self.dim} map); give more --samples or a ridge > 0") from None

    def squared_error(self, transform: torch.Tensor) -> float:
        """``Σ ||M T - R||²`` from the accumulators: ``tr(TᵀAT) - 2 tr(TᵀB) + ΣRᵀR``."""
        t = transform.to(torch.float64)
        return float(torch.sum(t * (self.gram @ t)) - 2 * torch.sum(t * self.cross)) + self.target_energy

    def errors(self, transform: torch.Tensor) -> dict:
        """Mean squared error per token of the stream after the gap: plain cut (T = I) and compensated."""
        plain = self.squared_error(torch.eye(self.dim, dtype=torch.float64))
        fitted = self.squared_error(transform)
        return {"mse_plain": plain / self.tokens, "mse_compensated": fitted / self.tokens,
                "error_left": fitted / plain if plain > 0 else 0.0}


class LeastSquaresFit:
    """Per-gap solver used by the transform driver: accumulates (M, h_out, L) batches, returns T and its stats."""

    def __init__(self, dim: int, config: LinearConfig):
        self.config = config
        self.accumulator = LeastSquaresAccumulator(dim)

    def update(self, mlp_out: torch.Tensor, stream_out: torch.Tensor, target: torch.Tensor) -> None:
        # R = L - Y with Y = h_out - M: the part of the dense target the MLP term has to produce
        self.accumulator.update(mlp_out, target - (stream_out - mlp_out))

    def solve(self, show_progress: bool = True) -> tuple[torch.Tensor, dict]:
        transform = self.accumulator.solve(self.config.ridge)
        return transform, self.accumulator.errors(transform)


def check_transform_method(model, gaps: list[Gap], method: str) -> None:
    """Refuse, before any work, gaps and architectures that cannot carry a folded MLP transform."""
    adapter = ModelAdapter(model)
    check_foldable(adapter, method)
    for gap in gaps:
        if gap.kept_before is None:
            raise DepthpruneError(f"--compensate {method}: the removed block {gap.start}-{gap.end} has no kept layer "
                                  "before it to fold the transform into; keep layer 0, or use --compensate scale "
                                  "(it needs none)")
        branch_projection(adapter, gap.kept_before, "mlp", method)


def run_transform_fit(model, plan, gaps: list[Gap], batches: list, config, make_fit, method: str, on_pruned,
                      show_progress: bool = True, **allow) -> list[dict]:
    """Calibrate one T per gap with ``make_fit(dim)`` solvers, prune ``model`` and fold each T (linear, cosine)."""
    from ..prune import apply_plan

    hidden = ModelAdapter(model).text_config
    dim = getattr(hidden, "hidden_size", None) or getattr(hidden, "n_embd")
    on_dense = gaps if config.fit == "dense" else gaps[:1]      # the first gap sees the dense model either way
    fits = {gap: make_fit(dim) for gap in gaps}
    targets: dict[Gap, list] = {gap: [] for gap in gaps if gap not in on_dense}
    streams = sorted({g.end + 1 for g in gaps} | {g.start for g in on_dense})
    for captured in iterate_streams(model, batches, streams, sorted(g.start - 1 for g in on_dense),
                                    desc="dense model: calibration activations", show_progress=show_progress):
        for gap in gaps:
            target = captured["stream"][gap.end + 1]               # L: (tokens, d)
            if gap in on_dense:
                fits[gap].update(captured["mlp"][gap.start - 1], captured["stream"][gap.start], target)
            else:
                targets[gap].append(target)
    apply_plan(model, plan, **allow)
    on_pruned(model)
    adapter = ModelAdapter(model)
    records = []
    for number, gap in enumerate(gaps):
        layer = gap.position - 1                                    # the kept layer before the gap, pruned numbering
        if gap not in on_dense:
            cached = iter(targets.pop(gap))
            for captured in iterate_streams(model, batches, [gap.position], [layer], show_progress=show_progress,
                                            desc=f"pruned model: gap {number + 1} of {len(gaps)}"):
                fits[gap].update(captured["mlp"][layer], captured["stream"][gap.position], next(cached))
        transform, stats = fits.pop(gap).solve(show_progress)
        fold_output_transform(branch_projection(adapter, layer, "mlp", method), transform)
        # the first gap sees the same activations in the dense and the pruned model
        records.append({"fitted_on": "dense model" if gap in on_dense else "pruned model, earlier gaps compensated",
                        "folded_into": [projection_name(adapter, layer, "mlp")], **stats})
    return records


def _run(model, plan, gaps, batches, config, on_pruned, show_progress=True, **allow):
    return run_transform_fit(model, plan, gaps, batches, config, lambda dim: LeastSquaresFit(dim, config), "linear",
                             on_pruned, show_progress, **allow)


COMPENSATIONS.register(CompensationEntry(
    name="linear", config_class=LinearConfig,
    description="ReplaceMe least squares: a linear map fitted per gap, folded into the MLP output before it",
    run=_run, check=lambda model, gaps, config: check_transform_method(model, gaps, "linear")))
