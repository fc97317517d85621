"""The job runner without a UI: one GPU job at a time, the state any client sees, cancel, errors as messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lib_sdtrain.jobs import CANCELLED, DONE, FAILED, InputError, JobBusyError, JobRunner
from tests.train.conftest import sks_dataset, train_settings  # noqa: F401 (fixture)
from tests.waiting import finished, wait_for


@pytest.fixture
def jobs() -> JobRunner:
    return JobRunner()


def long_run(tiny_sd_dir, dataset, out, **overrides):
    return train_settings(tiny_sd_dir, dataset, out, max_train_steps=100_000, **overrides)


def test_training_job_reports_progress_losses_and_result(jobs, tiny_sd_dir, sks_dataset, tmp_path):  # noqa: F811
    job = jobs.start("train", train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", max_train_steps=12))
    snap = finished(job)
    assert snap["status"] == DONE, snap["error"]
    assert snap["done"] == snap["total"] == 12
    assert [step for step, _ in snap["losses"]] == list(range(1, 13))
    assert Path(snap["result"]["output"]).is_file()
    config = Path(snap["result"]["config"])
    assert config.is_file() and 'output_name = "sks"' in config.read_text()  # the run's config, beside its outputs
    assert snap["rate"] > 0 and snap["eta_seconds"] is None


def test_one_gpu_job_at_a_time_and_every_client_sees_it(jobs, tiny_sd_dir, sks_dataset, tmp_path):  # noqa: F811
    job = jobs.start("train", long_run(tiny_sd_dir, sks_dataset, tmp_path / "out"), title="Training sks")
    try:
        wait_for(lambda: job.done >= 2, what="two steps")
        with pytest.raises(JobBusyError, match="Training sks is running"):
            jobs.start("caption", {"train_data_dir": str(sks_dataset["dir"])})
        # A client that arrives now (a reloaded page, the API) is shown the same running job and its progress.
        assert jobs.current() is job and jobs.current("train") is job
        first = jobs.current().snapshot()
        wait_for(lambda: jobs.current().snapshot()["done"] > first["done"], what="progress")
        # Work that needs no GPU is not held up.
        report = jobs.start("report", {"train_data_dir": str(sks_dataset["dir"])})
        assert finished(report)["status"] == DONE
    finally:
        jobs.cancel(job.id)
        finished(job)


def test_cancel_keeps_the_lora_and_a_state_that_resumes(jobs, tiny_sd_dir, sks_dataset, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    job = jobs.start("train", long_run(tiny_sd_dir, sks_dataset, out))
    wait_for(lambda: job.done >= 3, what="three steps")
    jobs.cancel()
    snap = finished(job)
    assert snap["status"] == CANCELLED
    assert "Cancelled at step" in snap["error"]
    step = int(snap["error"].split("Cancelled at step ")[1].split(".")[0])
    state = out / "sks-state"
    assert (out / "sks.safetensors").is_file() and state.is_dir()

    resumed = jobs.start(
        "train", train_settings(tiny_sd_dir, sks_dataset, out, max_train_steps=step + 4, resume=str(state))
    )
    snap = finished(resumed)
    assert snap["status"] == DONE, snap["error"]
    assert snap["losses"][0][0] == step + 1 and snap["done"] == step + 4
    assert any("Resumed from" in line for line in snap["log"])


def test_bad_input_is_refused_before_the_job_starts_naming_the_field(jobs, tiny_sd_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ({"train_data_dir": str(tmp_path / "missing")}, "train_data_dir", "does not exist"),
        ({"train_data_dir": str(empty)}, "train_data_dir", "no images"),
        ({"train_data_dir": str(empty), "network_dim": "abc"}, "network_dim", "network_dim"),
    ]
    for options, field, text in cases:
        settings = {"pretrained_model_name_or_path": str(tiny_sd_dir), "output_dir": str(tmp_path / "o"), **options}
        with pytest.raises(InputError, match=text) as error:
            jobs.start("train", settings)
        assert error.value.field == field
    with pytest.raises(InputError, match="does not exist") as error:
        jobs.start("train", {"pretrained_model_name_or_path": str(tmp_path / "nope.safetensors"),
                             "train_data_dir": str(tiny_sd_dir)})  # fmt: skip
    assert error.value.field == "pretrained_model_name_or_path"
    with pytest.raises(InputError, match="Did you mean 'thresh'") as error:
        jobs.start("tag", {"train_data_dir": str(tmp_path), "treshold": 0.3})
    assert jobs.jobs() == []  # nothing was started


def test_an_error_inside_a_job_is_a_message_and_the_runner_goes_on(jobs, tmp_path, tiny_sd_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "a.png")
    not_a_model = tmp_path / "model.safetensors"
    not_a_model.write_bytes(b"not a model")
    job = jobs.start("train", {"pretrained_model_name_or_path": str(not_a_model), "train_data_dir": str(folder),
                               "output_dir": str(tmp_path / "out"), "resolution": "64,64"})  # fmt: skip
    snap = finished(job)
    assert snap["status"] == FAILED
    assert "model.safetensors" in snap["error"] and "Traceback" not in snap["error"]
    assert snap["error"] in snap["log"][-1]
    # The runner is free again: the next GPU job starts.
    report = jobs.start("report", {"train_data_dir": str(folder)})
    assert finished(report)["status"] == DONE
    assert finished(jobs.start("tag", {"train_data_dir": str(folder), "model_dir": str(tmp_path)}))["status"] == FAILED


def test_a_job_without_output_dir_writes_to_the_hosts_output_folder(jobs, tiny_sd_dir, sks_dataset, standalone_home):  # noqa: F811
    from lib_sdtrain.host import standalone

    settings = train_settings(tiny_sd_dir, sks_dataset, "unused", max_train_steps=2)
    del settings["output_dir"]
    snap = finished(jobs.start("train", settings))
    assert snap["status"] == DONE, snap["error"]
    assert Path(snap["result"]["output"]).parent == standalone.output_dir()
