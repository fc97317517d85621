"""The standalone app as others reach it (`sdtrain ui --listen --api --api-auth`), in a real server process: no way
out of SD-Train's folders through a config file, a dataset_config, `vae` or sample prompts; no file of the working
folder served; error messages that name a bad file without printing it; every request bounded."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.ui.conftest import ROOT, _free_port

AUTH = "ann:s3cret"
SECRET = "TOPSECRET-7f3a"


class Server:
    def __init__(self, url: str, home: Path, cwd: Path, log: Path) -> None:
        self.url, self.home, self.cwd, self.log = url, home, cwd, log

    def request(self, method: str, path: str, body: bytes | None = None, auth: bool = True) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("content-type", "application/json")
        if auth:
            request.add_header("authorization", "Basic " + base64.b64encode(AUTH.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def start_job(self, kind: str, options: dict) -> tuple[int, dict]:
        status, text = self.request("POST", "/sdtrain/v1/jobs", json.dumps({"kind": kind, "options": options}).encode())
        return status, json.loads(text)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("listen")
    home, cwd = base / "home", base / "started-here"
    cwd.mkdir()
    (cwd / "notes.txt").write_text(f"the server's working folder: {SECRET}\n")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = base / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lib_sdtrain", "ui", "--listen", "--port", str(port), "--api", "--api-auth", AUTH,
             "--home", str(home)],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while "SD-Train is at" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    yield Server(f"http://127.0.0.1:{port}", home, cwd, log)
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def places(server, tmp_path_factory):
    """A dataset inside SD-Train's datasets folder, and a folder outside with an image and a secret file."""
    dataset = server.home / "sd-train" / "datasets" / "mine" / "1_sks"
    dataset.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(dataset / "a.png")
    (dataset / "a.caption").write_text("sks")
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (64, 64), "blue").save(outside / "b.png")
    (outside / "secrets.json").write_text(json.dumps([{"prompt": "x", "api_key": SECRET}]))
    return {"dataset": dataset.parent, "outside": outside}


def train_options(places) -> dict:
    return {"pretrained_model_name_or_path": "someone/model", "train_data_dir": str(places["dataset"]),
            "network_module": "networks.lora", "max_train_steps": 1}  # fmt: skip


def uploaded(places, name: str, text: str) -> Path:
    """A file a remote user could have put into a dataset folder (an upload takes .txt and .caption files)."""
    path = places["dataset"] / name
    path.write_text(text)
    return path


def test_a_config_file_cannot_send_a_run_outside(server, places):
    config = uploaded(places, "evil.txt", f'output_dir = "{places["outside"] / "out"}"\n')
    status, answer = server.start_job("train", {**train_options(places), "config_file": str(config)})
    assert status == 422 and answer["detail"]["field"] == "output_dir"
    assert "outside SD-Train's folders" in answer["detail"]["message"]
    assert not (places["outside"] / "out").exists()


@pytest.mark.parametrize("field", ["vae", "sample_prompts", "network_weights", "resume", "tokenizer"])
def test_a_path_outside_is_refused_for_every_path_option(server, places, field):
    value = places["outside"] / ("secrets.json" if field == "sample_prompts" else "")
    status, answer = server.start_job("train", {**train_options(places), field: str(value)})
    assert status == 422 and answer["detail"]["field"] == field
    assert SECRET not in json.dumps(answer)


def test_a_dataset_config_cannot_read_images_outside(server, places):
    config = uploaded(places, "dataset.txt", f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{places["outside"]}"\n')
    options = {**train_options(places), "dataset_config": str(config)}
    status, answer = server.start_job("train", options)
    assert status == 422 and "dataset_config subset 1" in answer["detail"]["message"]


def test_error_messages_name_a_bad_file_but_never_print_it(server, places):
    prompts = uploaded(places, "prompts.json", json.dumps([{"prompt": "a cat", "password": SECRET}]))
    status, answer = server.start_job("train", {**train_options(places), "sample_prompts": str(prompts)})
    assert status == 422 and answer["detail"]["field"] == "sample_prompts" and "password" in answer["detail"]["message"]
    broken = uploaded(places, "broken.txt", f'learning_rate = 1e-4\n{SECRET} = = "x"\n')
    status, answer = server.start_job("train", {"config_file": str(broken)})
    assert status == 422 and "line 2" in answer["detail"]["message"]
    for text in (json.dumps(answer), server.request("GET", "/sdtrain/v1/jobs")[1], server.log.read_text()):
        assert SECRET not in text


def test_the_working_folder_is_not_served(server):
    for path in ("/file=notes.txt", f"/file={server.cwd / 'notes.txt'}"):
        status, text = server.request("GET", path, auth=False)
        assert status in (403, 404) and SECRET not in text


def test_every_request_is_bounded(server, places):
    status, _ = server.request(
        "POST", "/sdtrain/v1/jobs", b'{"kind": "report", "options": {"x": "' + b"a" * 2_000_000 + b'"}}'
    )
    assert status == 413
    status, _ = server.request("POST", "/sdtrain/v1/jobs", b"not json")
    assert status == 400
    long_path = str(places["dataset"] / ("x" * 300))
    for options, field in [
        ({"train_data_dir": long_path}, "train_data_dir"),
        ({"train_data_dir": str(places["dataset"]), "caption_extension": "--help"}, "caption_extension"),
        ({"train_data_dir": {"nested": "object"}}, "train_data_dir"),
        ({"train_data_dir": "y" * 5000}, "train_data_dir"),
    ]:
        status, answer = server.start_job("report", options)
        assert status == 422 and answer["detail"]["field"] == field, answer
    assert "usage:" not in server.log.read_text()
    assert server.request("GET", "/sdtrain/v1/info")[0] == 200  # and the server is still there
