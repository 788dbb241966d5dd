"""One self-contained HTML page (images embedded) and a markdown twin for one or more run folders.

The report reads what the steps left on disk — ``depthprune.json`` (plan, LaCo merges, healing), ``scores.json``,
``results.json`` (evaluation and speed), ``sweep.json`` and every PNG — through the one schema in
:mod:`depthprune.metadata` (docs/metadata.md), and says for each table which file it came from and which command
produced it (``run.json`` written by ``depthprune run``), so every number has its provenance. It opens with a
one-screen summary (what was cut; quality and speed against the dense model next to the ideal) and shows each table
once: a table a later folder repeats (the scores a prune or sweep copied) points back to its first appearance.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import metadata as schema
from .errors import DepthpruneError

KNOWN_JSON = schema.KNOWN_FILES


@dataclass
class StepArtifacts:
    """What one step folder (or a bare output folder) holds."""

    name: str
    folder: Path
    command: list[str] | None = None
    json: dict = field(default_factory=dict)     # file name -> parsed content
    images: list[Path] = field(default_factory=list)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DepthpruneError(f"cannot read {path}: {error}; re-run the step that wrote it") from None


def _collect_folder(name: str, folder: Path, command: list[str] | None) -> StepArtifacts | None:
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    artifacts = StepArtifacts(name=name, folder=folder, command=command)
    for key in KNOWN_JSON:
        if key in files:
            artifacts.json[key] = _load_json(files[key])
    artifacts.images = sorted(p for n, p in files.items() if n.lower().endswith(".png"))
    if not artifacts.json and not artifacts.images:
        return None
    return artifacts


def collect_run(run_dir: str | Path) -> list[StepArtifacts]:
    """The artifacts of a run folder (its step sub-folders), or of a single output folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DepthpruneError(f"run folder {run_dir} not found; give a folder written by depthprune")
    commands = {}
    if (run_dir / schema.RUN_FILE).is_file():
        for step in _load_json(run_dir / schema.RUN_FILE).get("steps", []):
            commands[step["step"]] = step.get("argv")
    found = []
    own = _collect_folder(run_dir.name, run_dir, None)
    if own is not None:
        found.append(own)
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        artifacts = _collect_folder(sub.name, sub, commands.get(sub.name))
        if artifacts is not None:
            found.append(artifacts)
    if not found:
        raise DepthpruneError(f"{run_dir} holds no depthprune outputs (depthprune.json, scores.json, results.json, "
                              "sweep.json or plots); point the report at a run or output folder")
    return found


# ---------------------------------------------------------------------------------------------------- tables
def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1e5 or (abs(value) < 1e-3 and value != 0):
            return f"{value:.3g}"
        return f"{value:.4g}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, list):
        return _layers(value) if value and all(isinstance(v, int) for v in value) else ", ".join(map(str, value))
    return str(value)


def _layers(values: list[int]) -> str:
    from .plan import format_layer_list

    return format_layer_list(values)


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    source: str


def _plan_table(step: StepArtifacts) -> Table | None:
    meta = step.json.get(schema.METADATA_FILE)
    if not meta:
        return None
    record = schema.ModelRecord.from_metadata(meta)
    rows = [["base model", str(record.base_model)],
            ["layers", f"{record.num_layers_original} -> {record.num_layers}"],
            ["removed (original numbering)", _layers(record.removed_layers) or "none"],
            ["kept", _layers(record.kept_layers)],
            ["method", " then ".join(record.parent_methods + [str(record.method)])]]
    settings = (meta.get("plan") or {}).get("settings") or {}
    for key, value in settings.items():
        if value is not None and not isinstance(value, (dict, list)):
            rows.append([f"setting: {key}", _fmt(value)])
    return Table("Model and plan", ["field", "value"], rows, f"{step.name}/{schema.METADATA_FILE}")


