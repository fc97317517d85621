"""One path check for every source: each path-kind option of the schema and of the CLI stages is refused outside
SD-Train's folders (a server others can reach) whether it comes from the job's options, a config file, a preset,
a previous run's config or a dataset_config's subsets; names and extensions are checked for their shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lib_sdtrain.errors import InputError
from lib_sdtrain.host import standalone
from lib_sdtrain.jobs import STAGES
from lib_sdtrain.jobs.access import load_train_config
from lib_sdtrain.jobs.stages import _subparser
from lib_sdtrain.train import presets
from lib_sdtrain.train.options import OPTIONS, path_kinds
from lib_sdtrain.utils.path_kinds import PathKind, argument_kinds

PATH_OPTIONS = [o.name for o in OPTIONS if o.kind is not None and o.kind.is_path]
HUB_ID = "someone/some-model"  # a hub id is downloaded, not read from the disk: it passes the folder check


def image_folder(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (64, 64), (200, 20 * i, 20)).save(folder / f"img{i}.png")
        (folder / f"img{i}.caption").write_text("sks")
    return folder


@pytest.fixture
def restricted(tmp_path):
    """The standalone host as `sdtrain ui --listen` sets it up, with a small dataset in its datasets folder."""
    saved = standalone._config
    standalone.configure(home=tmp_path / "home", restrict_file_access=True)
    for root in standalone.allowed_roots():
        root.mkdir(parents=True, exist_ok=True)
    dataset = image_folder(standalone.dataset_dir() / "mine" / "1_sks")
    yield dataset.parent
    standalone._config = saved


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside SD-Train's, holding what each kind of option names: a file, a folder, a model folder."""
    folder = image_folder(tmp_path / "elsewhere" / "1_x")
    (folder / "file.toml").write_text("this is not toml = = =\n")
    return folder


def outside_value(outside: Path, name: str) -> str:
    kind = path_kinds()[name]
    return str(outside / "file.toml") if kind in (PathKind.READ_FILE, PathKind.WRITE_FILE) else str(outside)


def base_options(dataset: Path) -> dict:
    return {
        "pretrained_model_name_or_path": HUB_ID,
        "train_data_dir": str(dataset),
        "network_module": "networks.lora",
        "max_train_steps": 1,
    }


def write_toml(path: Path, values: dict) -> Path:
    from lib_sdtrain.train.toml_writer import toml_value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in values.items()))
    return path


def refused_field(options: dict) -> InputError:
    with pytest.raises(InputError) as refused:
        STAGES["train"].check(options)
    return refused.value


def test_the_schema_declares_path_kinds_for_every_path_option():
    assert {"network_weights", "resume", "vae", "tokenizer", "sample_prompts", "logging_dir"} <= set(PATH_OPTIONS)
    assert path_kinds()["output_name"] is PathKind.NAME and path_kinds()["caption_extension"] is PathKind.SUFFIX


@pytest.mark.parametrize("name", PATH_OPTIONS)
def test_a_path_option_outside_is_refused_from_the_job_options(restricted, outside, name):
    error = refused_field({**base_options(restricted), name: outside_value(outside, name)})
    assert error.field == name and "outside SD-Train's folders" in str(error)


@pytest.mark.parametrize("name", PATH_OPTIONS)
def test_a_path_option_outside_is_refused_from_a_config_file(restricted, outside, name):
    values = {**base_options(restricted), name: outside_value(outside, name)}
    config = write_toml(standalone.dataset_dir() / "mine" / "uploaded.toml", values)
    error = refused_field({"config_file": str(config)})
    assert error.field == name and "outside SD-Train's folders" in str(error)


@pytest.mark.parametrize("name", PATH_OPTIONS)
def test_a_path_option_outside_is_refused_from_a_previous_runs_config(restricted, outside, name):
    values = {**base_options(restricted), name: outside_value(outside, name)}
    run_config = write_toml(standalone.output_dir() / "old.sdtrain.toml", values)
    with pytest.raises(InputError) as refused:  # what the form's "Load" runs
        load_train_config(str(run_config), {}, str(standalone.output_dir()))
    assert refused.value.field == name


@pytest.mark.parametrize("name", PATH_OPTIONS)
def test_a_path_option_outside_is_refused_from_a_preset(restricted, outside, name):
    folder = standalone.output_dir() / "presets"
    write_toml(folder / "evil.toml", {name: outside_value(outside, name)})
    values = presets.load_preset("evil", folder)  # the form applies it; Start sends the form
    error = refused_field({**base_options(restricted), **values})
    assert error.field == name


