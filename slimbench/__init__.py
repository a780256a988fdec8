"""slimbench: benchmark and compress GPT-style causal language models."""

__version__ = "0.1.0"
