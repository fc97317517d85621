"""SD-Train's HTTP API under /sdtrain/v1, the same in the WebUI (with --api, protected by --api-auth) and in the
standalone app (with --api / --api-auth). Jobs take the options the CLI takes for the same stage (kohya's keys):

    GET  /sdtrain/v1/info               version, loaded checkpoint, file access
    GET  /sdtrain/v1/jobs               every job, newest first (without their logs)
    POST /sdtrain/v1/jobs               {"kind": "caption"|"tag"|"prepare"|"train"|..., "options": {...}}
    GET  /sdtrain/v1/jobs/{id}          progress, losses, samples, log, result or error
    POST /sdtrain/v1/jobs/{id}/cancel   stop at the next safe point, keeping what the CLI's cancel keeps

No `from __future__ import annotations` here: FastAPI reads the routes' annotations (Request) at runtime.
"""

import json
from typing import Any

from lib_sdtrain import __version__
from lib_sdtrain.errors import InputError, SDTrainError, shorten
from lib_sdtrain.jobs import STAGES, JobBusyError, runner
from lib_sdtrain.utils.path_kinds import MAX_TEXT_LENGTH

PREFIX = "/sdtrain/v1"
MAX_BODY_BYTES = 256 * 1024
"""A job's options are a few hundred bytes; a larger body is refused before it is read whole."""
MAX_OPTIONS = 300
MAX_LIST_ENTRIES = 256


def check_job_request(body: Any) -> tuple[str, dict[str, Any]]:
    """(kind, options) of a POST /jobs body, every part of it bounded: InputError naming the field otherwise."""
    if not isinstance(body, dict):
        raise InputError("", 'Expected a JSON object: {"kind": "...", "options": {...}}.')
    unknown = sorted(set(body) - {"kind", "options"})
    if unknown:
        raise InputError(unknown[0][:40], f"Unknown field {unknown[0][:40]!r}: a job takes kind and options.")
    kind, options = body.get("kind"), body.get("options", {})
    if not isinstance(kind, str) or kind not in STAGES:
        raise InputError("kind", f"Unknown job kind {shorten(kind)}; one of: {', '.join(STAGES)}.")
    if not isinstance(options, dict):
        raise InputError("options", "options must be an object of option names and values.")
    if len(options) > MAX_OPTIONS:
        raise InputError("options", f"options has {len(options)} entries; at most {MAX_OPTIONS}.")
    for name, value in options.items():
        if len(name) > 100:
            raise InputError("options", f"An option name of {len(name)} characters is no option.")
        _check_option_value(name, value)
    return kind, options


def _check_option_value(name: str, value: Any) -> None:
    entries = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) > MAX_LIST_ENTRIES:
        raise InputError(name, f"{name} has {len(value)} entries; at most {MAX_LIST_ENTRIES}.")
    for entry in entries:
        if not (entry is None or isinstance(entry, str | int | float | bool)):
            raise InputError(name, f"{name}: expected text, a number, true/false or a list of those.")
        if isinstance(entry, str) and len(entry) > MAX_TEXT_LENGTH:
            raise InputError(name, f"{name} is {len(entry)} characters long; at most {MAX_TEXT_LENGTH}.")


async def read_bounded_json(request: Any) -> Any:
    """The request's JSON body, read in pieces and refused (413) past MAX_BODY_BYTES, so a huge body is neither
    held in memory nor written to the log; 400 for a body that is not JSON."""
    from fastapi import HTTPException

    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(status_code=413, detail=f"The request body is over {MAX_BODY_BYTES} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(status_code=413, detail=f"The request body is over {MAX_BODY_BYTES} bytes.")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status_code=400, detail="The request body is not JSON.") from None


def register_routes(app: Any, host: Any) -> None:
    """Add the routes to a FastAPI app through the host, which adds its authentication."""
    from fastapi import Depends, HTTPException, Request

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

    async def request_body(request: Request) -> Any:
        return await read_bounded_json(request)

    def start_job(body: Any = Depends(request_body)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        try:
            kind, options = check_job_request(body)
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
