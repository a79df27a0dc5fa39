"""Where a budget study lives: the Optuna storage, the study created in it (sampler, pruner) or joined, and the
claims through which its workers agree.

    imagenet-transfer budget-study --budget 12000 --storage postgresql+psycopg://lab/optuna --create-only

Input: a `StudyConfig` and its `Pools`. Output: the Optuna study (`create_study`) in its storage: an RDB URL
(default: `IMAGENET_TRANSFER_DB`, the team's PostgreSQL, when set; else `sqlite:///mlruns/optuna.db`, beside the
project's MLflow store; PostgreSQL or MySQL for a lab) with heartbeats, so that a trial whose worker died is failed
and retried; or a journal file (a path ending in .log or .journal) for many workers on one shared file system.
The study's user attr `search_space` records what must match for a second worker or a restart to join it (else
UserError).

`Coordination` is how N workers share one study: a table of claims (`imagenet_transfer.claims`) in the storage's
own database (a journal file: an SQLite file beside it, `<journal>.claims.db`), keyed `study:<name>#<study id>:…`.
A short lock claim (`…:lock`) serialises the moves that change what the study holds: failing the trials of dead
workers (enqueueing their retries), counting and starting a trial (`next_trial`: finished + running < n_trials),
and telling a trial's result. Each running trial holds a claim `…:trial:<number>` renewed by a heartbeat; a
RUNNING trial whose claim expired (or an RDB trial whose Optuna heartbeat is older than `grace_period`) is dead.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from imagenet_transfer import preemption, tracking
from imagenet_transfer.errors import UserError
from imagenet_transfer.study_config import Pools, StudyConfig, check, make_pruner


def default_storage() -> str:
    """`IMAGENET_TRANSFER_DB` (a team's database, printed by `imagenet-transfer server`) when set, else
    `sqlite:///…/optuna.db` beside the project's MLflow SQLite store (else `mlruns/optuna.db`)."""
    if os.environ.get("IMAGENET_TRANSFER_DB"):
        return os.environ["IMAGENET_TRANSFER_DB"]
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
        if not config.storage:  # the default: its folder is made
            folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise UserError(f"storage {shown} cannot be reached: folder {folder} does not exist")
    for attempt in range(3):  # workers started together on a new database race to create its tables
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = _rdb_storage(location, config)
            break
        except Exception as err:
            if attempt < 2 and _table_race(err):
                time.sleep(0.5 + random.random())
                continue
            why = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise UserError(
                f"storage {shown} cannot be reached ({type(err).__name__}: {why}); expected a reachable "
                "database URL or a .log/.journal file"
            ) from None
    return storage, shown


def _table_race(err: Exception) -> bool:
    """Whether creating the storage failed because another worker was creating its tables at the same time."""
    text = str(err).lower()
    return any(s in text for s in ("already exists", "database is locked", "unique constraint", "duplicate key"))


def _rdb_storage(location: str, config: StudyConfig):
    import optuna

    return optuna.storages.RDBStorage(
        location,
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_period,
        heartbeat_stale_trial_callback=retry_callback(config),
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
    Workers started together may all call it: one creates the study, the others load it."""
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


def retry_callback(config: StudyConfig):
    """What re-enqueues a trial whose worker died or was stopped: a WAITING copy of its params (Optuna's
    `RetryHeartbeatStaleTrialCallback`, at most `max_retry` times per trial), taken first by the next `ask`."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry)


def claims_url(config: StudyConfig) -> str:
    """The database of the study's claims: its Optuna storage's own (an RDB URL), or for a journal file an SQLite
    file beside it, `<journal>.claims.db` (the workers that share the journal's file system share that too)."""
    location = config.storage or default_storage()
    if "://" in location:
        return location
    return f"sqlite:///{Path(location).expanduser().resolve()}.claims.db"


class Coordination:
    """The claims through which a study's workers agree (see the module docstring): the lock, trial liveness,
    the count of trials, waiting on another worker's claim. All claims expire `grace_period` seconds after their
    holder's last heartbeat (renewed every quarter of it)."""

    def __init__(self, study, config: StudyConfig):
        from imagenet_transfer.claims import Claims

        self.study, self.config = study, config
        self.storage = study._storage  # Optuna's own `fail_stale_trials` reaches the storage the same way
        self.claims = Claims(claims_url(config), ttl=float(config.grace_period))
        study_id = self.storage.get_study_id_from_name(config.study_name)
        self.prefix = f"study:{config.study_name}#{study_id}"  # a study deleted and made again starts afresh
        interval = self.storage.get_heartbeat_interval() if hasattr(self.storage, "get_heartbeat_interval") else None
        self.heartbeats = interval is not None  # RDB storages: Optuna's heartbeats too
        self.retry = retry_callback(config)
        self.poll = max(0.5, min(5.0, float(config.heartbeat_interval)))  # seconds between looks while waiting

    def key(self, *parts) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # -- the lock, and what is done under it --------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the study's lock (a short claim) for the block; SIGTERM waits for the block's end."""
        key = self.key("lock")
        with preemption.deferred():
            while not self.claims.claim(key).acquired:
                if preemption.requested():
                    raise preemption.Preempted("SIGTERM")
                time.sleep(0.05 + 0.2 * random.random())
            try:
                yield
            finally:
                self.claims.release(key)

    def counts(self):
        """(finished trials, running trials) of the study, as the storage holds them now."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        return (
            [t for t in trials if t.state in finished_states()],
            [t for t in trials if t.state == TrialState.RUNNING],
        )

    def fail_dead_trials(self) -> list[int]:
        """Under the lock: FAIL the RUNNING trials whose worker died and enqueue their retries. Dead: an RDB
        trial whose Optuna heartbeat is older than `grace_period` (Optuna's `fail_stale_trials`), or any trial
        whose liveness claim expired (or that has none, `grace_period` after it started: its worker died between
        creating it and claiming it, or it is not this code's). Returns the numbers of the trials failed."""
        import optuna
        from optuna.trial import TrialState

        before = {t.number for t in self.counts()[1]}
        if self.heartbeats:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
        now = time.time()
        for trial in self.counts()[1]:
            claim = self.claims.get(self.key("trial", trial.number))
            if claim is not None and claim.state == "running" and claim.expires >= now:
                continue  # its worker's heartbeat is recent
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            if claim is None and now - started <= self.config.grace_period:
                continue  # just created: its claim comes next
            try:
                if self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    self.retry(self.study, copy.deepcopy(self.storage.get_trial(trial._trial_id)))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
        failed = sorted(before - {t.number for t in self.counts()[1]})
        ended = {t.number: t.state for t in self.study.get_trials(deepcopy=False) if t.number in failed}
        failed = [n for n in failed if ended.get(n) == TrialState.FAIL]
        if failed:
            print(
                f"study {self.config.study_name}: trial(s) {', '.join(map(str, failed))} failed: their worker "
                f"sent no heartbeat for {self.config.grace_period} s (retried up to {self.config.max_retry} times)"
            )
        return failed

    def next_trial(self):
        """Under the lock: fail dead trials, then start a trial (a retry waiting first) if finished + running
        trials are fewer than `n_trials`, claimed as this worker's (and its first Optuna heartbeat recorded).
        None when the study holds, or is running, enough trials."""
        import optuna

        trial = None
        try:
            with self.locked():
                self.fail_dead_trials()
                finished, running = self.counts()
                if len(finished) + len(running) >= self.config.n_trials:
                    return None
                with warnings.catch_warnings():  # heartbeats are recorded by `heartbeat`, not by optimize
                    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    trial = self.study.ask()
                self.claims.claim(self.key("trial", trial.number))
                if self.heartbeats:
                    self.storage.record_heartbeat(trial._trial_id)
        except KeyboardInterrupt:
            if trial is not None:
                self.abandon(trial)
            raise
        return trial

    def tell(self, trial, values=None, state=None) -> bool:
        """Under the lock: record the trial's end, unless another worker failed it meanwhile (its heartbeat was
        late: the retry runs it again). Returns whether it was recorded."""
        from optuna.trial import TrialState

        with self.locked():
            if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                return False
            self.study.tell(trial, values, state=state)
            return True

    def abandon(self, trial) -> None:
        """The trial was interrupted (SIGTERM, Ctrl-C): FAIL it and enqueue its retry, so the next worker (or the
        same command again) runs its params first."""
        from optuna.trial import TrialState

        with self.locked():
            if self.storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                self.study.tell(trial, state=TrialState.FAIL)
                self.retry(self.study, copy.deepcopy(self.storage.get_trial(trial._trial_id)))
            self.claims.release(self.key("trial", trial.number))

    # -- heartbeats and waiting --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def heartbeat(self, trial) -> Iterator[None]:
        """Optuna heartbeats of `trial` every `heartbeat_interval` while the block runs (RDB storages)."""
        if not self.heartbeats:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.config.heartbeat_interval):
                with contextlib.suppress(Exception):  # a busy database: the next beat, or the grace period
                    self.storage.record_heartbeat(trial._trial_id)

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def take(self, key: str, waiting: str):
        """Claim `key`, waiting while another live worker holds it: returns the claim once this worker holds it
        or it is done (a failed one is taken again; a dead holder's is taken over). `waiting` is printed once,
        with `{owner}` replaced by the holder."""
        said = False
        while True:
            claim = self.claims.claim(key, retry_failed=True)
            if claim.acquired or claim.state == "done":
                return claim
            if not said:
                print(waiting.replace("{owner}", claim.owner), flush=True)
                said = True
            time.sleep(self.poll)
