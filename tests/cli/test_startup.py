"""The command line starts light: `tokenfarm --help` and `--version` import no command module
(and so neither SQLAlchemy, httpx nor FastAPI), and the listing says what the commands say."""

from __future__ import annotations

import inspect
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer

from app.cli import COMMANDS, load_command
from tests.cli.runner import invoke

HEAVY = ("sqlalchemy", "httpx", "fastapi", "app.cli.core", "app.config")


def imported_modules(*args: str) -> set[str]:
    """Every module a fresh `python -X importtime -m app.cli ARGS` imports."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize("args", [("--help",), ("--version",)])
def test_help_and_version_import_no_heavy_module(args: tuple[str, ...]) -> None:
    modules = imported_modules(*args)
    assert "app.cli" in modules  # the measurement saw the command line's own imports
    loaded = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert loaded == []


def test_a_command_loads_its_module_only_when_it_runs() -> None:
    assert "sqlalchemy" in imported_modules("secrets", "--help")


def test_the_installed_script_prints_the_version() -> None:
    """The entry point in pyproject.toml, as a real process."""
    script = Path(sys.executable).parent / "tokenfarm"
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"tokenfarm {version('tokenfarm')}\n"


def test_help_lists_every_command(offline_env: dict[str, str]) -> None:
    shown = invoke("--help", env=offline_env)
    assert shown.returncode == 0, shown.stderr
    listed = [line.split()[1] for line in shown.stdout.splitlines() if line.startswith("│ ")]
    assert [name for name in listed if name in COMMANDS] == list(COMMANDS)
    assert "--version" in shown.stdout


def _short_help(command: Any) -> str:
    """The first paragraph of a command's help, on one line (what `--help` lists)."""
    text = inspect.cleandoc(command.help or "")
    return " ".join(text.split("\n\n")[0].split())


def test_the_listing_says_what_each_command_says() -> None:
    for name, entry in COMMANDS.items():
        assert _short_help(load_command(name)) == entry.help, name


def test_every_command_of_a_module_is_listed() -> None:
    from importlib import import_module

    for module in {entry.module for entry in COMMANDS.values()}:
        group = typer.main.get_group(import_module(module).commands)
        listed = {name for name, entry in COMMANDS.items() if entry.module == module}
        assert set(group.commands) == listed, module


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand, as the words that name it."""
    paths: list[tuple[str, ...]] = []
    for name in COMMANDS:
        command = load_command(name)
        paths.append((name,))
        paths += [(name, sub) for sub in getattr(command, "commands", {})]
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_command_help_shows_its_options(
    path: tuple[str, ...], offline_env: dict[str, str]
) -> None:
    command = load_command(path[0])
    for word in path[1:]:
        command = command.commands[word]

    shown = invoke(*path, "--help", env=offline_env)

    assert shown.returncode == 0, shown.stderr
    options = [opt for param in command.params for opt in param.opts if opt.startswith("--")]
    for option in options:
        assert option in shown.stdout, f"{' '.join(path)} --help does not show {option}"
