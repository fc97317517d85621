"""Throw-away environments for testing install.py as the WebUI runs it.

A throw-away venv gets pip (linked from the test venv) and a `.dist-info` folder for every distribution of the test
venv, at the same versions: to pip and importlib.metadata it looks exactly like the WebUI's environment, yet creating
it takes a fraction of a second and installing into it can never touch the test venv. Packages come from a local
wheelhouse of small wheels built here (no index, no network).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_PY = ROOT / "install.py"
FAKE_WEBUI = Path(__file__).parent / "fake_webui"
PIP_SHIM = Path(__file__).parent / "pip_shim"
DEAD_INDEX = "http://127.0.0.1:9/simple"  # nothing listens on the discard port: any index access fails at once


def load_install_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sdtrain_install_under_test", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def install_module() -> ModuleType:
    return load_install_module()


def webui_venv_distributions() -> dict[str, str]:
    """{Name: version} of the test venv (the WebUI v1.10.1 package set plus diffusers and onnxruntime)."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in ("pip", "sd-train", "setuptools"):
            found.setdefault(name, dist.version)
    return found


def dist_info_name(name: str, version: str) -> str:
    return f"{name.replace('-', '_').replace('.', '_')}-{version}.dist-info"


@dataclass
class ThrowawayEnv:
    root: Path
    pip_log: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return next((self.root / "lib").glob("python3*/site-packages"))

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA"))}
        env.update(
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_CACHE_DIR="1",
            PIP_INDEX_URL=DEAD_INDEX,
            PIP_RETRIES="0",
            PIP_TIMEOUT="2",
            SDTRAIN_TEST_PIP_LOG=str(self.pip_log),
        )
        return env

    def run_install(
        self, *, webui: bool = True, pip_shim: bool = False, wheelhouse: Path | None = None, **extra_env: str
    ) -> subprocess.CompletedProcess:
        """Run install.py with this venv's Python the way the WebUI does (the WebUI root on PYTHONPATH)."""
        env = self.base_env()
        paths = ([str(FAKE_WEBUI)] if webui else []) + ([str(PIP_SHIM)] if pip_shim else [])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        if wheelhouse is not None:
            env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse))
        env.update(extra_env)
        return subprocess.run(
            [str(self.python), str(INSTALL_PY)], env=env, cwd=self.root, capture_output=True, text=True, timeout=120
        )

    def pip_calls(self) -> list[dict]:
        if not self.pip_log.exists():
            return []
        return [json.loads(line) for line in self.pip_log.read_text().splitlines() if line.strip()]

    def freeze(self) -> set[str]:
        out = subprocess.run(
            [str(self.python), "-m", "pip", "freeze", "--all"],
            env=self.base_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {line.strip().lower() for line in out.splitlines() if line.strip() and not line.startswith("pip==")}


def make_env(path: Path, distributions: dict[str, str]) -> ThrowawayEnv:
    """A venv whose only real package is pip; every other distribution is present as metadata only."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    env = ThrowawayEnv(path, path / "pip-calls.jsonl")
    site = env.site_packages
    pip_dist = metadata.distribution("pip")
    pip_pkg = Path(pip_dist.locate_file("pip"))
    (site / "pip").symlink_to(pip_pkg, target_is_directory=True)
    (site / dist_info_name("pip", pip_dist.version)).symlink_to(Path(pip_dist._path), target_is_directory=True)
    for name, version in distributions.items():
        info = site / dist_info_name(name, version)
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return env


def build_wheel(wheelhouse: Path, name: str, version: str, requires: list[str] = (), module: str | None = None) -> Path:
    """A minimal pure-Python wheel: one module that knows its version, the given Requires-Dist, a valid RECORD."""
    module = module or name.replace("-", "_").lower()
    info = dist_info_name(name, version)
    files = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: sdtrain-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    target = wheelhouse / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return target


def real_requires(dist_name: str) -> list[str]:
    """The unconditional Requires-Dist of a distribution installed in the test venv (e.g. diffusers 0.31.0's)."""
    return [r for r in metadata.requires(dist_name) or [] if "extra ==" not in r]
