"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real API and worker.

The screenshots in docs/screenshots/ are written here, from the code under test.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    FilePayload,
    FloatRect,
    Page,
    Request,
    Route,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.helpers import (
    FAST_HYPERPARAMETERS,
    all_pages,
    chat_dataset,
    create_job,
    job_body,
    jsonl,
    method,
    newest_checkpoint_step,
    slow_dataset,
    upload,
)
from tests.stack import Stack, wait_for

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}

# One deployment is enough for the browser: the embedded default.
pytestmark = pytest.mark.parametrize("stack", ["embedded"], indirect=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "the dashboard tests need Debian's Chromium: apt-get install chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def project(stack: Stack) -> dict[str, str]:
    """A project of the module's own, so its lists hold only what these tests made; and its key."""
    with stack.client() as admin:
        created = admin.post("/v1/projects", json={"name": f"dashboard-{secrets.token_hex(3)}"}).json()
        key = admin.post(f"/v1/projects/{created['id']}/api_keys").json()["value"]
    return {"id": created["id"], "name": created["name"], "key": key}


@pytest.fixture(scope="module")
def trained_job(stack: Stack, project: dict[str, str]) -> dict[str, Any]:
    """A succeeded job with validation data and checkpoints, made through the API."""
    with stack.client(project["key"]) as client:
        training = upload(client, chat_dataset(24))
        validation = upload(client, chat_dataset(8), "valid.jsonl")
        body = job_body(
            training["id"],
            validation_file=validation["id"],
            suffix="api-made",
            metadata={"team": "search"},
            adapter={"type": "lora", "r": 4},
            method=method(**FAST_HYPERPARAMETERS, save_steps=3, eval_steps=3),
        )
        job = create_job(client, body)
    return succeeded(stack, job["id"], project["key"]) | {"key": project["key"]}


def succeeded(stack: Stack, job_id: str, key: str) -> dict[str, Any]:
    job = stack.wait_for_job(job_id, key=key, timeout=300)
    assert job["status"] == "succeeded", (job["error"], stack.all_worker_logs())
    return job


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=DESKTOP)
    yield context
    context.close()


