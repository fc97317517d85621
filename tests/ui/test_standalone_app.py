"""The standalone app's server settings: confinement when others can connect, page and API authentication."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_sdtrain.api import register_routes
from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.ui.standalone_app import AppSettings, configure_host, parse_auth


@pytest.fixture(autouse=True)
def restore_host():
    from lib_sdtrain.host import standalone

    saved = standalone._config
    yield
    standalone._config = saved


@pytest.mark.parametrize("settings", [{"listen": True}, {"share": True}])
def test_listening_confines_files_to_sdtrain_folders(tmp_path, settings):
    host = configure_host(AppSettings(home=str(tmp_path / "home"), **settings))
    assert not host.file_access_allowed()
    assert host.check_path_allowed(host.dataset_dir() / "mine") == (host.dataset_dir() / "mine").resolve()
    with pytest.raises(SDTrainError, match="outside SD-Train's folders"):
        host.check_path_allowed(tmp_path / "elsewhere")
    with pytest.raises(SDTrainError):
        host.check_path_allowed(host.dataset_dir() / ".." / ".." / ".." / "..")


def test_local_use_may_use_any_folder_and_makes_its_own(tmp_path):
    host = configure_host(AppSettings(home=str(tmp_path / "home")))
    assert host.file_access_allowed()
    assert host.check_path_allowed(tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()
    assert all(folder.is_dir() for folder in host.allowed_roots())


def test_page_and_api_authentication(tmp_path):
    assert parse_auth("ann:secret,bob:pa:ss") == [("ann", "secret"), ("bob", "pa:ss")]
    assert parse_auth(None) is None
    host = configure_host(AppSettings(home=str(tmp_path / "home"), api_auth="ann:secret"))
    app = FastAPI()
    register_routes(app, host)
    client = TestClient(app)
    assert client.get("/sdtrain/v1/info").status_code == 401
    assert client.get("/sdtrain/v1/info", auth=("ann", "wrong")).status_code == 401
    info = client.get("/sdtrain/v1/info", auth=("ann", "secret")).json()
    assert info["host"] == "standalone" and "train" in info["job_kinds"]
