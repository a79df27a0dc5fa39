"""Where a budget study lives: the Optuna storage, and the study created in it (sampler, pruner) or joined.

    imagenet-transfer budget-study --budget 12000 --storage postgresql://lab/optuna --create-only

Input: a `StudyConfig` and its `Pools`. Output: the Optuna study (`create_study`) in its storage: an RDB URL
(default `sqlite:///mlruns/optuna.db`, beside the project's MLflow store; PostgreSQL or MySQL for a lab) with
heartbeats, so that a trial whose worker died is failed and retried; or a journal file (a path ending in .log
or .journal) for many workers on one shared file system (no heartbeat there). The study's user attr
`search_space` records what must match for a second worker or a restart to join it (else UserError).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from imagenet_transfer import tracking
from imagenet_transfer.errors import UserError
from imagenet_transfer.study_config import Pools, StudyConfig, check, make_pruner


def default_storage() -> str:
    """`sqlite:///…/optuna.db` beside the project's MLflow SQLite store (else `mlruns/optuna.db`)."""
    uri = tracking.configure()
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path("mlruns").resolve()
    return f"sqlite:///{folder / 'optuna.db'}"


def open_storage(config: StudyConfig):
    """The Optuna storage `config.storage` names; UserError saying which one cannot be reached, and why."""
    import optuna

    location = config.storage or default_storage()
    if "://" not in location:
        if not location.endswith((".log", ".journal")):
            raise UserError(
                f"storage {location!r}: expected an RDB URL (sqlite:///…, postgresql://…) or a journal "
                "file path ending in .log or .journal"
            )
        from optuna.storages.journal import JournalFileBackend

        path = Path(location).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"storage {location} cannot be reached: folder {path.parent} does not exist")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)
        except OSError as err:
            raise UserError(f"storage {location} cannot be reached ({err.strerror})") from None
    shown = _redact(location)
    if location.startswith("sqlite:///"):
        folder = Path(location.removeprefix("sqlite:///")).parent
        if location == default_storage():
            folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise UserError(f"storage {shown} cannot be reached: folder {folder} does not exist")
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = _rdb_storage(location, config)
    except Exception as err:
        why = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(
            f"storage {shown} cannot be reached ({type(err).__name__}: {why}); expected a reachable "
            "database URL or a .log/.journal file"
        ) from None
    return storage, shown


def _rdb_storage(location: str, config: StudyConfig):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return optuna.storages.RDBStorage(
        location,
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry),
        engine_kwargs={"connect_args": {"timeout": 30}} if location.startswith("sqlite") else None,
    )


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def make_sampler(config: StudyConfig, finished: int):
    """TPE (constant liar, for parallel workers) or random, seeded by the study seed, the trials already finished
    and the process, so that two workers started together do not draw the same points. The points drawn are
    recorded with each trial; the subsets and pre-trainings they lead to are seeded by `seed` alone."""
    import optuna

    seed = int(hashlib.sha256(f"{config.seed}/{finished}/{os.getpid()}".encode()).hexdigest()[:8], 16)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, config.n_trials), constant_liar=True)


def create_study(config: StudyConfig, pools: Pools | None = None):
    """Create the study in its storage, or load it when it exists with the same search space (else UserError).

    Call once before starting many workers: parallel first-time creation of a SQLite study can fail."""
    import optuna

    pools = pools or check(config)
    storage, shown = open_storage(config)
    space = config.search_space(pools.low, pools.high)
    directions = ["maximize"] * len(config.objective)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        existing = optuna.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        stored, asked = json.loads(existing.user_attrs.get("search_space", "null")), json.loads(json.dumps(space))
        if stored is not None and stored != asked:
            diff = {k: (stored.get(k), v) for k, v in asked.items() if stored.get(k) != v}
            raise UserError(
                f"study {config.study_name!r} in {shown} exists with another search space "
                f"(stored vs asked: {diff}); expected the same settings, or another --study-name"
            )
        if [d.name.lower() for d in existing.directions] != directions:
            raise UserError(
                f"study {config.study_name!r} in {shown} has {len(existing.directions)} objective(s); "
                f"asked for {len(directions)} ({','.join(config.objective)})"
            )
    finished = len(existing.get_trials(deepcopy=False, states=finished_states())) if existing is not None else 0
    study = optuna.create_study(
        storage=storage,
        study_name=config.study_name,
        directions=directions,
        sampler=make_sampler(config, finished),
        pruner=make_pruner(config.pruner),
        load_if_exists=True,
    )
    if "search_space" not in study.user_attrs:
        study.set_user_attr("search_space", json.dumps(space))
    return study, shown


def finished_states():
    """The trial states that count towards `n_trials`: complete and pruned."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)
