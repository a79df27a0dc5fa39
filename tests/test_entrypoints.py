"""One declaration per interface: MLproject is generated from the CLI commands, and the CLI's options are the
config's fields, with the same defaults and the same choices."""

import importlib.util
import re

import pytest
import typer.main
import yaml
from conftest import REPO

from imagenet_transfer.cli import app, entrypoint_parameters, mlproject, run_entrypoint
from imagenet_transfer.tracking import same_value

ENTRY_POINTS = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


def build_script():
    spec = importlib.util.spec_from_file_location("build_mlproject", REPO / "scripts" / "build_mlproject.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(*words: str) -> dict:
    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


def test_mlproject_is_generated_from_the_cli_commands():
    expected = mlproject(build_script().entry_points())
    assert (REPO / "MLproject").read_text() == expected, (
        "MLproject is out of date: run python scripts/build_mlproject.py"
    )


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_an_entry_point_declares_every_option_of_its_command_and_uses_each_parameter(name):
    entry = ENTRY_POINTS[name]
    _script, words = build_script().entry_points()[name]
    assert set(entry["parameters"]) == set(entrypoint_parameters(words))
    assert set(re.findall(r"\{(\w+)\}", entry["command"])) == set(entry["parameters"])


@pytest.mark.parametrize(
    "command, config_class, renamed, cli_only",
    [
        (("pretrain",), "imagenet_transfer.pretrain_config.PretrainConfig", {}, {"config"}),
        (
            ("budget-study",),
            "imagenet_transfer.study_config.StudyConfig",
            {"set_": "benchmark_settings"},
            {"create_only"},
        ),
    ],
)
def test_a_command_s_options_are_its_config_s_fields_with_the_same_defaults(command, config_class, renamed, cli_only):
    module, _, name = config_class.rpartition(".")
    fields = getattr(importlib.import_module(module), name).model_fields
    cli = {renamed.get(k, k): p for k, p in options(*command).items() if k not in cli_only}
    assert set(cli) == set(fields), (
        f"only in the CLI: {sorted(set(cli) - set(fields))}; only in the config: {sorted(set(fields) - set(cli))}"
    )
    for key, field in fields.items():
        assert field.is_required() == cli[key].required, key
        if not field.is_required():
            default = ",".join(field.default) if isinstance(field.default, tuple) else field.default
            given = cli[key].default
            given = "" if given is None else ",".join(given) if isinstance(given, (list, tuple)) else given
            assert same_value(str(given), "" if default is None else str(default)), (key, given, default)


def test_help_lists_every_choice_of_the_tables_behind_an_option():
    from imagenet_transfer.models import ARCHITECTURES
    from imagenet_transfer.pretrain_config import COARSE_LEVELS, RECIPES
    from imagenet_transfer.transfer.runner import BENCHMARKS

    pretrain = options("pretrain")
    for option, choices in (("recipe", RECIPES), ("arch", ARCHITECTURES), ("coarse_level", COARSE_LEVELS)):
        missing = [c for c in choices if c not in pretrain[option].help]
        assert not missing, f"pretrain --{option} help omits {missing}"
    assert all(name in options("budget-study")["objective"].help for name in ("voc12_action", "sun397"))
    command = typer.main.get_command(app).commands["transfer"].commands["run"]
    assert all(name in command.params[0].help for name in BENCHMARKS)


def test_entry_point_values_become_flags_and_repeated_options(monkeypatch):
    seen = []
    monkeypatch.setattr("imagenet_transfer.cli.main", lambda args: seen.append(args))
    run_entrypoint(["pretrain"], ["--register", "false", "--compile", "true", "--lr", "", "--seed", "3"])
    run_entrypoint(["transfer", "run", "sun397"], ["--set", "protocol=linear,partitions=1,2", "--quick", "false"])
    assert seen[0] == ["pretrain", "--no-register", "--compile", "--seed", "3"]
    assert seen[1] == ["transfer", "run", "sun397", "--set", "protocol=linear", "--set", "partitions=1,2"]
