"""One job runner for every stage: a background thread of the server process per job, one GPU job at a time.

The job's whole state (progress, losses, samples, log, result or error) lives here, on the server, so a reloaded
page, a second browser or the API all see the same running job, and closing a page never stops one. The UI and
the API only call `start()`, `snapshot()` and `cancel()`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lib_sdtrain.errors import Cancelled, SDTrainError
from lib_sdtrain.jobs.stages import STAGES, Stage, Work
from lib_sdtrain.utils.progress import Progress
from lib_sdtrain.utils.status import Status

logger = logging.getLogger("sdtrain")

RUNNING, DONE, FAILED, CANCELLED = Status.RUNNING, Status.DONE, Status.FAILED, Status.CANCELLED
LOG_LINES = 1000
MAX_CHART_POINTS = 2000  # the loss chart is redrawn whole on each update: keep it cheap for the browser


class JobBusyError(SDTrainError):
    """A GPU job was started while another one runs."""


@dataclass
class Job:
    id: str
    kind: str
    title: str
    options: dict[str, Any]
    status: Status = RUNNING
    phase: str = "starting"
    done: int = 0
    total: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    result: dict[str, Any] | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    version: int = 0
    """Grows with every change: a poller redraws only what changed."""
    progress: Progress | None = None
    _phase_started: float = field(default_factory=time.monotonic)
    _phase_first_done: int = 0
    _finished_monotonic: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    # --- updates from the job's thread ---------------------------------------------------------------------------

    def on_event(self, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            if event == "start":
                self.phase, self.total = payload.get("desc") or self.kind, int(payload.get("total") or 0)
                self.done = 0
                self._phase_started, self._phase_first_done = time.monotonic(), 0
            elif event == "advance":
                self._advance(payload)
            elif event == "message":
                self._log(payload["text"])
            elif event == "image" and payload.get("path") is not None:
                self.samples.append(str(payload["path"]))
            self.version += 1

    def _advance(self, payload: dict[str, Any]) -> None:
        done = int(payload.get("done", self.done + 1))
        if self.done == 0 and done > 1:  # a resumed run starts counting where it left off
            self._phase_first_done = done - 1
        self.done, self.total = done, int(payload.get("total") or self.total)
        self.info.update({k: v for k, v in payload.items() if k not in ("done", "total")})
        if "loss" in payload and self.kind == "train":
            self.losses.append((done, float(payload["loss"])))

    def _log(self, text: str) -> None:
        for line in str(text).splitlines() or [""]:
            self.log.append(line)
            logger.info("[%s] %s", self.id, line)

    def message(self, text: str) -> None:
        with self._lock:
            self._log(text)
            self.version += 1

    def finish(self, status: Status, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._lock:
            self.status, self.result, self.error = status, result, error
            self.finished_at, self._finished_monotonic = time.time(), time.monotonic()
            self._log(error if error else f"{self.title}: {status}")
            self.version += 1

    # --- reading -------------------------------------------------------------------------------------------------

    def rate(self) -> float | None:
        """Steps (or images) per second in the current phase."""
        steps = self.done - self._phase_first_done
        elapsed = (self._finished_monotonic or time.monotonic()) - self._phase_started
        return steps / elapsed if steps > 0 and elapsed > 0 else None

    def snapshot(self, log_lines: int = 200) -> dict[str, Any]:
        """Everything a client shows, as plain JSON-able values."""
        with self._lock:
            rate = self.rate()
            remaining = max(self.total - self.done, 0)
            return {
                "id": self.id,
                "kind": self.kind,
                "title": self.title,
                "status": str(self.status),  # the plain string
                "phase": self.phase,
                "done": self.done,
                "total": self.total,
                "rate": rate,
                "eta_seconds": remaining / rate if rate and self.running else None,
                "elapsed_seconds": (self.finished_at or time.time()) - self.started_at,
                "info": dict(self.info),
                "losses": _downsample(self.losses, MAX_CHART_POINTS),
                "samples": list(self.samples),
                "log": list(self.log)[-log_lines:] if log_lines > 0 else [],
                "result": self.result,
                "error": self.error,
                "options": dict(self.options),
                "version": self.version,
            }


def _downsample(points: list[tuple[int, float]], limit: int) -> list[tuple[int, float]]:
    if len(points) <= limit:
        return list(points)
    stride = len(points) / limit
    return [points[int(i * stride)] for i in range(limit - 1)] + [points[-1]]


class JobRunner:
    """Starts stage jobs in background threads and keeps their state for every client."""

    def __init__(self, history: int = 50) -> None:
        self._jobs: dict[str, Job] = {}
        self._history = history
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def start(self, kind: str, options: dict[str, Any], *, title: str | None = None, task_id: str | None = None) -> Job:
        """Check the options (raising InputError/ConfigError at once, before any work), then run the stage in a
        background thread. A GPU stage while another GPU job runs raises JobBusyError naming that job."""
        stage = STAGES.get(kind)
        if stage is None:
            raise SDTrainError(f"Unknown job kind {kind!r}; one of: {', '.join(STAGES)}.")
        with self._lock:  # refuse before checking: checks can read a whole dataset
            self._refuse_if_busy(stage)
        work = stage.check(dict(options))
        release = None
        try:
            with self._lock:
                self._refuse_if_busy(stage)
                release = _claim(work)
                job = Job(f"{kind}-{next(self._ids)}-{int(time.time())}", kind, title or stage.title, dict(options))
                from lib_sdtrain import host

                job.progress = host.current().make_progress(job.on_event)
                self._jobs[job.id] = job
                self._forget_old()
                thread = threading.Thread(
                    target=self._run, args=(job, stage, work, task_id, release), name=f"sdtrain-{job.id}", daemon=True
                )
                thread.start()
        except BaseException:
            if release is not None:
                release()
            raise
        return job

    def _refuse_if_busy(self, stage: Stage) -> None:
        if not stage.uses_gpu:
            return
        busy = next((j for j in self._jobs.values() if j.running and STAGES[j.kind].uses_gpu), None)
        if busy is not None:
            raise JobBusyError(
                f"{busy.title} is running ({busy.phase} {busy.done}/{busy.total}). One GPU job runs at a time: "
                "wait for it to finish, or cancel it."
            )

    def _run(self, job: Job, stage: Stage, work: Work, task_id: str | None, release: Callable[[], None] | None) -> None:
        from lib_sdtrain import host

        progress = job.progress
        assert progress is not None
        try:
            try:
                session = (
                    host.training_session(f"SD-Train: {job.title}", task_id=task_id, unload=stage.unloads_model)
                    if stage.uses_gpu
                    else contextlib.nullcontext()
                )
                job.message(f"{job.title}: waiting for the GPU" if stage.uses_gpu else f"{job.title}: starting")
                progress.check_cancelled()  # cancelled before it began: leave the WebUI's model where it is
                with session:
                    progress.check_cancelled()
                    result = work(progress)
            finally:  # before the job reads as finished: a client may start the next run on the same output at once
                if release is not None:
                    release()
            job.finish(DONE, result=result if isinstance(result, dict) else None)
        except Cancelled as e:
            job.finish(CANCELLED, error=str(e))
        except SDTrainError as e:
            job.finish(FAILED, error=str(e))
        except Exception as e:  # the server must survive whatever a job does; the traceback goes to the log only
            logger.exception("SD-Train job %s failed", job.id)
            job.finish(FAILED, error=f"Unexpected error: {type(e).__name__}: {e} (the traceback is in the server log)")

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if not j.running]
        for job in finished[: max(len(self._jobs) - self._history, 0)]:
            del self._jobs[job.id]

    # --- for clients ---------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Newest first."""
        return sorted(self._jobs.values(), key=lambda j: j.started_at, reverse=True)

    def current(self, kind: str | None = None) -> Job | None:
        """The running job (of `kind`), else the latest one, else None: what a freshly loaded page shows."""
        jobs = [j for j in self.jobs() if kind is None or j.kind == kind]
        return next((j for j in jobs if j.running), jobs[0] if jobs else None)

    def cancel(self, job_id: str | None = None) -> Job | None:
        """Ask a job (default: the running one) to stop at its next safe point; it keeps what the CLI keeps."""
        job = self.get(job_id) if job_id else next((j for j in self.jobs() if j.running), None)
        if job is None or not job.running or job.progress is None:
            return job
        job.progress.cancel()
        job.message("Cancelling: stopping at the next safe point...")
        return job


def _claim(work: Work) -> Callable[[], None] | None:
    claim = getattr(work, "claim", None)
    return claim() if claim is not None else None


_runner = JobRunner()


def runner() -> JobRunner:
    """The process's one runner (the WebUI and the standalone app each have one process)."""
    return _runner
