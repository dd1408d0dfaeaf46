"""Projects, keys and limits: a key sees only its own project; another project's objects are 404;
keys are stored as hashes; limits answer 429; Idempotency-Key makes creates retry-safe."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import chat_dataset, create_job, job_body, method, upload
from tests.stack import Stack, wait_for

ADMIN_ONLY = re.compile(r"^/v1/projects")


@pytest.fixture
def other_project(stack: Stack) -> Iterator[tuple[dict[str, Any], str]]:
    """A second project and a (non-admin) key for it."""
    with stack.client() as admin:
        project = admin.post("/v1/projects", json={"name": "other-team"}).json()
        key = admin.post(f"/v1/projects/{project['id']}/api_keys").json()
    yield project, key["value"]


def database_rows(stack: Stack, query: str) -> list[Any]:
    url = stack.env.get("LORAQ_DATABASE_URL") or f"sqlite:///{stack.home / 'loraq.db'}"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        rows = list(connection.execute(sa.text(query)))
    engine.dispose()
    return rows


def test_keys_are_shown_once_and_stored_only_as_hashes(
    stack: Stack, other_project: tuple[dict[str, Any], str]
) -> None:
    project, secret = other_project
    stored = [row[0] for row in database_rows(stack, "SELECT key_hash FROM api_keys")]
    assert secret not in stored and all(len(h) == 64 for h in stored)
    with stack.client() as admin:
        keys = admin.get(f"/v1/projects/{project['id']}/api_keys").json()["data"]
    assert [k["redacted_value"] for k in keys] == [secret[:8] + "…"]
    assert all("value" not in k for k in keys)


def test_non_admin_keys_cannot_manage_projects(
    stack: Stack, other_project: tuple[dict[str, Any], str]
) -> None:
    project, secret = other_project
    with stack.client(secret) as client:
        assert client.post("/v1/projects", json={"name": "x"}).status_code == 403
        assert client.post(f"/v1/projects/{project['id']}/api_keys").status_code == 403


def test_revoked_key_is_refused(stack: Stack, other_project: tuple[dict[str, Any], str]) -> None:
    project, secret = other_project
    with stack.client(secret) as client:
        assert client.get("/v1/files").status_code == 200
    with stack.client() as admin:
        [key] = admin.get(f"/v1/projects/{project['id']}/api_keys").json()["data"]
        assert admin.delete(f"/v1/projects/{project['id']}/api_keys/{key['id']}").json()["revoked_at"]
    with stack.client(secret) as client:
        assert client.get("/v1/files").status_code == 401


def test_a_key_revoked_through_another_api_process_is_refused_within_its_cache_time(
    stack: Stack, other_project: tuple[dict[str, Any], str]
) -> None:
    """An API process trusts a key it checked for LORAQ_API_KEY_CACHE_SECONDS; the process that revokes a
    key refuses it at once, a replica (another deployment on the same database, sharing no memory) once its
    cache time is up. The processes of one deployment learn at once: tests/test_api_processes.py."""
    project, secret = other_project
    cache_seconds = 2
    replica = Stack(
        name=f"{stack.name}-replica",
        home=stack.home,
        env={**stack.env, "LORAQ_API_KEY_CACHE_SECONDS": str(cache_seconds)},
    )
    replica.start_api(log_name="replica-api.log")
    try:
        with replica.client(secret) as client:
            assert client.get("/v1/files").status_code == 200  # the replica has now checked the key
        with stack.client() as admin:
            [key] = admin.get(f"/v1/projects/{project['id']}/api_keys").json()["data"]
            assert admin.delete(f"/v1/projects/{project['id']}/api_keys/{key['id']}").status_code == 200
        with stack.client(secret) as client:
            assert client.get("/v1/files").status_code == 401
        with replica.client(secret) as client:
            wait_for(
                lambda: client.get("/v1/files").status_code == 401,
                timeout=cache_seconds + 3,
                what="the replica refusing the revoked key",
            )
    finally:
        replica.stop()


def test_every_route_with_an_id_hides_other_projects_objects(
    stack: Stack, other_project: tuple[dict[str, Any], str]
) -> None:
    """Walks the app's own OpenAPI schema, so a route added later is covered without editing this test."""
    _, outsider = other_project
    with stack.client() as owner:
        training = upload(owner, chat_dataset(4))
        job = create_job(owner, job_body(training["id"], adapter={"type": "lora"}))
        owner.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        # An IP literal: registering it resolves no name.
        webhook = owner.post(
            "/v1/webhooks",
            json={"url": "https://93.184.215.14/hook", "event_types": ["fine_tuning.job.failed"]},
        ).json()
        schema = owner.get("/openapi.json").json()
    ids = {
        "file_id": training["id"],
        "fine_tuning_job_id": job["id"],
        "webhook_id": webhook["id"],
        "delivery_id": "msg_" + "x" * 24,
    }

    checked = []
    with stack.client(outsider) as client:
        for path, operations in schema["paths"].items():
            parameters = re.findall(r"{(\w+)}", path)
            if not parameters or ADMIN_ONLY.match(path):
                continue
            url = path.format(**{name: ids[name] for name in parameters})
            for method in operations:
                response = client.request(
                    method.upper(), url, json={} if method in {"post", "put", "patch"} else None
                )
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"]["code"] == "not_found"
                checked.append((method, path))
        # The owner's objects are untouched, and the outsider's lists are empty of them.
        assert training["id"] not in [f["id"] for f in client.get("/v1/files").json()["data"]]
        assert job["id"] not in [j["id"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]]
        for m in client.get("/v1/models").json()["data"]:
            assert m["kind"] == "base"
    assert len(checked) >= 7, checked
    with stack.client() as owner:
        assert owner.get(f"/v1/files/{training['id']}").status_code == 200
        assert owner.delete(f"/v1/webhooks/{webhook['id']}").status_code == 200