def _collapse_tables(step: StepArtifacts) -> list[Table]:
    meta = step.json.get(schema.METADATA_FILE) or {}
    record = schema.collapse_of(meta)
    if record is None:
        return []
    source = f"{step.name}/{schema.METADATA_FILE}"
    settings = ", ".join(f"{k}={_fmt(v)}" for k, v in record.settings.items() if v is not None)
    rows = [[str(m.into), _layers(m.folded), _fmt(m.similarity), "accepted"] for m in record.merges]
    rows += [[str(m.into), _layers(m.folded), _fmt(m.similarity), "rejected"] for m in record.rejected]
    title = (f"LaCo merges — {record.merge_label}, T={_fmt(record.threshold)}"
             f"{' (searched)' if record.threshold_searched else ''}; {len(record.merges)} accepted, "
             f"{len(record.rejected)} rejected ({settings}; original numbering)")
    return [Table(title, ["into", "folded", "similarity", "verdict"], rows, source)]


def _compensation_tables(step: StepArtifacts) -> list[Table]:
    record = schema.compensation_of(step.json.get(schema.METADATA_FILE) or {})
    if record is None:
        return []
    rows = []
    for gap in record.gaps:
        error = (f"{_fmt(gap['mse_plain'])} -> {_fmt(gap['mse_compensated'])}" if "mse_plain" in gap
                 else f"s = {_fmt(gap['scale'])}" if "scale" in gap else "-")
        rows.append([_layers(gap["removed_layers"]), str(gap.get("kept_before")), str(gap.get("fitted_on") or "-"),
                     error, str(len(gap.get("folded_into") or []))])
    quality = record.calibration_ppl or {}
    if quality:
        rows.append([f"calibration perplexity (in-sample, {quality.get('tokens', record.calibration_tokens)} tokens)", "", "dense " + _fmt(quality.get("dense")),
                     f"pruned {_fmt(quality.get('pruned'))} -> compensated {_fmt(quality.get('compensated'))}", ""])
    title = (f"Compensation — {record.method} ({', '.join(f'{k}={_fmt(v)}' for k, v in record.settings.items())}; "
             f"{record.calibration_tokens or '?'} calibration tokens; original numbering)")
    return [Table(title, ["removed", "kept before", "fitted on", "stream error plain -> compensated (MSE)",
                          "tensors changed"], rows, f"{step.name}/{schema.METADATA_FILE}")]


def _healing_tables(step: StepArtifacts) -> list[Table]:
    meta = step.json.get(schema.METADATA_FILE) or {}
    source = f"{step.name}/{schema.METADATA_FILE}"
    tables = []
    for record in schema.healings_of(meta):
        rows = [["method", record.method + (f" (ran as {record.method_run})" if record.method_run
                                            and record.method_run != record.method else "")],
                ["preset", str(record.preset or "none")],
                ["data", ", ".join(f"{k}={_fmt(v)}" for k, v in record.data.items() if v is not None)],
                ["optimizer steps", _fmt(record.steps)],
                ["tokens seen", f"{record.tokens_seen:,}" if isinstance(record.tokens_seen, int) else "?"],
                ["held-out loss before -> after",
                 f"{_fmt(record.initial_eval_loss)} -> {_fmt(record.final_eval_loss)}"],
                ["final training loss", _fmt(record.final_train_loss)]]
        if record.teacher:
            rows.append(["teacher", record.teacher])
        tables.append(Table(f"Healing — {record.method}" + (f", preset {record.preset}" if record.preset else ""),
                            ["field", "value"], rows, source))
        if record.eval_losses or record.train_losses:
            curve = [[str(int(s)), _fmt(float(v))] for s, v in record.eval_losses]
            tables.append(Table("Healing loss curve (held-out loss by step; every step in depthprune.json)",
                                ["step", "held-out loss"], curve or [["-", "-"]], source))
    return tables


