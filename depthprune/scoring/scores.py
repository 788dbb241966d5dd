"""Score a model's layers by any set of criteria: the Python side of ``depthprune score``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..errors import DepthpruneError
from ..metadata import SCORES_FILE
from .base import CRITERIA, ScoringContext, criterion_options, parse_metrics, scored_names

logger = logging.getLogger(__name__)


def make_configs(metrics, keep_edges: bool | None = None, **options) -> dict:
    """One config per metric from the shared options.

    Args:
        keep_edges: True: first 4 / last 2 layers never candidates for every metric; False: for none; None: each
            metric's default (on for taylor and magnitude).
        options: criterion options by name, each given to the criteria that take it (``token_positions="all"`` to
            angular, ``sleb_n=4`` to sleb); None keeps a criterion's default. A name no criterion takes is an error.
    """
    known = criterion_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DepthpruneError(f"unknown criterion option(s) {', '.join(unknown)}; the registered criteria take "
                              f"{', '.join(known) or 'none'}")
    return {name: CRITERIA.get(name).make_config(keep_edges, **options) for name in parse_metrics(metrics)}


def score_model(model, configs: dict, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, batch_size: int = 8, device=None, weights=None,
                show_progress: bool = True) -> dict:
    """Score the layers of an in-memory (or, with ``weights``, skeleton) model.

    Args:
        model: a causal LM; in sequential mode its layers are on the meta device and ``weights`` reads them.
        configs: metric name -> config (see :func:`make_configs`).
        input_ids: calibration blocks ``(samples, seq_len)``; None only if no metric needs data.
        attention_mask: 1 for real tokens, 0 for padding (ignored by every criterion).

    Returns:
        ``{"num_layers": L, <metric entries>, "protected": {metric: [...]}, "timing_s": {...}}``.
    """
    from ..adapter import ModelAdapter
    from ..calibration import CalibrationPass

    adapter = ModelAdapter(model)
    num_layers = adapter.num_layers
    entries = [CRITERIA.get(name) for name in configs]
    scorers = [entry.scorer_class(configs[entry.name], num_layers) for entry in entries]
    needing_data = [e.name for e in entries if e.needs_data]
    if needing_data and input_ids is None:
        raise DepthpruneError(f"metric(s) {', '.join(needing_data)} need calibration data; pass --data SPEC "
                              "(e.g. builtin or a .txt file)")
    if weights is not None:
        refused = [e.name for e in entries if e.needs_whole_model]
        if refused:
            layerwise = [name for name in scored_names() if not CRITERIA.get(name).needs_whole_model]
            raise DepthpruneError(f"metric(s) {', '.join(refused)} need every layer in memory; drop --sequential "
                                  f"or score only {', '.join(layerwise)} in sequential mode")
    calibration = None
    if needing_data:
        calibration = CalibrationPass(model, input_ids, attention_mask, batch_size=batch_size, device=device,
                                      weights=weights, show_progress=show_progress)
    context = ScoringContext(model=model, num_layers=num_layers, calibration=calibration, weights=weights,
                             layers_path=adapter.layers_path, show_progress=show_progress)
    timing = {}
    streaming = [s for s in scorers if s.streaming]
    if streaming:
        start = time.perf_counter()
        calibration.stream(streaming)
        timing["pass:" + ",".join(s.name for s in streaming)] = time.perf_counter() - start
    for scorer in scorers:
        if not scorer.streaming:
            start = time.perf_counter()
            scorer.compute(context)
            timing[scorer.name] = time.perf_counter() - start
    result = {"num_layers": num_layers}
    for scorer in scorers:
        result.update(scorer.finalize())
    result["protected"] = {s.name: s.config.protected_layers(num_layers) for s in scorers}
    result["settings"] = {name: vars(config) for name, config in configs.items()}
    result["timing_s"] = timing
    if calibration is not None:
        result["tokens"] = calibration.num_tokens
    return result


def _should_run_sequentially(checkpoint_dir, dtype, device) -> bool:
    from ..calibration import available_memory_bytes
    from ..loading import checkpoint_bytes

    if checkpoint_dir is None:
        return False
    size = checkpoint_bytes(checkpoint_dir)
    return size > 0.8 * available_memory_bytes(device)


def score_needs(model, metrics="angular,bi", data=None, output=None, plots: bool = True) -> list[tuple[str, str]]:
    """The optional packages ``score`` will need, as ``(module, purpose)`` pairs for ``extras.require_all``."""
    from ..extras import data_needs, model_needs

    needs = model_needs(model)
    if any(CRITERIA.get(name).needs_data for name in parse_metrics(metrics)):
        needs += data_needs(data)
    if output is not None and plots:
        needs.append(("matplotlib", "score's plots (--no-plots skips them)"))
    return needs


def score(model, metrics="angular,bi", data=None, token_positions: str = "last", keep_edges: bool | None = None,
          sleb_n: int | None = None, batch_size: int = 8, sequential: bool | None = False, output=None,
          force: bool = False, plots: bool = True, dtype="auto", device="cpu", trust_remote_code: bool = False,
          show_progress: bool = True, **criterion_options) -> dict:
    """Score every layer of a model and (with ``output``) write ``scores.json`` and plots (``depthprune score``).

    Args:
        model: anything :func:`depthprune.load_model` accepts, or a :class:`~depthprune.LoadedModel`.
        metrics: comma-separated names or a list of registered criteria (angular, bi, ppl, taylor, magnitude,
            sleb, and any registered since).
        data: a :class:`~depthprune.DataSpec` or a source string; None only for data-free metrics (magnitude).
        token_positions: ``last`` or ``all`` real tokens for angular distance.
        keep_edges: the first-4/last-2 keep-set for every metric (True), none (False), or each default (None).
        sleb_n: layers SLEB removes (default a quarter).
        criterion_options: the options of further registered criteria, by name (as ``token_positions`` and ``sleb_n``).
        sequential: read one decoder layer at a time from the checkpoint's safetensors; None decides by memory.
        output: folder for ``scores.json`` and PNG plots (written atomically); None writes nothing.

    Returns:
        The scores dict (what ``scores.json`` holds).
    """
    from ..data import DataSpec, calibration_blocks
    from ..loading import LoadedModel, load_model, require_tokenizer
    from ..saving import atomic_output_dir, check_output_dir, write_json_atomic

    configs = make_configs(metrics, keep_edges=keep_edges, token_positions=token_positions, sleb_n=sleb_n, **criterion_options)
    needing_data = [name for name in configs if CRITERIA.get(name).needs_data]
    if needing_data and data is None:
        raise DepthpruneError(f"metric(s) {', '.join(needing_data)} need calibration data; pass --data SPEC "
                              "(e.g. builtin or a .txt file)")
    if output is not None:
        check_output_dir(output, force)
    from ..extras import require_all

    require_all(score_needs(model, metrics, data, output, plots))   # before loading anything
    spec = DataSpec(source=data) if isinstance(data, str) else data

    weights = None
    if isinstance(model, LoadedModel):
        if sequential:
            raise DepthpruneError("--sequential reads the weights from a checkpoint; pass the model's path or alias, "
                                  "not an already loaded model")
        loaded = model
    else:
        if sequential is None or sequential:
            loaded, weights = _load_for_sequential(model, dtype, device, trust_remote_code, sequential)
        else:
            loaded = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    input_ids = None
    if spec is not None and needing_data:
        if spec.source == "self" and weights is not None:
            raise DepthpruneError("data 'self' needs the whole model to generate text; drop --sequential")
        input_ids = calibration_blocks(spec, require_tokenizer(loaded), model=loaded.model)
    result = score_model(loaded.model, configs, input_ids=input_ids, batch_size=batch_size, device=device,
                         weights=weights, show_progress=show_progress)
    result = {"model": loaded.description, "num_layers": result.pop("num_layers"),
              "data": spec.describe() if spec is not None and needing_data else None,
              "metrics": list(configs), "sequential": weights is not None, "dtype": str(_model_dtype(loaded.model)),
              **result}
    if output is not None:
        plot_error = None
        with atomic_output_dir(output, force=force) as tmp:
            write_json_atomic(Path(tmp) / SCORES_FILE, result)
            if plots:   # drawn last; a failure there must not cost the scores
                from .plots import write_plots

                try:
                    logger.info("plots: %s", ", ".join(write_plots(result, tmp)))
                except Exception as error:  # noqa: BLE001  (any plotting failure: the scores are kept)
                    plot_error = error
        if plot_error is not None:
            first = str(plot_error).strip().splitlines()[0] if str(plot_error).strip() else type(plot_error).__name__
            raise DepthpruneError(f"the scores were saved to {Path(output) / SCORES_FILE} but the plots failed "
                                  f"({first}); re-run with --no-plots to skip them") from plot_error
    return result


def _model_dtype(model) -> torch.dtype:
    """The dtype the model's floating weights are held in (what the scores were computed in)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _load_for_sequential(model, dtype, device, trust_remote_code, sequential):
    """(LoadedModel with a skeleton model, weights) — or a normal load when ``sequential`` is None and it fits."""
    from ..calibration import load_skeleton
    from ..loading import (MODEL_ALIASES, LoadedModel, _load_gguf, checkpoint_dtype, load_model, parse_dtype,
                           resolve_alias)

    source = str(model)
    path = Path(source).expanduser()
    description = source
    if source in MODEL_ALIASES:
        path, description = resolve_alias(source)
    if path.suffix == ".gguf" and path.is_file():
        folder = _load_gguf(path, trust_remote_code)
    elif path.is_dir() and (path / "config.json").is_file():
        folder = path
        description = str(path.resolve())
    elif sequential is None:
        return load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code), None
    else:
        raise DepthpruneError(f"--sequential reads weights from a local checkpoint folder or .gguf file; {source!r} "
                              "is neither — download it first (huggingface-cli download ...)")
    if sequential is None and not _should_run_sequentially(folder, dtype, device):
        return load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code), None
    if sequential is None:
        logger.warning("the model does not fit in memory on %s; scoring sequentially (one layer at a time)", device)
    torch_dtype = parse_dtype(dtype)
    skeleton, weights = load_skeleton(folder, dtype=checkpoint_dtype(folder) if torch_dtype == "auto" else torch_dtype,
                                      device=device, trust_remote_code=trust_remote_code)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return LoadedModel(model=skeleton, tokenizer=tokenizer, source=source, description=description,
                       checkpoint_dir=folder), weights
