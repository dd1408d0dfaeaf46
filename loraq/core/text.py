"""What text from a client may hold, checked at the edge so that every database stores the same strings.

Postgres refuses NUL in text where SQLite keeps it: a NUL that reached a query would be a 503 on one
deployment and a 404 on the other. Ids and names are refused here instead, with a 400 naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

# Every public id (loraq.core.ids.new_id: a prefix and letters and digits), and every token a client may
# filter by (a purpose such as "fine-tune"); nothing in it needs escaping anywhere.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# C0 controls but tab, newline and carriage return, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


def _refuse_control_characters(value: str) -> str:
    if has_control_characters(value):
        raise PydanticCustomError("control_character", "must not contain control characters such as NUL")
    return value


PlainText = Annotated[str, AfterValidator(_refuse_control_characters)]
