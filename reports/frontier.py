"""``frontier.html``: what ``slimbench search`` tried and chose, as one self-contained page in
the style of ``report.html`` (``html.py``: its CSS, number format and inline SVG charts).

Sections: the verdict (the winner, confirmed on *test*, or "no winner" and the closest
candidates with what each missed by); how many candidates were tried and confirmed, which split
each step looked at (screening: *tune* only; confirmation: *test*, examples never searched on)
and which tests decided (sequential paired screens, the confirmation's paired tests); the
Pareto frontier of the objective's speedup against quality (the worst screening degradation as
a share of its allowance; marker size: bytes on disk) and a second panel of bytes against
quality, with the budget drawn (allowance, minimum speedup, byte ceiling: the budget's
``ratio_at_most`` on bytes times the baseline's bytes, drawn with the baseline when search.json
records them), candidates that were rejected, failed, dominated or not confirmed greyed, the
frontier connected and the winner marked; a table of every candidate with its evidence; the
budget and the environment.

Every string goes through Jinja2's autoescaping: candidate recipes and the budget come from the
user's YAML.
"""

from __future__ import annotations

import json
from typing import Any

from slimbench.reports.html import TEMPLATE as _REPORT_TEMPLATE
from slimbench.reports.html import _fmt, _svg
from slimbench.schema.search import Candidate, SearchResult

# the report's stylesheet, so both pages read alike; plus what only this page has
STYLE = _REPORT_TEMPLATE[_REPORT_TEMPLATE.index("<style>"):
                         _REPORT_TEMPLATE.index("</style>") + len("</style>")].replace(
    "</style>", """.grey td{color:#888}.winner td{background:#fff4c2;font-weight:bold}
td.left{text-align:left}ul.tight{margin:0;padding-left:1.2em}
#candidates{font-size:12px}#candidates th,#closest th{text-align:left}
#candidates td.left{min-width:14em}
pre{background:#f6f6f6;padding:.6em;display:inline-block}
</style>""")

