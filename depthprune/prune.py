"""Remove decoder layers from a model and save the result: the Python side of ``depthprune prune``."""

from __future__ import annotations

import logging
from pathlib import Path

from .adapter import ModelAdapter
from .errors import DepthpruneError
from .loading import LoadedModel, load_model
from .metadata import COMPENSATION_KEY
from .plan import PrunePlan, format_layer_list, parse_layer_list
from .saving import check_output_dir, read_metadata, save

logger = logging.getLogger(__name__)


def original_numbering(loaded: LoadedModel, plan: PrunePlan, parent: dict | None = None) -> dict:
    """Provenance fields in the ORIGINAL base model's numbering, following an earlier depthprune step if any.

    Pruning an already pruned checkpoint composes: its ``kept_layers`` map our indices back to the base model.
    ``parent`` is that step's metadata when it is not in a ``depthprune.json`` beside the weights (a GGUF holds
    it inside).
    """
    if parent is None:
        parent = read_metadata(loaded.checkpoint_dir, num_layers=plan.num_layers)
    if parent and "kept_layers" in parent:
        base_kept = parent["kept_layers"]
        kept = [base_kept[i] for i in plan.kept_layers]
        original_count = parent.get("num_layers_original", len(base_kept))
        return {
            "base_model": parent.get("base_model", loaded.description),
            "base_model_source": parent.get("base_model_source", parent.get("base_model", loaded.source)),
            "parent_model": loaded.description,
            "parent_steps": parent.get("steps", []) + [{k: v for k, v in parent.items() if k != "steps"}],
            "num_layers_original": original_count,
            "kept_layers": kept,
            "removed_layers": [i for i in range(original_count) if i not in set(kept)],
        }
    # base_model describes; base_model_source is what load_model() accepts (e.g. the alias), for the teacher
    return {"base_model": loaded.description, "base_model_source": loaded.source,
            "num_layers_original": plan.num_layers,
            "kept_layers": plan.kept_layers, "removed_layers": sorted(plan.removed_layers)}


def apply_plan(model, plan: PrunePlan, **allow) -> None:
    """Remove the plan's layers from ``model`` in place (validating the plan against the model first).

    ``allow`` takes ``allow_final_layer``, ``allow_first_layer`` and ``allow_single_layer`` (see
    :meth:`ModelAdapter.check_removal`).
    """
    adapter = ModelAdapter(model)
    if adapter.num_layers != plan.num_layers:
        raise DepthpruneError(f"the plan is for {plan.num_layers} layers but the model has {adapter.num_layers}")
    _, kept = adapter.check_removal(plan.removed_layers, **allow)
    adapter.keep_layers(kept)


def pruned_metadata(loaded: LoadedModel, plan: PrunePlan, parent: dict | None = None) -> dict:
    """The ``depthprune.json`` of a pruned model: provenance in the original numbering, the method and the plan."""
    return {**original_numbering(loaded, plan, parent), "method": plan.method, "plan": plan.to_dict()}


def save_pruned(loaded: LoadedModel, plan: PrunePlan, output, force: bool = False, extra_metadata: dict | None = None,
                extra_files: dict | None = None) -> Path:
    """Save an already pruned ``loaded.model`` with the plan and its provenance in ``depthprune.json``."""
    metadata = pruned_metadata(loaded, plan)
    metadata.update(extra_metadata or {})
    return save(loaded.model, loaded.tokenizer, output, metadata=metadata, force=force, extra_files=extra_files)


def prune_needs(model, method: str | None = None, data=None, scores=None, compensate: str | None = None,
                max_ppl_ratio=None) -> list[tuple[str, str]]:
    """The optional packages ``prune`` will need, as ``(module, purpose)`` pairs."""
    from .extras import data_needs, model_needs

    needs = model_needs(model)
    reads_data = compensate not in (None, "none") or max_ppl_ratio is not None   # compensation, the quality gate
    if reads_data:
        needs += data_needs(data)
    elif method is not None and scores is None:
        from .selection import check_method

        if check_method(method).needs_data:
            needs += data_needs(data)
    return needs


