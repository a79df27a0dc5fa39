"""Claims: which worker runs a piece of shared work (a grid step, a study's final test), agreed through a database.

    claims = Claims(coordination_url())
    with claims.hold("step-3f2a…") as claim:          # a heartbeat renews it while the block runs
        if claim.acquired:
            ...run the step...
            claim.complete({"run_id": run_id})
        elif claim.state == "running":              # another live worker runs it: do something else
            ...

A claim is one row of the table `imagenet_transfer_claims` (key, owner, state, expires, result) in an SQL database:
the team's PostgreSQL (`IMAGENET_TRANSFER_DB`, printed by `imagenet-transfer server`) or, on one machine, an SQLite
file beside the local tracking store. Taking a claim is an INSERT of its key (the primary key: one worker wins);
taking over a dead worker's claim (its heartbeat stopped, `expires` passed) or a failed one is a compare-and-swap
UPDATE on the old owner and expiry, so two workers never both take it. States: `running` (held, renewed by its
owner's heartbeat), `done` (the result is recorded) and `failed` (the error is recorded; taken again only by a
worker that asks to retry failures). Expiry uses the workers' clocks: hosts of one team keep them in sync (NTP),
and the expiry (`ttl`, 120 s by default) is far above their drift.

A claim only says who runs something. The result itself is the MLflow run it made, which the caller checks in the
tracking store before reusing anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from imagenet_transfer.errors import UserError

TABLE = "imagenet_transfer_claims"
TTL = 120.0  # seconds a claim lives without its heartbeat (IMAGENET_TRANSFER_CLAIM_TTL overrides it)
_metadata = sa.MetaData()
_claims = sa.Table(
    TABLE,
    _metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("result", sa.Text),
)


def coordination_url() -> str:
    """Where claims live: `IMAGENET_TRANSFER_DB` (a team's database), else an SQLite file beside the local
    tracking store (`mlruns/coordination.db`), else (a tracking server but no team database) one in the cache,
    per store: then workers on one machine agree, workers on other machines need `IMAGENET_TRANSFER_DB`."""
    import hashlib

    from imagenet_transfer import tracking
    from imagenet_transfer.paths import cache_dir

    if os.environ.get("IMAGENET_TRANSFER_DB"):
        return os.environ["IMAGENET_TRANSFER_DB"]
    uri = tracking.configure()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / 'coordination.db'}"
    folder = cache_dir() / "coordination"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / hashlib.sha256(tracking.store_id().encode()).hexdigest()[:16]}.db"


def worker_id() -> str:
    """This process, as claims name it: host, pid and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Claim:
    """What `Claims.claim` found: `acquired` (this worker runs it), else who holds it, or its recorded result."""

    key: str
    state: str  # running, done or failed
    owner: str
    acquired: bool
    result: dict[str, Any] = field(default_factory=dict)
    expires: float = 0.0
    updated: float = 0.0
    _claims: Claims | None = field(default=None, repr=False)

    def complete(self, result: dict[str, Any] | None = None) -> None:
        assert self._claims is not None and self.acquired
        self._claims.complete(self.key, result)
        self.state, self.result = "done", dict(result or {})


class Claims:
    """The claims table of the database `url` (SQLAlchemy URL), claimed as `owner` (default: this process)."""

    def __init__(self, url: str, owner: str | None = None, ttl: float | None = None):
        self.url, self.owner = url, owner or worker_id()
        self.ttl = ttl or float(os.environ.get("IMAGENET_TRANSFER_CLAIM_TTL") or TTL)
        sqlite = url.startswith("sqlite")
        if sqlite:
            path = Path(url.removeprefix("sqlite:///"))
            if not path.parent.is_dir():
                raise UserError(f"coordination database {url}: folder {path.parent} does not exist")
        try:
            self.engine = sa.create_engine(url, connect_args={"timeout": 60} if sqlite else {}, pool_pre_ping=True)
            for attempt in range(5):  # workers starting together race to create the table ("already exists")
                try:
                    _metadata.create_all(self.engine, checkfirst=True)
                    break
                except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        except sa.exc.SQLAlchemyError as err:
            from sqlalchemy.engine import make_url

            shown = make_url(url).render_as_string(hide_password=True)
            why = str(err.orig if getattr(err, "orig", None) else err).strip().splitlines()[0][:200]
            raise UserError(
                f"coordination database {shown} cannot be used ({why}); expected a reachable database "
                "(IMAGENET_TRANSFER_DB) or a writable local tracking store"
            ) from None

    # -- the row operations ---------------------------------------------------------------------------------------
    def get(self, key: str) -> Claim | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_claims).where(_claims.c.key == key)).first()
        return self._claim(row) if row else None

    def claim(self, key: str, *, retry_failed: bool = False) -> Claim:
        """Take `key` if nobody holds it (or its holder's heartbeat stopped, or it failed and `retry_failed`)."""
        while True:
            now = time.time()
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        _claims.insert().values(
                            key=key, owner=self.owner, state="running", expires=now + self.ttl, updated=now
                        )
                    )
                return Claim(key, "running", self.owner, True, _claims=self)
            except sa.exc.IntegrityError:
                pass
            found = self.get(key)
            if found is None:  # released in between: try again
                continue
            if found.acquired:  # this worker holds it already
                return found
            stale = found.state == "running" and found.expires < now
            if not (stale or (found.state == "failed" and retry_failed)):
                return found
            with self.engine.begin() as conn:  # compare-and-swap on the row as read
                taken = conn.execute(
                    _claims.update()
                    .where(
                        _claims.c.key == key,
                        _claims.c.owner == found.owner,
                        _claims.c.state == found.state,
                        _claims.c.expires == found.expires,
                        _claims.c.updated == found.updated,
                    )
                    .values(
                        owner=self.owner,
                        state="running",
                        expires=now + self.ttl,
                        updated=now,
                        result=None if found.state == "failed" else json.dumps(found.result),
                    )
                ).rowcount
            if taken == 1:
                kept = {} if found.state == "failed" else found.result  # a dead holder's notes are kept
                return Claim(key, "running", self.owner, True, kept, _claims=self)

    def renew(self, key: str) -> bool:
        """Extend this worker's claim on `key`; False when it lost it (expired and taken over)."""
        now = time.time()
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    _claims.update()
                    .where(_claims.c.key == key, _claims.c.owner == self.owner, _claims.c.state == "running")
                    .values(expires=now + self.ttl)
                ).rowcount
                == 1
            )

    def note(self, key: str, result: dict[str, Any]) -> None:
        """Record `result` on this worker's running claim (e.g. the run it started), for others to read."""
        with self.engine.begin() as conn:
            conn.execute(
                _claims.update()
                .where(_claims.c.key == key, _claims.c.owner == self.owner)
                .values(result=json.dumps(result, default=str))
            )

    def complete(self, key: str, result: dict[str, Any] | None = None) -> None:
        self._finish(key, "done", result or {})

    def fail(self, key: str, error: str) -> None:
        self._finish(key, "failed", {"error": error[:2000]})

    def release(self, key: str) -> None:
        """Give `key` back (nobody holds it afterwards)."""
        with self.engine.begin() as conn:
            conn.execute(_claims.delete().where(_claims.c.key == key, _claims.c.owner == self.owner))

    def forget(self, key: str) -> None:
        """Remove `key` whoever holds it (a `done` claim whose result no longer exists in the tracking store)."""
        with self.engine.begin() as conn:
            conn.execute(_claims.delete().where(_claims.c.key == key, _claims.c.state != "running"))

    @contextlib.contextmanager
    def hold(self, key: str, *, retry_failed: bool = False) -> Iterator[Claim]:
        """Claim `key` for the block, renewed by a heartbeat thread. If the block raises while holding it, the
        claim is marked failed (a KeyboardInterrupt/SIGTERM releases it instead: the work was not at fault); if
        the block ends without `complete`, it is released."""
        claim = self.claim(key, retry_failed=retry_failed)
        if not claim.acquired:
            yield claim
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl / 4):
                with contextlib.suppress(sa.exc.SQLAlchemyError):
                    self.renew(key)

        thread = threading.Thread(target=beat, name=f"claim-{key}", daemon=True)
        thread.start()
        try:
            yield claim
        except Exception as err:
            self.fail(key, f"{type(err).__name__}: {err}")
            raise
        except BaseException:
            self.release(key)
            raise
        else:
            if claim.state != "done":
                self.release(key)
        finally:
            stop.set()
            thread.join()

    # -- helpers --------------------------------------------------------------------------------------------------
    def _finish(self, key: str, state: str, result: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                _claims.update()
                .where(_claims.c.key == key, _claims.c.owner == self.owner)
                .values(state=state, updated=time.time(), result=json.dumps(result, default=str))
            )

    def _claim(self, row) -> Claim:
        result = json.loads(row.result) if row.result else {}
        acquired = row.owner == self.owner and row.state == "running"
        return Claim(row.key, row.state, row.owner, acquired, result, row.expires, row.updated, _claims=self)
