"""The volunteer's install: the wheel built from this repository, served by the portal's
download page, installed with pip into a fresh virtual environment (no Django in it), attaches
to the portal and earns credit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import requests

from apps.accounts.models import Host
from apps.workunits.campaigns import campaign_start
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.states import CampaignState
from tests.factories import make_campaign, make_volunteer
from worker_client import __version__

PROJECT_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """``make wheel``'s command, into a temporary directory."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out), str(PROJECT_DIR)], check=True, timeout=600)
    (wheel,) = out.glob("strategy_worker-*.whl")
    return wheel


def test_the_served_wheel_installs_alone_attaches_and_earns_credit(
        live_server, daemons_inline, quick_delays, settings, tmp_path, built_wheel):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.WORKER_WHEEL_DIR = built_wheel.parent
    assert built_wheel.name == f"strategy_worker-{__version__}-py3-none-any.whl"

    # The download page names the wheel and the command to install it from the portal.
    page = requests.get(f"{live_server.url}/download/", timeout=30).text
    url = f"{live_server.url}/download/{built_wheel.name}"
    assert url in page and "pipx install" in page

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", url],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr
    # Only the client's own dependencies: no Django, no portal code.
    for module in ("django", "rest_framework", "apps", "portal"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                               cwd=tmp_path)
        assert probe.returncode != 0, f"{module} is importable in the worker's environment"

    dataset = dataset_create_synthetic(bars=3_000, seed=21)
    campaign = make_campaign(
        name="wheel", dataset=dataset, state=CampaignState.DRAFT, in_sample_stop=2_400,
        out_sample_stop=3_000, islands=1, budget_epochs=1, generations_per_epoch=2,
        min_quorum=1, target_nresults=1, seed=5,
        ga_settings={"population_size": 8, "elite": 2, "immigrants": 2, "top_k": 4,
                     "min_trades": 5})
    campaign_start(campaign=campaign)
    volunteer = make_volunteer()
    worker = str(bindir / "strategy-worker")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "DATABASE_URL", "PYTEST_", "PYTHONPATH"))}
    env["STRATEGY_WORKER_HOME"] = str(tmp_path / "home")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([worker, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    assert re.search(rf"strategy-worker {re.escape(__version__)}", cli("--version").stdout)
    attached = cli("attach", "--server", live_server.url, "--account-key",
                   volunteer.account_key, "--name", "from-wheel")
    assert attached.returncode == 0, attached.stderr
    ran = cli("run", "--cpus", "1", "--max-tasks", "1")
    assert ran.returncode == 0, ran.stderr
    assert "1 result(s) accepted" in ran.stdout

    host = Host.objects.get(name="from-wheel")
    assert host.client_version == __version__
    assert host.n_valid == 1 and host.total_credit > 0
    status = cli("status")
    assert status.returncode == 0 and "Credit:" in status.stdout
