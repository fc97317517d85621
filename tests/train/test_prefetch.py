"""Batches prepared ahead by loader threads (max_data_loader_n_workers): in order, the same results as without."""

from __future__ import annotations

import threading
import time

import pytest

from lib_sdtrain.train.loop import train
from lib_sdtrain.train.prefetch import prefetched, worker_count
from tests.train.test_training import config_for


def slow_square(index: int) -> tuple[int, str]:
    time.sleep(0.01 * (index % 3))  # later batches can finish first
    return index * index, threading.current_thread().name


def test_batches_come_back_in_order_from_the_threads():
    with prefetched(slow_square, range(12), workers=3) as batches:
        results = list(batches)
    assert [value for value, _ in results] == [i * i for i in range(12)]
    assert all(name.startswith("sdtrain-batches") for _, name in results)
    with prefetched(slow_square, range(5), workers=0) as batches:
        assert [name for _, name in batches] == [threading.current_thread().name] * 5


def test_leaving_early_stops_the_threads_and_errors_reach_the_loop():
    started: list[int] = []

    def prepare(index: int) -> int:
        started.append(index)
        if index == 3:
            raise ValueError("broken image 3")
        return index

    with prefetched(prepare, range(1000), workers=2) as batches:
        assert next(batches) == 0
    assert len(started) < 10  # only a few batches ahead were prepared
    with pytest.raises(ValueError, match="broken image 3"), prefetched(prepare, range(10), workers=2) as batches:
        list(batches)


def test_worker_count_leaves_the_loop_a_cpu(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert worker_count(8) == 3 and worker_count(2) == 2 and worker_count(0) == 0


def test_training_with_loader_threads_gives_the_same_losses(tiny_sd_dir, sks_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)  # 3 threads even on a 2-core machine
    settings = {"max_train_steps": 6, "shuffle_caption": True, "flip_aug": True, "caption_dropout_rate": 0.3}
    threaded = train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "a", max_data_loader_n_workers=8, **settings))
    inline = train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "b", max_data_loader_n_workers=0, **settings))
    assert threaded.losses == inline.losses
