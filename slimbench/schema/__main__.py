"""``python -m slimbench.schema`` prints the JSON Schema of the result documents."""

from slimbench.schema.documents import schema_text

print(schema_text(), end="")
