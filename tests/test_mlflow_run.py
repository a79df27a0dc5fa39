"""Every `mlflow run` command of the README, run as written through `mlflow run . -e NAME --env-manager local` on a
fresh store, with smoke-sized values for the parameters that set the data and the size (`smoke`): each exits 0,
every run it makes ends FINISHED, every run is the one `mlflow run` made or below it, and that one holds results
(or, when the same call already ran, is a child of the run that does). The README must show one such command for
every MLproject entry point."""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO

from imagenet_transfer import tracking

ENTRY_POINTS = list(yaml.safe_load((REPO / "MLproject").read_text())["entry_points"])
ORDER = [
    "synth",
    "subset",
    "prepare",
    "pretrain",
    "transfer_voc07_det",
    "transfer_voc12_action",
    "transfer_sun397",
    "probe",
    "transfer",
    "budget_study",
    "reproduce",
    "report",
]  # a backbone exists before it is transferred


def readme_commands() -> list[str]:
    """The `mlflow run` lines of the README's code blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [
        line.split("  #")[0].strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith("mlflow run ")
    ]


def parse(command: str) -> tuple[str, dict[str, str], list[str]]:
    """(entry point, -P values, the other arguments) of an `mlflow run` line."""
    words = shlex.split(command)
    assert words[:3] == ["mlflow", "run", "."], command
    entry, params, rest, i = "main", {}, [], 3
    while i < len(words):
        if words[i] == "-e":
            entry, i = words[i + 1], i + 2
        elif words[i] == "-P":
            key, _, value = words[i + 1].partition("=")
            params[key], i = value, i + 2
        else:
            rest.append(words[i])
            i += 1
    return entry, params, rest


def smoke(entry: str, params: dict[str, str], world: Path, tmp: Path) -> dict[str, str]:
    """The command's values with the data pointed at the tiny world and the sizes made smoke-sized."""
    data = {
        "transfer_voc07_det": world,
        "transfer_voc12_action": world,
        "transfer_sun397": world,
        "probe": world / "imagenet",
    }
    changes = {
        "synth": {"size": "tiny"},
        "subset": {"source": f"{world}/imagenet"},
        "prepare": {"source": f"{world}/imagenet"},
        "pretrain": {"source": f"{world}/imagenet", "recipe": "smoke", "device": "cpu"},
        "transfer": {"quick": "true", "data": str(world), "device": "cpu"},
        "budget_study": {
            "source": f"{world}/imagenet",
            "budget": "240",
            "n_trials": "1",
            "objective": "sun397",
            "recipe": "smoke",
            "iterations": "2",
            "quick": "true",
            "device": "cpu",
            "set": f"sun397.data={world},sun397.partitions=1",
            "storage": f"sqlite:///{tmp}/optuna.db",
        },
        "reproduce": {"smoke": "true", "only": "E1", "device": "cpu"},
        "report": {"out": str(tmp / "report")},
    }.get(entry, {})
    if entry in data:
        extra = f"data={data[entry]}"
        changes = {"quick": "true", "device": "cpu", "set": f"{params['set']},{extra}" if params.get("set") else extra}
    return {**params, **changes}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh tracking store and cache, with the tiny world generated in that cache."""
    from imagenet_transfer.synthetic import generate

    root = tmp_path_factory.mktemp("mlflow-run")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "IMAGENET_TRANSFER_CACHE": str(root / "cache"),
        "MLFLOW_EXPERIMENT_NAME": "imagenet-transfer",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGENET_TRANSFER_CACHE", env["IMAGENET_TRANSFER_CACHE"])
        world = generate(size="tiny", progress=False)
    return {"env": env, "world": world, "tmp": root, "seen": set()}


def test_the_readme_shows_a_working_mlflow_run_line_for_every_entry_point():
    shown = {parse(c)[0] for c in readme_commands()}
    assert set(ENTRY_POINTS) <= shown, f"README lacks an `mlflow run` line for {sorted(set(ENTRY_POINTS) - shown)}"
    assert shown <= set(ENTRY_POINTS) and set(ORDER) == set(ENTRY_POINTS)
    assert all("--env-manager local" in c for c in readme_commands())


COMMANDS = sorted(enumerate(readme_commands()), key=lambda ic: (ORDER.index(parse(ic[1])[0]), ic[0]))


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=[f"{parse(c)[0]}-{i}" for i, c in COMMANDS])
def test_a_readme_mlflow_run_command_makes_one_run_holding_its_results(command, store, monkeypatch):
    entry, params, rest = parse(command)
    values = smoke(entry, params, store["world"], store["tmp"])
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, *rest]
    for key, value in values.items():
        args += ["-P", f"{key}={value}"]
    env = {**os.environ, **store["env"], "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    started = int(time.time() * 1000)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=store["tmp"])
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stderr[-4000:]}"
    command_run = re.search(r"=== Run \(ID '(\w+)'\) succeeded ===", done.stderr)[1]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["env"]["MLFLOW_TRACKING_URI"])
    mlflow.set_tracking_uri(store["env"]["MLFLOW_TRACKING_URI"])
    made = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"attributes.start_time >= {started}", output_format="list"
    )
    parents = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in made}
    assert {r.info.status for r in made} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in made]
    for run in made:  # every run is the command's run or below it
        chain, at = [], run.info.run_id
        while at in parents and at != command_run:
            chain.append(at)
            at = parents[at]
        assert at == command_run, f"{run.info.run_name} ({run.data.tags.get('stage')}) is not below the command's run"
    top = mlflow.get_run(command_run)
    children = [r for r in made if parents[r.info.run_id] == command_run]
    repeat = tuple(args[4:]) in store["seen"]  # the same call again (two README lines alike once smoke-sized)
    store["seen"].add(tuple(args[4:]))
    holder = top.data.tags.get("continued_in_run", command_run)  # a repeat's results stay in the first call's run
    assert holder == command_run or repeat, f"{entry}: results went to another run on a first call"
    assert mlflow.get_run(holder).data.metrics or mlflow.MlflowClient().list_artifacts(holder), (
        f"the run of {entry} holds no results"
    )
    assert holder == command_run or top.data.tags.get("mlflow.parentRunId") == holder
    assert top.data.tags.get("stage") and not re.fullmatch(r"[a-z]+-[a-z]+-\d+", top.info.run_name), top.info.run_name
    for key, value in values.items():  # what was asked is what the run says was asked
        assert tracking.same_value(top.data.params.get(key), value), (key, value, top.data.params.get(key))
    if entry in ("pretrain", "budget_study", "reproduce", "transfer") and not repeat:
        assert children, f"{entry}: the runs it starts should be children of its run"
    if entry == "pretrain":
        assert top.data.params["resolved.device"] == "cpu" and "resolved.lr" in top.data.params
        assert mlflow.MlflowClient().search_model_versions(f"run_id = '{command_run}'")
    if entry.startswith("transfer_") or entry == "probe":
        assert top.data.params["backbone.subset_name"] and top.data.params["backbone.arch"] == "small"
        assert top.data.params["resolved.device"] == "cpu"
