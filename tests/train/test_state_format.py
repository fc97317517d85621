"""The training state without pickles: state dicts round-trip exactly through safetensors + JSON, a crash between
the two renames of a save loses nothing, a damaged or mismatched state is named with what is wrong, and the CUDA random
state is saved and restored where CUDA is present."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.train import state
from lib_sdtrain.train.loop import Trainer
from lib_sdtrain.train.run import list_states
from lib_sdtrain.train.state import Position, load_state, load_tree, restore_rng, save_state, save_tree
from tests.train.test_training import config_for


def optimizer_and_scheduler():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], betas=(0.8, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for _ in range(2):
        sum(p.sum() for p in params).backward()
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def save_one(folder: Path, step: int) -> Path:
    optimizer, scheduler = optimizer_and_scheduler()
    generators = {"noise": torch.Generator().manual_seed(step)}
    return save_state(folder, {"w": torch.full((2,), float(step))}, optimizer, scheduler, Position(step, 0, step),
                      generators, {"scale": 1024.0, "_growth_tracker": 3})  # fmt: skip


def test_state_dicts_round_trip_exactly_with_int_keys_tuples_and_odd_floats(tmp_path):
    optimizer, scheduler = optimizer_and_scheduler()
    for tree in (
        optimizer.state_dict(),
        scheduler.state_dict(),
        {1: (2, [3.5, None, True]), "x": {"nan": math.nan, "inf": -math.inf}, (1, "a"): "tuple key"},
    ):
        save_tree(tmp_path / "t.safetensors", tree)
        back = load_tree(tmp_path / "t.safetensors")
        assert repr(back) == repr(tree)  # types too: int keys stay ints, tuples stay tuples, nan stays nan
    with pytest.raises(TypeError, match="cannot save without pickling"):
        save_tree(tmp_path / "t.safetensors", {"f": object()})


def test_a_saved_state_loads_back_and_holds_no_pickle(tmp_path):
    folder = save_one(tmp_path / "sks-state", 5)
    assert sorted(p.name for p in folder.iterdir()) == [
        "optimizer.safetensors", "rng.safetensors", "scaler.safetensors", "scheduler.safetensors",
        "train_state.json", "trainable.safetensors",
    ]  # fmt: skip
    state = load_state(folder)
    fresh, _ = optimizer_and_scheduler()
    fresh.load_state_dict(state.optimizer)  # the optimizer takes it as it took its own
    assert state.position == Position(5, 0, 5) and state.scaler == {"scale": 1024.0, "_growth_tracker": 3}
    assert torch.equal(state.trainable["w"], torch.full((2,), 5.0))


@pytest.mark.parametrize("crash_after", ["first rename", "second rename"])
def test_a_crash_between_the_renames_loses_nothing_and_the_next_save_recovers(tmp_path, monkeypatch, crash_after):
    folder = save_one(tmp_path / "sks-state", 1)
    renames = []
    real_rename = Path.rename

    def crashing_rename(self, target):
        renames.append(self)
        if len(renames) == (1 if crash_after == "first rename" else 2):
            if crash_after == "second rename":
                raise KeyboardInterrupt  # killed right before tmp -> final
            real_rename(self, target)
            raise KeyboardInterrupt  # killed right after final -> old
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crashing_rename)
    with pytest.raises(KeyboardInterrupt):
        save_one(folder, 2)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not folder.exists()  # only sks-state.old and sks-state.tmp are left, as after a real crash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sks-state.old", "sks-state.tmp"]

    assert list_states(tmp_path, "sks") == [folder]  # offered under its own name
    state = load_state(folder)  # the newer, complete copy is put back and used
    assert state.position.step == 2 and "from sks-state.tmp" in state.note
    save_one(folder, 3)  # and the next save goes on from there
    assert load_state(folder).position.step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sks-state"]


def test_python_and_numpy_random_states_come_back(tmp_path):
    random.seed(1)
    np.random.seed(2)
    random.gauss(0, 1)  # so Python's state holds a cached gaussian too
    folder = save_one(tmp_path / "sks-state", 1)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn())
    random.seed(99)
    np.random.seed(99)
    restore_rng(load_state(folder).rng, {"noise": torch.Generator()})
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn()) == expected


def test_only_the_previous_copy_left_is_put_back_and_incomplete_leftovers_are_named(tmp_path):
    folder = save_one(tmp_path / "sks-state", 1)
    folder.rename(tmp_path / "sks-state.old")  # a crash after the first rename, and the new copy lost
    state = load_state(folder)
    assert state.position.step == 1 and "from sks-state.old (the previous save)" in state.note

    shutil.rmtree(folder)
    (tmp_path / "sks-state.tmp").mkdir()  # a save cut while writing: no train_state.json yet
    with pytest.raises(SDTrainError, match=r"sks-state does not exist \(only sks-state\.tmp, incomplete"):
        load_state(folder)
    save_one(folder, 2)  # the next save replaces the incomplete copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sks-state"]


def test_a_damaged_state_is_named_with_the_file_and_what_is_wrong(tmp_path):
    folder = save_one(tmp_path / "sks-state", 1)
    (folder / "rng.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(SDTrainError, match=r"Cannot resume from .*sks-state: rng\.safetensors cannot be read"):
        load_state(folder)
    (folder / "rng.safetensors").unlink()
    with pytest.raises(SDTrainError, match=r"not a complete SD-Train state \(rng\.safetensors missing\)"):
        load_state(folder)
    shutil.copy(folder / "optimizer.safetensors", folder / "rng.safetensors")
    (folder / "train_state.json").write_text('{"step": -1}')
    with pytest.raises(SDTrainError, match=r"train_state\.json cannot be read .*step, epoch, batch"):
        load_state(folder)
    with pytest.raises(SDTrainError, match=r"the state folder .*nothing-state does not exist"):
        load_state(tmp_path / "nothing-state")


def test_resuming_with_another_network_dim_says_both_dims(tiny_sd_dir, sks_dataset, tmp_path):
    first = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, save_state=True), None, None)
    state = first.run().state_dir
    other = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=2, network_dim=4, network_alpha=4,
                               resume=str(state)), None, None)  # fmt: skip
    with pytest.raises(SDTrainError, match=r"saved with network_dim 8, this run has network_dim 4"):
        other.setup()


# --- the CUDA random state is saved and restored -------------------------------------------------------------------


def test_state_carries_the_cuda_rng_when_cuda_is_present(tmp_path, monkeypatch):
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(s))
    generator = torch.Generator().manual_seed(3)
    rng = state.rng_state({"noise": generator})
    assert torch.equal(rng["cuda"], cuda_state)
    state.restore_rng(rng, {"noise": generator})
    assert len(restored) == 1 and torch.equal(restored[0], cuda_state)
    restored.clear()
    state.restore_rng({k: v for k, v in rng.items() if k != "cuda"}, {"noise": generator})  # an older state
    assert restored == []


def test_state_without_cuda_has_no_cuda_rng(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in state.rng_state({})
