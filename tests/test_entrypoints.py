"""Every MLproject entry point passes only options its CLI command has, and declares every parameter it uses."""

import ast
import re

import pytest
import typer.main
import yaml

from conftest import REPO
from imagenet_transfer.cli import app

ENTRY_POINTS = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


def cli_command(words: list[str]):
    command = typer.main.get_command(app)
    for word in words:
        if word not in getattr(command, "commands", {}):
            break  # a positional argument (the benchmark of `transfer run`)
        command = command.commands[word]
    return command


def entry_words(name: str) -> list[str]:
    script = REPO / ENTRY_POINTS[name]["command"].split()[1]
    call = next(n for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "run_entrypoint")  # fmt: skip
    return [element.value for element in call.args[0].elts]


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_an_entry_point_matches_its_cli_command(name):
    entry = ENTRY_POINTS[name]
    command = cli_command(entry_words(name))
    options = {opt for param in command.params for opt in param.opts}
    used = set(re.findall(r"(--[a-z-]+) \{", entry["command"]))
    assert used and used <= options, f"{name}: options the CLI does not have: {sorted(used - options)}"
    assert set(re.findall(r"\{(\w+)\}", entry["command"])) == set(entry.get("parameters", {}))


def test_pretrain_entry_point_selects_the_input_pipeline_and_compile():
    entry = ENTRY_POINTS["pretrain"]
    assert {"input_pipeline", "shards", "compile", "gpus"} <= set(entry["parameters"])