def _scores_tables(step: StepArtifacts, top: int = 8) -> list[Table]:
    """Each registered criterion in the scores: the layers it would remove first, and a block criterion's best block
    for every size."""
    from .scoring.ranking import criteria_in, least_important_first

    scores = step.json.get(schema.SCORES_FILE)
    if not scores or not isinstance(scores.get("num_layers"), int):
        return []
    source = f"{step.name}/{schema.SCORES_FILE}"
    tables = []
    entries = criteria_in(scores)
    rows = [[entry.name + (" (removal order)" if entry.selection == "order" else "")]
            + [str(i) for i in least_important_first(entry, scores)[:top]]
            for entry in entries if entry.selection != "block"]      # a block criterion has a table of its own
    if rows:
        header = ["criterion"] + [f"#{i + 1}" for i in range(min(top, scores["num_layers"]))]
        rows = [row + [""] * (len(header) - len(row)) for row in rows]
        tables.append(Table("Least important layers by each criterion (lowest score first)", header, rows, source))
    for entry in entries:
        table = scores[entry.name]
        if entry.selection != "block" or not isinstance(table, dict) or not table:
            continue
        rows = []
        for n, values in sorted(table.items(), key=lambda kv: int(kv[0]))[:16]:
            if values:
                best = min(range(len(values)), key=lambda i: values[i])
                rows.append([n, f"{best}-{best + int(n) - 1}", _fmt(values[best])])
        tables.append(Table(f"Best contiguous block per size n by {entry.name} (n <= 16, all n in scores.json)",
                            ["n", "layers", "score"], rows, source))
    return tables


def _flatten(prefix: str, value, out: list) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, sub in enumerate(value):
            _flatten(f"{prefix}[{i}]", sub, out)
    else:
        out.append([prefix, _fmt(value)])


def _results_label(step: StepArtifacts) -> str:
    results = step.json[schema.RESULTS_FILE]
    evaluated = results.get(schema.EVALUATED_KEY) or {}
    if evaluated.get("dense"):
        return f"{step.name} (dense)"
    if evaluated.get("num_layers") is not None:
        return f"{step.name} ({evaluated['num_layers']} layers)"
    model = Path(str(results.get("model") or "")).name   # whole: headers wrap instead of being cut short
    return f"{step.name}" + (f" ({model})" if model else "")


def perplexity_label(name: str, entry: dict) -> str:
    """``wikitext2 (32 windows of 256 tokens, 8,160 predicted)``: a perplexity is only comparable to another with the
    same windows, so every one names them."""
    count = f"{entry['windows']} " if entry.get("windows") is not None else ""
    parts = [f"{count}windows of {entry.get('seq_len', '?')} tokens"]
    if isinstance(entry.get("tokens"), int):
        parts.append(f"{entry['tokens']:,} predicted")
    return f"{name} ({', '.join(parts)})"


def _perplexities(results: dict) -> dict[str, float]:
    """``{"wikitext2 (32 windows of 256 tokens, ...)": ppl}`` for one results.json (one or several window lengths)."""
    values = {}
    for name, entry in (results.get("perplexity") or {}).items():
        if not isinstance(entry, dict):
            continue
        # one window length: {"ppl", "seq_len", ...}; several: {"128": {...}, "2048": {...}}
        per_length = [entry] if "ppl" in entry else [v for v in entry.values() if isinstance(v, dict)]
        for sub in per_length:
            values[perplexity_label(name, sub)] = sub.get("ppl")
    return values


def _ratio(value, dense) -> str:
    """``value / dense`` as ``1.31×``; a dash where either is missing."""
    if not isinstance(value, (int, float)) or not isinstance(dense, (int, float)) or not dense:
        return "—"
    return f"{_fmt(value / dense)}×"


def _accuracies(results: dict) -> dict[str, float]:
    values = {}
    for task, entry in (results.get("tasks") or {}).items():
        if isinstance(entry, dict):
            for metric in ("acc", "acc_norm"):
                if entry.get(metric) is not None:
                    values[f"{task} {metric} (n={entry.get('n', '?')})"] = entry[metric]
    return values


def _evaluation_tables(steps: list[StepArtifacts]) -> list[Table]:
    evals = [s for s in steps if schema.RESULTS_FILE in s.json]
    if not evals:
        return []
    tables = []
    dense, _ = _dense_and_final(evals)
    # every cut model's column is followed by its ratio to the dense model's figure, when the run has one
    columns: list[tuple[StepArtifacts, bool]] = []
    for step in evals:
        columns.append((step, False))
        if dense is not None and step is not dense:
            columns.append((step, True))
    labels = [f"{_results_label(s)} vs dense" if is_ratio else _results_label(s) for s, is_ratio in columns]
    sources = ", ".join(f"{s.name}/{schema.RESULTS_FILE}" for s in evals)
    for title, extract in (("Perplexity (token-level, lower is better)", _perplexities),
                           ("Zero-shot accuracy (lm-evaluation-harness scoring)", _accuracies)):
        values = {s.name: extract(s.json[schema.RESULTS_FILE]) for s in evals}
        keys = list(dict.fromkeys(k for s in evals for k in values[s.name]))
        rows = []
        for key in keys:
            row = [key]
            for step, is_ratio in columns:
                value = values[step.name].get(key)
                row.append(_ratio(value, values[dense.name].get(key)) if is_ratio else
                           ("—" if value is None else _fmt(value)))
            rows.append(row)
        if rows:
            tables.append(Table(title, ["dataset" if "Perplexity" in title else "task"] + labels, rows, sources))
    for step in evals:
        speed = step.json[schema.RESULTS_FILE].get("speed")
        if speed:
            tables += _speed_tables(speed, _results_label(step), f"{step.name}/{schema.RESULTS_FILE}")
    return tables


