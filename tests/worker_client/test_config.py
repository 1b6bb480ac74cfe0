"""Where the worker keeps its files, and how the host configuration is written and read."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from worker_client.config import (
    HOME_ENV,
    HostConfig,
    WorkerPaths,
    load_host_config,
    save_host_config,
    write_atomic,
)
from worker_client.exceptions import ConfigError, NotAttachedError

HOME = "/home/ada"


def test_linux_uses_xdg_defaults():
    paths = WorkerPaths.default({"HOME": HOME}, platform="linux")
    assert paths.config_dir == Path(HOME, ".config", "strategy-worker")
    assert paths.data_dir == Path(HOME, ".local", "share", "strategy-worker")
    assert paths.cache_dir == Path(HOME, ".cache", "strategy-worker")
    assert paths.config_file == paths.config_dir / "config.json"


def test_linux_honours_absolute_xdg_variables_only():
    env = {"HOME": HOME, "XDG_CONFIG_HOME": "/etc/xdg-ada", "XDG_CACHE_HOME": "relative/cache"}
    paths = WorkerPaths.default(env, platform="linux")
    assert paths.config_dir == Path("/etc/xdg-ada/strategy-worker")
    # The XDG spec: a relative path is invalid and ignored.
    assert paths.cache_dir == Path(HOME, ".cache", "strategy-worker")


def test_macos_uses_application_support_and_caches():
    paths = WorkerPaths.default({"HOME": HOME}, platform="darwin")
    support = Path(HOME, "Library", "Application Support", "strategy-worker")
    assert paths.config_dir == support
    assert paths.data_dir == support
    assert paths.cache_dir == Path(HOME, "Library", "Caches", "strategy-worker")


def test_windows_uses_appdata_for_config_and_localappdata_for_the_rest():
    env = {"USERPROFILE": r"C:\Users\ada", "APPDATA": r"C:\Users\ada\AppData\Roaming",
           "LOCALAPPDATA": r"C:\Users\ada\AppData\Local"}
    paths = WorkerPaths.default(env, platform="win32")
    assert paths.config_dir == Path(env["APPDATA"]) / "strategy-worker"
    assert paths.data_dir == Path(env["LOCALAPPDATA"]) / "strategy-worker"
    assert paths.cache_dir == Path(env["LOCALAPPDATA"]) / "strategy-worker" / "Cache"


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_the_home_variable_overrides_every_platform(platform, tmp_path):
    paths = WorkerPaths.default({HOME_ENV: str(tmp_path), "HOME": HOME}, platform=platform)
    assert paths.config_file == tmp_path / "config.json"
    assert paths.data_dir == tmp_path / "data"
    assert paths.cache_dir == tmp_path / "cache"


def test_config_round_trips_and_never_holds_the_account_key(tmp_path):
    paths = WorkerPaths.default({HOME_ENV: str(tmp_path)})
    config = HostConfig(server="http://127.0.0.1:8000/", host_id=7, token="t" * 43, name="box")
    written = save_host_config(paths, config)
    assert load_host_config(paths) == config
    assert set(json.loads(written.read_text())) == {"format", "server", "host_id", "token",
                                                    "name"}


@pytest.mark.skipif(sys.platform == "win32", reason="chmod is a no-op on Windows")
def test_config_file_is_private(tmp_path):
    paths = WorkerPaths.default({HOME_ENV: str(tmp_path / "home")})
    save_host_config(paths, HostConfig(server="http://x/", host_id=1, token="secret", name="n"))
    assert stat.S_IMODE(os.stat(paths.config_file).st_mode) == 0o600


def test_missing_config_says_how_to_attach(tmp_path):
    with pytest.raises(NotAttachedError, match="strategy-worker attach"):
        load_host_config(WorkerPaths.default({HOME_ENV: str(tmp_path)}))


@pytest.mark.parametrize("content", ["{not json", '{"format": 99}', '["a list"]',
                                     '{"format": 1, "server": "http://x/"}'])
def test_unusable_config_is_a_config_error(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match="attach again"):
        load_host_config(WorkerPaths.default({HOME_ENV: str(tmp_path)}))


def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "results" / "1.json"
    write_atomic(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["1.json"]  # no temporary left behind