def screenshot(page: Page, name: str, *, height: int | None = None) -> None:
    """The whole page, or its top `height` pixels."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # let the last poll's rendering settle
    page.evaluate("window.scrollTo(0, 0)")
    width = page.evaluate("document.documentElement.clientWidth")
    clip: FloatRect | None = {"x": 0, "y": 0, "width": width, "height": height} if height else None
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, clip=clip)


def sign_in(page: Page, stack: Stack, key: str) -> None:
    page.goto(stack.base_url + "/")
    page.get_by_label("API key").fill(key)
    page.locator("form.signin").get_by_role("button", name="Sign in").click()
    expect(page.locator("#project-name")).to_be_visible()


def file_payload(name: str, content: bytes) -> FilePayload:
    return {"name": name, "mimeType": "text/plain", "buffer": content}


def plotted(page: Page) -> dict[str, Any]:
    """What the loss chart plots, after deduplication: its data-series attribute."""
    raw = page.locator("#loss-chart").get_attribute("data-series")
    assert raw, "the chart has not been drawn"
    data: dict[str, Any] = json.loads(raw)
    return data


def test_a_job_from_upload_to_download(
    stack: Stack, context: BrowserContext, project: dict[str, str], trained_job: dict[str, Any]
) -> None:
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(stack.base_url + "/")
    expect(page.get_by_label("API key")).to_be_visible()
    screenshot(page, "sign-in")
    sign_in(page, stack, project["key"])
    expect(page.locator("#project-name")).to_have_text(project["name"])
    assert page.evaluate("sessionStorage.length") == 1

    # New job: a bad file is refused with its line number, in place; a good one is then picked.
    page.get_by_role("link", name="New job").first.click()
    bad = jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    bad += b'{"messages": [{"role": "robot", "content": "x"}]}\n'
    page.set_input_files("#dataset-file", files=[file_payload("bad.jsonl", bad)])
    expect(page.locator("#upload-error")).to_contain_text("line 2: messages[0].role must be one of")
    page.set_input_files("#dataset-file", files=[file_payload("colors.jsonl", chat_dataset(24))])
    expect(page.locator("#upload-status")).to_contain_text("24 chat examples")
    expect(page.locator("#upload-error")).to_be_hidden()
    assert page.locator("#training_file").input_value().startswith("file-")
    assert page.locator("#validation_file").input_value() == ""

    page.get_by_label("Adapter", exact=True).select_option("lora")
    page.get_by_label("Rank r").fill("4")
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Learning rate", exact=True).fill("0.005")
    page.get_by_label("Max sequence length").fill("64")
    page.get_by_label("Save every N steps").fill("4")
    page.get_by_label("Suffix").fill("browser-made")
    page.get_by_role("button", name="Estimate").click()
    expect(page.locator('[data-estimate="Total steps"]')).to_have_text("12")
    expect(page.locator("#estimate")).to_contain_text("base weights")
    screenshot(page, "new-job")

    page.get_by_role("button", name="Create job").click()
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__loaded_once = true")
    # Landed before the worker has trained every step; the rest arrives by polling, with no reload.
    wait_for(lambda: page.locator("#loss-chart").get_attribute("data-series"), timeout=10, what="the chart")
    assert len(plotted(page)["steps"]) < 12
    expect(page.locator(".heading-status .badge")).to_have_text("succeeded", timeout=240_000)
    expect(page.locator("#checkpoints tbody tr")).to_have_count(3)  # steps 4, 8, 12
    expect(page.locator("#events")).to_contain_text("Step 12: train_loss=")
    wait_for(lambda: len(plotted(page)["steps"]) == 12, timeout=10, what="all 12 steps plotted")
    assert plotted(page)["steps"] == list(range(1, 13))
    assert page.evaluate("window.__loaded_once") is True  # the same document all along

    with stack.client(project["key"]) as client:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        expected = client.get(f"/v1/files/{job['result_files'][0]}/content").content
    result_button = page.locator(f'.files button[data-file-id="{job["result_files"][0]}"]')
    with page.expect_download() as download:
        result_button.click()
    assert Path(download.value.path()).read_bytes() == expected
    assert download.value.suggested_filename.endswith("-adapter.tar.gz")
    page.get_by_role("button", name="Show manifest").click()
    expect(page.locator("#manifest")).to_contain_text('"adapter_type": "lora"')

    # The job made through the API: its chart has the base model's reference line when the job has one.
    page.goto(f"{stack.base_url}/#/jobs/{trained_job['id']}")
    article = page.locator(f'article[data-job-id="{trained_job["id"]}"]')
    expect(article.locator("#checkpoints tbody tr").first).to_be_visible()
    wait_for(lambda: len(plotted(page)["steps"]) == 12, timeout=10, what="the trained job's chart")
    evaluation = trained_job.get("evaluation") or {}
    assert plotted(page)["base_valid_loss"] == evaluation.get("base_valid_loss")
    # The seed as the API gives it, to copy into a spec: digits only, no thousands separators.
    expect(article.locator("dt:text-is('Seed') + dd")).to_have_text(str(trained_job["seed"]))
    screenshot(page, "job-detail", height=1280)  # the top: progress and the chart

    # Cancel a running job from its row.
    with stack.client(project["key"]) as client:
        slow = upload(client, slow_dataset(32), "slow.jsonl")
        body = job_body(
            slow["id"],
            adapter={"type": "lora", "r": 4},
            method=method(n_epochs=10, batch_size=4, max_seq_len=512),
        )
        running = create_job(client, body)
    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f'tr[data-job-id="{running["id"]}"]')
    expect(row).to_have_attribute("data-status", "running", timeout=180_000)
    screenshot(page, "jobs")
    row.get_by_role("button", name=f"Cancel {running['id']}").click()
    expect(row).to_have_attribute("data-status", "cancelled", timeout=30_000)

    # Filter by status, and search.
    page.get_by_label("Status").select_option("cancelled")
    expect(page.locator("tbody tr[data-job-id]")).to_have_count(1)
    expect(page.locator(f'tr[data-job-id="{running["id"]}"]')).to_be_visible()
    page.get_by_label("Status").select_option("succeeded")
    expect(page.locator("tbody tr[data-job-id]")).to_have_count(2)
    page.get_by_label("Search").fill("browser-made")
    expect(page.locator("tbody tr[data-job-id]")).to_have_count(1)
    expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_be_visible()
    page.get_by_label("Search").fill("SEARCH")  # a metadata value, any case
    expect(page.locator(f'tr[data-job-id="{trained_job["id"]}"]')).to_be_visible()
    expect(page.locator("tbody tr[data-job-id]")).to_have_count(1)
    page.get_by_label("Status").select_option("")
    page.get_by_label("Search").fill("")
    # A click anywhere on a row opens its job, not only on the id.
    page.locator(f'tr[data-job-id="{trained_job["id"]}"] td[data-label="Model"]').click()
    page.wait_for_url(f"**/#/jobs/{trained_job['id']}")
    page.go_back()
    expect(page.locator(f'tr[data-job-id="{trained_job["id"]}"]')).to_be_visible()

    # Datasets: the uploads, with a preview of the first examples.
    page.get_by_role("link", name="Datasets").click()
    expect(page.locator("#datasets tbody tr")).to_have_count(4)
    page.get_by_role("button", name="Preview colors.jsonl").click()
    expect(page.locator("#preview")).to_contain_text("What color is item 0?")
    screenshot(page, "datasets")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    # The key went in a header only, downloads included: no URL the page asked for carries it.
    assert any("/content" in url for url in requested)
    assert not [url for url in requested if project["key"] in url]


def test_admin_issues_and_revokes_keys(stack: Stack, context: BrowserContext) -> None:
    page = context.new_page()
    sign_in(page, stack, stack.admin_key)
    page.get_by_role("link", name="Admin").click()
    name = f"team-{secrets.token_hex(3)}"
    page.get_by_label("New project name").fill(name)
    page.get_by_role("button", name="Create project").click()
    page.get_by_role("button", name=f"Issue a key for {name}").click()
    secret = page.locator("#new-key").inner_text()
    with stack.client(secret) as client:
        me = client.get("/v1/me").json()
        assert (me["project_name"], me["is_admin"]) == (name, False)
    screenshot(page, "admin")
    card = page.locator("section.card", has=page.get_by_role("heading", name=name))
    page.once("dialog", lambda dialog: dialog.accept())
    card.get_by_role("button", name="Revoke").click()
    expect(card.locator("tbody")).to_contain_text("revoked")
    with stack.client(secret) as client:
        assert client.get("/v1/me").status_code == 401


def test_no_horizontal_scrolling_on_a_phone(
    stack: Stack, browser: Browser, trained_job: dict[str, Any]
) -> None:
    context = browser.new_context(viewport=PHONE)
    try:
        page = context.new_page()
        sign_in(page, stack, trained_job["key"])
        for route, ready in (
            ("#/jobs", f'tr[data-job-id="{trained_job["id"]}"]'),
            (f"#/jobs/{trained_job['id']}", "#checkpoints tbody tr >> nth=0"),
            ("#/new", "#model option >> nth=0"),
            ("#/datasets", "#datasets tbody tr >> nth=0"),
        ):
            page.goto(f"{stack.base_url}/{route}")
            page.locator(ready).wait_for(state="attached")
            page.wait_for_timeout(300)
            width, client_width = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert width <= client_width, f"{route} scrolls sideways at 390 px: {width} > {client_width}"
            if route.startswith("#/jobs/"):
                screenshot(page, "job-detail-phone", height=1400)
    finally:
        context.close()


def test_no_column_heading_breaks_mid_word(
    stack: Stack, context: BrowserContext, trained_job: dict[str, Any]
) -> None:
    page = context.new_page()
    sign_in(page, stack, trained_job["key"])
    page.goto(f"{stack.base_url}/#/jobs/{trained_job['id']}")
    page.locator("#events tbody tr >> nth=0").wait_for(state="attached")
    # Each heading's text on one line: the page breaks long words anywhere, and a narrow column took
    # "Level" apart ("Lev" / "el").
    broken = page.evaluate(
        """[...document.querySelectorAll("thead th")].filter((th) => {
            const text = document.createRange();
            text.selectNodeContents(th);
            return new Set([...text.getClientRects()].map((r) => Math.round(r.top))).size > 1;
        }).map((th) => th.textContent)"""
    )
    assert broken == []


def test_works_with_no_internet(stack: Stack, browser: Browser, trained_job: dict[str, Any]) -> None:
    """Every request to a host other than the server's is cut off: the dashboard and /docs still load."""
    context = browser.new_context(viewport=DESKTOP)
    origin = urlsplit(stack.base_url).netloc
    cut: list[str] = []
    failed: list[str] = []

    def only_the_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc in (origin, ""):
            route.continue_()
        else:
            cut.append(route.request.url)
            route.abort("internetdisconnected")

    refused: list[str] = []

    def record_failure(request: Request) -> None:
        # A poll still in flight when the page navigates away is aborted by the browser: not a failure.
        if request.url.startswith(("blob:", "data:")) or request.failure == "net::ERR_ABORTED":
            return
        # Refused by the page's own Content-Security-Policy: the browser never sent it anywhere.
        # Only ReDoc's footer logo (cdn.redoc.ly, hard-coded in its bundle) may be refused so.
        if request.failure == "csp":
            refused.append(request.url)
            return
        failed.append(f"{request.url}: {request.failure}")

    context.route("**/*", only_the_server)
    context.on("requestfailed", record_failure)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        sign_in(page, stack, trained_job["key"])
        page.goto(f"{stack.base_url}/#/jobs/{trained_job['id']}")
        expect(page.locator("#loss-chart canvas")).to_be_visible()
        page.goto(stack.base_url + "/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("loraq", timeout=30_000)
        expect(page.locator(".opblock").first).to_be_visible()
        page.goto(stack.base_url + "/redoc")
        expect(page.locator("h1").first).to_contain_text("loraq", timeout=30_000)
        assert not errors, errors
        assert not cut, f"the pages asked the internet for: {cut}"
        assert not failed, failed
        assert all(urlsplit(url).netloc == "cdn.redoc.ly" for url in refused), refused
    finally:
        context.close()


def test_a_resumed_job_plots_each_step_once(
    stack: Stack, context: BrowserContext, project: dict[str, str]
) -> None:
    with stack.client(project["key"]) as client:
        # 24 steps, a checkpoint every 3: eight chances to see steps logged past one before the job ends.
        training = upload(client, slow_dataset(16), "resume.jsonl")
        body = job_body(
            training["id"],
            seed=5,
            adapter={"type": "lora", "r": 4},
            method=method(n_epochs=3, batch_size=2, learning_rate=1e-3, max_seq_len=512, save_steps=3),
        )
        job = create_job(client, body)

        def past_a_checkpoint() -> bool:
            state = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
            assert state["status"] in {"queued", "running"}, state["error"]
            checkpoint = newest_checkpoint_step(client, job["id"])
            events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]  # the newest
            logged = [e["data"]["step"] for e in events if "train_loss" in (e["data"] or {})]
            return checkpoint > 0 and max(logged, default=0) > checkpoint

        # Killed after steps past its checkpoint were logged: the resumed run trains those steps again.
        wait_for(past_a_checkpoint, timeout=180, interval=0.1, what="steps logged past a checkpoint")
    for worker in stack.workers:
        if worker.poll() is None:
            stack.kill_worker(worker)
    stack.start_worker()
    done = succeeded(stack, job["id"], project["key"])
    with stack.client(project["key"]) as client:
        events = all_pages(client, f"/v1/fine_tuning/jobs/{job['id']}/events")
    assert any("resumed_from_step" in (event["data"] or {}) for event in events), "the job resumed"

    page = context.new_page()
    sign_in(page, stack, project["key"])
    page.goto(f"{stack.base_url}/#/jobs/{job['id']}")
    total = done["progress"]["total_steps"]
    wait_for(lambda: page.locator("#loss-chart").get_attribute("data-series"), timeout=15, what="the chart")
    steps = plotted(page)["steps"]
    assert steps == list(range(1, total + 1)), steps
    assert page.evaluate("window.__chartData.steps") == steps

    # The API drops the metrics past the checkpoint a run resumes from; the chart holds on its own too:
    # events that log a step twice (oldest first, as the chart reads them) give one point, the latest.
    rows = page.evaluate(
        """async () => (await import("/static/chart.js")).metricsByStep([
            {type: "metrics", data: {step: 1, train_loss: 3}},
            {type: "metrics", data: {step: 2, train_loss: 2}},
            {type: "message", data: {resumed_from_step: 1}},
            {type: "metrics", data: {step: 2, train_loss: 1.5}},
            {type: "metrics", data: {step: 2, valid_loss: 1.7}},
            {type: "metrics", data: {step: 3, train_loss: 1}}])"""
    )
    assert rows == [
        {"step": 1, "train_loss": 3},
        {"step": 2, "train_loss": 1.5, "valid_loss": 1.7},
        {"step": 3, "train_loss": 1},
    ]


