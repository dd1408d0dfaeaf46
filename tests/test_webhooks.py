"""Webhooks: signed as the Standard Webhooks spec says, shaped as OpenAI's events, delivered at least once
(through failing receivers and killed processes), and never to a private address unless the operator allows.

The receivers are small HTTP servers on loopback, in this process; their deployments allow private
networks and run the retry schedule a hundred times faster.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from openai import OpenAI
from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from loraq.jobs import runs
from loraq.jobs.tables import Job
from loraq.webhooks import service
from loraq.webhooks.destinations import Attempt, Policy, RefusedDestination, check_url, is_public, send
from loraq.webhooks.sealing import UnsealError, seal, unseal
from loraq.webhooks.signing import new_secret, signed_headers
from loraq.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.conftest import fresh_postgres_database
from tests.helpers import (
    FAST_HYPERPARAMETERS,
    chat_dataset,
    create_job,
    job_body,
    method,
    migrated_engine,
    new_job,
)
from tests.helpers import upload as upload_file
from tests.stack import Stack, start_stack, wait_for
from tests.test_tenancy import database_rows, project_key

ALL_EVENTS = [
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.running",
    "fine_tuning.job.checkpoint",
]
WEBHOOK_ENV = {
    "LORAQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    "LORAQ_WEBHOOK_RETRY_SCALE": "0.01",  # 5 s, 30 s, 2 min ... become 0.05 s, 0.3 s, 1.2 s ...
    "LORAQ_WEBHOOK_POLL_SECONDS": "0.2",
    "LORAQ_WEBHOOK_TIMEOUT_SECONDS": "2",  # a claim's lease: 3 x 2 + 10 = 16 s
    "LORAQ_WEBHOOK_SECRETS_KEY": Fernet.generate_key().decode(),  # secrets stored encrypted
}
PRIVATE = Policy(allow_private_networks=True, allow_http=True, timeout_seconds=5)


# --- a receiver ------------------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """An HTTP server thread that records each request; answers the first message (webhook-id) it sees with
    `answers` in turn, then 200, and every other message with 200."""

    answers: list[int] = field(default_factory=list)
    hold_first: threading.Event | None = None  # the first request waits for this before it is answered
    redirect_to: str | None = None
    body_bytes: int = 0
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                first = not receiver.received
                message = self.headers.get("webhook-id")
                first_message = (
                    not receiver.received or receiver.received[0].headers.get("webhook-id") == message
                )
                status = receiver.answers.pop(0) if receiver.answers and first_message else 200
                if receiver.redirect_to:
                    status = 302
                receiver.received.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body, status)
                )
                if first and receiver.hold_first is not None:
                    receiver.hold_first.wait(60)
                self.send_response(status)
                if receiver.redirect_to:
                    self.send_header("location", receiver.redirect_to)
                self.send_header("content-length", str(receiver.body_bytes))
                self.end_headers()
                with contextlib.suppress(OSError):  # the sender read what it wanted and hung up
                    self.wfile.write(b"x" * receiver.body_bytes)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/loraq"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def succeeded(self) -> list[Received]:
        return [request for request in self.received if 200 <= request.status < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as made:
        yield made


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def webhook_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_model: Path
) -> Iterator[Stack]:
    """A deployment whose webhooks may go to loopback, with the retry schedule scaled down."""
    if request.param == "embedded":
        stack = start_stack("webhooks", tmp_path_factory.mktemp("webhooks"), demo_model, WEBHOOK_ENV)
        yield stack
        stack.stop()
        return
    with fresh_postgres_database("webhooks") as database_url:
        env = {**WEBHOOK_ENV, "LORAQ_DATABASE_URL": database_url}
        # A Redis database of its own: on the suite's, the other Postgres deployment's worker would take
        # this one's jobs, find no such job in its database, and leave it to the stale-queue sweep.
        env["LORAQ_BROKER_URL"] = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/1"
        stack = start_stack("webhooks-pg", tmp_path_factory.mktemp("webhooks-pg"), demo_model, env)
        yield stack
        stack.stop()


def register(client: httpx.Client, url: str, event_types: list[str]) -> dict[str, Any]:
    response = client.post("/v1/webhooks", json={"url": url, "event_types": event_types, "description": "ci"})
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def deliveries(client: httpx.Client, webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 100})
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["data"]
    return listed


def verify(secret: str, request: Received) -> dict[str, Any]:
    """What a receiver does: check the signature with the standardwebhooks package, then read the event."""
    event: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return event


# --- over real deployments -------------------------------------------------------------------------------


# The two tests below run on one deployment each: what differs between the deployments for a delivery
# (the outbox's claim on SQLite and on Postgres) is tested on both databases by
# test_the_outbox_claims_retries_and_gives_up; a job's run through both is tested everywhere else.
@pytest.mark.parametrize("webhook_stack", ["embedded"], indirect=True)
def test_a_failing_receiver_gets_each_event_once_and_every_delivery_verifies(
    webhook_stack: Stack, receiver: Receiver
) -> None:
    receiver.answers = [500, 500, 500]
    with webhook_stack.client() as client:
        endpoint = register(client, receiver.url, ALL_EVENTS)
        secret = endpoint["secret"]
        assert (
            secret.startswith("whsec_")
            and "secret" not in client.get(f"/v1/webhooks/{endpoint['id']}").json()
        )
        training = upload_file(client, chat_dataset(8))
        body = job_body(training["id"], adapter={"type": "lora"}, method=method(**FAST_HYPERPARAMETERS))
        job_id = create_job(client, body)["id"]
        webhook_stack.wait_for_success(job_id)

        def settled() -> list[dict[str, Any]] | None:
            listed = deliveries(client, endpoint["id"])
            types = {d["event"]["type"] for d in listed}
            done = all(d["status"] == "succeeded" for d in listed)
            return (
                listed if done and {"fine_tuning.job.running", "fine_tuning.job.succeeded"} <= types else None
            )

        listed = wait_for(settled, timeout=60, what="every delivery to succeed")
        # Stored encrypted (the deployment has a secrets key), yet every delivery was signed with it.
        [stored] = database_rows(
            webhook_stack, f"SELECT secret FROM webhook_endpoints WHERE id = '{endpoint['id']}'"
        )
        assert stored[0].startswith("fernet:") and secret not in stored[0]
        client.delete(f"/v1/webhooks/{endpoint['id']}")

    # Every request verifies, and each event arrived exactly once as a success, whatever came before.
    events = [verify(secret, request) for request in receiver.received]
    assert all(event["data"] == {"id": job_id} and event["object"] == "event" for event in events)
    succeeded = [verify(secret, request) for request in receiver.succeeded()]
    assert sorted(event["id"] for event in succeeded) == sorted({event["id"] for event in events})
    assert len({r.headers["webhook-id"] for r in receiver.succeeded()}) == len(receiver.succeeded())
    assert [e["type"] for e in succeeded].count("fine_tuning.job.succeeded") == 1
    assert [e["type"] for e in succeeded].count("fine_tuning.job.running") == 1
    assert {e["id"] for e in succeeded} == {d["event"]["id"] for d in listed}

    # The first delivery took four attempts, all logged: three 500s and the 200.
    logged = sorted(([a["status_code"] for a in d["attempts"]] for d in listed), key=len)
    assert logged[-1] == [500, 500, 500, 200] and all(codes == [200] for codes in logged[:-1])

    # A receiver written for OpenAI's fine-tuning webhooks reads the event unchanged.
    [done] = [r for r in receiver.succeeded() if json.loads(r.body)["type"] == "fine_tuning.job.succeeded"]
    unwrapped = OpenAI(api_key="unused").webhooks.unwrap(done.body, done.headers, secret=secret)
    assert unwrapped.type == "fine_tuning.job.succeeded" and unwrapped.data.id == job_id


@pytest.mark.parametrize("webhook_stack", ["postgres"], indirect=True)
def test_a_worker_or_api_killed_before_the_delivery_still_delivers(webhook_stack: Stack) -> None:
    stack = webhook_stack
    for worker in stack.workers:
        if worker.poll() is None:
            stack.kill_worker(worker)
    with Receiver() as receiver:
        with stack.client() as client:
            endpoint = register(client, receiver.url, ["fine_tuning.job.cancelled"])
            training = upload_file(client, chat_dataset(4))
            job_id = create_job(client, job_body(training["id"], adapter={"type": "lora"}))["id"]
            # The cancel commits the delivery with the state change; then the API dies, no worker is up.
            assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        assert stack.api is not None
        os.killpg(stack.api.pid, signal.SIGKILL)
        stack.api.wait(timeout=30)
        stack.start_api()
        with stack.client() as client:
            [pending] = deliveries(client, endpoint["id"])
            assert pending["status"] == "pending" and pending["attempts"] == [] and receiver.received == []
            stack.start_worker()
            wait_for(lambda: receiver.succeeded(), timeout=90, what="the cancelled event")
            event = verify(endpoint["secret"], receiver.received[0])
            assert event["type"] == "fine_tuning.job.cancelled" and event["data"]["id"] == job_id
            wait_for(lambda: deliveries(client, endpoint["id"])[0]["status"] == "succeeded", timeout=30)
            client.delete(f"/v1/webhooks/{endpoint['id']}")

    # Killed in the middle of a send: its claim lapses and the next worker sends the same delivery again.
    release = threading.Event()
    with Receiver(hold_first=release) as receiver, stack.client() as client:
        endpoint = register(client, receiver.url, ["fine_tuning.job.cancelled"])
        training = upload_file(client, chat_dataset(4))
        job_id = create_job(client, job_body(training["id"], adapter={"type": "lora"}))["id"]
        client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        wait_for(lambda: receiver.received, timeout=60, what="the first attempt to arrive")
        stack.kill_worker(stack.workers[-1])
        release.set()
        stack.start_worker()
        wait_for(lambda: len(receiver.received) >= 2, timeout=90, what="the delivery to be sent again")
        first, again = receiver.received[:2]
        assert first.headers["webhook-id"] == again.headers["webhook-id"]  # receivers can drop duplicates
        verify(endpoint["secret"], again)
        done = wait_for(
            lambda: (d := deliveries(client, endpoint["id"])[0])["status"] == "succeeded" and d,
            timeout=30,
            what="the delivery to be recorded",
        )
        # The killed worker's attempt never landed: only the one that finished is logged.
        assert [a["status_code"] for a in done["attempts"]] == [200]
        client.delete(f"/v1/webhooks/{endpoint['id']}")


def test_private_addresses_are_refused_and_other_projects_see_no_webhook(stack: Stack) -> None:
    """On the default settings (no private networks): every kind of non-public address is refused."""
    refused = [
        "http://93.184.215.14/hook",  # plain http
        "ftp://93.184.215.14/hook",
        "https://user:secret@93.184.215.14/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://[fd00::1]/hook",
        "https://0.0.0.0/hook",
    ]
    with stack.client() as owner:
        for url in refused:
            response = owner.post(
                "/v1/webhooks", json={"url": url, "event_types": ["fine_tuning.job.failed"]}
            )
            assert response.status_code == 400, (url, response.text)
            assert response.json()["error"]["param"] == "url", url
        bad_type = owner.post("/v1/webhooks", json={"url": "https://93.184.215.14/", "event_types": ["x"]})
        assert bad_type.status_code == 400
        endpoint = register(owner, "https://93.184.215.14/hook", ["fine_tuning.job.succeeded"])
    try:
        webhook = f"/v1/webhooks/{endpoint['id']}"
        with stack.client(project_key(stack, name="webhook-outsiders")) as outsider:
            assert outsider.get("/v1/webhooks").json()["data"] == []
            for verb, path in [
                ("GET", webhook),
                ("DELETE", webhook),
                ("POST", f"{webhook}/rotate_secret"),
                ("GET", f"{webhook}/deliveries"),
                ("POST", f"{webhook}/deliveries/msg_x/redeliver"),
            ]:
                response = outsider.request(verb, path)
                assert response.status_code == 404, (verb, path, response.text)
        with stack.client() as owner:
            rotated = owner.post(f"{webhook}/rotate_secret").json()
            assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
            assert [e["id"] for e in owner.get("/v1/webhooks").json()["data"]] == [endpoint["id"]]
    finally:
        with stack.client() as owner:
            assert owner.delete(webhook).json() == {
                "id": endpoint["id"],
                "object": "webhook_endpoint.deleted",
                "deleted": True,
            }
            assert owner.get(webhook).status_code == 404


# --- the parts ---------------------------------------------------------------------------------------------


def test_secrets_are_sealed_with_the_operators_key() -> None:
    key, secret = Fernet.generate_key().decode(), new_secret()
    assert seal(secret, "") == secret and unseal(secret, key) == secret  # no key; stored before the key
    sealed = seal(secret, key)
    assert secret not in sealed and unseal(sealed, key) == secret
    for wrong in ["", Fernet.generate_key().decode()]:
        with pytest.raises(UnsealError):
            unseal(sealed, wrong)


def test_signatures_verify_with_the_standardwebhooks_package() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = json.dumps(
        {"id": "evt_1", "object": "event", "type": "fine_tuning.job.failed", "data": {"id": "j"}}
    )
    headers = signed_headers(secret, message_id="msg_1", timestamp=int(time.time()), body=body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("failed", "succeeded"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),  # link-local: cloud metadata
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd12:3456::1", False),  # unique local
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("::ffff:93.184.215.14", True),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_urls_are_checked_by_form_and_by_where_they_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Policy()
    check_url("https://93.184.215.14:8443/hook?x=1", default)
    for url in ["http://93.184.215.14/", "https://[::ffff:7f00:1]/", "https://localhost/", "https:///x"]:
        with pytest.raises(RefusedDestination):
            check_url(url, default)
    check_url("http://127.0.0.1:9/hook", PRIVATE)
    check_url("http://93.184.215.14/", Policy(allow_http=True))
    # A name is judged by every address it resolves to.
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo", _resolving({"mixed.example": ["93.184.215.14", "10.0.0.7"]}, real)
    )
    with pytest.raises(RefusedDestination, match=r"10\.0\.0\.7"):
        check_url("https://mixed.example/hook", default)


def test_a_send_goes_to_the_checked_address_follows_no_redirect_and_reads_little(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = {"webhook-id": "msg_1"}
    with Receiver(redirect_to="http://127.0.0.1:9/elsewhere") as receiver:
        redirected = send(receiver.url, body="{}", headers=headers, policy=PRIVATE)
        assert redirected.status_code == 302 and not redirected.succeeded and len(receiver.received) == 1
    with Receiver(body_bytes=1 << 20) as receiver:
        big = send(receiver.url, body="{}", headers=headers, policy=PRIVATE)
        assert big.succeeded and big.response_excerpt is not None and len(big.response_excerpt) <= 512
        # At send time too: loopback is refused unless allowed, and nothing is sent.
        refused = send(receiver.url, body="{}", headers=headers, policy=Policy(allow_http=True))
        assert refused.status_code is None and "non-public" in (refused.error or "")
        # A name that resolves to loopback now (DNS rebinding) is refused, and when allowed the request
        # goes to the address resolved and checked, carrying the name as its Host.
        port = receiver.server.server_address[1]
        monkeypatch.setattr(
            socket, "getaddrinfo", _resolving({"rebound.example": ["127.0.0.1"]}, socket.getaddrinfo)
        )
        url = f"http://rebound.example:{port}/hook"
        assert send(url, body="{}", headers=headers, policy=Policy(allow_http=True)).status_code is None
        assert len(receiver.received) == 1
        assert send(url, body="{}", headers=headers, policy=PRIVATE).succeeded
        assert receiver.received[-1].headers["host"] == f"rebound.example:{port}"


def test_the_outbox_claims_retries_and_gives_up(database_url: str) -> None:
    engine = migrated_engine(database_url)
    with Session(engine) as session:
        job_id = new_job(session)
        project_id = session.scalars(select(Job.project_id).where(Job.id == job_id)).one()
        wanted = loopback_endpoint(session, project_id, "/hook", "fine_tuning.job.cancelled")
        loopback_endpoint(session, project_id, "/other", "fine_tuning.job.succeeded")
        # The state change writes the delivery in its own transaction, for the endpoints that asked.
        assert runs.cancel(session, job_id)
        session.commit()
        page, _ = service.list_deliveries(
            session, project_id=project_id, endpoint_id=wanted.id, after=None, limit=10
        )
        [delivery] = page.items
        assert json.loads(delivery.payload)["type"] == "fine_tuning.job.cancelled"

        # One sender at a time: the claim holds it until its lease ends.
        first = service.claim_next(session, lease_seconds=60)
        assert first is not None and first.delivery_id == delivery.id
        assert service.claim_next(session, lease_seconds=60) is None
        session.commit()

        failed = _attempt(500)
        assert service.record_attempt(session, first, failed, retry_scale=1.0) == "pending"
        session.commit()
        session.refresh(delivery)
        assert delivery.next_attempt_at is not None and delivery.next_attempt_at > time.time() + 3
        # Retries for more than a day, then gives up.
        assert sum(service.RETRY_DELAYS) > 24 * 3600
        delivery.next_attempt_at = 0
        session.commit()
        statuses = []
        while (outgoing := service.claim_next(session, lease_seconds=60)) is not None:
            statuses.append(service.record_attempt(session, outgoing, failed, retry_scale=0.0))
            session.commit()
        assert statuses == ["pending"] * (len(service.RETRY_DELAYS) - 1) + ["failed"]

        # Redelivered by hand: pending again, and a lapsed claim is taken over, its late outcome ignored.
        service.redeliver(session, project_id=project_id, endpoint_id=wanted.id, delivery_id=delivery.id)
        session.commit()
        lapsed = service.claim_next(session, lease_seconds=0)
        session.commit()
        taken_over = service.claim_next(session, lease_seconds=60)
        assert lapsed is not None and taken_over is not None and taken_over.token != lapsed.token
        service.record_attempt(session, lapsed, _attempt(200), retry_scale=1.0)
        session.commit()
        session.refresh(delivery)
        assert delivery.status == "pending"
        assert service.record_attempt(session, taken_over, _attempt(200), retry_scale=1.0) == "succeeded"
        session.commit()
        _, attempts = service.list_deliveries(
            session, project_id=project_id, endpoint_id=wanted.id, after=None, limit=10
        )
        assert len(attempts[delivery.id]) == len(service.RETRY_DELAYS) + 1 + 2
    engine.dispose()


def test_settled_deliveries_are_deleted_after_their_retention(database_url: str) -> None:
    engine = migrated_engine(database_url)
    day = 86_400
    with Session(engine) as session:
        # A project of its own: no other test's endpoint gets these jobs' events.
        project_name = f"retention-{uuid.uuid4().hex}"
        job_ids = [new_job(session, project_name=project_name) for _ in range(3)]
        project_id = session.scalars(select(Job.project_id).where(Job.id == job_ids[0])).one()
        endpoint = loopback_endpoint(session, project_id, "/hook", "fine_tuning.job.cancelled")
        for job_id in job_ids:  # three jobs cancelled: three deliveries to the endpoint
            assert runs.cancel(session, job_id)
            session.commit()
        succeeded, failed, pending = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
            .order_by(WebhookDelivery.seq)
        ).all()
        for delivery, status_code in ((succeeded, 200), (failed, 500)):
            delivery.next_attempt_at = 0
            session.commit()
            outgoing = service.claim_next(session, lease_seconds=60)
            assert outgoing is not None and outgoing.delivery_id == delivery.id
            service.record_attempt(session, outgoing, _attempt(status_code), retry_scale=0.0)
            session.commit()
        failed.status = "failed"  # as after its last retry
        pending.next_attempt_at = time.time() + day  # still retrying
        for delivery in (succeeded, failed, pending):
            delivery.created_at -= 31 * day
        session.commit()
        ids = {delivery.id for delivery in (succeeded, failed, pending)}

        def remaining() -> set[str]:
            return set(session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.id.in_(ids))))

        # Inside the retention, or with retention off (0), nothing goes.
        assert service.prune_deliveries(session, retention_days=32) == 0
        assert service.prune_deliveries(session, retention_days=0) == 0
        # Past it, the settled ones go with their attempts; the pending one still has tries left.
        assert service.prune_deliveries(session, retention_days=30) == 2
        session.commit()
        assert remaining() == {pending.id}
        assert not session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_([succeeded.id, failed.id]))
        ).all()
    engine.dispose()


# --- helpers -----------------------------------------------------------------------------------------------


def loopback_endpoint(session: Session, project_id: str, path: str, event_type: str) -> WebhookEndpoint:
    """An endpoint on a closed loopback port, stored with its secret in the clear."""
    endpoint, _secret = service.create_endpoint(
        session,
        project_id=project_id,
        url=f"http://127.0.0.1:9{path}",
        event_types=[event_type],
        description=None,
        policy=PRIVATE,
        secrets_key="",
    )
    return endpoint


def _attempt(status_code: int) -> Attempt:
    return Attempt(status_code=status_code, error=None, response_excerpt=None, duration_ms=3)


def _resolving(names: dict[str, list[str]], real: Any) -> Any:
    """A getaddrinfo that answers these names with these addresses, and asks the real one otherwise."""

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in names:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in names[host]]

    return getaddrinfo
