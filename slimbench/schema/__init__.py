"""The typed records every layer exchanges and slimbench writes: the result documents
(``documents.py``), their parts (``measurements.py``) and the codec that checks them (``codec.py``).

It lives in the package root, below every layer, so that ``compress`` can return an ``Artifact``,
``bench`` a ``CellResult`` and ``reports`` read both without importing each other.
"""

from slimbench.schema.codec import SchemaError, Typed  # noqa: F401
from slimbench.schema.documents import (  # noqa: F401 - the schema's public names
    SCHEMA_VERSION,
    RESULTS_FORMAT,
    SUITE_SHAPE,
    DOCUMENTS,
    Document,
    Artifact,
    CellInfo,
    CellResult,
    EvalResult,
    Row,
    ResultsFile,
    cell_id,
    suite_cell_ids,
    valid_suite,
    load_document,
    load_file,
    generate,
    schema_text,
)
from slimbench.schema.measurements import (  # noqa: F401 - the schema's public names
    Fidelity,
    Interval,
    Latency,
    Measurement,
    Memory,
    QualityScore,
    Scenario,
    Score,
)
