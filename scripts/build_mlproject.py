"""Write MLproject from the `imagenet-transfer` commands, so an entry point's parameters are the command's options.

    python scripts/build_mlproject.py            # rewrites MLproject; a test fails when it is out of date

Each entry point is the script `entrypoints/<name>.py`, which names the command it runs; every option of that
command becomes a parameter (default: the option's default, "" for none). Runs in about a second.
"""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORDER = [
    "subset",
    "synth",
    "pretrain",
    "prepare",
    "transfer_voc07_det",
    "transfer_voc12_action",
    "transfer_sun397",
    "probe",
    "transfer",
    "budget_study",
    "reproduce",
    "report",
]


def entry_points() -> dict[str, tuple[str, list[str]]]:
    """{name: (script, command words)} read from entrypoints/*.py (`run_entrypoint([...], sys.argv[1:])`)."""
    found = {}
    for script in sorted((REPO / "entrypoints").glob("*.py")):
        call = next(
            n
            for n in ast.walk(ast.parse(script.read_text()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_entrypoint"
        )
        found[script.stem] = (f"entrypoints/{script.name}", [e.value for e in call.args[0].elts])
    return {name: found[name] for name in ORDER + sorted(set(found) - set(ORDER))}


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))
    from imagenet_transfer.cli import mlproject

    (REPO / "MLproject").write_text(mlproject(entry_points()))


if __name__ == "__main__":
    main()
