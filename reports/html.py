"""``report.html``: one self-contained page (inline SVG charts, no external files or scripts).

Sections: the acceptance criteria and their verdict (``acceptance.json``, where the suite
has criteria), summary table with deltas against each variant's baseline (green = better, red =
worse, by each metric's direction) and, beside decode ms/token, the memory-bandwidth floor of a
decode step and the share of it reached, multiple-choice accuracy against chance (each such
task with its interval), Pareto charts (quality vs decode latency, quality vs
size; any backend and weight format alike), generate tokens/s vs batch (where the suite swept
``latency.generate_batches``), per-variant audit (did it compress: quantized counts, sparsity,
structure, parity), warnings (high CV, fallback providers, failed or skipped cells) and the
environment. Every string goes through Jinja2's autoescaping.
"""

from __future__ import annotations

import io
from pathlib import Path

from slimbench import atomic
from slimbench.errors import UsageError
from slimbench.reports.table import (
    baselines_for,
    load_cells,
    rows_from_cell,
    summary_frame,
    to_frame,
)
from slimbench.schema import CellResult, Row

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>slimbench report: {{ name }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
.better{background:#d8f5d8}.worse{background:#f8d7d7}.warn{color:#a35a00}
.fail{color:#b00020;font-weight:bold}
figure{display:inline-block;margin:0 2em 1em 0}
</style></head><body>
<h1>slimbench report: {{ name }}</h1>
<p>{{ cells|length }} cells, {{ ok }} ok. Deltas against: {% for b in baseline_names %}
<b>{{ b }}</b>{% if not loop.last %}, {% endif %}{% else %}—{% endfor %}.</p>
{% if acceptance %}<h2>Acceptance</h2>
<p id="acceptance-verdict" class="{{ 'fail' if acceptance.verdict == 'fail' else '' }}">
{{ acceptance.line }}</p>
<table id="acceptance"><thead><tr><th>variant</th><th>baseline</th><th>device</th>
<th>metric</th><th>criterion</th><th>status</th><th>value [95% CI]</th><th>why</th></tr>
</thead><tbody>{% for c in acceptance.criteria %}<tr><td>{{ c.variant }}</td>
<td>{{ c.baseline }}</td><td>{{ c.device }}</td><td>{{ c.metric }}</td>
<td>{{ c.criterion }} {{ c.threshold }}</td><td class="{{ c.cls }}">{{ c.status }}</td>
<td>{{ c.shown }}</td><td style="text-align:left">{{ c.why }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
<h2>Summary</h2>
<div style="overflow-x:auto"><table id="summary"><thead><tr><th>variant</th><th>backend</th>
<th>device</th>
{% for m in columns %}<th>{{ m }}</th>{% endfor %}</tr></thead><tbody>
{% for row in summary %}<tr><td>{{ row.variant }}</td><td>{{ row.backend }}</td>
<td>{{ row.device }}</td>{% for c in row.cells %}<td class="{{ c.cls }}">{{ c.text }}</td>
{% endfor %}</tr>{% endfor %}</tbody></table></div>
{% if floor_note %}<p id="floor-note"><small>{{ floor_note }}</small></p>{% endif %}
{% if choices %}<h2>Multiple choice</h2>
<table id="choices"><thead><tr><th>variant</th><th>backend</th><th>device</th><th>task</th>
<th>n</th><th>accuracy [95% CI]</th><th>chance</th><th>above chance</th>
<th>normalized accuracy [95% CI]</th></tr></thead><tbody>{% for c in choices %}<tr>
<td>{{ c.variant }}</td><td>{{ c.backend }}</td><td>{{ c.device }}</td><td>{{ c.task }}</td>
<td>{{ c.n }}</td><td>{{ c.acc }}</td><td>{{ c.chance }}</td>
<td class="{{ c.cls }}">{{ c.above }}</td><td>{{ c.acc_norm }}</td></tr>{% endfor %}
</tbody></table><p><small>Each choice scored by its summed log-likelihood after the prompt
(lm-eval's convention; normalized: per character). Above chance: the 95% interval's low end
beats a uniform guess.</small></p>{% endif %}
<h2>Trade-offs</h2>
{% for fig in figures %}<figure>{{ fig.svg|safe }}<figcaption>{{ fig.caption }}</figcaption>
</figure>{% endfor %}
<h2>Audit: did it compress?</h2>
<table id="audit"><thead><tr><th>cell</th><th>recipe</th><th>parameters</th><th>nonzero</th>
<th>bytes on disk</th><th>evidence</th></tr></thead><tbody>
{% for a in audit %}<tr><td>{{ a.cell }}</td><td>{{ a.recipe }}</td><td>{{ a.parameters }}</td>
<td>{{ a.nonzero }}</td><td>{{ a.bytes }}</td><td style="text-align:left">{{ a.evidence }}</td>
</tr>{% endfor %}</tbody></table>
<h2>Warnings</h2>
{% if warnings %}<ul>{% for w in warnings %}<li class="{{ w.cls }}">{{ w.text }}</li>
{% endfor %}</ul>{% else %}<p>None.</p>{% endif %}
<h2>Environment</h2>
<table id="environment">{% for k, v in environment %}<tr><td>{{ k }}</td>
<td style="text-align:left">{{ v }}</td></tr>{% endfor %}</table>
</body></html>
"""


def _fmt(v) -> str:
    if v is None or v != v:  # None or NaN
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _evidence(manifest: dict | None) -> str:
    """The manifest's proof that a step did what it says, in one line."""
    m = manifest or {}
    parts = []
    if q := m.get("quantization"):
        # counts per weight format (block_matmuls_int8, block_matmuls_int4, ...): a new format
        # shows under its own name instead of failing the whole report on a missing int8 key
        for total, what in (("block_linears", "linears"), ("block_matmuls", "MatMuls")):
            parts += [f"{k[len(total) + 1:]} block {what} {q[k]}/{q[total]}"
                      for k in sorted(q) if total in q and k.startswith(total + "_")]
    if s := m.get("sparsity"):
        parts.append(f"sparsity {s['realized']:.1%} of pruned layers ({s['method']}"
                     f"{', ' + s['n_m'] if s.get('n_m') else ''}); dense kernels: no speedup")
    if st := m.get("structure"):
        # manifests written while only GPT-2 was pruned call these n_inner and n_embd
        mlp, width = st.get("mlp_width", st.get("n_inner")), st.get("hidden_size", st.get("n_embd"))
        kv = st.get("kv_heads") or st["heads"]
        gqa = f" (KV {kv[0]}→{kv[1]})" if kv != st["heads"] else ""
        parts.append(f"heads {st['heads'][0]}→{st['heads'][1]}{gqa}, MLP width {mlp[0]}→"
                     f"{mlp[1]}, hidden {width[0]}→{width[1]}")
    if t := m.get("training"):
        parts.append(f"distilled {t['steps']} steps, val ppl {t.get('final_val_perplexity')}")
    if p := m.get("parity"):
        parts.append(f"parity max|Δlogits| {p['max_abs_logit_diff']:.3g}, top-1 "
                     f"{p['top1_agreement']:.1%}")
    return "; ".join(parts) or "no transform (input model)"


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _pareto(frame, x_metric: str, y_metric: str, x_label: str, y_label: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one point per cell, whatever its backend or weight format: keyed by what names a cell,
    # so a variant measured on two backends is two points rather than a cross product
    key = ["variant", "backend", "device"]
    x = frame[frame.metric == x_metric].set_index(key)["value"]
    y = frame[frame.metric == y_metric].set_index(key)["value"]
    both = x.to_frame("x").join(y.to_frame("y"), how="inner").dropna()
    if both.empty:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(both.x, both.y)
    for (variant, backend, device), r in both.iterrows():
        ax.annotate(f"{variant} ({backend}, {device})", (r.x, r.y), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    return _svg(fig)


# bytes per weight of a dtype as an Artifact records it (the fallback when no file size is known)
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1,
               "int4": 0.5, "uint4": 0.5}
FLOOR_NOTE = (
    "floor ms: weight bytes / the host memory copy bandwidth measured in the cell's process "
    "(environment memory_bandwidth_bytes_per_s): the time a decode step needs just to stream "
    "every weight once. Weight bytes are model_bytes_on_disk (the files as stored: an artifact "
    "quantized again at load, torch dynamic int8, streams fewer), or where marked * parameters "
    "× bytes per weight of the loaded dtype. % of floor = floor ms / decode ms: 100% is "
    "bandwidth-bound; above 100% the weights sat in cache. The KV cache's reads are not in the "
    "floor. CUDA cells have none: the recorded bandwidth is the host's, not the GPU's.")


def _floor(cell: CellResult) -> tuple[float, bool] | None:
    """(the decode step's bandwidth floor in ms, whether its bytes came from parameters x
    dtype) of an ok CPU cell; None where a figure is missing."""
    bandwidth = (cell.environment or {}).get("memory_bandwidth_bytes_per_s")
    if cell.cell.device != "cpu" or not bandwidth:
        return None
    mem, art = cell.memory, cell.artifact
    weights = (mem and mem.model_bytes_on_disk) or (art and art.bytes_on_disk)
    if weights:
        return weights / bandwidth * 1e3, False
    params = (mem and mem.parameters) or (art and art.parameters)
    size = DTYPE_BYTES.get(str(art.dtype).removeprefix("torch.")) if art else None
    return (params * size / bandwidth * 1e3, True) if params and size else None


def _summary(rows: list[Row], metrics: list[str], baselines: dict[str, str],
             floors: dict[tuple, tuple[float, bool]],
             fingerprints: dict | None = None) -> tuple[list[str], list[dict]]:
    """The summary table's column names and rows: each metric's value and, where it has one,
    its change against the variant's baseline, coloured by the metric's direction; after each
    decode ms/token column the bandwidth floor ("floor ms", once) and the share of it that
    decode reached ("% of floor@<context>")."""
    direction = {r.metric: r.higher_is_better for r in rows}
    decode = [m for m in metrics if m.startswith("decode_ms_per_token@")]
    columns = []
    for m in metrics:
        columns.append(m)
        if m in decode:
            columns += ["floor ms"] * (m == decode[0]) + [f"% of floor@{m.partition('@')[2]}"]
    summary = []
    for _, r in summary_frame(rows, baselines, fingerprints).iterrows():
        floor = floors.get((r["variant"], r["backend"], r["device"]))
        out = []
        for m in metrics:
            delta = r.get(f"Δ {m}")
            cls, text = "", _fmt(r.get(m))
            own = baselines.get(r["variant"], r["variant"]) == r["variant"]
            if delta is not None and delta == delta and not own and delta:
                good = (delta > 0) == direction[m]
                cls = "better" if good else "worse"
                text += f" ({delta:+.1%})"
            out.append({"cls": cls, "text": text})
            if m in decode:
                ms = r.get(m)
                if m == decode[0]:
                    out.append({"cls": "", "text": _fmt(floor[0]) + "*" * floor[1]
                                if floor else "—"})
                share = floor[0] / ms if floor and ms == ms and ms else None
                out.append({"cls": "", "text": "—" if share is None else f"{share:.0%}"})
        summary.append({"variant": r["variant"], "backend": r["backend"],
                        "device": r["device"], "cells": out})
    return columns, summary


def _sweep(cells: list[CellResult]):
    """Generate tokens/s vs batch, one line per variant x backend x device, from the generate
    scenarios (batch 1: the plain one; more: ``latency.generate_batches``); None where no cell
    has a batch above 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, setups = {}, set()
    for c in cells:
        for s in c.latency.scenarios if c.status == "ok" and c.latency else []:
            rate = [m.median for m in s.measurements if m.name == "tokens_per_s"]
            if s.scenario == "generate" and rate:
                key = (c.cell.variant, c.cell.backend, c.cell.device)
                series.setdefault(key, {})[int(s.params.get("batch", 1))] = rate[0]
                setups.add((s.params.get("prompt_len"), s.params.get("new_tokens")))
    if not any(b > 1 for points in series.values() for b in points):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for (variant, backend, device), points in sorted(series.items(), key=str):
        xs = sorted(points)
        ax.plot(xs, [points[b] for b in xs], marker="o", label=f"{variant} ({backend}, "
                f"{device})")
    ticks = sorted({b for points in series.values() for b in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.set_xlabel("batch (equal-length prompts)")
    ax.set_ylabel("tokens/s (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    setup = ", ".join(f"prompt {p}, {n} new tokens" for p, n in sorted(setups, key=str))
    return {"svg": _svg(fig), "caption": f"generate tokens/s vs batch ({setup}; greedy, KV "
                                         "cache; batch × new tokens / total time)"}


def _figures(frame, metrics: list[str], cells: list[CellResult]) -> list[dict]:
    figures = []
    ppl = "perplexity.perplexity"
    decode = next((m for m in metrics if m.startswith("decode_ms_per_token")), None)
    for x, label in ((decode, "decode ms/token"), ("model_bytes_on_disk", "bytes on disk")):
        svg = _pareto(frame, x, ppl, label, "perplexity (lower is better)") if x else None
        if svg:
            figures.append({"svg": svg, "caption": f"perplexity vs {label}"})
    if sweep := _sweep(cells):
        figures.append(sweep)
    return figures


def _audit_and_warnings(cells: list[CellResult]) -> tuple[list[dict], list[dict], dict]:
    """The audit rows of ok cells, every warning, and the first ok cell's environment."""
    audit, warnings, env = [], [], {}
    for c in cells:
        cid = c.cell.id
        if c.status != "ok":
            cls = "warn" if c.status == "skipped" else "fail"  # skipped is not broken
            warnings.append({"cls": cls, "text": f"{cid}: {c.status}: {c.reason}"})
            continue
        art = c.artifact
        audit.append({"cell": cid, "recipe": " → ".join(c.cell.recipe) or "—",
                      "parameters": _fmt(art.parameters if art else None),
                      "nonzero": _fmt(art.nonzero_parameters if art else None),
                      "bytes": _fmt(art.bytes_on_disk if art else None),
                      "evidence": _evidence(art.manifest if art else None)})
        warnings += [{"cls": "warn", "text": f"{cid}: {w}"} for w in c.warnings]
        env = env or c.environment or {}
    return audit, warnings, env


def _choice_rows(cells: list[CellResult]) -> list[dict]:
    """One row per multiple-choice task of each ok cell (slimbench's ``kind:
    multiple_choice``, and lm-eval's multiple-choice tasks through the bridge): accuracy with
    its interval against chance, where the task knows it."""
    def shown(score) -> str:
        if score is None:
            return "—"
        ci = f" [{_fmt(score.ci95[0])}, {_fmt(score.ci95[1])}]" if score.ci95 else ""
        return _fmt(score.value) + ci

    out = []
    for c in cells:
        for task, q in (c.quality.items() if c.status == "ok" else ()):
            if "multiple_choice" not in (q.task_spec.get("kind"), q.protocol.get("output_type")):
                continue
            acc = q.metrics.get("acc")
            chance = acc.info.get("chance") if acc else None
            above = None if chance is None or not (acc and acc.ci95) else acc.ci95[0] > chance
            out.append({"variant": c.cell.variant, "backend": c.cell.backend,
                        "device": c.cell.device, "task": task, "n": q.n, "acc": shown(acc),
                        "chance": _fmt(chance), "acc_norm": shown(q.metrics.get("acc_norm")),
                        "above": {True: "yes", False: "no", None: "—"}[above],
                        "cls": {True: "better", False: "worse", None: ""}[above]})
    return out


def _acceptance_section(run_dir: Path, warnings: list[dict]) -> dict | None:
    """``acceptance.json`` of the run, each criterion with its status's colour; None where
    there is none (a warning where it cannot be read)."""
    from slimbench.files import read_json

    path = Path(run_dir) / "acceptance.json"
    if not path.is_file():
        return None
    try:
        data = read_json(path, "acceptance file")
        criteria = [c | {"cls": {"pass": "better", "fail": "worse"}.get(c["status"], "warn"),
                         "threshold": f"{c['threshold']:g}"} for c in data["criteria"]]
        return {"line": str(data["line"]), "verdict": data["verdict"], "criteria": criteria}
    except (UsageError, KeyError, TypeError, ValueError) as e:
        warnings.append({"cls": "fail", "text": f"{path.name} cannot be read: {e}"})
        return None


def _environments_note(cells: list[CellResult], fingerprints: dict) -> list[dict]:
    """A warning when the ok cells come from more than one environment (a run spread over
    unlike nodes): which cells ran where, and that their latency is not compared."""
    groups: dict[str, list[str]] = {}
    for c in cells:
        if c.status == "ok":
            fp = fingerprints.get(c.cell.id) or {}
            node = ((c.environment or {}).get("executor") or {}).get("hostname")
            what = f"{fp.get('cpu')}, {fp.get('threads')} threads, GPU {fp.get('gpu')}"
            groups.setdefault(what + (f" (node {node})" if node else ""), []).append(c.cell.id)
    if len({str(fingerprints.get(c.cell.id)) for c in cells if c.status == "ok"}) < 2:
        return []
    where = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
    return [{"cls": "warn", "text": "cells measured in different environments, so latency "
             f"and memory deltas are shown only within one: {where}"}]


# figures the summary leaves out: shown elsewhere (ttft with tpot; a whole generation's time as
# tokens/s) or rarely compared
HIDDEN = ("ttft_ms", "generate_ms", "peak_rss_bytes", "rss_bytes", "nonzero_parameters")


def render_html(run_dir: Path, name: str, baseline: str | None) -> Path:
    """Write ``report.html`` of a run directory from its cell results; returns its path."""
    import jinja2

    from slimbench.fingerprint import fingerprint

    cells = load_cells(run_dir)
    rows = [r for c in cells for r in rows_from_cell(c)]
    metrics = [m for m in dict.fromkeys(r.metric for r in rows)
               if m.split("@")[0] not in HIDDEN]
    baselines = baselines_for(cells, baseline)
    audit, warnings, env = _audit_and_warnings(cells)
    acceptance = _acceptance_section(run_dir, warnings)
    environment = [(k, v) for k, v in env.items() if k != "packages"]
    environment += [(f"package {k}", v) for k, v in (env.get("packages") or {}).items() if v]
    floors = {(c.cell.variant, c.cell.backend, c.cell.device): f for c in cells
              if c.status == "ok" and (f := _floor(c))}
    fingerprints = {c.cell.id: fingerprint(c.environment, c.cell.backend) for c in cells
                    if c.status == "ok"}
    warnings += _environments_note(cells, fingerprints)
    columns, summary = _summary(rows, metrics, baselines, floors, fingerprints)
    html = jinja2.Environment(autoescape=True).from_string(TEMPLATE).render(
        name=name, cells=cells, ok=sum(c.status == "ok" for c in cells),
        baseline_names=sorted(set(baselines.values())), columns=columns, summary=summary,
        floor_note=FLOOR_NOTE if any(c.startswith("floor") for c in columns) else None,
        figures=_figures(to_frame(rows), metrics, cells), audit=audit, warnings=warnings,
        environment=environment, acceptance=acceptance, choices=_choice_rows(cells))
    path = Path(run_dir) / "report.html"
    atomic.write_text(path, html)
    return path
