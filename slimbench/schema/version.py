"""The results schema's version, in a module of its own so that every document type
(``documents.py``, ``search.py``) can carry it without importing the others."""

SCHEMA_VERSION = 1