def test_a_config_file_outside_is_refused_before_it_is_read(restricted, outside):
    error = refused_field({**base_options(restricted), "config_file": str(outside / "file.toml")})
    assert error.field == "config_file" and "outside" in str(error) and "TOML" not in str(error)


@pytest.mark.parametrize("key", ["image_dir", "metadata_file"])
def test_a_dataset_config_subset_outside_is_refused(restricted, outside, key):
    value = str(outside) if key == "image_dir" else str(outside / "meta.json")
    (outside / "meta.json").write_text(json.dumps({"img0": {"caption": "x"}}))
    config = standalone.dataset_dir() / "mine" / "dataset.toml"
    config.write_text(f"[[datasets]]\n[[datasets.subsets]]\n{key} = {json.dumps(value)}\n")
    options = {**base_options(restricted), "dataset_config": str(config)}
    options.pop("train_data_dir")
    error = refused_field(options)
    assert "dataset_config subset 1" in str(error) and "outside SD-Train's folders" in str(error)


def test_a_link_in_the_dataset_to_an_image_outside_is_refused(restricted, outside):
    (restricted / "1_sks" / "stolen.png").symlink_to(outside / "img0.png")
    error = refused_field(base_options(restricted))
    assert error.field == "train_data_dir" and "outside SD-Train's folders" in str(error)
    for kind in ("caption", "report"):
        with pytest.raises(InputError, match="outside SD-Train's folders"):
            STAGES[kind].check({"train_data_dir": str(restricted / "1_sks")})


def test_metadata_keyed_by_paths_outside_is_refused(restricted, outside):
    meta = restricted / "meta_lat.json"
    meta.write_text(json.dumps({str(outside / "img0.png"): {"caption": "x", "train_resolution": [64, 64]}}))
    with pytest.raises(InputError, match="outside SD-Train's folders"):
        STAGES["train"].check({**base_options(restricted), "in_json": str(meta)})


@pytest.mark.parametrize(
    ("name", "value"),
    [("output_name", "../../escape"), ("output_name", "a/b"), ("log_prefix", "../x"), ("caption_extension", "/../x"),
     ("caption_extension", "../../.bashrc"), ("output_dir", "x" * 300)],
)  # fmt: skip
def test_names_and_extensions_of_the_wrong_shape_are_refused_from_every_source(restricted, name, value):
    assert refused_field({**base_options(restricted), name: value}).field == name
    config = write_toml(standalone.dataset_dir() / "mine" / "odd.toml", {**base_options(restricted), name: value})
    assert refused_field({"config_file": str(config)}).field == name


@pytest.mark.parametrize("command", ["caption", "tag", "merge", "buckets", "report"])
def test_every_path_option_of_the_cli_stages_is_checked(restricted, outside, command):
    required = {
        "caption": {}, "tag": {}, "report": {},
        "merge": {"out_json": str(restricted / "m.json")},
        "buckets": {"in_json": str(restricted / "m.json"), "out_json": str(restricted / "l.json"), "model": HUB_ID},
    }[command]  # fmt: skip
    kinds = argument_kinds(_subparser(command))
    paths = [name for name, kind in kinds.items() if kind.is_path]
    assert "train_data_dir" in paths
    for name in paths:
        options = {"train_data_dir": str(restricted / "1_sks"), **required, name: str(outside / "file.toml")}
        with pytest.raises(InputError) as refused:
            STAGES[command].check(options)
        assert refused.value.field == name, (command, name, str(refused.value))


def test_a_value_that_looks_like_an_option_stays_a_value(restricted, capsys):
    for value in ("--help", "-h", "--version"):
        with pytest.raises(InputError) as refused:
            STAGES["caption"].check({"train_data_dir": str(restricted / "1_sks"), "caption_extension": value})
        assert refused.value.field == "caption_extension"
        STAGES["tag"].check({"train_data_dir": str(restricted / "1_sks"), "undesired_tags": value})  # plain text
    assert capsys.readouterr().out == ""  # argparse printed no help to the server's console


def test_inside_sdtrains_folders_everything_passes(restricted):
    config = write_toml(standalone.dataset_dir() / "mine" / "ok.toml", base_options(restricted))
    assert callable(STAGES["train"].check({"config_file": str(config)}))
    assert callable(STAGES["caption"].check({"train_data_dir": str(restricted / "1_sks")}))