# statuses of candidates that passed screening, were timed and were not refuted: the frontier
# is drawn through these; every other one is greyed
ACCEPTED = ("screened", "winner")
GREYED = ("failed", "rejected", "dominated", "not_confirmed", "not_reached")
# a budget's ceiling on bytes is an acceptance rule relative to the baseline, under the
# metric's name or its alias (bench/orchestrate/suite.py METRIC_ALIASES)
BYTES_METRICS = ("model_bytes_on_disk", "bytes_on_disk")

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>slimbench search: {{ r.model }}</title>
{{ style|safe }}</head><body>
<h1>slimbench search: {{ r.model }}</h1>
<p id="verdict" class="{{ '' if winner else 'fail' }}">{{ verdict }}</p>
<ul id="summary">
<li>{{ counts }}</li>
<li id="confirmed">{{ confirmed }}</li>
<li id="splits">{{ splits }}</li>
<li id="tests">{{ tests }}</li>
<li>Objective: {{ r.objective }} on {{ r.device }}, {{ threads }}; space: {{ r.space }};
search time {{ seconds }}.</li>
</ul>
{% if closest is not none %}<h2>Closest candidates</h2>
{% if closest %}<table id="closest"><thead><tr><th>candidate</th><th>recipe</th><th>status</th>
<th>stage</th><th>missed by</th></tr></thead><tbody>{% for c in closest %}<tr>
<td>{{ c.name }}</td><td class="left">{{ c.recipe }}</td><td>{{ c.status }}</td>
<td>{{ c.stage }}</td><td class="left"><ul class="tight">{% for m in c.missed %}
<li>{{ m }}</li>{% endfor %}</ul></td></tr>{% endfor %}</tbody></table>
{% else %}<p>No candidate was measured far enough to say what it missed by.</p>{% endif %}
{% endif %}
<h2>Frontier</h2>
{% for fig in figures %}<figure>{{ fig.svg|safe }}<figcaption>{{ fig.caption }}</figcaption>
</figure>{% else %}<p>No candidate was both screened and measured: nothing to draw.</p>
{% endfor %}
<h2>Candidates</h2>
<div style="overflow-x:auto"><table id="candidates"><thead><tr><th>candidate</th>
<th>recipe</th><th>status</th><th>stage</th><th>why</th><th>bytes on disk</th>
<th>speedup [95% CI]</th><th>screening on tune</th><th>confirmation on test</th>
<th>frontier</th><th>seconds</th></tr></thead><tbody>
{% for c in rows %}<tr class="{{ c.cls }}" id="candidate-{{ loop.index }}">
<td>{{ c.name }}{% if c.is_winner %} ★ winner{% endif %}</td>
<td class="left">{{ c.recipe }}</td><td>{{ c.status }}</td><td>{{ c.stage }}</td>
<td class="left">{{ c.why }}</td><td>{{ c.bytes }}</td><td>{{ c.speed }}</td>
<td class="left">{% if c.screening %}<ul class="tight">{% for s in c.screening %}
<li>{{ s }}</li>{% endfor %}</ul>{% else %}—{% endif %}</td>
<td class="left">{% if c.confirmation %}<ul class="tight">{% for s in c.confirmation %}
<li>{{ s }}</li>{% endfor %}</ul>{% else %}—{% endif %}</td>
<td>{{ c.frontier }}</td><td>{{ c.seconds }}</td></tr>{% endfor %}</tbody></table></div>
<h2>Budget</h2>
<pre id="budget">{{ budget }}</pre>
<h2>Environment</h2>
<table id="environment">{% for k, v in environment %}<tr><td>{{ k }}</td>
<td class="left">{{ v }}</td></tr>{% endfor %}</table>
</body></html>
"""


def quality_ratio(c: Candidate) -> float | None:
    """The worst screening degradation of ``c`` as a share of its allowance (1: exactly the
    allowance; below 0: better than the baseline), or None without screening."""
    ratios = [s.degradation / s.allowance for s in c.screening if s.allowance > 0]
    return max(ratios) if ratios else None


def _worst(c: Candidate):
    """The screen whose degradation is the largest share of its allowance."""
    screens = [s for s in c.screening if s.allowance > 0]
    return max(screens, key=lambda s: s.degradation / s.allowance) if screens else None


def frontier(result: SearchResult) -> list[str]:
    """Names of the accepted candidates (passed screening, timed, not refuted) that no other
    accepted one dominates on speedup (higher), quality ratio (lower) and bytes (lower), in
    order of speedup."""
    points = {}
    for c in result.candidates:
        q = quality_ratio(c)
        if c.status in ACCEPTED and c.speed is not None and q is not None:
            points[c.name] = (c.speed.speedup, q, c.bytes_on_disk)

    def dominates(a, b) -> bool:
        at_least = a[0] >= b[0] and a[1] <= b[1] and (a[2] is None or b[2] is None
                                                      or a[2] <= b[2])
        return at_least and a != b

    names = [n for n, p in points.items()
             if not any(dominates(o, p) for m, o in points.items() if m != n)]
    return sorted(names, key=lambda n: points[n][0])


def _budget_figure(result: SearchResult, keys: tuple[str, ...]) -> float | None:
    """A number of the budget stored under one of ``keys``, at any depth."""
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in keys and isinstance(v, int | float) and not isinstance(v, bool):
                    yield float(v)
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    return next(walk(result.budget), None)


def min_speedup(result: SearchResult) -> float | None:
    """The budget's minimum speedup of the objective: the ``speedup_at_least`` of the metric
    the candidates were timed on (a budget recorded as acceptance criteria, ``metric:
    {speedup_at_least: x}``), else the first minimum speedup the budget gives."""
    keys = ("speedup_at_least", "min_speedup", "minimum_speedup")
    metric = next((c.speed.metric for c in result.candidates if c.speed), None)

    def find(node):
        if isinstance(node, dict):
            rule = node.get(metric) if metric else None
            if isinstance(rule, dict):
                found = [v for k, v in rule.items() if k in keys]
                if found and isinstance(found[0], int | float):
                    return float(found[0])
            return next((x for x in map(find, node.values()) if x is not None), None)
        return None

    return find(result.budget) or _budget_figure(result, keys)


def max_bytes(result: SearchResult) -> float | None:
    """The budget's ceiling on bytes on disk: its ``ratio_at_most`` on model_bytes_on_disk
    (or bytes_on_disk) times the baseline's bytes on disk; None without such a rule, or
    without the baseline's bytes (a search.json written before they were recorded)."""
    baseline = result.baseline_bytes_on_disk
    criteria = result.budget.get("criteria")
    if not baseline or not isinstance(criteria, dict):
        return None
    for metric in BYTES_METRICS:
        rule = criteria.get(metric)
        ratio = rule.get("ratio_at_most") if isinstance(rule, dict) else None
        if isinstance(ratio, int | float) and not isinstance(ratio, bool):
            return ratio * baseline
    return None


