"""SD-Train's HTTP API under /sdtrain/v1, the same in the WebUI (with --api, protected by --api-auth) and in the
standalone app (with --api / --api-auth). Jobs take the options the CLI takes for the same stage (kohya's keys):

    GET  /sdtrain/v1/info               version, loaded checkpoint, file access
    GET  /sdtrain/v1/jobs               every job, newest first (without their logs)
    POST /sdtrain/v1/jobs               {"kind": "caption"|"tag"|"prepare"|"train"|..., "options": {...}}
    GET  /sdtrain/v1/jobs/{id}          progress, losses, samples, log, result or error
    POST /sdtrain/v1/jobs/{id}/cancel   stop at the next safe point, keeping what the CLI's cancel keeps
"""

from __future__ import annotations

from typing import Any

from lib_sdtrain import __version__
from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.jobs import STAGES, InputError, JobBusyError, runner

PREFIX = "/sdtrain/v1"


def register_routes(app: Any, host: Any) -> None:
    """Add the routes to a FastAPI app through the host, which adds its authentication."""
    from fastapi import Body, HTTPException

    def info() -> dict[str, Any]:
        checkpoint = host.loaded_checkpoint()
        return {
            "version": __version__,
            "host": host.NAME,
            "loaded_checkpoint": checkpoint.title if checkpoint else None,
            "file_access": host.file_access_allowed(),
            "job_kinds": list(STAGES),
        }

    def list_jobs() -> list[dict[str, Any]]:
        return [job.snapshot(log_lines=0) for job in runner().jobs()]

    def start_job(kind: str = Body(...), options: dict = Body(default_factory=dict)) -> dict[str, Any]:  # noqa: B008
        try:
            job = runner().start(kind, options)
        except JobBusyError as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        except InputError as e:
            raise HTTPException(status_code=422, detail={"field": e.field, "message": str(e)}) from None
        except SDTrainError as e:
            raise HTTPException(status_code=422, detail={"field": "", "message": str(e)}) from None
        return job.snapshot()

    def get_job(job_id: str) -> dict[str, Any]:
        return _job(job_id).snapshot()

    def cancel_job(job_id: str) -> dict[str, Any]:
        _job(job_id)
        return runner().cancel(job_id).snapshot()  # type: ignore[union-attr]

    def _job(job_id: str):
        job = runner().get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"No job {job_id!r}.")
        return job

    host.add_api_route(app, f"{PREFIX}/info", info, methods=["GET"])
    host.add_api_route(app, f"{PREFIX}/jobs", list_jobs, methods=["GET"])
    host.add_api_route(app, f"{PREFIX}/jobs", start_job, methods=["POST"])
    host.add_api_route(app, f"{PREFIX}/jobs/{{job_id}}", get_job, methods=["GET"])
    host.add_api_route(app, f"{PREFIX}/jobs/{{job_id}}/cancel", cancel_job, methods=["POST"])
