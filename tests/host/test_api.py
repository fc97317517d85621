"""SD-Train's /sdtrain/v1 routes in the WebUI stand-in, added the way the WebUI adds them (scripts/sdtrain.py's
on_app_started on its FastAPI app), driven with FastAPI's TestClient."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from lib_sdtrain.host.types import LOADED_CHECKPOINT
from tests.host.test_scripts_glue import load_script
from tests.train.conftest import train_settings

AUTH = ("user", "pw")


@pytest.fixture
def client(start_webui, tmp_path) -> TestClient:
    stub = start_webui("--api --api-auth user:pw")
    load_script(stub)
    app = FastAPI()
    stub.script_callbacks.app_started_callback(None, app)
    assert stub.script_callbacks.errors_reported == []
    return TestClient(app)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate([(64, 64), (96, 64)]):
        Image.new("RGB", size, (200, 40 * i, 40)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("red, square")
    return folder


def wait_until_finished(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/sdtrain/v1/jobs/{job_id}", auth=AUTH).json()
        if job["status"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} still running")


@pytest.mark.parametrize("path", ["/sdtrain/v1/info", "/sdtrain/v1/jobs", "/sdtrain/v1/jobs/nope"])
def test_every_route_needs_the_api_auth(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, auth=("user", "wrong")).status_code == 401
    assert client.get(path, auth=AUTH).status_code == (404 if path.endswith("nope") else 200)
    assert client.post("/sdtrain/v1/jobs", json={"kind": "report"}).status_code == 401


def test_info_reports_the_webui(client):
    body = client.get("/sdtrain/v1/info", auth=AUTH).json()
    assert body["host"] == "webui" and body["loaded_checkpoint"] is None and body["file_access"] is True
    assert "train" in body["job_kinds"] and body["version"]


def test_a_job_started_by_post_runs_to_done(client, images):
    response = client.post(
        "/sdtrain/v1/jobs", json={"kind": "report", "options": {"train_data_dir": str(images)}}, auth=AUTH
    )
    assert response.status_code == 200, response.text
    started = response.json()
    assert started["kind"] == "report" and started["status"] == "running"

    job = wait_until_finished(client, started["id"])
    assert job["status"] == "done", job["error"]
    assert job["result"] is not None
    listed = client.get("/sdtrain/v1/jobs", auth=AUTH).json()
    assert started["id"] in [j["id"] for j in listed]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_resolutoin": "512,512"}, "max_resolutoin"),  # misspelt: the message suggests max_resolution
        ({"train_data_dir": "/no/such/folder"}, "train_data_dir"),
        ({"min_bucket_reso": "huge"}, "min_bucket_reso"),
    ],
    ids=["unknown", "missing-folder", "bad-value"],
)
def test_a_bad_option_is_a_422_naming_the_field(client, images, options, field):
    body = {"kind": "report", "options": {"train_data_dir": str(images), **options}}
    response = client.post("/sdtrain/v1/jobs", json=body, auth=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"]["field"] == field
    if field == "max_resolutoin":
        assert "max_resolution" in response.json()["detail"]["message"]


def test_an_unknown_kind_is_a_422(client):
    response = client.post("/sdtrain/v1/jobs", json={"kind": "paint", "options": {}}, auth=AUTH)
    assert response.status_code == 422 and "Unknown job kind" in response.json()["detail"]["message"]


def test_a_second_gpu_job_is_a_409_and_cancel_stops_the_first(client, loaded, webui, sks_dataset, tmp_path):
    train = {"kind": "train", "options": train_settings(LOADED_CHECKPOINT, sks_dataset, tmp_path / "out")}
    with webui.call_queue.queue_lock:  # a generation is running: the job waits for the GPU
        first = client.post("/sdtrain/v1/jobs", json=train, auth=AUTH)
        assert first.status_code == 200, first.text
        job_id = first.json()["id"]
        second = client.post("/sdtrain/v1/jobs", json={"kind": "caption", "options": {}}, auth=AUTH)
        assert second.status_code == 409 and "Training is running" in second.json()["detail"]
        cancelled = client.post(f"/sdtrain/v1/jobs/{job_id}/cancel", auth=AUTH)
        assert cancelled.status_code == 200
    job = wait_until_finished(client, job_id)
    assert job["status"] == "cancelled" and job["done"] == 0
    assert loaded.moves in ([], [webui.devices.cpu, webui.shared.device])
    assert client.post("/sdtrain/v1/jobs/nope/cancel", auth=AUTH).status_code == 404


def test_without_api_auth_the_routes_are_open_as_the_webuis(start_webui):
    stub = start_webui("--api")
    load_script(stub)
    app = FastAPI()
    stub.script_callbacks.app_started_callback(None, app)
    assert TestClient(app).get("/sdtrain/v1/info").status_code == 200
