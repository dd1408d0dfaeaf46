"""The README walkthrough, end to end, against a real server: does fine-tuning SmolLM2 teach it something?

It starts `make serve`'s processes in a fresh home, uploads examples/json_answers, creates the job of
examples/json_answers/job.json on `smollm2-135m-instruct`, waits for it, reads its evaluation and its
samples, chats with the `ft:` model, and prints the verdict: wall time, base vs tuned valid loss, and in
how many samples each model answers as the data teaches (a JSON object: make_dataset.shows_behaviour).

    .venv/bin/python bench/walkthrough.py            # targets: < 10 min, loss >= 30% lower, >= 4/5 vs <= 1/5
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from openai import NotFoundError, OpenAI

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from examples.make_dataset import shows_behaviour  # noqa: E402

EXAMPLE = REPO / "examples" / "json_answers"
FINISHED = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`scripts/serve.py` (what `make serve` runs) in its own home and session."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.env = {**os.environ, "LORAQ_HOME": str(home), "PORT": str(self.port), "HF_HUB_OFFLINE": "1"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it and wait until it is ready; the seconds that took."""
        started = time.monotonic()
        self._offer_converted_smollm2()
        log = (self.home / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "serve.py")],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.home / 'serve.log'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the server did not become ready; see {self.home / 'serve.log'}")

    def _offer_converted_smollm2(self) -> None:
        """The tests' converted SmolLM2, if this checkout has one: the first start converts it otherwise."""
        try:
            from tests.smollm2_cache import link_smollm2

            link_smollm2(self.home / "models")
        except Exception as error:  # no cache: serve.py converts it (a minute or two)
            print(f"(no cached SmolLM2 conversion: {error}; the server converts it)")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return (self.home / "admin.key").read_text().strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def wait(client: OpenAI, job_id: str) -> Any:
    """Poll the job until it ends, printing its progress now and then."""
    last_print = 0.0
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in FINISHED:
        if time.monotonic() - last_print > 20:
            last_print = time.monotonic()
            progress = getattr(job, "progress", None) or {}
            print(
                f"  {job.status}: step {progress.get('step', 0)}/{progress.get('total_steps', '?')}"
                f", eta {progress.get('eta_seconds') or 0:.0f}s",
                flush=True,
            )
        time.sleep(2)
    return job


def chat(client: OpenAI, model: str, messages: list[dict[str, Any]]) -> str | None:
    """The ft: model's answer; None where this server has no chat completions."""
    try:
        answer = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_completion_tokens=32,
            temperature=0,
        )
    except NotFoundError:
        return None
    return answer.choices[0].message.content


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="loraq-walkthrough-") as home_dir:
        server = Server(Path(home_dir))
        try:
            startup = server.start()
            print(f"server ready in {startup:.0f}s at {server.url}")
            return walkthrough(server)
        finally:
            server.stop()


def walkthrough(server: Server) -> int:
    """The README's steps, with the openai SDK; prints the verdict; 0 if it met the targets."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.key, timeout=300)
    started = time.monotonic()
    train = client.files.create(file=(EXAMPLE / "train.jsonl").open("rb"), purpose="fine-tune")
    valid = client.files.create(file=(EXAMPLE / "validation.jsonl").open("rb"), purpose="fine-tune")
    spec = json.loads((EXAMPLE / "job.json").read_text())
    job = client.fine_tuning.jobs.create(
        model=spec["model"],
        training_file=train.id,
        validation_file=valid.id,
        seed=spec["seed"],
        method=spec["method"],
        extra_body={"adapter": spec["adapter"], "sample_max_new_tokens": spec["sample_max_new_tokens"]},
    )
    print(f"job {job.id} created on {spec['model']}")
    job = wait(client, job.id)
    trained = time.monotonic() - started
    if job.status != "succeeded":
        print(f"job {job.status}: {job.error}")
        return 1
    path = f"/fine_tuning/jobs/{job.id}/samples"
    samples = client.get(path, cast_to=object, options={"params": {"limit": 100}})
    rows: list[dict[str, Any]] = samples["data"]  # type: ignore[index]
    final_step = max(row["step"] for row in rows)
    final = [row for row in rows if row["step"] == final_step]
    for row in final:
        print(f"- input: {json.dumps(row['input'])[-90:]}")
        print(f"  base:  {row['base_output'][:90]!r}")
        print(f"  tuned: {row['output'][:90]!r}")
    answer = chat(client, job.fine_tuned_model, final[0]["input"])
    wall = time.monotonic() - started
    if answer is None:
        print("chat: this server has no /v1/chat/completions; skipped")
    else:
        print(f"chat with {job.fine_tuned_model}: {answer!r}")

    evaluation: dict[str, Any] = job.evaluation
    tuned_shows = sum(shows_behaviour(row["output"]) for row in final)
    base_shows = sum(shows_behaviour(row["base_output"]) for row in final)
    targets = {
        "wall time under 10 minutes": wall < 600,
        "valid loss at least 30% lower": evaluation["improvement"] >= 0.30,
        "tuned shows the behaviour in >= 4 of 5": tuned_shows >= 4 * len(final) / 5,
        "base shows it in <= 1 of 5": base_shows <= len(final) / 5,
    }
    print()
    print(f"wall time: {wall:.0f}s (upload to succeeded {trained:.0f}s; the server's start not counted)")
    print(
        f"valid loss: base {evaluation['base_valid_loss']:.3f} -> tuned {evaluation['valid_loss']:.3f}"
        f" ({evaluation['improvement']:.0%} lower; best {evaluation['best_valid_loss']:.3f}"
        f" at step {evaluation['best_step']})"
    )
    print(f"answers as JSON objects: tuned {tuned_shows}/{len(final)}, base {base_shows}/{len(final)}")
    if answer is not None:
        print(f"chat answer shows it: {shows_behaviour(answer)}")
    for target, met in targets.items():
        print(f"{'met' if met else 'MISSED'}: {target}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
