"""preload.py with a real argparse parser, as the WebUI builds it."""

from __future__ import annotations

import argparse
import ast
import importlib.util
from pathlib import Path

import pytest

PRELOAD = Path(__file__).resolve().parents[2] / "preload.py"


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("sdtrain_preload_under_test", PRELOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    # A few of the WebUI's own options (modules/cmd_args.py), so clashes and mixing show up.
    parser.add_argument("--listen", action="store_true")
    parser.add_argument("--data-dir", type=str, default=".")
    parser.add_argument("--lora-dir", type=str, default="models/Lora")
    module.preload(parser)
    return parser


def test_defaults_are_none_so_the_host_can_resolve_them(parser):
    opts = parser.parse_args([])
    assert (opts.sdtrain_dataset_dir, opts.sdtrain_output_dir, opts.sdtrain_models_dir) == (None, None, None)


def test_options_parse_beside_the_webuis(parser, tmp_path):
    opts = parser.parse_args(
        ["--listen", "--sdtrain-dataset-dir", str(tmp_path / "data"), "--sdtrain-output-dir", str(tmp_path / "out")]
    )
    assert opts.listen is True
    assert opts.sdtrain_dataset_dir == str(tmp_path / "data")
    assert opts.sdtrain_output_dir == str(tmp_path / "out")


def test_help_lists_the_group(parser):
    text = parser.format_help()
    assert "SD-Train" in text and "--sdtrain-models-dir" in text


def test_preload_imports_only_argparse():
    tree = ast.parse(PRELOAD.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"argparse"}
