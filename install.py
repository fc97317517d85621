"""SD-Train's installer, run by the WebUI at every launch (launch_utils.run_extension_installer) and after
"Install from URL".

It installs only what is missing, in one pip call, at versions that fit what is already installed, and never
upgrades or downgrades anything: every installed distribution is passed to pip as a `-c` constraint at its current
version, so pip either installs the missing packages beside them or fails without touching them. With everything
present it runs no pip at all (no network, no delay). A failure prints what to do and never stops the WebUI.

Skipped with the WebUI's `--skip-install` (launch.args.skip_install) or SDTRAIN_SKIP_INSTALL=1.
Self-contained on purpose: it runs before SD-Train's own dependencies exist, so it imports nothing of lib_sdtrain.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

SKIP_ENV = "SDTRAIN_SKIP_INSTALL"
PREFIX = "[SD-Train]"

# diffusers: SD-Train supports 0.27-0.31 (pyproject.toml). 0.32-0.36 import SiglipImageProcessor, which only exists
# from transformers 4.37, so they fail at import on the WebUI's transformers 4.30.2; 0.31.0 is therefore the highest
# that works there (verified: txt2img, img2img, save/load on transformers 4.30.2). Newer transformers do not raise
# this cap, SD-Train is tested up to 0.31. The one thing that decides between our candidates is huggingface_hub:
# 0.31.0 needs >=0.23.2, while 0.27.x needs <0.26 (it imports names removed in 0.26). First match wins.
SUPPORTED_DIFFUSERS = ("0.27", "0.32")
DIFFUSERS_CANDIDATES: list[tuple[str, dict[str, tuple[str | None, str | None]]]] = [
    ("0.31.0", {"huggingface_hub": ("0.23.2", None)}),
    ("0.27.2", {"huggingface_hub": ("0.20.2", "0.26")}),
]

# Every ONNX Runtime build installs the same `onnxruntime` module: a second one silently shadows the first
# (usually leaving the CPU build in charge), so none is added when any of these is present.
ONNXRUNTIME_BUILDS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-rocm",
    "onnxruntime-silicon",
    "onnxruntime-qnn",
    "ort-nightly",
    "ort-nightly-gpu",
)
# onnxruntime 1.27+ needs protobuf>=4.25.8; the WebUI pins protobuf 3.20.0, with which 1.26.0 is the newest that fits.
ONNXRUNTIME_MAX_FOR_OLD_PROTOBUF = "1.26.0"
PROTOBUF_NEEDED_BY_NEWER_ONNXRUNTIME = "4.25.8"

# Packages the WebUI itself installs. Normally present; should one be missing, its WebUI v1.10.1 version is used.
WEBUI_PACKAGES = {
    "transformers": "4.30.2",
    "accelerate": "0.21.0",
    "safetensors": "0.4.2",
}


@dataclass
class InstallPlan:
    requirements: list[str] = field(default_factory=list)
    """pip requirement strings for what is missing, e.g. "diffusers==0.31.0"."""
    problems: list[str] = field(default_factory=list)
    """Missing packages that cannot be installed here, with what the user can do."""


def normalize(name: str) -> str:
    """PEP 503 name: case-insensitive, '-', '_' and '.' alike."""
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def version_key(version: str) -> tuple:
    """Compare release versions. Uses `packaging` (the WebUI's, or pip's vendored copy), else a numeric fallback."""
    try:
        from packaging.version import Version
    except ImportError:
        try:
            from pip._vendor.packaging.version import Version
        except ImportError:
            Version = None
    if Version is not None:
        try:
            return (0, Version(version))
        except Exception:
            pass
    digits = []
    for part in version.split("+")[0].split("."):
        number = "".join(ch for ch in part if ch.isdigit())
        digits.append(int(number) if number else 0)
    return (1, tuple(digits))


def in_range(version: str | None, low: str | None, high: str | None) -> bool:
    """low <= version < high (either bound optional). A missing package fits any range: pip will add it."""
    if version is None:
        return True
    key = version_key(version)
    if low is not None and key < version_key(low):
        return False
    return not (high is not None and key >= version_key(high))


def plan_install(installed: Mapping[str, str], cuda: bool) -> InstallPlan:
    """What to install, given the installed distributions ({name: version}, any spelling) and whether CUDA is usable.

    Pure: no imports of the packages concerned, no pip, no network.
    """
    have = {normalize(name): version for name, version in installed.items()}
    plan = InstallPlan()

    for name, version in WEBUI_PACKAGES.items():
        if normalize(name) not in have:
            plan.requirements.append(f"{name}=={version}")

    if "diffusers" not in have:
        for candidate, needs in DIFFUSERS_CANDIDATES:
            if all(in_range(have.get(normalize(dep)), low, high) for dep, (low, high) in needs.items()):
                plan.requirements.append(f"diffusers=={candidate}")
                break
        else:
            hub = have.get("huggingface-hub")
            plan.problems.append(
                f"diffusers: no version SD-Train supports (0.27-0.31) works with the installed huggingface_hub {hub}. "
                "Update the WebUI, or install diffusers 0.31.0 together with huggingface_hub>=0.23.2 yourself."
            )
    elif not in_range(have["diffusers"], SUPPORTED_DIFFUSERS[0], SUPPORTED_DIFFUSERS[1]):
        plan.problems.append(
            f"diffusers {have['diffusers']} is installed (by the WebUI or another extension); SD-Train works with "
            f"{SUPPORTED_DIFFUSERS[0]} up to below {SUPPORTED_DIFFUSERS[1]}. It is left as it is; if SD-Train fails "
            "to start, ask the other extension's author, or install diffusers==0.31.0."
        )

    onnx_builds = [build for build in ONNXRUNTIME_BUILDS if normalize(build) in have]
    if len(onnx_builds) > 1:
        plan.problems.append(
            f"Several ONNX Runtime builds are installed ({', '.join(onnx_builds)}). They share one module, so the "
            "last one installed wins, often the CPU build. Keep one, e.g.: python -m pip uninstall onnxruntime"
        )
    if not onnx_builds:
        package = "onnxruntime-gpu" if cuda else "onnxruntime"
        protobuf = have.get("protobuf")
        if protobuf is not None and not in_range(protobuf, PROTOBUF_NEEDED_BY_NEWER_ONNXRUNTIME, None):
            plan.requirements.append(f"{package}<={ONNXRUNTIME_MAX_FOR_OLD_PROTOBUF}")
        else:
            plan.requirements.append(package)
    return plan


# --- the environment ------------------------------------------------------------------------------------------------


def installed_distributions() -> dict[str, str]:
    """{name: version} of every distribution importable by this interpreter (what pip would see)."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and dist.version and normalize(name) not in found:
            found[normalize(name)] = dist.version
    return found


