"""lm-evaluation-harness tasks on any slimbench runtime (extra ``slimbench[lmeval]``).

lm-eval itself runs Hugging Face, vLLM and API backends, not an ONNX Runtime int8 artifact.
``RuntimeLM`` is an lm-eval ``LM`` over the ``CausalLM`` protocol instead, so a team's own
lm-eval tasks (YAML + data) run on torch and ORT artifacts alike: ``loglikelihood`` (hence
multiple-choice tasks), ``loglikelihood_rolling`` and greedy ``generate_until``, batched where
the runtime can. Tokenization, truncation, rolling windows and stop sequences are lm-eval's own
(``TemplateLM``, ``get_rolling_token_windows``, ``postprocess_generated_text``); scoring is
``tasks/loglikelihood.py``, which follows its ``hf`` backend, so both give the same numbers
(``tests/test_lmeval_bridge.py``).

``run_lmeval`` runs lm-eval tasks by name (its registry, plus ``include_path``) and returns one
``TaskResult`` per task, as ``generation.run_task`` does, so they land in the same results
rows: every metric lm-eval computed, its direction from lm-eval's ``higher_is_better``, a
percentile-bootstrap interval over the per-example values that lm-eval's own aggregation turns
into the metric (lm-eval's stderr beside it), and per example those values, which the gate's
paired tests resample as they do any task's (``tasks/paired.py``, kind ``lm_eval``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import random
import re
import time
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, handle_non_serializable, make_disjoint_window

from slimbench.errors import UsageError
from slimbench.schema import Score
from slimbench.tasks.bootstrap import RESAMPLES, SEED, bootstrap_ci
from slimbench.tasks.lmeval_spec import LmEvalSpec
from slimbench.tasks.loglikelihood import encode, prefix_token_id, score_continuations
from slimbench.tasks.protocol import CausalLM
from slimbench.tasks.results import LmEvalExample, TaskResult, quality_score
from slimbench.tasks.splits import check_split, split_of
from slimbench.tasks.stopping import stop_token_ids

# lm-eval's simple_evaluate seeds (DEFAULT_RANDOM_SEED, DEFAULT_OTHER_SEED): the same docs,
# few-shot examples and orders as its own CLI
RANDOM_SEED, OTHER_SEED = 0, 1234


class RuntimeLM(TemplateLM):
    """An lm-eval ``LM`` over a slimbench runtime and its tokenizer.

    Args:
        runtime: any ``CausalLM`` (torch or ONNX Runtime).
        tokenizer: the artifact's tokenizer.
        batch_size: sequences per forward pass (scoring) or per generation batch.
        max_gen_toks: generation budget when a task gives none (lm-eval's ``hf``: 256; here
            at most half the model's positions, which a 256-position model needs).
    """

    def __init__(self, runtime: CausalLM, tokenizer, batch_size: int = 8,
                 max_gen_toks: int | None = None, show_progress: bool = False) -> None:
        super().__init__()
        if tokenizer is None:
            raise UsageError("an lm-eval task needs a tokenizer, and this model has none "
                             "(a random-weight shape, or a model folder without its tokenizer "
                             "files)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.runtime, self.tokenizer, self.batch_size = runtime, tokenizer, batch_size
        self._max_gen_toks = max_gen_toks or min(256, runtime.max_length // 2)
        self._stop_ids: dict[tuple[str, ...], frozenset[int]] = {}
        self.show_progress = show_progress

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return prefix_token_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        return self.runtime.max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs) -> list[int]:
        """As lm-eval's ``hf`` backend: the tokenizer's own special tokens unless told."""
        ids = encode(self.tokenizer, string) if add_special_tokens is None else \
            self.tokenizer.encode(string, add_special_tokens=add_special_tokens)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """``(summed log-likelihood, is greedy)`` of each ``(key, context ids, continuation
        ids)`` request (``TemplateLM.loglikelihood`` has tokenized them)."""
        scored = score_continuations(self.runtime, [(ctx, cont) for _, ctx, cont in requests],
                                     self.batch_size, self.show_progress and not disable_tqdm)
        for (key, _, _), answer in zip(requests, scored, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's whole log-likelihood in lm-eval's disjoint windows of ``max_length``
        (every token predicted once, after the prefix token), all windows batched together."""
        pairs, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            windows = get_rolling_token_windows(token_list=self.tok_encode(text),
                                                prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                pairs.append((ctx, cont))
                owner.append(i)
        scored = score_continuations(self.runtime, pairs, self.batch_size,
                                     self.show_progress and not disable_tqdm, desc="rolling")
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scored, strict=True):
            totals[i] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _stop_token_ids(self, until: list[str]) -> frozenset[int]:
        """Tokens whose text holds a whole stop string: generation may end there (what is
        left after the stop string is cut by ``postprocess_generated_text``)."""
        key = tuple(until)
        if key not in self._stop_ids:
            self._stop_ids[key] = stop_token_ids(self.tokenizer, key)
        return self._stop_ids[key]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string (lm-eval's ``until``, with the
        EOS text added as its ``hf`` backend does). Requests with the same settings share
        left-padded batches, shortest prompts together. Sampling is refused: slimbench scores
        deterministic decoding only."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        groups: dict[str, list[int]] = {}
        settings = []
        for i, (_, gen_kwargs) in enumerate(req.args for req in requests):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0:
                raise UsageError(f"an lm-eval task asks for sampling ({gen_kwargs}); slimbench "
                                 "generates greedily only (do_sample: false)")
            until = handle_stop_sequences(kwargs.get("until"), eos=eos)
            budget = int(kwargs["max_gen_toks"])
            if budget >= self.max_length:
                raise UsageError(f"an lm-eval task asks for {budget} new tokens, which leaves "
                                 f"no room for a prompt in {self.max_length} positions")
            settings.append((until, budget))
            groups.setdefault(json.dumps([until, budget]), []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            until, budget = settings[members[0]]
            stop_ids = self._stop_token_ids(until)
            prompts = {i: self.tok_encode(requests[i].args[0],
                                          left_truncate_len=self.max_length - budget)
                       for i in members}
            order = sorted(members, key=lambda i: len(prompts[i]))
            size = self.batch_size if self.runtime.batched_generation else 1
            for k in range(0, len(order), size):
                chunk = order[k: k + size]
                new = self.runtime.greedy_generate_batch([prompts[i] for i in chunk], budget,
                                                         stop_ids)
                for i, tokens in zip(chunk, new, strict=True):
                    out[i] = postprocess_generated_text(self.tok_decode(tokens), until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None, defaults: bool = True):
    """lm-eval's ``TaskManager``: its own tasks (``defaults``), plus those under
    ``include_path``. Indexing lm-eval's ~15,000 own tasks takes seconds, so each index is
    built once per process."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not os.path.isdir(include_path):
        raise UsageError(f"lm-eval include path {include_path} is not a directory")
    return TaskManager(include_path=include_path, include_defaults=defaults)


def load_tasks(spec: LmEvalSpec) -> dict[str, Any]:
    """The leaf lm-eval tasks the spec names (groups and tags expand to theirs): lm-eval
    ``Task`` objects by task name.
    Tasks of ``include_path`` that need nothing of lm-eval's own load without indexing those.

    Raises:
        UsageError: an unknown name (with lm-eval's nearest names), or a task name that
            cannot name slimbench results.
    """
    if spec.include_path is not None:
        local = task_manager(spec.include_path, defaults=False)
        found = None
        if all(name in local.all_tasks for name in spec.tasks):
            with contextlib.suppress(Exception):  # it may include lm-eval's own: index them
                found = local.load(list(spec.tasks))["tasks"]
        if found is not None:
            return _checked(found)
    tm = task_manager(spec.include_path)
    for name in spec.tasks:
        if name not in tm.all_tasks:
            near = difflib.get_close_matches(name, tm.all_tasks, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else \
                " (a task of your own needs --include-path, the folder of its YAML)"
            raise UsageError(f"lm-eval has no task {name!r}{hint}")
    try:
        tasks = tm.load(list(spec.tasks))["tasks"]
    except Exception as e:  # noqa: BLE001 - a broken task config or dataset is the user's
        raise UsageError(f"lm-eval could not load {', '.join(spec.tasks)}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    return _checked(tasks)


def _checked(tasks: dict[str, Any]) -> dict[str, Any]:
    for name in tasks:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
            raise UsageError(f"lm-eval task {name!r} cannot name slimbench results (letters, "
                             "digits, '_' and '-' only)")
    return tasks


def _aggregation_name(fn) -> str | None:
    """The name lm-eval registered an aggregation under (what the gate looks up), or None
    for a task's own function."""
    from lm_eval.api import registry

    return next((name for name in registry.aggregation_registry
                 if registry.get_aggregation(name) is fn), None)


def lmeval_aggregate(name: str):
    """lm-eval's aggregation ``name`` over a set of per-example values (resampled rows)."""
    from lm_eval.api import registry

    try:
        fn = registry.get_aggregation(name)
    except KeyError:
        raise UsageError(f"lm-eval has no aggregation {name!r}") from None
    return lambda rows: float(fn(list(rows)))


def object_rows(values: list) -> np.ndarray:
    """(n,) object array of per-example values, each kept whole (lm-eval's values may be
    pairs, e.g. (log-likelihood, words)): a bootstrap resamples rows, not their parts."""
    rows = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        rows[i] = v
    return rows


def _metric_key(metric: str, filter_name: str) -> str:
    """A result metric name: lm-eval's metric, with its filter unless that is "none"."""
    key = metric if filter_name == "none" else f"{metric}_{filter_name}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _plain(value):
    """JSON-safe, as it will be read back from the examples file (tuples become lists)."""
    return json.loads(json.dumps(value, default=handle_non_serializable))


@contextlib.contextmanager
def _single_process_bootstrap():
    """lm-eval computes the stderr of non-mean metrics with a multiprocessing pool unless
    DISABLE_MULTIPROC is set: a cell must not fork a pool of its own."""
    old = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = old


def _evaluate(model: RuntimeLM, task, limit: int | None, resamples: int,
              docs: list[int] | None = None) -> dict[str, Any]:
    """lm-eval's ``evaluate`` on one task, configured as its ``simple_evaluate`` does (seeds,
    zero-shot unless the task says otherwise) without its environment report (seconds of
    subprocesses per call); ``docs``: only these document indices (instead of ``limit``)."""
    from lm_eval.evaluator import evaluate

    random.seed(RANDOM_SEED)
    np.random.seed(OTHER_SEED)
    if task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=OTHER_SEED)
    with _single_process_bootstrap():
        return evaluate(lm=model, task_dict={"tasks": {task.task_name: task}},
                        limit=None if docs is not None else limit,
                        samples=None if docs is None else {task.task_name: docs},
                        bootstrap_iters=resamples, log_samples=True)


def split_docs(task, split: str, offset: int, limit: int | None) -> list[int]:
    """The indices of ``task``'s evaluation documents on one side of the held-out split
    (``tasks/splits.py``; a document's id is its index, as lm-eval's ``doc_id``), from the
    ``offset``-th on, ``limit`` of them."""
    ids = [i for i in range(len(list(task.eval_docs)))
           if split == "all" or split_of(i) == split][offset:]
    if not ids:
        raise UsageError(f"{task.task_name}: no {split} documents after the first {offset}")
    return ids[:limit] if limit else ids


def _entry(metric: str, filter_name: str, fn, higher: bool | None) -> dict[str, Any]:
    """A metric's ``metric_list`` entry in an lm-eval task's results (``task_spec``): its key,
    direction (lm-eval's; higher when it gives none), aggregation, and lm-eval's names."""
    return {"metric": _metric_key(metric, filter_name),
            "higher_is_better": bool(higher) if higher is not None else True,
            "aggregation": _aggregation_name(fn), "lm_eval_metric": metric,
            "filter": filter_name}


def metric_entries(spec: LmEvalSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task of ``spec``: each metric it may report (``acc``: every aggregated metric
    under every filter of its config) -> the ``metric_list`` entry its results will carry,
    known before any document is scored, so a budget's criteria are checked before work."""
    out = {}
    for name, task in load_tasks(spec).items():
        directions, aggregations = task.higher_is_better(), task.aggregation()
        filters = [f["name"] for f in task.config.filter_list or []] or ["none"]
        entries = (_entry(m, f, aggregations[m], directions.get(m))
                   for f in filters for m in aggregations)
        out[name] = {e["metric"]: e for e in entries}
    return out


def _task_result(name: str, task, out: dict[str, Any], seconds: float, resamples: int, seed: int,
                 protocol: dict[str, Any], spec: LmEvalSpec) -> TaskResult:
    """One lm-eval task's outcome as ``run_task`` returns a task's."""
    samples = out["samples"][name]
    values = out["results"][name]
    directions, aggregations = task.higher_is_better(), task.aggregation()
    filters = list(dict.fromkeys(s["filter"] for s in samples))
    metrics, metric_list, per_doc = {}, [], {}
    for filter_name in filters:
        rows = sorted((s for s in samples if s["filter"] == filter_name),
                      key=lambda s: s["doc_id"])
        for metric in [m for m in aggregations if m in rows[0]]:
            key = _metric_key(metric, filter_name)
            fn = aggregations[metric]
            items = object_rows([_plain(s[metric]) for s in rows])
            higher = directions.get(metric)
            res = bootstrap_ci(items, lambda r, f=fn: float(f(list(r))), resamples,
                               seed).to_dict()
            stderr = values.get(f"{metric}_stderr,{filter_name}")  # "N/A" where it has none
            res |= {"higher_is_better": bool(higher) if higher is not None else True,
                    "lm_eval_value": values.get(f"{metric},{filter_name}"),
                    "lm_eval_stderr": stderr if isinstance(stderr, int | float) else None}
            if higher is None:
                res["direction"] = "lm-eval gives none; taken as higher is better"
            metrics[key] = res
            metric_list.append(_entry(metric, filter_name, fn, higher))
            for s, item in zip(rows, items, strict=True):
                record = per_doc.setdefault(s["doc_id"], {
                    "id": s["doc_id"], "target": _plain(s["target"]),
                    "prompt_hash": s.get("prompt_hash"), "values": {}, "responses": {}})
                record["values"][key] = item
                record["responses"][filter_name] = _plain(s["filtered_resps"])
    if not metrics:
        raise UsageError(f"lm-eval task {name} reported no metric slimbench can read")
    for record in per_doc.values():
        record["scores"] = {k: v for k, v in record["values"].items()
                            if isinstance(v, int | float) and not isinstance(v, bool)}
    head = metric_list[0]["metric"]
    config = task.dump_config() if hasattr(task, "dump_config") else {}
    score = quality_score(
        task=name, version=str(out.get("versions", {}).get(name)),
        dataset=f"lm_eval:{config.get('dataset_path') or name}", metric=head,
        higher_is_better=metrics[head]["higher_is_better"],
        metrics={k: Score.from_metric(v) for k, v in metrics.items()},
        scores={k: v["value"] for k, v in metrics.items()}, n=len(per_doc), seconds=seconds,
        protocol=protocol | {"num_fewshot": out.get("n-shot", {}).get(name),
                             "output_type": getattr(task, "OUTPUT_TYPE", None)},
        task_spec={"name": name, "kind": "lm_eval", "lm_eval": spec.to_dict(),
                   "metric_list": metric_list})
    return TaskResult(score, [LmEvalExample(**per_doc[k]) for k in sorted(per_doc)])


def run_lmeval(lm: CausalLM, tokenizer, spec: LmEvalSpec, limit: int | None = None,
               batch_size: int | None = None, resamples: int = RESAMPLES, seed: int = SEED,
               show_progress: bool = False, split: str = "all", offset: int = 0
               ) -> list[TaskResult]:
    """Every lm-eval task of ``spec`` on ``lm``: one ``TaskResult`` each, as ``run_task``'s.

    Args:
        limit: documents per task (default: the spec's, else all).
        split, offset: one side of the held-out split, from its ``offset``-th document
            (``split_docs``), as ``run_task`` chooses rows.
        batch_size: sequences per forward pass (default 8).
        resamples, seed: slimbench's bootstrap (lm-eval's stderr uses as many draws).
    """
    import lm_eval

    if limit is not None and limit < 1:
        raise UsageError(f"limit must be positive, got {limit}")
    check_split(split)
    tasks = load_tasks(spec)
    model = RuntimeLM(lm, tokenizer, batch_size or 8, show_progress=show_progress)
    limit = limit or spec.limit
    protocol = {"backend": f"slimbench {type(lm).__name__} ({lm.backend}) as an lm-eval LM",
                "lm_eval_version": lm_eval.__version__, "limit": limit,
                "batch_size": model.batch_size,
                "batch_invariant": bool(getattr(lm, "batch_invariant", True))
                or model.batch_size == 1,
                "loglikelihood": "lm-eval hf convention (tasks/loglikelihood.py)",
                "generation": "greedy, KV cache"}
    results = []
    for name, task in tasks.items():
        t0 = time.perf_counter()
        docs = None if split == "all" and not offset else split_docs(task, split, offset,
                                                                     limit)
        out = _evaluate(model, task, limit, resamples, docs)
        results.append(_task_result(name, task, out, time.perf_counter() - t0, resamples,
                                    seed, protocol, spec))
    return results
