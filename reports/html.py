"""``report.html``: one self-contained page (inline SVG charts, no external files or scripts).

Sections: the acceptance criteria and their verdict (``acceptance.json``, where the suite
has criteria), summary table with deltas against each variant's baseline (green = better, red =
worse, by each metric's direction), Pareto charts (quality vs decode latency, quality vs size),
per-variant audit (did it compress: quantized counts, sparsity, structure, parity), warnings
(high CV, fallback providers, failed or skipped cells) and the environment. Every string goes
through Jinja2's autoescaping.
"""

from __future__ import annotations

import io
from pathlib import Path

from slimbench import atomic
from slimbench.errors import UsageError
from slimbench.reports.schema import CellResult
from slimbench.reports.table import load_cells, rows_from_cell, to_frame

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
{% for m in metrics %}<th>{{ m }}</th>{% endfor %}</tr></thead><tbody>
{% for row in summary %}<tr><td>{{ row.variant }}</td><td>{{ row.backend }}</td>
<td>{{ row.device }}</td>{% for c in row.cells %}<td class="{{ c.cls }}">{{ c.text }}</td>
{% endfor %}</tr>{% endfor %}</tbody></table></div>
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
        if "block_linears" in q:
            parts.append(f"int8 block linears {q['block_linears_int8']}/{q['block_linears']}")
        if "block_matmuls" in q:
            parts.append(f"int8 block MatMuls {q['block_matmuls_int8']}/{q['block_matmuls']}")
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

    x = frame[frame.metric == x_metric].set_index(["variant", "device"])["value"]
    y = frame[frame.metric == y_metric].set_index(["variant", "device"])["value"]
    both = x.to_frame("x").join(y.to_frame("y"), how="inner").dropna()
    if both.empty:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(both.x, both.y)
    for (variant, device), r in both.iterrows():
        ax.annotate(f"{variant} ({device})", (r.x, r.y), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    return _svg(fig)


def _summary(rows: list[dict], metrics: list[str], baselines: dict[str, str]) -> list[dict]:
    """Summary table rows: each metric's value and, where it has one, its change against the
    variant's baseline, coloured by the metric's direction."""
    from slimbench.reports.output import summary_frame

    direction = {r["metric"]: r["higher_is_better"] for r in rows}
    summary = []
    for _, r in summary_frame(rows, baselines).iterrows():
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
        summary.append({"variant": r["variant"], "backend": r["backend"],
                        "device": r["device"], "cells": out})
    return summary


def _figures(frame, metrics: list[str]) -> list[dict]:
    figures = []
    ppl = "perplexity.perplexity"
    decode = next((m for m in metrics if m.startswith("decode_ms_per_token")), None)
    for x, label in ((decode, "decode ms/token"), ("model_bytes_on_disk", "bytes on disk")):
        svg = _pareto(frame, x, ppl, label, "perplexity (lower is better)") if x else None
        if svg:
            figures.append({"svg": svg, "caption": f"perplexity vs {label}"})
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


def _acceptance(run_dir: Path, warnings: list[dict]) -> dict | None:
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


# figures the summary leaves out: shown elsewhere (ttft with tpot) or rarely compared
HIDDEN = ("ttft_ms", "peak_rss_bytes", "rss_bytes", "nonzero_parameters")


def render_html(run_dir: Path, name: str, baseline: str | None) -> Path:
    """Write ``report.html`` of a run directory from its cell results; returns its path."""
    import jinja2

    from slimbench.reports.output import baselines_for

    cells = load_cells(run_dir)
    rows = [r for c in cells for r in rows_from_cell(c)]
    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows)
               if m.split("@")[0] not in HIDDEN]
    baselines = baselines_for(cells, baseline)
    audit, warnings, env = _audit_and_warnings(cells)
    acceptance = _acceptance(run_dir, warnings)
    environment = [(k, v) for k, v in env.items() if k != "packages"]
    environment += [(f"package {k}", v) for k, v in (env.get("packages") or {}).items() if v]
    html = jinja2.Environment(autoescape=True).from_string(TEMPLATE).render(
        name=name, cells=cells, ok=sum(c.status == "ok" for c in cells),
        baseline_names=sorted(set(baselines.values())), metrics=metrics,
        summary=_summary(rows, metrics, baselines), figures=_figures(to_frame(rows), metrics),
        audit=audit, warnings=warnings, environment=environment, acceptance=acceptance)
    path = Path(run_dir) / "report.html"
    atomic.write_text(path, html)
    return path
