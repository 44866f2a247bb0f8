"""The JSON Schema every ``--json`` document is held to (roboshop_dispatch/schema/dispatchctl.schema.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "roboshop_dispatch" / "schema" / "dispatchctl.schema.json"


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


VALIDATOR = validator()


def schema_errors(doc: Any) -> List[str]:
    """Where ``doc`` breaks the schema (empty: it is valid)."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(doc)]
