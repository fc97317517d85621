"""A WebUI reachable from other machines (--listen without --enable-insecure-extension-access): SD-Train's jobs and
API use only its own folders, and uploads cannot write outside the dataset folder."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from lib_sdtrain.dataset.editing import import_files
from lib_sdtrain.host import webui as adapter
from lib_sdtrain.host.types import LOADED_CHECKPOINT
from lib_sdtrain.jobs import InputError, runner
from tests.host.test_scripts_glue import load_script
from tests.train.conftest import train_settings


def image_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("red")
    return folder


@pytest.fixture
def listening(start_webui):
    stub = start_webui("--listen")
    assert stub.shared.cmd_opts.disable_extension_access is True
    return stub


@pytest.mark.parametrize("kind", ["train", "report", "caption"])
def test_a_job_on_a_folder_outside_sdtrains_is_refused(listening, tmp_path, sks_dataset, kind):
    outside = image_folder(tmp_path / "elsewhere")
    options = {"train_data_dir": str(outside)}
    if kind == "train":
        inside_out = adapter.output_dir() / "run"
        options = train_settings(LOADED_CHECKPOINT, sks_dataset, inside_out, train_data_dir=str(outside), in_json=None)
    with pytest.raises(InputError, match="--enable-insecure-extension-access") as refused:
        runner().start(kind, options)
    assert refused.value.field == "train_data_dir"


def test_every_path_option_of_a_training_is_checked(listening, tmp_path, tiny_sd_dir):
    dataset = image_folder(adapter.dataset_dir() / "mine")
    base = {"train_data_dir": str(dataset), "output_dir": str(adapter.output_dir()), "network_module": "networks.lora"}
    for field, value in [
        ("pretrained_model_name_or_path", str(tiny_sd_dir)),  # a model outside the models folders
        ("output_dir", str(tmp_path / "out")),
        ("sample_prompts", str(tmp_path / "prompts.txt")),
        ("config_file", str(tmp_path / "run.toml")),
    ]:
        options = {"pretrained_model_name_or_path": str(adapter.models_dir() / "m"), **base, field: value}
        with pytest.raises(InputError) as refused:
            runner().start("train", options)
        assert refused.value.field == field, field


def test_a_folder_inside_sdtrains_is_fine(listening):
    dataset = image_folder(adapter.dataset_dir() / "mine")
    job = runner().start("report", {"train_data_dir": str(dataset)})
    deadline = time.monotonic() + 60
    while job.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status == "done", job.error


def test_the_api_refuses_the_same(start_webui, tmp_path):
    stub = start_webui("--listen --api")
    load_script(stub)
    app = FastAPI()
    stub.script_callbacks.app_started_callback(None, app)
    outside = image_folder(tmp_path / "elsewhere")
    response = TestClient(app).post(
        "/sdtrain/v1/jobs", json={"kind": "report", "options": {"train_data_dir": str(outside)}}
    )
    assert response.status_code == 422 and response.json()["detail"]["field"] == "train_data_dir"
    assert TestClient(app).get("/sdtrain/v1/info").json()["file_access"] is False


# --- uploads ---------------------------------------------------------------------------------------------------------


def png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, format="PNG")
    return buffer.getvalue()


def files_outside(root: Path, allowed: list[Path]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not any(a in p.parents or a == p for a in allowed)]


def test_uploaded_names_cannot_escape_the_dataset_folder(listening, tmp_path):
    root = adapter.dataset_dir()
    uploads = tmp_path / "uploads" / "sub"
    uploads.mkdir(parents=True)
    (uploads / "x.png").write_bytes(png_bytes())
    archive = tmp_path / "uploads" / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ["../evil1.png", "../../evil2.png", "/abs/evil3.png", "..\\evil4.png", "a/../../evil5.png",
                     "ok.png", "ok.txt", "../evil6.txt", ".hidden.png"]:  # fmt: skip
            zf.writestr(name, png_bytes())

    result = import_files([uploads / ".." / "sub" / "x.png", archive], root, "mine")

    target = root / "mine"
    assert result.folder == target
    names = sorted(p.name for p in target.iterdir())
    # Entries that climb out or are absolute are left out, each named with why; so is the hidden file.
    assert names == ["ok.png", "ok.txt", "x.png"]
    left_out = ["../evil1.png", "../../evil2.png", "/abs/evil3.png", "a/../../evil5.png", "../evil6.txt", ".hidden.png"]
    for name in left_out:
        assert name in result.skipped, (name, result.skipped)
    assert files_outside(listening.data_dir, [target]) == []
    assert files_outside(tmp_path, [listening.data_dir, tmp_path / "uploads"]) == []


@pytest.mark.parametrize("folder_name", ["../x", "x/../../y", "/tmp/x", "..", ".", ""])
def test_the_upload_folder_name_cannot_escape(listening, tmp_path, folder_name):
    with pytest.raises(ValueError):
        import_files([], adapter.dataset_dir(), folder_name)
    assert not (adapter.dataset_dir().parent / "x").exists()


def test_a_link_in_the_dataset_folder_is_not_followed(listening, tmp_path):
    target = adapter.dataset_dir() / "mine"
    target.mkdir(parents=True)
    outside = tmp_path / "outside.png"
    (target / "x.png").symlink_to(outside)  # dangling: a plain open() would create the file outside
    upload = tmp_path / "x.png"
    upload.write_bytes(png_bytes())

    import_files([upload], adapter.dataset_dir(), "mine")

    assert not outside.exists()
    assert not (target / "x.png").is_symlink() and (target / "x.png").read_bytes() == png_bytes()