def cuda_usable() -> bool:
    """Whether onnxruntime-gpu can use the GPU: CUDA torch (ROCm torch also answers is_available, but the -gpu build
    is CUDA-only). Imports torch, so only asked when an ONNX Runtime has to be chosen."""
    try:
        import torch

        return bool(torch.cuda.is_available()) and getattr(torch.version, "hip", None) is None
    except Exception:
        return False


def skip_reason() -> str | None:
    if os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes"):
        return f"{SKIP_ENV} is set"
    if "--skip-install" in sys.argv:
        return "--skip-install"
    launch = _webui_launch()
    if launch is not None and getattr(getattr(launch, "args", None), "skip_install", False):
        return "--skip-install"
    return None


def _webui_launch():
    """The WebUI's `launch` module (its root is on PYTHONPATH when it runs installers), or None outside the WebUI."""
    try:
        import launch
    except Exception:
        return None
    return launch if callable(getattr(launch, "run_pip", None)) else None


def constraints_text(installed: Mapping[str, str]) -> str:
    """A pip constraints file holding every installed distribution at its current version."""
    lines = [f"{name}=={version}" for name, version in sorted(installed.items()) if _pinnable(version)]
    return "\n".join(lines) + "\n"


def _pinnable(version: str) -> bool:
    """Only versions pip can parse: one invalid line would make pip reject the whole constraints file."""
    if not version or not all(ch.isalnum() or ch in ".+!-_" for ch in version):
        return False
    return version_key(version)[0] == 0 or _packaging_missing()


def _packaging_missing() -> bool:
    try:
        import packaging.version  # noqa: F401
    except ImportError:
        try:
            import pip._vendor.packaging.version  # noqa: F401
        except ImportError:
            return True
    return False


def run_pip_install(requirements: list[str], constraints_file: str) -> None:
    """One `pip install`: through the WebUI's launch.run_pip when there is one (it adds --prefer-binary and the user's
    INDEX_URL, and runs the command through a shell), else `python -m pip`. Raises on failure."""
    launch = _webui_launch()
    if launch is not None:
        quoted = " ".join(f'"{r}"' for r in requirements)  # double quotes: sh and cmd.exe both keep `<=` literal
        launch.run_pip(f'install {quoted} -c "{constraints_file}"', f"SD-Train requirements: {', '.join(requirements)}")
        return
    command = [sys.executable, "-m", "pip", "install", "--prefer-binary", *requirements, "-c", constraints_file]
    print(f"{PREFIX} Installing {', '.join(requirements)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip exited with {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def main(
    installed_fn: Callable[[], dict[str, str]] = installed_distributions,
    cuda_fn: Callable[[], bool] = cuda_usable,
) -> int:
    plan = InstallPlan()
    try:
        if skip_reason():
            return 0
        installed = {normalize(name): version for name, version in installed_fn().items()}
        needs_onnx_choice = not any(normalize(b) in installed for b in ONNXRUNTIME_BUILDS)
        plan = plan_install(installed, cuda=cuda_fn() if needs_onnx_choice else False)
        for problem in plan.problems:
            print(f"{PREFIX} {problem}", flush=True)
        if not plan.requirements:
            return 0
        with tempfile.TemporaryDirectory(prefix="sdtrain-install-") as tmp:
            constraints_file = os.path.join(tmp, "installed-constraints.txt")
            with open(constraints_file, "w", encoding="utf-8") as f:
                f.write(constraints_text(installed))
            run_pip_install(plan.requirements, constraints_file)
    except Exception as e:  # never stop the WebUI from starting
        wanted = " ".join(f'"{r}"' for r in plan.requirements) or "diffusers==0.31.0"
        print(
            f"{PREFIX} Could not install its requirements ({type(e).__name__}: {e}).\n"
            f"{PREFIX} The WebUI starts anyway; SD-Train's tab may not work until they are installed. Nothing that was "
            "installed before has been changed. To install by hand, run with the WebUI's Python:\n"
            f"    python -m pip install {wanted}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
