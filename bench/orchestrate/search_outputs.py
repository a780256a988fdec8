"""What ``slimbench search`` leaves in ``OUT``, each file written atomically:

- ``search.json``: the ``SearchResult`` (``slimbench/schema/search.py``), every candidate with
  its evidence; ``slimbench validate OUT/search.json`` checks it;
- ``frontier.html``: the page of ``reports/frontier.py``;
- with a winner, ``best-recipe.yaml`` (``slimbench compress --recipe best-recipe.yaml``: the
  ``{model, steps}`` of ``compress/recipe.py``) and ``best-suite.yaml`` (``slimbench run``: the
  input model as ``baseline``, the winner as ``best``, the search's tasks, device and threads,
  and the budget as ``best``'s acceptance criteria: a release gate for CI).

With no winner neither best-* file is written, and one that an earlier search wrote into the
same ``OUT`` is removed, so that no stale answer outlives the search that gave it. Only a file
this module wrote (its first line says so) is removed, and only when the earlier search's
``search.json`` is there: nothing else in ``OUT`` is ever touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimbench import atomic
from slimbench.errors import SlimbenchError, UsageError
from slimbench.schema import SchemaError, SearchResult

SEARCH_JSON = "search.json"
FRONTIER_HTML = "frontier.html"
BEST_RECIPE = "best-recipe.yaml"
BEST_SUITE = "best-suite.yaml"
BEST_FILES = (BEST_RECIPE, BEST_SUITE)
MARK = "# written by slimbench search"  # the first line of every best-* file


def recipe_steps(result: SearchResult, name: str) -> list:
    """The steps of candidate ``name`` as a recipe YAML lists them: a bare name, or
    ``{name: params}``."""
    return [s.name if not s.params else {s.name: dict(s.params)}
            for s in result.candidate(name).steps]


def best_recipe(result: SearchResult, model: str) -> dict[str, Any]:
    """``best-recipe.yaml``'s document: the winner's steps on ``model``."""
    return {"model": model, "steps": recipe_steps(result, result.winner)}


def best_suite(result: SearchResult, budget_acceptance: dict, tasks: list[str | dict],
               model: str, device: str, threads: int | None) -> dict[str, Any]:
    """``best-suite.yaml``'s document: baseline and winner, judged by the budget."""
    suite = {"name": "search-best",
             "variants": {"baseline": {"model": model},
                          "best": {"model": model,
                                   "recipe": recipe_steps(result, result.winner)}},
             "devices": [device]}
    if threads is not None:
        suite["threads"] = threads
    suite |= {"tasks": list(tasks), "baseline_variant": "baseline",
              "acceptance": {"best": budget_acceptance}}
    return suite


def _yaml(doc: dict, what: str) -> str:
    import yaml

    # the comment lines hold nothing the user wrote: one line each, whatever the names hold
    return f"{MARK}: {what}\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True,
                                               default_flow_style=None, width=100)


def _earlier_search(out: Path) -> bool:
    """Does ``out`` hold the ``search.json`` of an earlier search?"""
    path = out / SEARCH_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("document") == "search"


def _written_by_search(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(MARK)
    except OSError:
        return False


def remove_stale_best(out: Path) -> list[Path]:
    """Remove the best-* files an earlier search wrote into ``out`` (only where its
    ``search.json`` is there, and only files whose first line says a search wrote them);
    returns those removed."""
    if not _earlier_search(out):
        return []
    removed = []
    for name in BEST_FILES:
        path = out / name
        if path.is_file() and not path.is_symlink() and _written_by_search(path):
            path.unlink()
            removed.append(path)
    return removed


def write_outputs(out: Path, result: SearchResult, budget_acceptance: dict,
                  tasks: list[str | dict], model: str, device: str, threads: int | None
                  ) -> None:
    """Write ``search.json``, ``frontier.html`` and, with a winner, ``best-recipe.yaml`` and
    ``best-suite.yaml`` into ``out`` (each atomically; ``search.json`` last, so that a reader
    who sees it sees the rest of this search too).

    Args:
        out: the search's output folder (created if need be).
        result: what the search tried and chose.
        budget_acceptance: the budget as suite acceptance criteria, ``metric: {criterion:
            number}`` (``bench/orchestrate/suite.py``), for ``best-suite.yaml``.
        tasks: the tasks the budget names, as a suite lists them (names, task files,
            ``{lm_eval: ...}`` entries).
        model: the input model's spec.
        device: cpu or cuda.
        threads: intra-op threads, or None for the default.

    Raises:
        UsageError: ``result`` does not fit its schema (``search.json`` is written anyway, to
            keep the evidence, and named), or ``best-suite.yaml`` would not be a valid suite
            (the other files are written; it is not).
    """
    from slimbench.reports.frontier import frontier_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    try:  # what `slimbench validate` will say of it: the types, and the rules across fields
        SearchResult.from_dict(json.loads(json.dumps(data)))
        problem = None
    except SchemaError as e:
        problem = UsageError(f"{out / SEARCH_JSON}: {e} (written as is, to keep the evidence)")
    suite_problem = None
    if result.winner is None:
        remove_stale_best(out)
    else:
        what = f"candidate {' '.join(str(result.winner).split())}, confirmed on test"
        atomic.write_text(out / BEST_RECIPE, _yaml(best_recipe(result, model), what))
        suite = best_suite(result, budget_acceptance, tasks, model, device, threads)
        try:
            from slimbench.bench.orchestrate.suite import parse_suite

            parse_suite(json.loads(json.dumps(suite)), str(out / BEST_SUITE))
        except SlimbenchError as e:
            suite_problem = UsageError(f"{BEST_SUITE} not written: {e}")
            stale = out / BEST_SUITE  # no earlier search's suite beside this search's recipe
            if stale.is_file() and not stale.is_symlink() and _written_by_search(stale):
                stale.unlink()
        else:
            atomic.write_text(out / BEST_SUITE, _yaml(
                suite, f"{what}; `slimbench run` judges it against the budget"))
    if problem is None:
        atomic.write_text(out / FRONTIER_HTML, frontier_html(result))
    atomic.write_json(out / SEARCH_JSON, data)
    if problem is not None:
        raise problem
    if suite_problem is not None:
        raise suite_problem