def _with_spread(entry: dict, key: str) -> str:
    """``median (min-max)`` when the file has the spread (written since the speed check interleaves runs)."""
    text = _fmt(entry.get(key))
    if f"{key}_min" in entry and f"{key}_max" in entry:
        text += f" ({_fmt(entry[f'{key}_min'])}–{_fmt(entry[f'{key}_max'])})"
    return text


def _speed_verdicts(speed: dict) -> dict:
    """``{batch: {kind: verdict}}``: the file's own verdicts, or (older files) the same check run on its ratios."""
    from .evaluate.speed import check_plausible, ideal_speedup

    if speed.get("plausibility"):
        return {str(b): kinds for b, kinds in speed["plausibility"].items()}
    ideal = speed.get("ideal") or {}
    if "weights_read" not in ideal:
        return {}
    return {str(b): {kind: check_plausible(r[kind], ideal_speedup(ideal, kind)) for kind in ("prefill", "decode")
                     if kind in r} for b, r in (speed.get("ratios") or {}).items()}


def _speed_tables(speed: dict, label: str, source: str) -> list[Table]:
    """Throughput per batch size (with the base model and ratios when compared), then size and ideal speed-ups."""
    model, base = speed.get("model"), speed.get("base")
    if not isinstance(model, dict) or not isinstance(model.get("batches"), dict):
        rows: list = []   # an unknown layout: show every number rather than none
        _flatten("", speed, rows)
        return [Table(f"Speed and size — {label}", ["measure", "value"], rows, source)]
    verdicts = _speed_verdicts(speed)
    header = ["batch", "prefill tok/s", "decode tok/s"]
    if base:
        header += ["base prefill tok/s", "base decode tok/s", "prefill × (ideal)", "decode × (ideal)"]
    rows = []
    for batch, entry in model["batches"].items():
        row = [str(batch), _with_spread(entry, "prefill_tokens_per_s"), _with_spread(entry, "decode_tokens_per_s")]
        if base:
            base_entry = base.get("batches", {}).get(batch, {})
            ratio = speed.get("ratios", {}).get(str(batch), {})
            row += [_with_spread(base_entry, "prefill_tokens_per_s"), _with_spread(base_entry, "decode_tokens_per_s")]
            for kind in ("prefill", "decode"):
                verdict = verdicts.get(str(batch), {}).get(kind, {})
                cell = _with_spread(ratio, kind)
                if "ideal" in verdict:
                    cell += f" ({_fmt(verdict['ideal'])})"
                if verdict and not verdict.get("plausible", True):
                    cell += " ⚠ noise"
                row.append(cell)
        rows.append(row)
    settings = speed.get("settings", {})
    title = (f"Speed — {label} ({settings.get('prompt_len', '?')}-token prompts, {settings.get('new_tokens', '?')} "
             f"decode steps, {settings.get('statistic', '')} (min–max) of {settings.get('repeats', '?')}"
             f"{', ' + settings['order'] if settings.get('order') else ''})")
    tables = [Table(title, header, rows, source)]
    size_rows = []
    for key, name in (("num_layers", "layers"), ("parameters", "parameters"),
                      ("weights_read_per_token", "weights read per token"), ("checkpoint_bytes", "checkpoint bytes")):
        if key in model:
            size_rows.append([name, f"{model[key]:,}"] + ([f"{base[key]:,}"] if base and key in base else []))
    for key, value in (speed.get("ideal") or {}).items():
        size_rows.append([f"ideal speed-up ({key.replace('_', ' ')})", _fmt(value)] + ([""] if base else []))
    if size_rows:
        tables.append(Table(f"Size — {label}", ["measure", "model"] + (["base"] if base else []), size_rows, source))
    return tables


