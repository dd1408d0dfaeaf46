"""/docs and /redoc load with no internet access: every script and style they use is served by the API."""

from __future__ import annotations

import re

import httpx
import pytest

from api.app import create_app
from tests.stack import Stack


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_need_no_cdn(stack: Stack, page: str) -> None:
    html = httpx.get(stack.base_url + page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(asset.endswith(".js") for asset in assets), html
    for asset in assets:
        # Same origin only: an absolute URL would need the internet (a CDN) to load.
        assert asset.startswith("/") and not asset.startswith("//"), asset
        assert httpx.get(stack.base_url + asset).status_code == 200, asset
    assert httpx.get(stack.base_url + "/openapi.json").json()["info"]["title"] == "loraq"


def test_the_api_key_is_one_bearer_scheme_on_every_operation_that_takes_it() -> None:
    """/docs shows one Authorize box, and SDK generators see the scheme: every /v1 operation (each checked
    before its route runs) and /metrics name it; none takes the key as a header parameter of its own."""
    schema = create_app().openapi()
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `lq-...`.",
    }
    operations = [(path, op) for path, methods in schema["paths"].items() for op in methods.values()]
    assert len(operations) > 30
    for path, operation in operations:
        takes_key = path.startswith("/v1/") or path == "/metrics"
        assert operation.get("security") == ([{"APIKey": []}] if takes_key else None), path
        headers = [p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"]
        assert "authorization" not in headers, path
