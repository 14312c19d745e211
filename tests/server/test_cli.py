"""The command line a newcomer meets: every option explained, errors one line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from server.cli import build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_listed_and_every_option_has_help():
    commands = subcommands()
    top = build_parser().format_help()
    for name in commands:
        assert name in top, name
    for name, p in commands.items():
        if name == "predict":  # its own parser (clients/cli.py)
            from clients.cli import main

            with pytest.raises(SystemExit):
                main(["--help"])
            continue
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"trunkline {name} {action.option_strings[0]} has no help"


@pytest.mark.parametrize(
    "command", [["eval", "--model", "nope"], ["serve", "--model", "nope", "--grpc-port", "0"]]
)
def test_a_wrong_model_is_one_line_not_a_traceback(command):
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", *command], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "no checkpoint directory at 'nope'" in run.stderr and run.stderr.startswith(
        f"trunkline {command[0]}:"
    )


def test_the_recipes_listed_are_the_recipes_there_are():
    from models.image import train
    from models.text import train as text_train
    from server.cli import RECIPES

    assert sorted(RECIPES) == sorted([*train.RECIPES, *text_train.RECIPES])
