"""One self-contained HTML page (images embedded) and a markdown twin for one or more run folders.

The report reads what the steps left on disk — ``depthprune.json`` (plans, merges, healing), ``scores.json``,
``results.json`` (evaluation), ``sweep.json`` and every PNG — and says for each table which file it came from and
which command produced it (``run.json`` written by ``depthprune run``), so every number has its provenance.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import DepthpruneError

# Files a step may leave, in the order the report shows them.
KNOWN_JSON = ("depthprune.json", "scores.json", "results.json", "sweep.json")


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
    if (run_dir / "run.json").is_file():
        for step in _load_json(run_dir / "run.json").get("steps", []):
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
    meta = step.json.get("depthprune.json")
    if not meta:
        return None
    rows = []
    for key in ("base_model", "method", "num_layers_original", "num_layers", "removed_layers", "kept_layers",
                "merge_mode", "threshold", "tokens_seen", "final_train_loss", "final_eval_loss"):
        if key in meta:
            rows.append([key, _fmt(meta[key])])
    for merge in meta.get("merges", []) or []:
        if isinstance(merge, dict):
            rows.append(["merge", ", ".join(f"{k}={_fmt(v)}" for k, v in merge.items())])
    for key in ("heal", "recipe"):
        if isinstance(meta.get(key), dict):
            rows.append([key, ", ".join(f"{k}={_fmt(v)}" for k, v in meta[key].items()
                                        if not isinstance(v, (dict, list)))])
    return Table("Model and plan", ["field", "value"], rows, f"{step.name}/depthprune.json")


def _scores_tables(step: StepArtifacts, top: int = 8) -> list[Table]:
    scores = step.json.get("scores.json")
    if not scores:
        return []
    tables = []
    num_layers = scores.get("num_layers")
    per_layer = {k: v for k, v in scores.items()
                 if isinstance(v, list) and num_layers and len(v) == num_layers and all(
                     isinstance(x, (int, float)) or x is None for x in v)}
    if per_layer:
        header = ["criterion"] + [f"#{i + 1}" for i in range(min(top, num_layers))]
        rows = []
        for name, values in per_layer.items():
            ranked = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i])
            rows.append([name] + [str(i) for i in ranked[:top]])
        tables.append(Table("Least important layers by each criterion (lowest score first)", header, rows,
                            f"{step.name}/scores.json"))
    angular = scores.get("angular")
    if isinstance(angular, dict) and angular:
        rows = []
        for n, distances in sorted(angular.items(), key=lambda kv: int(kv[0]))[:16]:
            if distances:
                best = min(range(len(distances)), key=lambda i: distances[i])
                rows.append([n, f"{best}-{best + int(n) - 1}", _fmt(distances[best])])
        tables.append(Table("Best contiguous block per size n (angular distance; n <= 16, all n in scores.json)",
                            ["n", "layers", "d"], rows,
                            f"{step.name}/scores.json"))
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
    results = step.json["results.json"]
    model = Path(str(results.get("model") or "")).name
    if len(model) > 32:
        model = model[:30] + "…"
    return f"{step.name}" + (f" ({model})" if model else "")


def _evaluation_tables(steps: list[StepArtifacts]) -> list[Table]:
    evals = [s for s in steps if "results.json" in s.json]
    if not evals:
        return []
    tables = []
    labels = [_results_label(s) for s in evals]
    sources = ", ".join(f"{s.name}/results.json" for s in evals)
    ppl_rows: dict[str, list[str]] = {}
    task_rows: dict[str, list[str]] = {}
    for column, step in enumerate(evals):
        results = step.json["results.json"]
        for name, entry in (results.get("perplexity") or {}).items():
            if not isinstance(entry, dict):
                continue
            # one window length: {"ppl", "seq_len", ...}; several: {"128": {...}, "2048": {...}}
            per_length = [entry] if "ppl" in entry else [v for v in entry.values() if isinstance(v, dict)]
            for sub in per_length:
                key = f"{name} (seq_len {sub.get('seq_len', '?')})"
                ppl_rows.setdefault(key, ["—"] * len(evals))[column] = _fmt(sub.get("ppl"))
        for task, entry in (results.get("tasks") or {}).items():
            if isinstance(entry, dict):
                for metric in ("acc", "acc_norm"):
                    if metric in entry and entry[metric] is not None:
                        key = f"{task} {metric} (n={entry.get('n', '?')})"
                        task_rows.setdefault(key, ["—"] * len(evals))[column] = _fmt(entry[metric])
    if ppl_rows:
        tables.append(Table("Perplexity (token-level, lower is better)", ["dataset"] + labels,
                            [[k] + v for k, v in ppl_rows.items()], sources))
    if task_rows:
        tables.append(Table("Zero-shot accuracy (lm-evaluation-harness scoring)", ["task"] + labels,
                            [[k] + v for k, v in task_rows.items()], sources))
    for step in evals:
        speed = step.json["results.json"].get("speed")
        if speed:
            tables += _speed_tables(speed, _results_label(step), f"{step.name}/results.json")
    return tables


def _speed_tables(speed: dict, label: str, source: str) -> list[Table]:
    """Throughput per batch size (with the base model and ratios when compared), then size and ideal speed-ups."""
    model, base = speed.get("model"), speed.get("base")
    if not isinstance(model, dict) or not isinstance(model.get("batches"), dict):
        rows: list = []   # an unknown layout: show every number rather than none
        _flatten("", speed, rows)
        return [Table(f"Speed and size — {label}", ["measure", "value"], rows, source)]
    header = ["batch", "prefill tok/s", "decode tok/s"]
    if base:
        header += ["base prefill tok/s", "base decode tok/s", "prefill ×", "decode ×"]
    rows = []
    for batch, entry in model["batches"].items():
        row = [str(batch), _fmt(entry.get("prefill_tokens_per_s")), _fmt(entry.get("decode_tokens_per_s"))]
        if base:
            base_entry = base.get("batches", {}).get(batch, {})
            ratio = speed.get("ratios", {}).get(str(batch), {})
            row += [_fmt(base_entry.get("prefill_tokens_per_s")), _fmt(base_entry.get("decode_tokens_per_s")),
                    _fmt(ratio.get("prefill")), _fmt(ratio.get("decode"))]
        rows.append(row)
    settings = speed.get("settings", {})
    title = (f"Speed — {label} ({settings.get('prompt_len', '?')}-token prompts, {settings.get('new_tokens', '?')} "
             f"decode steps, {settings.get('statistic', '')} of {settings.get('repeats', '?')})")
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


def _sweep_tables(step: StepArtifacts) -> list[Table]:
    sweep = step.json.get("sweep.json")
    if not sweep:
        return []
    points = sweep.get("points") or []
    if not points:
        return []
    metric_keys = [k for k in points[0] if k not in ("method", "n", "removed_layers", "kept_layers")]
    rows = [[str(p.get("method")), str(p.get("n")), _fmt(p.get("removed_layers", []))]
            + [_fmt(p.get(k)) for k in metric_keys] for p in points]
    return [Table("Sweep: quality against layers removed", ["method", "n", "removed"] + metric_keys, rows,
                  f"{step.name}/sweep.json")]


# ---------------------------------------------------------------------------------------------------- render
def _section_tables(step: StepArtifacts) -> list[Table]:
    tables = []
    plan = _plan_table(step)
    if plan:
        tables.append(plan)
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
code{background:#f3f4f7;padding:1px 4px;border-radius:3px}
"""


