"""The RFC 8460 §4.4 report schema (report.schema.json, written from the RFC) as a validator
that checks formats too (date-time needs rfc3339-validator: asserted, never skipped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA = json.loads((Path(__file__).with_name("report.schema.json")).read_text())


def validate(document: Any) -> None:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers, "rfc3339-validator is missing"
    jsonschema.Draft202012Validator(SCHEMA, format_checker=checker).validate(document)
