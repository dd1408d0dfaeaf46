"""/docs and /redoc load with no internet access: every script and style they use is served by the API."""

from __future__ import annotations

import re

import httpx
import pytest

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
