"""The typed records every layer exchanges and slimbench writes: the result documents
(``documents.py``), their parts (``measurements.py``), the environment record
(``environment.py``), the verdicts of the gate and of acceptance criteria (``checks.py``),
what a recipe search tried and chose (``search.py``) and the codec that checks them
(``codec.py``).

It lives in the package root, below every layer, so that ``compress`` can return an ``Artifact``,
``bench`` a ``CellResult`` and ``reports`` read both without importing each other.
"""

from slimbench.schema.checks import Check, PairedLatency, PairedTest  # noqa: F401
from slimbench.schema.codec import SchemaError, Typed  # noqa: F401
from slimbench.schema.documents import (  # noqa: F401 - the schema's public names
    DOCUMENTS,
    RESULTS_FORMAT,
    SCHEMA_VERSION,
    SUITE_SHAPE,
    Artifact,
    CellInfo,
    CellResult,
    Document,
    EvalResult,
    ResultsFile,
    Row,
    cell_id,
    generate,
    load_document,
    load_file,
    schema_text,
    suite_cell_ids,
    valid_suite,
)
from slimbench.schema.environment import (  # noqa: F401 - the schema's public names
    Cpu,
    Environment,
    Executor,
    Git,
    Gpu,
)
from slimbench.schema.measurements import (  # noqa: F401 - the schema's public names
    Fidelity,
    Interval,
    Latency,
    Measurement,
    Memory,
    Placement,
    QualityScore,
    Scenario,
    Score,
)
from slimbench.schema.search import (  # noqa: F401 - the schema's public names
    SEARCH_FORMAT,
    Candidate,
    Screen,
    SearchResult,
    Speed,
    Step,
)
