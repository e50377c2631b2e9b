"""`gt-ext` usage errors: one line on stderr, exit code 2; help and typer.Exit keep their codes."""

from __future__ import annotations

import pytest
import typer

from gt_ext import cli


@pytest.mark.parametrize("argv", [["bogus"], ["models", "bogus"], ["models", "list", "--nope"],
                                  ["models", "generate"]])
def test_usage_error_is_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: gt-ext") and cap.out == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("models", "install-shim"):
        assert name in out


@pytest.mark.parametrize("name", [name for name, _ in cli.SUBCOMMANDS])
def test_every_subcommand_is_mounted(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each listed subcommand is there: a module that fails to import breaks `gt-ext` loudly
    instead of dropping the command."""
    assert cli.main([name, "--help"]) == 0, capsys.readouterr().err
    assert "Usage" in capsys.readouterr().out


def test_a_missing_subcommand_module_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "app", typer.Typer())  # register into a scratch app, not the real one
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, ("later", "gt_ext.not_built_yet")])
    with pytest.raises(ModuleNotFoundError, match="gt_ext.not_built_yet"):
        cli._register()


def test_typer_exit_code_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    app = typer.Typer()

    @app.command()
    def fail() -> None:
        raise typer.Exit(3)

    @app.command()
    def ok() -> None:
        pass

    monkeypatch.setattr(cli, "app", app)
    assert cli.main(["fail"]) == 3
    assert cli.main(["ok"]) == 0
