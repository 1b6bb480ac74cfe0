"""The project skeleton: settings helpers, health check, system checks, migrations."""

import io
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import OperationalError, connection
from django.urls import reverse

from portal import views
from portal.settings import env_bool, env_int, env_list

PROJECT_DIR = Path(__file__).resolve().parents[2]


def vendor_selected_by_environment() -> str:
    """What connection.vendor should be, read from DATABASE_URL independently of settings."""
    scheme = urlsplit(os.environ.get("DATABASE_URL") or "sqlite://").scheme
    return {
        "sqlite": "sqlite",
        "postgres": "postgresql",
        "postgresql": "postgresql",
        "pgsql": "postgresql",
    }[scheme]


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py in a fresh process as an operator would: not under pytest, not in DEBUG."""
    base = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTEST_VERSION", "DJANGO_DEBUG", "DJANGO_SECRET_KEY"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- health check --------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_reports_the_database_that_database_url_selects(client):
    response = client.get(reverse("healthz"))

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": vendor_selected_by_environment()}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_answers_503_when_the_database_is_unreachable(client, monkeypatch, caplog):
    class UnreachableDatabase:
        vendor = "postgresql"

        def cursor(self):
            raise OperationalError("connection to server at 127.0.0.1 refused")

    monkeypatch.setattr(views, "connection", UnreachableDatabase())

    response = client.get(reverse("healthz"))

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["database"] == "postgresql"
    assert "127.0.0.1" not in response.content.decode()  # the cause is logged, not shown
    assert "refused" in caplog.text


def test_healthz_refuses_writes(client):
    assert client.post(reverse("healthz")).status_code == 405


@pytest.mark.django_db
def test_sqlite_connections_get_the_concurrency_pragmas():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 1  # NORMAL


# --- management commands -------------------------------------------------------------------


def test_manage_py_check_passes():
    result = run_manage("check", "--fail-level", "WARNING", DJANGO_SECRET_KEY="x" * 50)

    assert result.returncode == 0, result.stdout + result.stderr


def test_manage_py_refuses_to_start_without_a_secret_key():
    result = run_manage("check")

    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set" in result.stderr


@pytest.mark.django_db
def test_no_model_changes_are_missing_a_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit:
        pytest.fail(f"models changed without a migration:\n{out.getvalue()}")


# --- settings helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("ON", True), ("0", False), ("off", False)],
)
def test_env_bool_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("X", raw)

    assert env_bool("X", default=not expected) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_env_bool_rejects_anything_else(monkeypatch, raw):
    monkeypatch.setenv("X", raw)

    with pytest.raises(ImproperlyConfigured, match=r"^X="):
        env_bool("X", default=False)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_or_blank_variables_give_the_default(monkeypatch, raw):
    if raw is None:
        monkeypatch.delenv("X", raising=False)
    else:
        monkeypatch.setenv("X", raw)

    assert env_bool("X", default=True) is True
    assert env_int("X", default=7) == 7
    assert env_list("X", default=["a"]) == ["a"]


def test_env_int_parses_integers(monkeypatch):
    monkeypatch.setenv("X", " 42 ")

    assert env_int("X", default=0) == 42


@pytest.mark.parametrize("raw", ["abc", "1.5", "60s"])
def test_env_int_rejects_non_integers_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("X", raw)

    with pytest.raises(ImproperlyConfigured, match=r"^X=.*not an integer"):
        env_int("X", default=0)


def test_env_int_enforces_its_minimum(monkeypatch):
    monkeypatch.setenv("X", "-1")

    with pytest.raises(ImproperlyConfigured, match=r"^X=-1 .*minimum is 0"):
        env_int("X", default=0, minimum=0)


def test_env_list_splits_on_commas_and_drops_blanks(monkeypatch):
    monkeypatch.setenv("X", " example.org, .example.net ,,localhost ")

    assert env_list("X") == ["example.org", ".example.net", "localhost"]


def test_env_list_rejects_items_separated_by_spaces(monkeypatch):
    monkeypatch.setenv("X", "example.org localhost")

    with pytest.raises(ImproperlyConfigured, match=r"^X=.*separate items with commas"):
        env_list("X")
