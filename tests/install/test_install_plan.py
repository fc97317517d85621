"""install.py's decision: what to install, given what is installed and whether CUDA is usable."""

from __future__ import annotations

import pytest

from tests.install.conftest import webui_venv_distributions

# The WebUI v1.10.1 environment as install.py meets it at a first launch: no diffusers, no ONNX Runtime.
WEBUI = {
    "transformers": "4.30.2",
    "accelerate": "0.21.0",
    "safetensors": "0.4.2",
    "huggingface-hub": "0.36.2",
    "protobuf": "3.20.0",
    "numpy": "1.26.2",
    "torch": "2.1.2+cu121",
}


def test_first_launch_on_webui_v1_10_installs_diffusers_and_cpu_onnxruntime(install_module):
    plan = install_module.plan_install(WEBUI, cuda=False)
    assert plan.requirements == ["diffusers==0.31.0", "onnxruntime<=1.26.0"]
    assert plan.problems == []


def test_cuda_picks_the_gpu_build(install_module):
    plan = install_module.plan_install(WEBUI, cuda=True)
    assert plan.requirements == ["diffusers==0.31.0", "onnxruntime-gpu<=1.26.0"]


def test_everything_present_installs_nothing(install_module):
    assert install_module.plan_install(webui_venv_distributions(), cuda=True).requirements == []


@pytest.mark.parametrize(
    "present", ["onnxruntime", "onnxruntime-gpu", "onnxruntime_gpu", "onnxruntime-directml", "ONNXRuntime-OpenVINO"]
)
def test_no_second_onnxruntime_when_any_build_is_present(install_module, present):
    for cuda in (True, False):
        plan = install_module.plan_install({**WEBUI, "diffusers": "0.31.0", present: "1.20.0"}, cuda=cuda)
        assert plan.requirements == [], (present, cuda)


def test_newer_protobuf_lifts_the_onnxruntime_cap(install_module):
    plan = install_module.plan_install({**WEBUI, "diffusers": "0.31.0", "protobuf": "5.29.0"}, cuda=False)
    assert plan.requirements == ["onnxruntime"]
    plan = install_module.plan_install({**WEBUI, "diffusers": "0.31.0", "protobuf": "4.25.7"}, cuda=False)
    assert plan.requirements == ["onnxruntime<=1.26.0"]


def test_diffusers_follows_huggingface_hub(install_module):
    older_hub = install_module.plan_install({**WEBUI, "huggingface_hub": "0.21.4", "onnxruntime": "1.26.0"}, False)
    assert older_hub.requirements == ["diffusers==0.27.2"]
    too_old = install_module.plan_install({**WEBUI, "huggingface_hub": "0.19.0", "onnxruntime": "1.26.0"}, False)
    assert too_old.requirements == []
    assert "huggingface_hub 0.19.0" in too_old.problems[0]


def test_a_missing_webui_package_comes_back_at_the_webui_version_only(install_module):
    env = {k: v for k, v in WEBUI.items() if k != "accelerate"}
    plan = install_module.plan_install({**env, "diffusers": "0.31.0", "onnxruntime": "1.26.0"}, cuda=False)
    assert plan.requirements == ["accelerate==0.21.0"]


def test_constraints_pin_every_installed_distribution(install_module):
    installed = {"transformers": "4.30.2", "torch": "2.1.2+cu121", "odd": "1.0 beta", "bad": "not.a.version!"}
    text = install_module.constraints_text(installed)
    assert text.splitlines() == ["torch==2.1.2+cu121", "transformers==4.30.2"]


def test_main_does_not_import_torch_when_onnxruntime_is_present(install_module, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(install_module, "run_pip_install", lambda reqs, constraints: calls.append(reqs))
    monkeypatch.setattr(install_module, "skip_reason", lambda: None)

    def no_cuda_probe() -> bool:
        raise AssertionError("CUDA probed although an ONNX Runtime is installed")

    installed = {k: v for k, v in webui_venv_distributions().items() if k.lower() != "diffusers"}
    assert install_module.main(lambda: installed, no_cuda_probe) == 0
    assert calls == [["diffusers==0.31.0"]]


def test_main_never_raises(install_module, monkeypatch, capsys):
    def broken_pip(reqs, constraints):
        raise RuntimeError("Couldn't install SD-Train requirements.\nError code: 1")

    monkeypatch.setattr(install_module, "run_pip_install", broken_pip)
    monkeypatch.setattr(install_module, "skip_reason", lambda: None)
    assert install_module.main(lambda: dict(WEBUI), lambda: True) == 0
    out = capsys.readouterr().out
    assert "Could not install" in out and "The WebUI starts anyway" in out
    assert 'pip install "diffusers==0.31.0" "onnxruntime-gpu<=1.26.0"' in out


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_env_var_skips(install_module, monkeypatch, value):
    monkeypatch.setenv("SDTRAIN_SKIP_INSTALL", value)
    assert install_module.skip_reason() == "SDTRAIN_SKIP_INSTALL is set"


def test_an_unsupported_diffusers_is_reported_and_left_alone(install_module):
    plan = install_module.plan_install({**WEBUI, "diffusers": "0.35.1", "onnxruntime": "1.26.0"}, cuda=False)
    assert plan.requirements == []
    assert "diffusers 0.35.1 is installed" in plan.problems[0]


def test_two_onnxruntime_builds_are_reported(install_module):
    plan = install_module.plan_install(
        {**WEBUI, "diffusers": "0.31.0", "onnxruntime": "1.26.0", "onnxruntime-gpu": "1.26.0"}, cuda=True
    )
    assert plan.requirements == []
    assert "onnxruntime, onnxruntime-gpu" in plan.problems[0]
