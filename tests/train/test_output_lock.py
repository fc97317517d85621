"""One run per output: two runs naming the same output are never both written, on the CLI, in real processes, in
jobs; a crashed run's lock is taken over; Ctrl-C still saves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from lib_sdtrain.jobs import DONE, InputError, JobRunner
from lib_sdtrain.jobs.stages import STAGES
from lib_sdtrain.train.output_lock import OutputBusyError, claim_output, lock_path
from tests.train.conftest import train_settings
from tests.waiting import finished, wait_for

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Collected:
    """A process's stderr read as it comes (tqdm ends its lines with \\r), for waiting on what it printed."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process.stderr.fileno(),), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        while chunk := os.read(fd, 4096):
            self.text += chunk.decode(errors="replace")

    def joined(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def cli_train(settings: dict) -> list[str]:
    return [sys.executable, "-m", "lib_sdtrain", "train"] + [f"--{k}={v}" for k, v in settings.items()]


def steps_done(text: str, total: int) -> int:
    found = re.findall(rf"(\d+)/{total}\b", text)
    return int(found[-1]) if found else 0


def test_a_second_cli_run_on_the_same_output_is_refused_and_ctrl_c_saves(tiny_sd_dir, sks_dataset, tmp_path):
    out = tmp_path / "out"
    settings = train_settings(tiny_sd_dir, sks_dataset, out, max_train_steps=100000)
    first = subprocess.Popen(cli_train(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first_err = Collected(first)
    try:
        wait_for(lambda: steps_done(first_err.text, 100000) >= 1, what="the first run's first step")
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

        # A second run naming the same output stops at once, names the running one, and writes nothing.
        second = subprocess.run(cli_train(settings), capture_output=True, text=True, timeout=120, env=ENV)
        assert second.returncode == 1, second.stderr[-2000:]
        assert f"pid {first.pid}" in second.stderr and "`sdtrain train`" in second.stderr
        assert "choose another output_name" in second.stderr
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    finally:
        first.send_signal(signal.SIGINT)  # the first Ctrl-C stops after the step, saving the LoRA and a state
        first.wait(timeout=120)
    stderr = first_err.joined()
    assert first.returncode == 130, stderr[-2000:]
    assert "Cancelled at step" in stderr
    assert (out / "sks.safetensors").is_file() and (out / "sks-state" / "train_state.json").is_file()
    assert not lock_path(out, "sks").exists()  # released on exit


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    crash = (
        "import os, signal, sys; from lib_sdtrain.train.output_lock import claim_output; "
        "claim_output(sys.argv[1], 'sks', 'a run that crashes'); os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", crash, str(out)], env=ENV, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert lock_path(out, "sks").is_file()  # kill -9 leaves it

    claim = claim_output(out, "sks", "the next run")
    try:
        assert "stale lock" in caplog.text and "a run that crashes" in caplog.text
        assert f'"pid": {os.getpid()}' in lock_path(out, "sks").read_text()
    finally:
        claim.release()
    assert not lock_path(out, "sks").exists()


def test_a_live_run_in_another_process_keeps_its_output(tmp_path):
    out = tmp_path / "out"
    hold = (
        "import sys; from lib_sdtrain.train.output_lock import claim_output; "
        "claim_output(sys.argv[1], 'sks', 'the holder'); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=ENV)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=rf"the holder \(pid {holder.pid} on "):
            claim_output(out, "sks", "another run")
        claim_output(out, "other", "a run with its own name").release()  # other names are free
    finally:
        holder.communicate("", timeout=60)


def test_jobs_are_refused_when_queued_and_give_the_output_back_when_they_end(tiny_sd_dir, sks_dataset, tmp_path):
    out = tmp_path / "out"
    jobs = JobRunner()
    settings = train_settings(tiny_sd_dir, sks_dataset, out, max_train_steps=2)
    claim = claim_output(out, "sks", "a CLI run")  # held in this process, as a run would hold it
    try:
        with pytest.raises(InputError, match="a CLI run") as refused:
            jobs.start("train", settings)
        assert refused.value.field == "output_name"
        with pytest.raises(InputError, match="a CLI run"):  # the form's Check says so too
            STAGES["train"].check(dict(settings))
        assert jobs.jobs() == []
    finally:
        claim.release()

    STAGES["train"].check(dict(settings))  # a check alone claims nothing
    assert not lock_path(out, "sks").exists()

    job = jobs.start("train", settings)
    with pytest.raises(OutputBusyError, match="an SD-Train training job"):  # claimed from the moment it is queued
        claim_output(out, "sks", "`sdtrain train`")
    assert finished(job)["status"] == DONE
    wait_for(lambda: not lock_path(out, "sks").exists(), what="the lock to go")
    claim_output(out, "sks", "the next run").release()


def test_a_claim_is_released_once_and_never_removes_another_runs_lock(tmp_path):
    first = claim_output(tmp_path, "sks", "first")
    first.release()
    second = claim_output(tmp_path, "sks", "second")
    first.release()  # a late second release of the first claim
    assert "second" in lock_path(tmp_path, "sks").read_text()
    second.release()
    with pytest.raises(Exception, match="output_name"):
        claim_output(tmp_path, "../escape", "bad name")
