"""Property-based tests of the job state machine on a real database: whatever the order of claims,
heartbeats, lease expiries, checkpoints, cancels and finishes, a job never has two live leases and
never reaches two terminal states."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from loraq.jobs import runs
from loraq.jobs.states import TERMINAL, JobStatus, Lease
from loraq.jobs.tables import Job
from tests.helpers import migrated_engine, new_job

WORKERS = ["w1", "w2", "w3"]
MAX_ATTEMPTS = 4


class JobLifecycle(RuleBasedStateMachine):
    engine: ClassVar[Engine]

    @initialize()
    def create_job(self) -> None:
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        with self.sessions.begin() as session:
            self.job_id = new_job(session, project_name=f"props-{time.monotonic_ns()}")
        self.leases: dict[str, Lease] = {}
        self.terminal_wins: list[JobStatus] = []

    def _run(self, action):  # type: ignore[no-untyped-def]
        with self.sessions.begin() as session:
            return action(session)

    @rule(worker=st.sampled_from(WORKERS))
    def claim(self, worker: str) -> None:
        lease = self._run(
            lambda s: runs.claim(
                s,
                self.job_id,
                owner=f"{worker}-{time.monotonic_ns()}",
                lease_seconds=3600,
                max_attempts=MAX_ATTEMPTS,
            )
        )
        if lease is not None:
            self.leases[worker] = lease
        if self._status() == JobStatus.FAILED and not self.terminal_wins:
            self.terminal_wins.append(JobStatus.FAILED)  # the claim gave up on a crash-looping job

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        if worker in self.leases:
            self._run(lambda s: runs.renew(s, self.leases[worker], lease_seconds=3600))

    @rule()
    def time_passes_and_leases_expire(self) -> None:
        self._run(
            lambda s: s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.lease_expires_at.is_not(None))
                .values(lease_expires_at=time.time() - 1)
            )
        )

    @rule(worker=st.sampled_from(WORKERS))
    def checkpoint(self, worker: str) -> None:
        if worker in self.leases:
            self._run(
                lambda s: runs.add_checkpoint(
                    s,
                    self.leases[worker],
                    step=1,
                    metrics={},
                    storage_key="checkpoints/blob_x",
                    resume_bytes=1,
                    keep_bundles=3,
                )
            )

    @rule()
    def cancel(self) -> None:
        if self._run(lambda s: runs.cancel(s, self.job_id)):
            self.terminal_wins.append(JobStatus.CANCELLED)

    @rule(worker=st.sampled_from(WORKERS))
    def succeed(self, worker: str) -> None:
        if worker in self.leases and self._run(
            lambda s: runs.succeed(
                s, self.leases[worker], result_files=["file-r"], fine_tuned_model="ft", trained_tokens=1
            )
        ):
            self.terminal_wins.append(JobStatus.SUCCEEDED)

    @rule(worker=st.sampled_from(WORKERS))
    def fail(self, worker: str) -> None:
        if worker in self.leases and self._run(
            lambda s: runs.fail(s, self.job_id, "boom", code="training_error", lease=self.leases[worker])
        ):
            self.terminal_wins.append(JobStatus.FAILED)

    def _status(self) -> JobStatus:
        return JobStatus(self._run(lambda s: s.scalar(select(Job.status).where(Job.id == self.job_id))))

    @invariant()
    def at_most_one_live_lease(self) -> None:
        holders = [
            w for w, lease in self.leases.items() if self._run(lambda s, lease=lease: runs.holds(s, lease))
        ]
        assert len(holders) <= 1, holders

    @invariant()
    def at_most_one_terminal_transition(self) -> None:
        assert len(self.terminal_wins) <= 1, self.terminal_wins
        if self.terminal_wins:
            assert self._status() == self.terminal_wins[0], "a terminal state is final"

    @invariant()
    def lease_only_while_running(self) -> None:
        job = self._run(lambda s: s.scalars(select(Job).where(Job.id == self.job_id)).one())
        if JobStatus(job.status) in TERMINAL or job.status == JobStatus.QUEUED:
            assert job.lease_owner is None and job.lease_expires_at is None
        else:
            assert job.lease_owner is not None
        assert job.attempts <= MAX_ATTEMPTS


def test_job_state_machine(tmp_path: Path) -> None:
    JobLifecycle.engine = migrated_engine(f"sqlite:///{tmp_path / 'props.db'}")
    JobLifecycle.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
    JobLifecycle.TestCase().runTest()
    JobLifecycle.engine.dispose()