def _pct(x: float) -> str:
    return f"{x:+.2%}"


def _amount(s, x: float, sign: bool = True) -> str:
    """A screen's degradation or allowance in its own terms: a share of the baseline's value,
    or the metric's units (mode absolute: points of accuracy, ...)."""
    if s.mode == "absolute":
        return f"{x:+.4g}" if sign else f"{x:.4g} (absolute)"
    return _pct(x) if sign else f"{x:.2%}"


def _recipe(c: Candidate) -> str:
    def step(s) -> str:
        if not s.params:
            return s.name
        args = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                         for k, v in s.params.items())
        return f"{s.name}({args})"

    return " → ".join(step(s) for s in c.steps) or "— (the input model)"


def _speed(c: Candidate) -> str:
    if c.speed is None:
        return "—"
    sp = c.speed
    ci = f" [{sp.ci95[0]:.3g}, {sp.ci95[1]:.3g}]" if sp.ci95 else ""
    pairs = f", {sp.pairs} pairs" if sp.pairs else ""
    doubt = f"; doubtful: {'; '.join(sp.warnings)}" if sp.warnings else ""
    return f"{sp.speedup:.3g}×{ci} ({sp.metric}{pairs}{doubt})"


def _screen(s) -> str:
    lo, hi = s.degradation_ci
    return (f"{s.task}.{s.metric} ({s.criterion}, allowance {_amount(s, s.allowance, False)}): "
            f"{s.status}; degradation {_amount(s, s.degradation)} [{_amount(s, lo)}, "
            f"{_amount(s, hi)}] on {s.examples} "
            f"examples, {s.looks} look{'s' * (s.looks != 1)} at α {s.alpha_per_look:.3g}")


def _confirm(t) -> str:
    lo, hi = t.ci95
    return (f"{t.status} ({t.test}, n {t.n}): {t.metric} Δ {t.delta:+.4g} [{lo:+.4g}, "
            f"{hi:+.4g}]; {t.why}")


def missed_by(c: Candidate, result: SearchResult) -> list[str]:
    """What ``c`` missed the budget by, in words: its reason, each failed screening criterion
    with how far its interval lies beyond the allowance, a speedup below the minimum, and each
    failed confirmation test."""
    out = [c.why] if c.why else []
    for s in c.screening:
        if s.status != "fail":
            continue
        lo, hi = s.degradation_ci
        # non-inferiority needs the interval's bad end within the allowance; a significant
        # loss is one whose whole interval lies beyond it
        gap, end = ((lo - s.allowance, "good") if s.criterion.startswith("no_significant")
                    else (hi - s.allowance, "bad"))
        by = (f", beyond it by {_amount(s, gap, False)} at the interval's {end} end"
              if gap > 0 else "")
        out.append(f"screening {s.task}.{s.metric} ({s.criterion}): degradation "
                   f"{_amount(s, s.degradation)} [{_amount(s, lo)}, {_amount(s, hi)}] against "
                   f"an allowance of {_amount(s, s.allowance, False)}{by} ({s.examples} tune "
                   "examples)")
    floor = min_speedup(result)
    if c.speed is not None and floor is not None and c.speed.speedup < floor:
        out.append(f"{c.speed.metric} speedup {_speed(c)} against a minimum of {floor:.3g}×")
    out += [f"confirmation on test: {t.why}" for t in c.confirmation if t.status == "fail"]
    return list(dict.fromkeys(out)) or [f"{c.status} at {c.stage or 'no stage'}"]