def build_report(run_dirs: list[str | Path], title: str | None = None) -> tuple[str, str, list[Path]]:
    """Render the report; returns ``(html, markdown, images)`` where markdown links images by relative path."""
    runs = [(Path(d), collect_run(d)) for d in run_dirs]
    title = title or "depthprune report — " + ", ".join(d.name for d, _ in runs)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    html_parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                  f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
                  f"<p class='prov'>generated {created} by depthprune</p>"]
    md_parts = [f"# {title}", "", f"generated {created} by depthprune", ""]
    images: list[Path] = []
    for run_dir, steps in runs:
        html_parts.append(f"<h2>Run <code>{html.escape(str(run_dir))}</code></h2>")
        md_parts += [f"## Run `{run_dir}`", ""]
        recipe = run_dir / "recipe.yaml"
        if recipe.is_file():
            html_parts.append(f"<details><summary>recipe.yaml</summary><pre>{html.escape(recipe.read_text())}"
                              "</pre></details>")
            md_parts += ["<details><summary>recipe.yaml</summary>", "", "```yaml", recipe.read_text(), "```",
                         "</details>", ""]
        evaluation = _evaluation_tables(steps)
        if evaluation:
            html_parts.append("<h2>Evaluation against the dense model</h2>")
            md_parts += ["## Evaluation against the dense model", ""]
            for table in evaluation:
                html_parts.append(_html_table(table, None))
                md_parts.append(_md_table(table, None))
        for step in steps:
            html_parts.append(f"<h2>{html.escape(step.name)}</h2>")
            md_parts += [f"## {step.name}", ""]
            if step.command:
                html_parts.append(f"<p class='prov'>command: <code>{html.escape(' '.join(step.command))}</code></p>")
                md_parts += [f"command: `{' '.join(step.command)}`", ""]
            for table in _section_tables(step):
                html_parts.append(_html_table(table, step.command))
                md_parts.append(_md_table(table, step.command))
            for image in step.images:
                encoded = base64.b64encode(image.read_bytes()).decode()
                caption = f"{step.name}/{image.name}"
                html_parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>"
                                  f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                images.append(image)
                md_parts += [f"![{caption}]({{IMG:{len(images) - 1}}})", ""]
    # Lets a headless browser (and our test) confirm that every embedded image decoded.
    html_parts.append("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset"
                      ".imagesTotal=i.length;document.body.dataset.imagesOk=i.filter(x=>x.complete&&x.naturalWidth>0)"
                      ".length;});</script></body></html>")
    return "".join(html_parts), "\n".join(md_parts), images


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
