"""``export_ctranslate2``: a torch model as a CTranslate2 model (``model.bin``), its weights
stored as ``quantization`` says, by CTranslate2's own Transformers converter.

The parent is saved as a Hugging Face folder first (a shape or a pruned model has none) and
converted from there. A model without a tokenizer (a random-weight shape) is converted with a
tokenizer of placeholder strings: slimbench feeds ids, which CTranslate2's generation takes as
strings (through the artifact's vocabulary).
The audit counts the stored 2-D weights per type from ``model.bin`` itself; the parity
compares CTranslate2's logits with the torch parent's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from slimbench.compress.arch import arch_of
from slimbench.compress.ctranslate2_model import (
    CT2_BIN,
    HF_CONFIG,
    Ct2Model,
    ct2_logits_fn,
    import_ctranslate2,
    variables_by_type,
)
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.placeholder_tokenizer import placeholder_tokenizer
from slimbench.compress.step_io import save_model
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

# the families CTranslate2 4.x converts from transformers 5 models (its GPT-NeoX loader reads
# attributes transformers 5 renamed: rotary_pct, embed_out)
FAMILIES = ("gpt2", "llama", "qwen2", "opt")
FP32_LOGIT_BOUND = 1e-3  # float32 against float32: kernel order only
# what each quantization stores its weight matrices as (CTranslate2's CPU types)
STORED = {"float32": "float32", "int8": "int8", "int8_float32": "int8", "int16": "int16"}


@dataclasses.dataclass(frozen=True)
class ExportCtranslate2Config:
    """Args:
        quantization: float32, int8 / int8_float32 (int8 weights per output row, float32
            activations), int16.
    """

    quantization: str = "float32"

    def __post_init__(self) -> None:
        if self.quantization not in STORED:
            raise UsageError(f"quantization must be one of {', '.join(STORED)}, got "
                             f"{self.quantization!r}")


@dataclasses.dataclass(frozen=True)
class Ct2WeightAudit(Typed):
    """What ``model.bin`` stores, counted from its header.

    Attributes:
        weights_by_type: 2-D variables (projections, embeddings) per stored type.
        other_by_type: the other variables (biases, norms, scales) per stored type.
        weights_compressed: 2-D variables stored in the quantization's type.
        float_weights: the names of the 2-D variables left float.
    """

    weights_by_type: dict[str, int]
    other_by_type: dict[str, int]
    weights_compressed: int
    float_weights: list[str]


def convert(parent: LoadedModel, out: Path, quantization: str) -> None:
    """Write the CTranslate2 model of ``parent`` into ``out``."""
    ct2 = import_ctranslate2()
    with tempfile.TemporaryDirectory(prefix="slimbench-ct2-") as tmp:
        save_model(parent.model, parent.tokenizer or placeholder_tokenizer(parent.model.config),
                   Path(tmp))
        # the converter's steps, not convert(): the vocabulary is fitted to the embedding
        # between loading and validation (a private call, kept in one place; CTranslate2 4.x)
        spec = _converter(ct2)(tmp)._load()
        if spec is None:
            raise CompressionError("CTranslate2 cannot convert this model")
        # a tokenizer with fewer tokens than embedding rows gets placeholders for the rest;
        # tokens past the embedding (a loader's additions) can never be produced: dropped
        size = spec.get_vocabulary_size()
        tokens = list(spec._vocabulary)[:size]
        spec.register_vocabulary(tokens + [f"<slimbench_{i}>" for i in range(len(tokens), size)])
        spec.validate()
        spec.optimize(quantization=quantization)
        spec.save(str(out))


def _converter(ct2):
    """CTranslate2's Transformers converter, the loaded config given the rotary settings
    under the names it reads (``rope_theta``, ``rotary_pct``): transformers 5 moved them into
    ``rope_parameters``, and the converter would otherwise take its defaults silently (base
    10000) or fail (GPT-NeoX)."""

    class Converter(ct2.converters.TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            rope = getattr(model.config, "rope_parameters", None) or {}
            if "rope_theta" in rope:
                model.config.rope_theta = rope["rope_theta"]
            if "partial_rotary_factor" in rope:
                model.config.rotary_pct = rope["partial_rotary_factor"]
            return model

    return Converter


@register_step("export_ctranslate2", ExportCtranslate2Config, produces="ctranslate2",
               libraries=("ctranslate2",),
               help="CTranslate2 model of a torch model: int8 / int16 / float32 weights")
def _apply_export_ctranslate2(parent: LoadedModel, config: ExportCtranslate2Config,
                              out: Path) -> StepReport:
    from slimbench.compress.loader import count_parameters

    arch_of(parent.model, "export_ctranslate2")
    model_type = parent.model.config.model_type
    if model_type not in FAMILIES:
        raise UsageError(f"export_ctranslate2 converts {', '.join(FAMILIES)} models; "
                         f"CTranslate2's converter cannot read this {model_type} model")
    convert(parent, out, config.quantization)
    if parent.tokenizer is not None:
        parent.tokenizer.save_pretrained(out)
    # config.json is CTranslate2's own: the Hugging Face config goes one folder down
    parent.model.config.save_pretrained(out / HF_CONFIG)
    counts = variables_by_type(out / CT2_BIN)
    stored = STORED[config.quantization]
    audit = Ct2WeightAudit(weights_by_type=counts["weights"], other_by_type=counts["other"],
                           weights_compressed=counts["weights"].get(stored, 0),
                           float_weights=counts["float_weights"])
    # CTranslate2 keeps a learned position table float (GPT-2's, OPT's); nothing else may be
    left = [n for n in audit.float_weights if "position" not in n]
    if stored != "float32" and left:
        raise CompressionError(f"CTranslate2 left {len(left)} weight matrices float under "
                               f"{config.quantization}: {', '.join(left[:4])}")
    child = Ct2Model(out, parent.model.config)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    params, nonzero = count_parameters(parent.model)
    match = parity(torch_logits_fn(parent.model), ct2_logits_fn(child), prompts)
    if stored == "float32" and match.max_abs_logit_diff > FP32_LOGIT_BOUND:
        # a converter that misread a setting (rotary base, norm epsilon) gives another model
        raise CompressionError(f"CTranslate2's float32 model differs from its parent by "
                               f"{match.max_abs_logit_diff:.3g} in the logits (bound "
                               f"{FP32_LOGIT_BOUND}): the converter misread this model")
    return StepReport(
        format="ctranslate2", parameters=params, nonzero_parameters=nonzero,
        dtypes={"weights": stored, "activations": "float32"}, quantization=audit,
        parity=match)