def noise_warnings(steps: list[StepArtifacts]) -> list[str]:
    """One line per implausible speed ratio in the run, with the advice to re-run on an idle machine."""
    from .evaluate.speed import NOISE_ADVICE

    lines = []
    for step in steps:
        speed = (step.json.get(schema.RESULTS_FILE) or {}).get("speed") or {}
        for batch, kinds in _speed_verdicts(speed).items():
            for kind, verdict in kinds.items():
                if not verdict.get("plausible", True):
                    lines.append(f"{step.name}, batch {batch} {kind}: {verdict['reason']}; {NOISE_ADVICE}")
    return lines


def _sweep_tables(step: StepArtifacts) -> list[Table]:
    sweep = step.json.get(schema.SWEEP_FILE)
    if not sweep:
        return []
    points = sweep.get("points") or []
    if not points:
        return []
    from .sweep import metric_title, point_metrics

    metric_keys = point_metrics(points[0])
    dense = {k: next((p.get(k) for p in points if p.get("n") == 0 and p.get(k) is not None), None)
             for k in metric_keys}
    header = ["method", "n", "removed"]
    for key in metric_keys:   # the human title (it names the windows), then the ratio to the dense point
        header += [metric_title(key, sweep), "vs dense"]
    rows = []
    for p in points:
        row = [str(p.get("method")), str(p.get("n")), _fmt(p.get("removed_layers", []))]
        for key in metric_keys:
            row += [_fmt(p.get(key)), _ratio(p.get(key), dense[key])]
        rows.append(row)
    return [Table("Sweep: quality against layers removed", header, rows, f"{step.name}/{schema.SWEEP_FILE}")]


# ---------------------------------------------------------------------------------------------------- summary
def _dense_and_final(steps: list[StepArtifacts]) -> tuple[StepArtifacts | None, StepArtifacts | None]:
    """The evaluation of the dense model and the last evaluation of a cut model."""
    dense, final = None, None
    for step in steps:
        results = step.json.get(schema.RESULTS_FILE)
        if not results:
            continue
        evaluated = results.get(schema.EVALUATED_KEY)
        if evaluated is None:   # written before results.json named the model: a depthprune folder is a cut model
            is_dense = not (Path(str(results.get("model", ""))) / schema.METADATA_FILE).is_file()
        else:
            is_dense = bool(evaluated.get("dense"))
        if is_dense and dense is None:
            dense = step
        elif not is_dense:
            final = step
    return dense, final


