"""Lists: newest first, `after` cursors with `has_more`, and the status and metadata filters, on both
databases (their JSON queries differ)."""

from __future__ import annotations

import json

from tests.helpers import chat_dataset, create_job, job_body, pages, upload
from tests.stack import Stack


def test_pagination_and_filters(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, chat_dataset(4))
        created = []
        for team in ("search", "ads", "search"):
            job = create_job(
                client, job_body(training["id"], metadata={"team": team}, adapter={"type": "lora"})
            )
            client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
            created.append(job["id"])

        search = client.get(
            "/v1/fine_tuning/jobs", params={"metadata": json.dumps({"team": "search"})}
        ).json()
        assert [j["id"] for j in search["data"]] == [created[2], created[0]], "newest first"
        assert all(j["metadata"] == {"team": "search"} for j in search["data"])

        cancelled = client.get("/v1/fine_tuning/jobs", params={"status": "cancelled", "limit": 100}).json()
        assert set(created) <= {j["id"] for j in cancelled["data"]}

        one_by_one = pages(client, "/v1/fine_tuning/jobs", limit=1, metadata=json.dumps({"team": "search"}))
        assert [[j["id"] for j in page] for page in one_by_one] == [[created[2]], [created[0]]]

        bad = client.get("/v1/fine_tuning/jobs", params={"metadata": "not json"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "metadata"
