"""Orchestration: suite files, the runner (cache, isolation, resume), the demo."""