def _figures(result: SearchResult, on_frontier: list[str]) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    placed = [(c, quality_ratio(c)) for c in result.candidates]
    placed = [(c, q) for c, q in placed if q is not None]
    if not placed:
        return []
    biggest = max((c.bytes_on_disk or 0 for c, _ in placed), default=0) or 1

    def size(c) -> float:
        return 30 + 270 * (c.bytes_on_disk or 0) / biggest

    def style(c) -> dict[str, Any]:  # matplotlib scatter keyword arguments
        if c.status == "winner":
            return dict(marker="*", color="#d4a000", edgecolors="black", zorder=4)
        if c.status in ACCEPTED:
            return dict(marker="o", color="#1f77b4", edgecolors="black", zorder=3)
        if c.status == "not_confirmed":
            return dict(marker="X", color="#aaaaaa", edgecolors="#b00020", zorder=2)
        return dict(marker="o", color="#bbbbbb", edgecolors="#888888", zorder=2)

    def scatter(ax, x, pts):
        labelled = set()
        for c, q in pts:
            kind = ("winner" if c.status == "winner" else "accepted" if c.status in ACCEPTED
                    else "not confirmed on test" if c.status == "not_confirmed"
                    else "rejected / failed / dominated")
            st = style(c)
            ax.scatter([x(c)], [q], s=size(c) * (2 if c.status == "winner" else 1),
                       label=None if kind in labelled else kind, alpha=0.9, **st)
            labelled.add(kind)
            name = f"{c.name} (winner)" if c.status == "winner" else c.name
            ax.annotate(name, (x(c), q), fontsize=7, xytext=(4, 4), textcoords="offset points",
                        color="black" if c.status in ACCEPTED else "#777777", parse_math=False)

    def budget_lines(ax, qs):
        ax.axhline(1.0, color="#b00020", linestyle="--", linewidth=1,
                   label="allowance (worst criterion)")
        ax.axhline(0.0, color="#888888", linewidth=0.6)
        # linear within the allowance, logarithmic beyond: a candidate that broke quality
        # 30-fold does not flatten the ones that matter
        ax.set_yscale("symlog", linthresh=1.0, linscale=2.0)
        low, high = min(min(qs), -0.1), max(max(qs), 1.0)
        bottom, top = low - 0.15 * (1 + abs(low)), high * (1.6 if high > 1 else 1.15)
        ticks = [t for t in (-1000, -100, -10, -5, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1,
                             2, 5, 10, 20, 50, 100, 1000, 10_000) if bottom <= t <= top]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(bottom, top)  # after the ticks, which would widen it

    figures = []
    timed = [(c, q) for c, q in placed if c.speed is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        scatter(ax, lambda c: c.speed.speedup, timed)
        line = [(c.speed.speedup, q) for c, q in timed if c.name in on_frontier]
        if line:
            line.sort()
            ax.plot([p[0] for p in line], [p[1] for p in line], color="#1f77b4", linewidth=1.2,
                    zorder=1, label="frontier")
        budget_lines(ax, [q for _, q in timed])
        ax.axvline(1.0, color="#888888", linewidth=0.6)
        floor = min_speedup(result)
        if floor is not None:
            ax.axvline(floor, color="#b00020", linestyle=":", linewidth=1,
                       label=f"minimum speedup {floor:.3g}×")
        metric = next(c.speed.metric for c, _ in timed)
        ax.set_xlabel(f"{result.objective} speedup over the baseline (×, {metric}; higher is "
                      "better)", fontsize=8)
        ax.set_ylabel("worst degradation / allowance on tune (lower is better)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, markerscale=0.6)
        figures.append({"svg": _svg(fig), "caption": (
            "objective × quality; marker size: bytes on disk. Quality is each candidate's worst "
            "screening degradation on tune as a share of its allowance (1 = the allowance). "
            "Only timed candidates are here; the line joins the frontier.")})
    sized = [(c, q) for c, q in placed if c.bytes_on_disk]
    if sized:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        scatter(ax, lambda c: c.bytes_on_disk / 1e6, sized)
        budget_lines(ax, [q for _, q in sized])
        ceiling = max_bytes(result)
        if ceiling is not None:
            ax.axvline(ceiling / 1e6, color="#b00020", linestyle=":", linewidth=1,
                       label=f"bytes ceiling {ceiling / 1e6:.3g} MB")
        if result.baseline_bytes_on_disk:
            # the original's size: a ceiling is read as a share of it
            ax.axvline(result.baseline_bytes_on_disk / 1e6, color="#888888", linestyle="--",
                       linewidth=1, label="baseline")
        ax.set_xlabel("MB on disk (lower is better)", fontsize=8)
        ax.set_ylabel("worst degradation / allowance on tune (lower is better)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, markerscale=0.6)
        figures.append({"svg": _svg(fig), "caption": (
            "bytes × quality: every screened candidate, timed or not (dominated ones are timed "
            "last, when time is left)")})
    return figures


def _header(result: SearchResult) -> dict:
    cands = result.candidates
    statuses = {}
    for c in cands:
        statuses[c.status] = statuses.get(c.status, 0) + 1
    shown = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in statuses.items())
    not_reached = statuses.get("not_reached", 0)
    late = f", {not_reached} not reached before the time budget ran out" if not_reached else ""
    counts = (f"{len(cands)} candidate{'s' * (len(cands) != 1)}, {result.tried} tried "
              f"(decided){late}: {shown or 'none'}.")
    if result.confirmed:
        confirmed = "Confirmed on test, in this order: " + ", ".join(
            f"{n} ({result.candidate(n).status.replace('_', ' ')})"
            for n in result.confirmed) + "."
    else:
        confirmed = "No candidate reached confirmation on test."
    examples = sum(c.tune_examples for c in cands)
    splits = (f"Screening looked only at the {result.searched_on} split of each evaluation set "
              f"({examples:,} {result.searched_on} examples scored over all candidates); the "
              f"confirmation used the {result.confirmed_on} split: examples no screen looked "
              "at. Candidates were confirmed in order of their objective until one passed, "
              f"at most {result.max_confirmations}.")
    tests = (f"Screening: sequential paired tests against the baseline, at an overall level "
             f"α = {result.screening_alpha:g} spent evenly over each test's planned looks (the "
             "α of each look is in the table), a candidate stopped as soon as a criterion "
             f"clearly failed or passed. Confirmation: the budget's paired tests on "
             f"{result.confirmed_on}, each at α = {result.alpha:g} / "
             f"{result.max_confirmations} (so that up to {result.max_confirmations} "
             f"confirmations keep a false pass within α = {result.alpha:g}); the confirmation "
             "alone decides whether a candidate meets the budget.")
    if result.winner is not None:
        w = result.candidate(result.winner)
        verdict = (f"Winner: {w.name} ({_recipe(w)}): {_speed(w)}, confirmed on "
                   f"{result.confirmed_on}.")
    else:
        verdict = ("No winner: no candidate met the budget"
                   + (" on confirmation." if result.confirmed else ".")
                   + (" The closest candidates and what each missed by are below."
                      if result.closest else ""))
    return {"counts": counts, "confirmed": confirmed, "splits": splits, "tests": tests,
            "verdict": verdict}


def _budget_text(budget: dict) -> str:
    try:
        import yaml

        return yaml.safe_dump(budget, sort_keys=False, allow_unicode=True).strip()
    except Exception:  # noqa: BLE001 - shown as JSON instead
        return json.dumps(budget, indent=2, default=str)


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def frontier_html(result: SearchResult) -> str:
    """The page ``OUT/frontier.html`` of a search: self-contained (inline SVG, no scripts or
    external files), every string escaped."""
    import jinja2

    on_frontier = frontier(result)
    rows = []
    for c in result.candidates:
        rows.append({
            "name": c.name, "recipe": _recipe(c), "status": c.status, "stage": c.stage or "—",
            "why": c.why or "—", "bytes": _fmt(c.bytes_on_disk), "speed": _speed(c),
            "screening": [_screen(s) for s in c.screening],
            "confirmation": [_confirm(t) for t in c.confirmation],
            "frontier": "yes" if c.name in on_frontier else "",
            "seconds": f"{c.seconds:.1f}", "is_winner": c.status == "winner",
            "cls": "winner" if c.status == "winner" else "grey" if c.status in GREYED else ""})
    closest = None
    if result.winner is None:
        # the search's words for each (when it gave more than the name), then the evidence
        closest = [{"name": c.name, "recipe": _recipe(c), "status": c.status,
                    "stage": c.stage or "—", "missed": list(dict.fromkeys(
                        ([entry] if entry != c.name else []) + missed_by(c, result)))}
                   for c, entry in result.closest_candidates()]
    env = result.environment or {}
    environment = [(k, v if isinstance(v, str | int | float) or v is None else json.dumps(
        v, default=str)) for k, v in env.items() if k != "packages"]
    environment += [(f"package {k}", v) for k, v in (env.get("packages") or {}).items() if v]
    threads = "default threads" if result.threads is None else \
        f"{result.threads} thread{'s' * (result.threads != 1)}"
    return jinja2.Environment(autoescape=True).from_string(TEMPLATE).render(
        r=result, style=STYLE, winner=result.winner, threads=threads,
        seconds=_seconds(result.seconds), closest=closest,
        figures=_figures(result, on_frontier), rows=rows, budget=_budget_text(result.budget),
        environment=environment, **_header(result))
