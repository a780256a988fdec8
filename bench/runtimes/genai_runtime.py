"""ONNX Runtime GenAI backend: its ``Generator`` behind the ``CausalLM`` protocol.

GenAI keeps the KV cache inside its generator and picks each greedy token itself
(``generate_next_token``), which is how its documentation runs LLM decode; it takes no cache
from outside. So, as for CTranslate2, this runtime declares ``external_cache = False``:
``forward`` scores without a cache (a generator per prompt length, its logits output for
every position: perplexity, log-likelihoods, fidelity), and a generation is continued only
through ``greedy_start`` / ``greedy_step``, which the latency scenarios use on every backend.
Each ``greedy_start`` opens a generator of its own (a batch of equal-length prompts), so
sequences under way at once (the paired A/B) never share a cache; a step is refused on any
but a generation's newest state. Prompts of different lengths generate one generator per
length: GenAI pads a batch with its pad id, which a prompt may contain (the runtime turns
padding off, ``GenaiModel.load``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from slimbench.bench.runtimes.base import ForwardScoring, RuntimeBase, cacheless_rows
from slimbench.compress.arch import max_positions
from slimbench.compress.genai_model import generator, prompt_logits
from slimbench.compress.loader import LoadedModel

# the positions a generator opened by greedy_start holds at most: GenAI allocates its KV cache
# for all of them at once (Qwen2's 32768 would take 0.8 GB a row on the 0.5B shape)
WINDOW = 4096


@dataclasses.dataclass(eq=False)
class _Generation:
    """A generation under way: its generator and the number of tokens it has picked."""

    generator: object
    length: int
    step: int = 0


def _as_ids(x) -> np.ndarray:
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.int64)


class GenaiRuntime(ForwardScoring, RuntimeBase):
    """Runs a GenAI artifact on GenAI's ``Model`` (threads fixed at load)."""

    backend = "genai"
    batched_generation = True
    external_cache = False

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.genai = loaded.model
        self.info = loaded.info
        self.device = "cpu"
        self.model = self.genai.load(threads)
        cfg = self.genai.config
        self.max_length = max_positions(cfg)
        self.vocab_size = int(cfg.vocab_size)
        self.window = min(self.max_length, WINDOW)

    def forward(self, input_ids, past=None, keep_cache: bool = True, attention_mask=None,
                position_ids=None, last_only: bool = False):
        """Logits (B, T, V) of right-padded ``input_ids`` without a cache (``keep_cache`` must
        be False): GenAI keeps its cache inside its generator (``greedy_start``)."""
        ids, lengths = cacheless_rows("ONNX Runtime GenAI", input_ids, past, keep_cache,
                                      attention_mask, position_ids)
        batch, seq = ids.shape
        if seq > self.max_length:
            raise ValueError(f"{seq} positions exceed the model's {self.max_length}")
        logits = np.zeros((batch, seq, self.vocab_size), dtype=np.float32)
        for n, rows in _by_length(lengths).items():
            logits[rows, :n] = prompt_logits(self.model, ids[rows, :n])
        return (logits[:, -1:] if last_only else logits), None

    def greedy_start(self, prompt):
        """See ``CausalLM.greedy_start``: a generator of its own for the (B, T) prompt."""
        ids = _as_ids(prompt)
        if ids.shape[1] >= self.window:
            raise ValueError(f"a prompt of {ids.shape[1]} leaves no room in a generation's "
                             f"{self.window} positions")
        g = generator(self.model, ids.shape[0], self.window)
        g.append_tokens(ids.astype(np.int32))
        g.generate_next_token()
        run = _Generation(g, ids.shape[1] + 1)
        return self._picked(run), (run, 0)

    def greedy_step(self, tokens, state):
        """See ``CausalLM.greedy_step``: GenAI's next greedy token (it fed itself the previous
        one, which ``tokens`` is)."""
        run, step = state
        if step != run.step:
            raise ValueError("stale generation state: ONNX Runtime GenAI continues a "
                             "generation from its newest step only")
        if run.length >= self.window:
            raise ValueError(f"the generation has reached its {self.window} positions")
        run.step += 1
        run.length += 1
        run.generator.generate_next_token()
        return self._picked(run), (run, run.step)

    @staticmethod
    def _picked(run: _Generation) -> np.ndarray:
        return np.asarray(run.generator.get_next_tokens(), dtype=np.int64)[:, None]

    def greedy_generate(self, prompt: list[int], max_new_tokens: int,
                        stop_ids: frozenset[int] = frozenset()) -> list[int]:
        return self.greedy_generate_batch([prompt], max_new_tokens, stop_ids)[0]

    def greedy_generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                              stop_ids: frozenset[int] = frozenset()) -> list[list[int]]:
        """Greedy continuations by GenAI's own loop, one generator per prompt length: each
        row ``max_new_tokens`` long, cut after its first stop token (as the other runtimes
        stop); a generator runs until every row of it has stopped."""
        if not prompts or min(len(p) for p in prompts) < 1:
            raise ValueError("empty prompt")
        if max(len(p) for p in prompts) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({max(len(p) for p in prompts)}) + {max_new_tokens} new "
                             f"tokens exceeds {self.max_length} positions")
        out: list[list[int]] = [[] for _ in prompts]
        for n, rows in _by_length([len(p) for p in prompts]).items():
            g = generator(self.model, len(rows), n + max_new_tokens)
            g.append_tokens(np.array([prompts[i] for i in rows], dtype=np.int32))
            done = [False] * len(rows)
            for _ in range(max_new_tokens):
                g.generate_next_token()
                for k, t in enumerate(g.get_next_tokens().tolist()):
                    if not done[k]:
                        out[rows[k]].append(int(t))
                        done[k] = t in stop_ids
                if all(done):
                    break
        return out

    def sync(self) -> None:
        """Nothing to wait for: every call returns when its tokens or logits are there."""

    def placement(self) -> None:
        """GenAI runs the whole model on its device; there is nothing to place."""
        return None


def _by_length(lengths: list[int]) -> dict[int, list[int]]:
    """{length: the rows of that length}, in first-seen order."""
    rows: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        rows.setdefault(n, []).append(i)
    return rows
