"""Schemathesis fuzzes every route of the app's own OpenAPI schema over real HTTP: no 5xx, and every
answer (status, content type, body) matches the schema. Bounded examples keep it to a minute or two."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from tests.stack import Stack

# The same document the server serves at /openapi.json, built without a server so pytest can collect it;
# the test then sends every case to the running server over HTTP.
schema = schemathesis.openapi.from_dict(create_app().openapi())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_holds_its_schema(case: schemathesis.Case, stack: Stack) -> None:
    # /readyz answers its documented 503 whenever no worker is alive (between two tests that kill one,
    # say): a reading, not a server error. Its status and body are still checked against the schema.
    checks = [check for check in CHECKS if not (case.path == "/readyz" and check is not_a_server_error)]
    case.call_and_validate(
        base_url=stack.base_url,
        headers={"Authorization": f"Bearer {stack.admin_key}"},
        checks=checks,
        timeout=30,
    )
