"""install.py end to end: the real script, run by a throw-away venv's Python as the WebUI runs it, with real pip
installing from a local wheelhouse. The index points at a dead port, so any network access would fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.install.conftest import build_wheel, make_env, real_requires, webui_venv_distributions


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    """diffusers 0.31.0 with its real requirements, and newer safetensors/huggingface_hub that pip could pick if it
    were allowed to upgrade."""
    house = tmp_path / "wheelhouse"
    build_wheel(house, "diffusers", "0.31.0", real_requires("diffusers"))
    build_wheel(house, "safetensors", "0.4.5")
    build_wheel(house, "huggingface_hub", "0.99.0")
    return house


def webui_distributions(**changes: str | None) -> dict[str, str]:
    dists = {name.lower(): version for name, version in webui_venv_distributions().items()}
    for name, version in changes.items():
        if version is None:
            dists.pop(name, None)
        else:
            dists[name] = version
    return dists


def test_everything_present_runs_no_pip(tmp_path, wheelhouse):
    env = make_env(tmp_path / "venv", webui_distributions())
    before = env.freeze()

    with_webui = env.run_install(wheelhouse=wheelhouse)
    without_webui = env.run_install(webui=False, pip_shim=True)  # `python -m pip` would hit the recording shim

    for result in (with_webui, without_webui):
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == ""
    assert env.pip_calls() == []
    assert env.freeze() == before


@pytest.mark.parametrize("through_webui", [True, False], ids=["launch.run_pip", "python-m-pip"])
def test_missing_diffusers_is_installed_in_one_call_and_nothing_else_changes(tmp_path, wheelhouse, through_webui):
    env = make_env(tmp_path / "venv", webui_distributions(diffusers=None))
    before = env.freeze()

    result = env.run_install(webui=through_webui, wheelhouse=wheelhouse)

    assert result.returncode == 0, result.stderr
    assert "Could not install" not in result.stdout, result.stdout
    after = env.freeze()
    assert after - before == {"diffusers==0.31.0"}
    assert before - after == set()
    if through_webui:
        calls = env.pip_calls()
        assert len(calls) == 1
        assert calls[0]["command"].startswith('install "diffusers==0.31.0" -c ')


def test_pinned_packages_are_never_upgraded(tmp_path, wheelhouse):
    """diffusers needs safetensors>=0.3.1; with an older one installed pip must fail rather than upgrade it."""
    env = make_env(tmp_path / "venv", webui_distributions(diffusers=None, safetensors="0.3.0"))
    before = env.freeze()

    result = env.run_install(wheelhouse=wheelhouse)

    assert result.returncode == 0
    assert "Could not install" in result.stdout and "The WebUI starts anyway" in result.stdout
    assert len(env.pip_calls()) == 1
    assert env.freeze() == before


def test_missing_onnxruntime_and_diffusers_share_one_call(tmp_path, wheelhouse):
    build_wheel(wheelhouse, "onnxruntime", "1.26.0")
    build_wheel(wheelhouse, "onnxruntime", "1.27.0")  # would need a newer protobuf: must not be chosen
    env = make_env(tmp_path / "venv", webui_distributions(diffusers=None, onnxruntime=None))
    before = env.freeze()

    result = env.run_install(wheelhouse=wheelhouse)

    assert result.returncode == 0, result.stderr
    calls = env.pip_calls()
    assert len(calls) == 1
    assert '"diffusers==0.31.0"' in calls[0]["command"]
    assert '"onnxruntime<=1.26.0"' in calls[0]["command"]  # no torch here: no CUDA, the CPU build
    assert env.freeze() - before == {"diffusers==0.31.0", "onnxruntime==1.26.0"}


@pytest.mark.parametrize(
    "how",
    [
        {"COMMANDLINE_ARGS": "--skip-install"},  # the WebUI's flag, seen through launch.args
        {"SDTRAIN_SKIP_INSTALL": "1"},
    ],
    ids=["--skip-install", "SDTRAIN_SKIP_INSTALL"],
)
def test_skip_install_does_nothing(tmp_path, wheelhouse, how):
    env = make_env(tmp_path / "venv", webui_distributions(diffusers=None))
    before = env.freeze()

    result = env.run_install(wheelhouse=wheelhouse, **how)
    shim_result = env.run_install(webui=False, pip_shim=True, **how) if "SDTRAIN_SKIP_INSTALL" in how else result

    assert result.returncode == 0 and shim_result.returncode == 0
    assert env.pip_calls() == []
    assert env.freeze() == before
