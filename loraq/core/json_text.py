"""JSON text in and out: strict JSON written, whatever numbers a training run reports; JSON read fast.

JSON has no NaN or Infinity. Python's json writes them anyway, Postgres refuses a statement that holds
one, and strict readers (JavaScript, jq) refuse the file. A training run reports both: fp16's loss scaler
logs an infinite grad_norm on each overflow step, a diverging run a NaN loss. They are written as null,
as most JSON writers do.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson


def to_json(value: Any, **options: Any) -> str:
    """json.dumps(value, **options), with NaN and Infinity written as null."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:  # only then walk the value
        return json.dumps(_finite_or_none(value), allow_nan=False, **options)


def from_json(text: str | bytes) -> Any:
    """orjson's parser (a page of 20 jobs decodes eleven JSON columns a row: Python's parser made that a
    sixth of the page's cost); Python's for what orjson refuses, the NaN and Infinity of older rows."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value