def test_accuracy_is_plotted_on_a_fixed_percent_scale(stack: Stack, context: BrowserContext) -> None:
    """A token accuracy of 0.10-0.14 sits near the bottom of its 0-100% axis, not at the top of a scale
    fitted to its own range, where it would look like a model that gets every token right."""
    page = context.new_page()
    page.goto(stack.base_url + "/")
    drawn = page.evaluate(
        """async () => {
            const { LossChart } = await import("/static/chart.js");
            const container = document.createElement("div");
            container.style.width = "800px";
            document.body.append(container);
            const chart = new LossChart(container);
            chart.update([1, 2, 3, 4].map((step) => ({
                step, train_loss: 4 - step / 4, learning_rate: 0.001,
                train_mean_token_accuracy: 0.09 + step / 100,
            })), null);
            await new Promise((resolve) => requestAnimationFrame(resolve));  // uPlot sets its scales on draw
            const plot = chart.plot;
            const accuracyAxis = plot.axes.find((axis) => axis.scale === "acc");
            return {
                min: plot.scales.acc.min, max: plot.scales.acc.max,
                label: accuracyAxis && accuracyAxis.label,
                ticks: accuracyAxis ? accuracyAxis.values(plot, [0, 0.5, 1]) : null,
                lossMax: plot.scales.loss.max,
            };
        }"""
    )
    assert (drawn["min"], drawn["max"]) == (0, 1)
    assert drawn["label"] == "token accuracy"
    assert drawn["ticks"] == ["0%", "50%", "100%"]
    assert 3.75 <= drawn["lossMax"] < 5  # the loss axis still fits the loss
