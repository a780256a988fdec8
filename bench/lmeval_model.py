"""slimbench as an lm-evaluation-harness model: ``--model slimbench --model_args artifact=...``.

Any artifact slimbench loads (the embedded reference, a Hugging Face directory, an ONNX
Runtime int8/int4 export) on its torch or ONNX Runtime runtime, scored by lm-eval's own
evaluator through ``tasks/lmeval_bridge.RuntimeLM``. lm-eval 0.4 looks models up in its own
registry only (it has no plugin entry points), so the model is registered when this module is
imported. lm-eval's command line with it registered::

    python -m slimbench.bench.lmeval_model --model slimbench \\
        --model_args artifact=runs/ref-onnx-int8,threads=2 --tasks arc_easy --limit 50

or, from Python, ``import slimbench.bench.lmeval_model`` before
``lm_eval.simple_evaluate(model="slimbench", model_args="artifact=...")``. Results through
slimbench's own rows: ``slimbench eval ARTIFACT --task lm_eval:arc_easy``.
"""

from __future__ import annotations

import logging

import torch
from lm_eval.api.registry import register_model

from slimbench.errors import UsageError
from slimbench.tasks.lmeval_bridge import RuntimeLM


@register_model("slimbench")
class SlimbenchLM(RuntimeLM):
    """An artifact loaded by slimbench, as an lm-eval model.

    Args (``--model_args``): artifact (model spec or artifact directory, default the embedded
    reference), device (cpu, cuda, cuda:N), dtype, threads (intra-op), batch_size,
    max_gen_toks, allow_pickle, trust_remote_code. lm-eval's ``--device`` and
    ``--batch_size`` arrive here too (``max_batch_size`` is lm-eval's, unused: the batch size
    is fixed). Another name is refused, so that a misspelt one cannot pass unnoticed.
    """

    def __init__(self, artifact: str = "reference", device: str | None = None,
                 dtype: str | None = None, threads: int | None = None, batch_size=8,
                 max_gen_toks: int | None = None, allow_pickle: bool = False,
                 trust_remote_code: bool = False, max_batch_size=None) -> None:
        from slimbench.bench.measure import environment
        from slimbench.bench.runtimes import make_runtime
        from slimbench.compress.loader import LoadOptions, load_artifact

        del max_batch_size  # lm-eval passes it to every model

        try:
            size = int(batch_size)
        except (TypeError, ValueError):
            raise UsageError(f"slimbench takes a fixed batch size, got {batch_size!r}") from None
        device = device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line passes --device cuda:0 unless told otherwise; its hf
            # backend then runs on the CPU, and so does this model
            logging.getLogger(__name__).warning("no CUDA GPU: running %s on the CPU", artifact)
            device = "cpu"
        n_threads = environment.set_threads(threads)
        loaded = load_artifact(str(artifact), LoadOptions(
            device=device, dtype=dtype, allow_pickle=bool(allow_pickle),
            trust_remote_code=bool(trust_remote_code)))
        if loaded.info.random_weights:
            raise UsageError(f"{artifact} has random weights: its quality means nothing")
        super().__init__(make_runtime(loaded, n_threads), loaded.tokenizer, size, max_gen_toks)
        self.info = loaded.info

    def get_model_info(self) -> dict:
        """What lm-eval records as the model: the artifact as slimbench loaded it."""
        info = self.info.to_dict()
        return {k: info.get(k) for k in ("spec", "kind", "model_type", "parameters", "dtype",
                                         "weights_sha256", "recipe")} | {
            "backend": self.runtime.backend}


def main() -> None:
    """lm-eval's own command line, with the ``slimbench`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
