"""The one pickle reader: it never goes through torch.load (which the WebUI replaces), never returns None, runs no
code from a file, and names the file and the reason whenever it cannot give a state dict."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from lib_sdtrain.errors import ModelLoadError
from lib_sdtrain.utils.torch_pickle import load_pickle, load_tensor_dict, pickled_weights


class Payload:
    """Unpickling this runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_it_reads_past_a_replaced_torch_load(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(3.0)}, path)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: None)  # what the WebUI's checker returns
    assert torch.equal(load_pickle(path)["w"], torch.arange(3.0))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "pre-1.6 format"])
def test_a_pickle_that_runs_code_is_refused_naming_the_file_and_the_global(tmp_path, zip_format):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": Payload(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelLoadError, match=r"Refusing to load evil\.pt: it is not plain tensors .*system") as e:
        load_pickle(path)
    assert not marker.exists()
    assert "weights_only" not in str(e.value)  # not torch's advice to turn the check off


def test_the_reason_is_found_in_the_webuis_torch_2_1_message_too(tmp_path, monkeypatch):
    message = (
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, "
        "but it can result in arbitrary code execution.Do it only if you get the file from a trusted source. "
        "WeightsUnpickler error: Unsupported class posix.system"
    )

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(message)

    monkeypatch.setattr(torch.serialization, "load", refuse)
    (tmp_path / "evil.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"evil\.pt: it is not plain tensors and numbers \(Unsupported class "
                       r"posix\.system\)\. Unpickling"):  # fmt: skip
        load_pickle(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    ("contents", "name"), [(b"", "empty.pt"), (b"hello, not a checkpoint", "text.pt"), (None, "cut.pt")]
)
def test_unreadable_files_are_named_not_a_torch_traceback(tmp_path, contents, name):
    path = tmp_path / name
    if contents is None:
        torch.save({"w": torch.zeros(64)}, path)
        contents = path.read_bytes()[:300]
    path.write_bytes(contents)
    with pytest.raises(ModelLoadError, match=rf"{name} is not a readable checkpoint \(truncated or corrupt\?\)"):
        load_pickle(path)
    with pytest.raises(ModelLoadError, match=r"missing\.pt does not exist"):
        load_pickle(tmp_path / "missing.pt")


def test_state_dicts_are_unwrapped_and_other_objects_named(tmp_path):
    torch.save({"state_dict": {"a": torch.ones(1)}, "epoch": 3}, tmp_path / "lightning.ckpt")
    assert list(load_tensor_dict(tmp_path / "lightning.ckpt")) == ["a"]
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match=r"list\.pt does not hold a state dict \(found list\)"):
        load_tensor_dict(tmp_path / "list.pt")


def test_sharded_pickled_weights_are_found_and_merged(tmp_path):
    shards = {"pytorch_model-00001-of-00002.bin": {"a": torch.ones(1)}, "pytorch_model-00002-of-00002.bin": {}}
    shards["pytorch_model-00002-of-00002.bin"]["b"] = torch.zeros(2)
    for name, part in shards.items():
        torch.save(part, tmp_path / name)
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {k: name for name, part in shards.items() for k in part}}))
    assert pickled_weights(tmp_path) == index
    assert sorted(load_tensor_dict(index)) == ["a", "b"]

    index.write_text("{}")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin\.index\.json is not a readable shard index"):
        load_tensor_dict(index)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert pickled_weights(tmp_path) is None  # transformers reads safetensors itself, and prefers them
