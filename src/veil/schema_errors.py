"""Where a JSON Schema error is: the path of the bad key, for the configuration (``config``)
and for request bodies (``schemas``) alike.

The path comes from the error's own path (``absolute_path``) and, for a key that should not
be there or that is missing, from the instance and the schema, never from the message text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import jsonschema


@dataclass(frozen=True)
class Located:
    """``path`` names the bad key (the unknown or missing one included); ``kind`` says whether
    it is a key the schema does not know, one it requires and the document lacks, or a value
    that breaks another keyword (``error.validator``)."""

    path: tuple[str, ...]
    kind: Literal["unknown", "missing", "value"]
    error: jsonschema.ValidationError

    def dotted(self, empty: str) -> str:
        """The path as ``a.b.0.c``; ``empty`` for the document itself."""
        return ".".join(self.path) or empty


def locate(error: jsonschema.ValidationError) -> Located:
    """The bad key of one validation error."""
    path = tuple(str(part) for part in error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = set(schema.get("properties", {}))
        unknown = sorted(key for key in instance if key not in allowed)
        return Located((*path, unknown[0]), "unknown", error)
    required = error.validator_value
    if error.validator == "required" and isinstance(instance, dict) and isinstance(required, list):
        missing = [key for key in required if key not in instance]
        return Located((*path, missing[0]), "missing", error)
    return Located(path, "value", error)
