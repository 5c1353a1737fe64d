"""The `sartor` command and settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sartor.cli import app
from sartor.config import DEV_SECRET, Settings
from sartor.engine import Engine
from sartor.storage.db import head_revision

runner = CliRunner()


def test_default_secret_is_refused_in_production() -> None:
    with pytest.raises(ValueError, match="SARTOR_SECRET_KEY"):
        Settings(env="production")
    Settings(env="production", secret_key="a-long-private-secret-value")
    assert Settings().secret_key == DEV_SECRET  # dev keeps working with no setup


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SARTOR_HOME", str(tmp_path))
    monkeypatch.setenv("SARTOR_RATE_LIMIT_EVENTS_PER_SECOND", "123")
    s = Settings()
    assert s.rate_limit_events_per_second == 123
    assert s.resolved_database_url == f"sqlite:///{tmp_path.as_posix()}/sartor.db"


def test_workspace_create_prints_keys_once_and_migrate_reports(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path)]
    result = runner.invoke(app, [*home, "migrate"])
    assert result.exit_code == 0, result.output
    assert head_revision() in result.output
    result = runner.invoke(app, [*home, "workspace", "create", "shop", "--consent-mode", "opt_in"])
    assert result.exit_code == 0, result.output
    keys = [w for w in result.output.split() if w.startswith("sk_")]
    assert [k[:5] for k in keys] == ["sk_w_", "sk_r_", "sk_a_"]
    again = runner.invoke(app, [*home, "workspace", "create", "shop"])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(app, [*home, "workspace", "create", "x", "--consent-mode", "maybe"])
    assert bad.exit_code == 2
    listed = runner.invoke(app, [*home, "workspace", "list"])
    assert "shop" in listed.output and "opt_in" in listed.output
    with Engine.open(settings=Settings(home=tmp_path)) as engine:
        found = engine.authenticate(keys[0])
        assert found is not None and found[1] == "write"


def test_events_tail_and_user_commands(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with Engine.open(settings=settings) as engine:
        ws = engine.create_workspace("shop").workspace
        for i in range(5):
            engine.track(ws, "view_item", user_id="u1", message_id=f"m{i}")
    home = ["--home", str(tmp_path)]
    out = runner.invoke(app, [*home, "events", "tail", "shop", "-n", "2", "--json"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 2 and '"messageId":"m4"' in lines[-1]
    assert runner.invoke(app, [*home, "events", "tail", "nope"]).exit_code == 1
    export = runner.invoke(app, [*home, "user", "export", "shop", "u1"])
    assert export.exit_code == 0 and '"m3"' in export.output
    erase = runner.invoke(app, [*home, "user", "erase", "shop", "u1", "--yes"])
    # Five tracks, plus the `Segment Entered` ("active") logged when the export folded them.
    assert erase.exit_code == 0 and "'events': 6" in erase.output
    assert runner.invoke(app, [*home, "user", "export", "shop", "u1"]).exit_code == 1


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`SARTOR_{name.upper()}`" in readme, f"SARTOR_{name.upper()} missing from README"
