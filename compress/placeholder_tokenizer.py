"""A tokenizer of placeholder strings for a model that has none (a random-weight shape).

Engines' converters (CTranslate2's, ONNX Runtime GenAI's builder) load a tokenizer for the
vocabulary and the special tokens even though slimbench feeds them ids.
"""

from __future__ import annotations


def placeholder_tokenizer(config):
    """A tokenizer of ``config.vocab_size`` placeholder strings, one per id."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<slimbench_{i}>": i for i in range(config.vocab_size)}

    def token(i) -> str:
        return f"<slimbench_{i if isinstance(i, int) and 0 <= i < len(vocab) else 0}>"

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=token(0))),
        bos_token=token(config.bos_token_id), eos_token=token(config.eos_token_id),
        unk_token=token(0))
