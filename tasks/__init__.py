"""Datasets, prompts and metrics. Depends only on a small runtime protocol (see ``protocol``)."""