def project_key(stack: Stack, **project: Any) -> str:
    """A new project's API key; project holds its name and limits."""
    with stack.client() as admin:
        created = admin.post("/v1/projects", json=project).json()
        secret: str = admin.post(f"/v1/projects/{created['id']}/api_keys").json()["value"]
    return secret


def test_project_limits_answer_429(stack: Stack) -> None:
    with stack.client(project_key(stack, name="small", max_storage_bytes=3000)) as client:
        upload(client, chat_dataset(4))
        over = client.post(
            "/v1/files", files={"file": ("big.jsonl", chat_dataset(40))}, data={"purpose": "fine-tune"}
        )
        assert over.status_code == 429, over.text
        assert "storage limit" in over.json()["error"]["message"]
        assert len(client.get("/v1/files").json()["data"]) == 1

    # Queue limits in a project with room to store what its running job writes.
    with stack.client(project_key(stack, name="few-queued", max_queued_jobs=1)) as client:
        training = upload(client, chat_dataset(4))
        body = job_body(training["id"], adapter={"type": "lora"})
        running = create_job(client, body | {"method": method(n_epochs=50)})
        wait_for(
            lambda: client.get(f"/v1/fine_tuning/jobs/{running['id']}").json()["status"] == "running",
            timeout=120,
            what="the first job to start",
        )
        queued = client.post("/v1/fine_tuning/jobs", json=body)
        assert queued.status_code == 200 and queued.json()["status"] == "queued"
        refused = client.post("/v1/fine_tuning/jobs", json=body)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert "queued jobs" in refused.json()["error"]["message"]
        for job_id in (running["id"], queued.json()["id"]):
            assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200


def test_idempotent_creates(stack: Stack) -> None:
    with stack.client() as client:
        content = chat_dataset(4)

        def upload_with(key: str, data: bytes) -> httpx.Response:
            return client.post(
                "/v1/files",
                files={"file": ("t.jsonl", data)},
                data={"purpose": "fine-tune"},
                headers={"Idempotency-Key": key},
            )

        first = upload_with("upload-1", content)
        again = upload_with("upload-1", content)
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
        assert [f["id"] for f in client.get("/v1/files").json()["data"]].count(first.json()["id"]) == 1
        assert upload_with("upload-1", chat_dataset(5)).status_code == 409

        body = job_body(first.json()["id"], adapter={"type": "lora"}, suffix="idem")
        jobs_before = len(client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"])
        created = client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "job-1"})
        retried = client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "job-1"})
        assert created.status_code == retried.status_code == 200
        assert created.json()["id"] == retried.json()["id"]
        # The job is live: a replay after a cancel answers "cancelled", not the first "queued" snapshot.
        client.post(f"/v1/fine_tuning/jobs/{created.json()['id']}/cancel")
        replayed = client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "job-1"})
        assert replayed.json()["id"] == created.json()["id"] and replayed.json()["status"] == "cancelled"
        assert (
            len(client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]) == jobs_before + 1
        )
        conflict = client.post(
            "/v1/fine_tuning/jobs", json={**body, "seed": 5}, headers={"Idempotency-Key": "job-1"}
        )
        assert conflict.status_code == 409
        assert conflict.json()["error"]["param"] == "Idempotency-Key"
        client.post(f"/v1/fine_tuning/jobs/{created.json()['id']}/cancel")