def summary_table(steps: list[StepArtifacts]) -> Table | None:
    """What was cut, then quality and speed against the dense model next to the ideal: the report's first screen."""
    models = [s for s in steps if s.json.get(schema.METADATA_FILE)]
    dense, final = _dense_and_final(steps)
    rows = []
    sources = []
    if models:
        last = models[-1]
        meta = last.json[schema.METADATA_FILE]
        record = schema.ModelRecord.from_metadata(meta)
        methods = record.parent_methods + [str(record.method)]
        removed = len(record.removed_layers)
        ideal = f"ideal {_fmt(record.num_layers_original / record.num_layers)}× (layers)" \
            if record.num_layers and record.num_layers_original else ""
        rows.append(["cut", f"{removed} of {record.num_layers_original} layers "
                            f"({_layers(record.removed_layers) or 'none'}) by {' then '.join(methods)}; "
                            f"{record.num_layers} left", ideal])
        collapse = schema.collapse_of(meta)
        if collapse is not None:
            rows.append(["LaCo", f"{len(collapse.merges)} merges accepted at T={_fmt(collapse.threshold)} "
                                 f"({collapse.merge_label})", ""])
        compensation = schema.compensation_of(meta)
        if compensation is not None:
            quality = compensation.calibration_ppl or {}
            rows.append(["compensated", f"{compensation.method}, folded into the weights, "
                                        f"{compensation.calibration_tokens} calibration tokens",
                         f"calibration perplexity pruned {_fmt(quality.get('pruned'))} -> compensated "
                         f"{_fmt(quality.get('compensated'))} (dense {_fmt(quality.get('dense'))}; in-sample)"
                         if quality else ""])
        for healing in schema.healings_of(meta):
            tokens = f"{healing.tokens_seen:,}" if isinstance(healing.tokens_seen, int) else "?"
            preset = f", preset {healing.preset}" if healing.preset else ""
            rows.append(["healed", f"{healing.method}{preset}: {healing.steps} steps, {tokens} tokens",
                         f"held-out loss {_fmt(healing.initial_eval_loss)} -> {_fmt(healing.final_eval_loss)}"])
        sources.append(f"{last.name}/{schema.METADATA_FILE}")
    if dense is not None and final is not None:
        dense_results, final_results = dense.json[schema.RESULTS_FILE], final.json[schema.RESULTS_FILE]
        for extract in (_perplexities, _accuracies):
            before, after = extract(dense_results), extract(final_results)
            for key in before:
                if key in after and before[key] and after[key] is not None:
                    rows.append([key, f"{_fmt(before[key])} dense -> {_fmt(after[key])}",
                                 f"{_fmt(after[key] / before[key])}× the dense value"])
        sources += [f"{dense.name}/{schema.RESULTS_FILE}", f"{final.name}/{schema.RESULTS_FILE}"]
    speed_step = final if final is not None and (final.json[schema.RESULTS_FILE].get("speed") or {}).get("base") \
        else None
    if speed_step is not None:
        speed = speed_step.json[schema.RESULTS_FILE]["speed"]
        verdicts = _speed_verdicts(speed)
        for batch, ratio in (speed.get("ratios") or {}).items():
            for kind in ("decode", "prefill"):
                verdict = verdicts.get(str(batch), {}).get(kind, {})
                flag = "" if verdict.get("plausible", True) else " — ⚠ measurement noise, re-run on an idle machine"
                rows.append([f"{kind} speed, batch {batch}", f"{_with_spread(ratio, kind)}× the dense model",
                             f"ideal {_fmt(verdict.get('ideal'))}×{flag}"])
        if speed_step is not final:
            sources.append(f"{speed_step.name}/{schema.RESULTS_FILE}")
    if not rows:
        return None
    return Table("Summary", ["", "measured", "against"], rows, ", ".join(dict.fromkeys(sources)))


# ---------------------------------------------------------------------------------------------------- render
def _section_tables(step: StepArtifacts) -> list[Table]:
    tables = []
    plan = _plan_table(step)
    if plan:
        tables.append(plan)
    tables += _collapse_tables(step)
    tables += _compensation_tables(step)
    tables += _healing_tables(step)
    tables += _scores_tables(step)
    tables += _sweep_tables(step)
    return tables


def _html_table(table: Table, command: list[str] | None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table.rows)
    provenance = f"source: <code>{html.escape(table.source)}</code>"
    if command:
        provenance += f" · command: <code>{html.escape(' '.join(command))}</code>"
    return (f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f"</table><p class='prov'>{provenance}</p>")