def prune(model: str | LoadedModel, layers: str | list[int] | None = None, output: str | Path | None = None,
          force: bool = False, dry_run: bool = False, allow_final_layer: bool = False, allow_first_layer: bool = False,
          allow_single_layer: bool = False, dtype="auto", device="cpu",
          trust_remote_code: bool = False, method: str | None = None, n: int | None = None,
          ratio: float | None = None, data=None, scores: str | Path | dict | None = None, token_positions: str = "last",
          keep_edges: bool | None = None, batch_size: int = 8, format: str | None = None, surgery: str = "auto",
          compensate: str = "none", max_ppl_ratio: float | None = None, target_params: int | str | None = None,
          **criterion_options) -> PrunePlan:
    """Remove layers and save an ordinary checkpoint (``depthprune prune MODEL --layers ...`` or ``--method ...``).

    Args:
        model: anything :func:`depthprune.load_model` accepts, or an already loaded model.
        layers: 0-based layers to remove, as a list or a string such as ``"20-27,3"`` (not with ``method``).
        output: destination folder (required unless ``dry_run``).
        force: replace an existing ``output``.
        dry_run: only build and return the plan.
        allow_final_layer: permit removing the last layer.
        allow_first_layer: permit removing layer 0.
        allow_single_layer: permit a plan that leaves one layer.
        method: choose the layers by a registered criterion: angular (best block), bi, ppl, taylor, magnitude (the
            n least important), sleb (iterative), last (layers L-n-1 .. L-2), or any registered since.
        n: layers to remove with ``method``; or ``ratio``, a fraction of the layers.
        data: calibration data (a :class:`~depthprune.DataSpec` or source string) for criteria that need it, for
            compensation and for the quality gate.
        scores: a ``scores.json`` (path or dict) from ``depthprune score`` to reuse instead of scoring again.
        token_positions, keep_edges, batch_size: scoring options (see :func:`depthprune.scoring.score`).
        format: ``safetensors`` (a checkpoint folder) or ``gguf`` (one file, from a GGUF source's bytes); default:
            ``gguf`` when ``output`` ends in ``.gguf``.
        surgery: ``auto`` copies the kept tensors at the file level when the plan needs no weights and the source
            is a safetensors folder (or a GGUF written as GGUF), and says so; ``file`` insists, ``memory`` loads.
        compensate: fold a training-free compensation into the weights, calibrated on ``data``: linear, cosine,
            scale or none (see :mod:`depthprune.compensate`).
        max_ppl_ratio: instead of ``n``: remove as many layers, in the criterion's order, as keep the calibration
            perplexity within this times the dense model's (after compensation; see :mod:`depthprune.quality_gate`).
        target_params: instead of ``n``: remove the fewest layers that leave at most this many parameters
            (``"100M"``); with ``max_ppl_ratio`` that count must also pass it.
        criterion_options: the options of further registered criteria, by name (as ``token_positions``).

    Returns:
        The executed (or, with ``dry_run``, proposed) plan.
    """
    from .quality_gate import check_gate_options

    gated = check_gate_options(layers, method, n, ratio, data, compensate, max_ppl_ratio, target_params, dry_run)
    reads_data = compensate != "none" or max_ppl_ratio is not None   # data beyond the criterion's own use
    if (layers is None) == (method is None):
        raise DepthpruneError("give exactly one of --layers (explicit list) and --method (a criterion)")
    if layers is None and not gated and (n is None) == (ratio is None):
        raise DepthpruneError("--method needs exactly one of --n (layers to remove) and --ratio (fraction)")
    if layers is not None and (n is not None or ratio is not None or scores is not None):
        raise DepthpruneError("--n, --ratio and --scores go with --method, not with --layers")
    if layers is not None and ((data is not None and not reads_data) or keep_edges is not None):
        raise DepthpruneError("--data and --keep-edges would be ignored with --layers (the layers are named, nothing "
                              "is scored); drop them")
    entry = None
    if method is not None:
        from .selection import check_method

        entry = check_method(method)
    if entry is not None and data is not None and not reads_data and (scores is not None or not entry.needs_data):
        why = "with --scores (the scores are reused)" if scores is not None else f"with --method {method} (it reads " \
              "no data)"
        raise DepthpruneError(f"--data would be ignored {why}; drop it")
    layer_list = None
    if layers is not None:
        layer_list = parse_layer_list(layers) if isinstance(layers, str) else list(layers)
    if output is None and not dry_run:
        raise DepthpruneError("no --output given; name the folder for the pruned model (or use --dry-run)")
    from .filesurgery import choose_route, open_for_route

    # a criterion that scores the weights, compensation and the quality gate need them in memory
    needs_weights = (entry is not None and entry.scored and scores is None) or reads_data
    route = choose_route(model, output, format, surgery, needs_weights=needs_weights, dtype=dtype)
    if compensate != "none" and route.kind == "gguf":
        raise DepthpruneError(f"--compensate {compensate} changes weights, and a GGUF output copies the source's "
                              "blocks unchanged; write safetensors (an output folder) instead")
    if output is not None and not dry_run:
        if route.writes_file:
            from .filesurgery.output import check_output_file

            check_output_file(output, force)
        else:
            check_output_dir(output, force)   # fail before loading anything
    from .extras import require_all

    gguf_needs = [("gguf", f"writing {output}")] if route.writes_file else []
    require_all(prune_needs(model, method, data, scores, compensate, max_ppl_ratio) + gguf_needs)   # before loading
    scores_data = read_scores(scores) if scores is not None else None
    if entry is not None and entry.needs_data and scores_data is None and data is None:
        raise DepthpruneError(f"method {method!r} needs calibration data; pass --data SPEC (e.g. builtin or a .txt "
                              "file) or reuse a scores.json with --scores")
    allow = {"allow_final_layer": allow_final_layer, "allow_first_layer": allow_first_layer,
             "allow_single_layer": allow_single_layer}
    loaded, adapter = open_for_route(route, model, dtype, device, trust_remote_code)   # weightless for file surgery
    read_metadata(loaded.checkpoint_dir, num_layers=adapter.num_layers)   # a foreign depthprune.json: refuse now
    calibration_ids, spec = _calibration(loaded, data) if reads_data else (None, None)   # read once, used by all
    extra_files = None
    if method is None:
        removed, _ = adapter.check_removal(layer_list, **allow)
        plan = PrunePlan(num_layers=adapter.num_layers, removed_layers=removed, method="manual",
                         settings={"layers": format_layer_list(removed)})
    else:
        gate = _quality_gate(loaded, calibration_ids, max_ppl_ratio, target_params, compensate, batch_size,
                             allow) if gated else None
        options = {"token_positions": token_positions, **criterion_options}
        plan, all_scores = _plan_by_criterion(loaded, adapter, entry, n, ratio, data, scores_data, options,
                                              keep_edges, batch_size, allow, device, calibration_ids, gate)
        if scores is not None and not isinstance(scores, dict):
            plan.settings["scores_file"] = str(scores)
        extra_files = {"scores.json": all_scores} if all_scores else None
    if dry_run:
        return plan
    if route.kind != "memory":
        from .filesurgery import write_route
        from .filesurgery.route import gguf_parent

        route.announce()
        metadata = pruned_metadata(loaded, plan, parent=gguf_parent(route))
        write_route(route, loaded, adapter, plan, output, force, metadata, allow, extra_files=extra_files)
        return plan
    compensation = None
    if compensate != "none":
        from .compensate import compensate as fold_compensation

        parent = read_metadata(loaded.checkpoint_dir, num_layers=plan.num_layers) or {}
        compensation = fold_compensation(loaded.model, plan, compensate, calibration_ids, batch_size=batch_size,
                                         original_layers=parent.get("kept_layers"), data=spec.describe(), **allow)
        plan.settings["compensate"] = compensate
    else:
        apply_plan(loaded.model, plan, **allow)
    save_pruned(loaded, plan, output, force=force, extra_files=extra_files,
                extra_metadata={COMPENSATION_KEY: compensation} if compensation else None)
    return plan


