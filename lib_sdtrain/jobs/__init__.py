"""Background jobs for the UI and the API: every stage (caption, tag, prepare, train, ...) runs through one runner."""

from lib_sdtrain.jobs.runner import CANCELLED, DONE, FAILED, RUNNING, Job, JobBusyError, JobRunner, runner
from lib_sdtrain.jobs.stages import STAGES, InputError

__all__ = [
    "CANCELLED", "DONE", "FAILED", "RUNNING", "STAGES", "InputError", "Job", "JobBusyError", "JobRunner", "runner",
]  # fmt: skip