def _md_table(table: Table, command: list[str] | None) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in table.rows]
    provenance = f"source: `{table.source}`" + (f" · command: `{' '.join(command)}`" if command else "")
    return "\n".join(lines + ["", provenance, ""])


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;background:#fff}h1{border-bottom:3px solid #3b6fd4;padding-bottom:.3em}h2{margin-top:2em;color:#3b6fd4}
table{border-collapse:collapse;margin:.5em 0;font-size:14px}th,td{border:1px solid #d5dae3;padding:4px 10px;
text-align:left}th{background:#eef2fa}tr:nth-child(even) td{background:#f8f9fc}img{max-width:100%;border:1px solid
#e3e6ec;margin:.5em 0}figure{margin:1em 0}figcaption{font-size:13px;color:#555}.prov{font-size:12px;color:#666}
code{background:#f3f4f7;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere;white-space:pre-wrap}
th{overflow-wrap:break-word}.warn{background:#fff4e0;border-left:4px solid #e09b2d;
padding:.4em .8em}.summary table{font-size:15px}
"""


class _Page:
    """The HTML and markdown being written side by side; each table's content is shown once."""

    def __init__(self):
        self.html: list[str] = []
        self.md: list[str] = []
        self.shown: dict[str, str] = {}      # table content -> where it was first shown

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += [f"{'#' * level} {text}", ""]

    def note(self, text: str, css: str = "prov") -> None:
        self.html.append(f"<p class='{css}'>{html.escape(text)}</p>")
        self.md += [("**Warning:** " if css == "warn" else "") + text, ""]

    def table(self, table: Table, command: list[str] | None) -> None:
        content = json.dumps([table.title, table.header, table.rows])
        if content in self.shown:
            short = table.title.split(" — ")[0].split(" (")[0]
            self.note(f"{short}: the same as in {self.shown[content]}, shown above ({table.source})")
            return
        self.shown[content] = table.source
        self.html.append(_html_table(table, command))
        self.md.append(_md_table(table, command))


def build_report(run_dirs: list[str | Path], title: str | None = None) -> tuple[str, str, list[Path]]:
    """Render the report; returns ``(html, markdown, images)`` where markdown links images by relative path."""
    runs = [(Path(d), collect_run(d)) for d in run_dirs]
    title = title or "depthprune report — " + ", ".join(d.name for d, _ in runs)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = _Page()
    page.html.append(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                     f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
                     f"<p class='prov'>generated {created} by depthprune</p>")
    page.md += [f"# {title}", "", f"generated {created} by depthprune", ""]
    images: list[Path] = []
    for run_dir, steps in runs:
        page.heading(f"Run {run_dir}")
        summary = summary_table(steps)
        if summary is not None:
            page.html.append("<div class='summary'>")
            page.table(summary, None)
            page.html.append("</div>")
        for warning in noise_warnings(steps):
            page.note(warning, "warn")
        recipe = run_dir / "recipe.yaml"
        if recipe.is_file():
            page.html.append(f"<details><summary>recipe.yaml</summary><pre>{html.escape(recipe.read_text())}"
                             "</pre></details>")
            page.md += ["<details><summary>recipe.yaml</summary>", "", "```yaml", recipe.read_text(), "```",
                        "</details>", ""]
        evaluation = _evaluation_tables(steps)
        if evaluation:
            page.heading("Evaluation against the dense model")
            for table in evaluation:
                page.table(table, None)
        for step in steps:
            page.heading(step.name)
            if step.command:
                page.html.append(f"<p class='prov'>command: <code>{html.escape(' '.join(step.command))}</code></p>")
                page.md += [f"command: `{' '.join(step.command)}`", ""]
            if schema.RESULTS_FILE in step.json:
                page.note(f"{step.name}/{schema.RESULTS_FILE}: in the summary and under "
                          "'Evaluation against the dense model' above")
            for table in _section_tables(step):
                page.table(table, step.command)
            for image in step.images:
                encoded = base64.b64encode(image.read_bytes()).decode()
                caption = f"{step.name}/{image.name}"
                page.html.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>"
                                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                images.append(image)
                page.md += [f"![{caption}]({{IMG:{len(images) - 1}}})", ""]
    # Lets a headless browser (and our test) confirm that every embedded image decoded.
    page.html.append("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset"
                     ".imagesTotal=i.length;document.body.dataset.imagesOk=i.filter(x=>x.complete&&x.naturalWidth>0)"
                     ".length;});</script></body></html>")
    return "".join(page.html), "\n".join(page.md), images


def write_report(run_dirs: list[str | Path], output: str | Path, force: bool = False,
                 title: str | None = None) -> Path:
    """Write ``output`` (.html, images embedded) and its markdown twin (``.md`` beside it, images linked).

    Args:
        run_dirs: run folders (``depthprune run``) or single output folders.
        output: the HTML file to write; refused if it exists unless ``force``.
    """
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise DepthpruneError(f"report output {output} should end in .html (a markdown twin .md is written beside it)")
    markdown_path = output.with_suffix(".md")
    for path in (output, markdown_path):
        if path.exists() and not force:
            raise DepthpruneError(f"{path} already exists; choose another --output or pass --force")
    page, markdown, images = build_report(run_dirs, title)
    output.parent.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        relative = os.path.relpath(image, output.parent)
        markdown = markdown.replace(f"{{IMG:{index}}}", relative)
    for path, text in ((output, page), (markdown_path, markdown)):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return output