def _quality_gate(loaded: LoadedModel, calibration_ids, max_ppl_ratio, target_params, compensate, batch_size,
                  allow: dict):
    """``gate(select) -> (n, record)`` for :func:`_plan_by_criterion` (see :mod:`depthprune.quality_gate`)."""
    from .quality_gate import parse_param_count, run_gate

    params = parse_param_count(target_params) if target_params is not None else None

    def gate(select):
        return run_gate(loaded.model, select, calibration_ids, max_ppl_ratio, params, compensate, batch_size, **allow)
    return gate


def _calibration(loaded: LoadedModel, data):
    """The calibration blocks ``(samples, seq_len)`` of a data spec for this model, and the spec."""
    from .data import DataSpec, calibration_blocks
    from .loading import require_tokenizer

    spec = DataSpec(source=data) if isinstance(data, str) else data
    return calibration_blocks(spec, require_tokenizer(loaded), model=loaded.model), spec


def read_scores(scores) -> dict:
    import json

    if isinstance(scores, dict):
        return scores
    path = Path(scores)
    if path.is_dir():
        raise DepthpruneError(f"--scores {path} is a folder; give the scores.json file inside it "
                              f"({path / 'scores.json'})")
    if not path.is_file():
        raise DepthpruneError(f"scores file {path} does not exist; give the scores.json written by depthprune score")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DepthpruneError(f"{path} is not valid JSON ({error}); give the scores.json written by depthprune "
                              "score") from None
    if not isinstance(data, dict) or "num_layers" not in data:
        raise DepthpruneError(f"{path} has no num_layers; it is not a scores.json written by depthprune score")
    return data


def check_scores_model(scores: dict, loaded: LoadedModel) -> None:
    """Refuse scores computed for another model: equal layer counts do not make the ranking apply to these weights."""
    scored = scores.get("model")
    if scored is not None and scored != loaded.description:
        raise DepthpruneError(f"the scores were computed for {scored}, not {loaded.description}; score this model "
                              f"(depthprune score {loaded.source} ...), or, if they are the same weights under "
                              f"another name, set \"model\" in the scores file to {loaded.description!r}")


def _plan_by_criterion(loaded, adapter, entry, n, ratio, data, scores_data, options: dict, keep_edges, batch_size,
                       allow: dict, device, input_ids=None, gate=None) -> tuple[PrunePlan, dict | None]:
    """The plan of a criterion for ``n`` (or ``ratio``) layers; ``gate(select)`` chooses the count instead.

    ``input_ids`` are the calibration blocks when the caller already read them.
    """
    from .selection import resolve_count, select_layers

    method = entry.name
    num_layers = adapter.num_layers
    count = resolve_count(num_layers, n, ratio) if gate is None else None
    if scores_data is not None:
        if int(scores_data["num_layers"]) != num_layers:
            raise DepthpruneError(f"the scores are for {scores_data['num_layers']} layers but the model has "
                                  f"{num_layers}; score this model (depthprune score) or drop --scores")
        check_scores_model(scores_data, loaded)
        all_scores = scores_data
    elif not entry.scored:
        all_scores = {"num_layers": num_layers}
    else:
        from .data import DataSpec, calibration_blocks
        from .loading import require_tokenizer
        from .scoring import make_configs, score_model

        if entry.count_option is not None:      # an iterative order must reach the n asked for
            options = {**options, entry.count_option: count}
        configs = make_configs(method, keep_edges=keep_edges, **options)
        spec = DataSpec(source=data) if isinstance(data, str) else data
        if not entry.needs_data:
            input_ids = None
        elif input_ids is None:
            input_ids = calibration_blocks(spec, require_tokenizer(loaded), model=loaded.model)
        all_scores = score_model(loaded.model, configs, input_ids=input_ids, batch_size=batch_size, device=device)
        all_scores = {"model": loaded.description, "data": spec.describe() if input_ids is not None else None,
                      **all_scores}

    def select(k: int) -> tuple[list[int], dict]:
        removed, evidence = select_layers(method, all_scores, k, allow_final_layer=allow["allow_final_layer"],
                                          allow_first_layer=allow["allow_first_layer"])
        return adapter.check_removal(removed, **allow)[0], evidence

    gate_record = None
    if gate is not None:
        count, gate_record = gate(lambda k: select(k)[0])
    removed, evidence = select(count)
    settings = {"method": method, "n": count, "ratio": ratio,
                "data": all_scores.get("data"), "scored_with": all_scores.get("settings", {}).get(method)}
    if gate_record is not None:
        settings["quality_gate"] = gate_record
    plan = PrunePlan(num_layers=num_layers, removed_layers=removed, method=method, scores=evidence,
                     settings=settings)
    return plan, (all_scores if entry.scored else None)
