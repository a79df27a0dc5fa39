"""Team mode in one command: an MLflow tracking server on PostgreSQL with proxied artifact storage.

    imagenet-transfer server --folder ~/.local/share/imagenet-transfer/team --port 5000

creates (first time) and starts a PostgreSQL 15 cluster in `<folder>/postgres` (databases `mlflow` and `optuna`,
trust authentication on loopback only, listening on 127.0.0.1 only), starts `mlflow server` on it with artifacts
proxied to `<folder>/artifacts`, prints the two lines a client exports

    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
    export IMAGENET_TRANSFER_DB=postgresql+psycopg://postgres@127.0.0.1:PORT/optuna

and stays in the foreground until Ctrl-C or SIGTERM, then stops MLflow and the PostgreSQL it started.
`--database-url postgresql://USER[:PASSWORD]@HOST:PORT` uses an existing PostgreSQL server instead (databases
`mlflow`, `optuna`, with `--auth` also `mlflow_auth`, created where absent; `/NAME` in the URL uses `NAME`,
`NAME_optuna`, `NAME_auth`). `--auth` starts MLflow's basic-auth app: its users live in the `mlflow_auth`
database, the admin is `admin` with the password of `MLFLOW_AUTH_ADMIN_PASSWORD` or, when unset, one generated
and printed once, when the admin user is created.

`running_server(folder)` does the same on free ports for tests and benchmarks and stops everything on exit.
PostgreSQL's `initdb` refuses to run as root: as root, the cluster's commands run as the `postgres` user.
Clusters are created with `-E UTF8 --locale=C` (under `LC_ALL=C` a cluster is otherwise SQL_ASCII, and psycopg
then returns bytes where SQLAlchemy expects text).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from imagenet_transfer.errors import UserError

PG_MAJOR = "15"
PG_USER = "postgres"  # the database role, and the OS user the cluster runs as when we are root
CONF_NAME = "imagenet_transfer.conf"  # our settings, included by postgresql.conf
ADMIN_USER = "admin"
HEALTH_TIMEOUT = 180.0  # seconds for `mlflow server` to migrate a fresh database and answer /health
SOCKET_PATH_MAX = 100  # a unix socket path longer than this (107 on Linux) is not possible: TCP only then


@dataclasses.dataclass(frozen=True)
class Databases:
    """The database names on the PostgreSQL server: MLflow's store, Optuna's (and coordination), basic-auth's."""

    mlflow: str = "mlflow"
    optuna: str = "optuna"
    auth: str = "mlflow_auth"

    @classmethod
    def prefixed(cls, name: str) -> Databases:
        return cls(mlflow=name, optuna=f"{name}_optuna", auth=f"{name}_auth")


@dataclasses.dataclass
class TeamServer:
    """A started team server: what clients use, and what `stop()` needs."""

    tracking_uri: str  # http://HOST:PORT of mlflow server (on this machine)
    db_url: str  # SQLAlchemy URL of the Optuna / coordination database (IMAGENET_TRANSFER_DB)
    mlflow_db_url: str  # SQLAlchemy URL of MLflow's backend store
    auth: tuple[str, str | None] | None  # (user, password) with --auth (password None when not known here)
    folder: Path
    artifacts: str  # where the server keeps artifacts (a folder or a URI)
    log: Path  # mlflow server's output
    process: subprocess.Popen | None = None
    cluster: Path | None = None  # the PostgreSQL cluster folder this server started (stopped with it)
    password_generated: bool = False
    public_uri: str = ""  # what other machines use (this machine's name when bound to every interface)

    def exports(self) -> list[str]:
        """The lines a client runs to use this server."""
        uri = self.public_uri or self.tracking_uri
        lines = [f"export MLFLOW_TRACKING_URI={uri}", f"export IMAGENET_TRANSFER_DB={self.db_url}"]
        if self.auth:
            lines.append(f"export MLFLOW_TRACKING_USERNAME={self.auth[0]}")
            if self.password_generated:
                lines.append(f"export MLFLOW_TRACKING_PASSWORD={self.auth[1]}")
        return lines

    def stop(self) -> None:
        """Stop mlflow server (its whole process group), then the PostgreSQL cluster if this server started it."""
        try:
            if self.process is not None:
                _stop_group(self.process)
                self.process = None
        finally:
            if self.cluster is not None:
                stop_postgres(self.cluster)
                self.cluster = None


# -- PostgreSQL --------------------------------------------------------------------------------------------------
def pg_bindir() -> Path:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl): Debian's `/usr/lib/postgresql/15/bin`, else
    found through PATH or `pg_config --bindir`, else Debian's folder of another version."""
    candidates = [Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")]
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: -_major(p.parent.name))
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise UserError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        f"{', '.join(str(c) for c in dict.fromkeys(candidates))}; expected PostgreSQL {PG_MAJOR} installed "
        "(Debian/Ubuntu: apt-get install postgresql), or --database-url of a running PostgreSQL server"
    )


def check_postgres() -> Path:
    """The server binaries' folder, after checking that a cluster can be made here (as root: the `postgres` user
    exists); a UserError saying what is missing otherwise."""
    bindir = pg_bindir()
    if _as_root():
        _pg_ids()
    return bindir


def _major(version: str) -> int:
    return int(version) if version.isdigit() else 0


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_ids() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        raise UserError(
            f"running as root, PostgreSQL needs the OS user {PG_USER!r} (initdb refuses root), and there is none; "
            "expected the postgresql package installed (it creates that user), or run as a normal user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _pg_command(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL command: as the `postgres` user when we are root."""
    if _as_root():
        args = ["runuser", "-u", PG_USER, "--", *args] if shutil.which("runuser") else _su(args)
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def _su(args: list[str]) -> list[str]:
    import shlex

    return ["su", PG_USER, "-s", "/bin/sh", "-c", shlex.join(args)]


def _make_traversable(folder: Path, uid: int, gid: int) -> None:
    """Let the `postgres` user reach `folder`: add o+x (search, not read) to ancestors it cannot traverse."""
    groups = set(os.getgrouplist(PG_USER, gid))
    changed = []
    for parent in reversed(folder.resolve().parents):
        mode = parent.stat()
        if (
            mode.st_mode & stat.S_IXOTH
            or (mode.st_uid == uid and mode.st_mode & stat.S_IXUSR)
            or (mode.st_gid in groups and mode.st_mode & stat.S_IXGRP)
        ):
            continue
        os.chmod(parent, stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)
        changed.append(str(parent))
    if changed:
        print(f"made {', '.join(changed)} traversable (o+x) for the {PG_USER} user", file=sys.stderr)


def _data(folder: Path) -> Path:
    return folder / "data"


def _running_port(folder: Path) -> int | None:
    """The port of the postmaster running on `folder`'s cluster, or None when it is not running."""
    pid_file = _data(folder) / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return port


def _configured_port(folder: Path) -> int | None:
    """The port the cluster was last started on (our settings file), or None."""
    with contextlib.suppress(OSError, ValueError):
        for line in (_data(folder) / CONF_NAME).read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port":
                return int(value.strip())
    return None


def init_postgres(folder: Path, port: int | None = None) -> str:
    """Create (first time) and start a PostgreSQL cluster in `folder` listening on 127.0.0.1:`port`, with databases
    `mlflow` and `optuna`; return the SQLAlchemy URL of the server, `postgresql+psycopg://postgres@127.0.0.1:PORT/`
    (callers append the database). An existing cluster in `folder` is reused, started if stopped (on `port`, or
    on its last port when `port` is None); a running one is used on the port it runs on."""
    url, _started = _start_cluster(Path(folder), port)
    create_databases(url, ["mlflow", "optuna"])
    return url


def _start_cluster(folder: Path, port: int | None) -> tuple[str, bool]:
    """Create/start the cluster; return its URL and whether this call started it."""
    folder = folder.expanduser().absolute()
    bindir = pg_bindir()
    running = _running_port(folder)
    if running is not None:
        return _server_url(running), False
    if port is None:
        port = _configured_port(folder) or free_port()
    check_port_free("127.0.0.1", port, what="--postgres-port")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; expected a folder for the PostgreSQL cluster")
    data = _data(folder)
    fresh = not (data / "PG_VERSION").exists()
    if fresh and data.exists() and any(data.iterdir()):
        raise UserError(f"{data} is neither empty nor a PostgreSQL cluster; expected a new or an existing cluster")
    folder.mkdir(parents=True, exist_ok=True)
    if _as_root():
        uid, gid = _pg_ids()
        _make_traversable(folder, uid, gid)
        os.chown(folder, uid, gid)
        os.chmod(folder, 0o700)
    if fresh:
        if data.exists():
            data.rmdir()
        done = _pg_command(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=trust",
                "--no-instructions",
            ],
            cwd=folder,
            timeout=300,
        )
        if done.returncode != 0:
            raise UserError(f"initdb in {data} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        _restrict_hba(data)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# imagenet-transfer team server settings\ninclude_if_exists = '{CONF_NAME}'\n")
    sockets = str(folder) if len(str(folder / f".s.PGSQL.{port}")) <= SOCKET_PATH_MAX else ""
    settings = (
        f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sockets}'\nmax_connections = 200\n"
    )
    (data / CONF_NAME).write_text(settings)
    if _as_root():
        os.chown(data / CONF_NAME, *_pg_ids())
    log = folder / "server.log"
    done = _pg_command(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "120", "start"], cwd=folder, timeout=180
    )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise UserError(
            f"PostgreSQL in {folder} did not start on 127.0.0.1:{port}: {(done.stderr or done.stdout).strip()}\n{tail}"
        )
    return _server_url(port), True


def _restrict_hba(data: Path) -> None:
    """Trust authentication on loopback only (the socket in the cluster folder, 127.0.0.1 and ::1)."""
    hba = (
        "# imagenet-transfer team server: trust on loopback only (PostgreSQL listens on 127.0.0.1 only)\n"
        "local all all trust\n"
        "host all all 127.0.0.1/32 trust\n"
        "host all all ::1/128 trust\n"
    )
    (data / "pg_hba.conf").write_text(hba)
    if _as_root():
        os.chown(data / "pg_hba.conf", *_pg_ids())


def stop_postgres(folder: Path, timeout: float = 60.0) -> None:
    """Stop the cluster in `folder` (fast shutdown: sessions are closed, nothing is lost); no-op when stopped."""
    folder = Path(folder).expanduser().absolute()
    data = _data(folder)
    if _running_port(folder) is None:
        return
    with contextlib.suppress(UserError, OSError, subprocess.SubprocessError):
        done = _pg_command(
            [str(pg_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
            cwd="/",
            timeout=timeout + 30,
        )
        if done.returncode == 0:
            return
    # pg_ctl could not reach the folder (say, a parent lost its o+x): the postmaster's fast shutdown is SIGINT
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


def _server_url(port: int, host: str = "127.0.0.1", user: str = PG_USER) -> str:
    return f"postgresql+psycopg://{user}@{host}:{port}/"


def sqlalchemy_url(url: str, database: str) -> str:
    """`url` (postgresql://…, postgresql+psycopg://…, any database) pointing at `database`, for SQLAlchemy."""
    parts = urlsplit(url)
    return f"postgresql+psycopg://{parts.netloc}/{quote(database)}" + (f"?{parts.query}" if parts.query else "")


def _conninfo(url: str, database: str) -> str:
    """A libpq URL for psycopg.connect (it knows no `+psycopg`)."""
    parts = urlsplit(url)
    return f"postgresql://{parts.netloc}/{quote(database)}" + (f"?{parts.query}" if parts.query else "")


def _shown(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _connect(url: str, database: str):
    import psycopg

    try:
        return psycopg.connect(_conninfo(url, database), autocommit=True, connect_timeout=10)
    except psycopg.Error as err:
        why = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        raise UserError(
            f"cannot connect to PostgreSQL at {_shown(url)} (database {database!r}: {why}); "
            "expected a running PostgreSQL server that accepts this user"
        ) from None


def create_databases(url: str, names: list[str]) -> None:
    """Create the databases `names` on the server of `url` where absent (UTF8; connecting to `postgres`); an
    existing one must be UTF8 (psycopg returns bytes from a SQL_ASCII database)."""
    import psycopg
    from psycopg import sql

    with _connect(url, "postgres") as conn:
        for name in names:
            row = conn.execute(
                "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if row is None:
                try:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(sql.Identifier(name))
                    )
                except psycopg.errors.DuplicateDatabase:
                    continue  # another process made it meanwhile
                except psycopg.Error as err:
                    raise UserError(
                        f"database {name!r} does not exist on {_shown(url)} and cannot be created "
                        f"({str(err).strip()}); expected it created, or a user allowed to CREATE DATABASE"
                    ) from None
            elif row[0] != "UTF8":
                raise UserError(
                    f"database {name!r} on {_shown(url)} has encoding {row[0]}; expected UTF8 "
                    "(psycopg returns bytes from a SQL_ASCII database, which breaks SQLAlchemy)"
                )


def drop_database(url: str, name: str) -> None:
    """Drop the database `name` (closing its sessions); no-op when absent."""
    from psycopg import sql

    with _connect(url, "postgres") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- ports and processes -----------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int, *, what: str = "--port") -> None:
    if not 0 < port < 65536:
        raise UserError(f"{what} {port}: expected a TCP port number between 1 and 65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except socket.gaierror:
            raise UserError(f"--host {host} cannot be resolved; expected an address of this machine") from None
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host} is not an address of this machine ({err.strerror})") from None
            raise UserError(
                f"{what} {port} on {host} is not available ({err.strerror}); expected a free port "
                "(another server is already listening there?)"
            ) from None


def _stop_group(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the process group of `process` (mlflow server and its uvicorn workers), SIGKILL after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    deadline = time.monotonic() + timeout  # workers may outlive their parent for a moment
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout: float = HEALTH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"mlflow server exited with code {process.returncode} while starting:\n{_tail(log)}")
        try:
            with direct.open(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise UserError(f"mlflow server did not answer {url}/health within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-chars:]
    return ""


# -- the server --------------------------------------------------------------------------------------------------
def start_server(
    folder: Path,
    *,
    port: int = 5000,
    host: str = "127.0.0.1",
    auth: bool = False,
    database_url: str | None = None,
    databases: Databases | None = None,
    postgres_port: int | None = None,
    artifacts: str | None = None,
    workers: int = 4,
    extra_env: dict[str, str] | None = None,
) -> TeamServer:
    """Start PostgreSQL (unless `database_url`) and `mlflow server` on it; return once /health answers.
    The caller stops it with `.stop()`."""
    folder = Path(folder).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--folder {folder} is a file; expected a folder for the server's data")
    if workers < 1:
        raise UserError(f"--workers {workers}: expected at least 1")
    check_port_free(host, port)
    cluster = None
    if database_url:
        scheme = urlsplit(database_url).scheme
        if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise UserError(
                f"--database-url {_shown(database_url)}: expected postgresql://USER[:PASSWORD]@HOST:PORT[/NAME]"
            )
        name = unquote(urlsplit(database_url).path.strip("/"))
        databases = databases or (Databases.prefixed(name) if name else Databases())
        server_url = database_url
    else:
        databases = databases or Databases()
        server_url, started = _start_cluster(folder / "postgres", postgres_port)
        cluster = folder / "postgres" if started else None
    try:
        create_databases(server_url, [databases.mlflow, databases.optuna] + ([databases.auth] if auth else []))
        folder.mkdir(parents=True, exist_ok=True)
        if artifacts is None:
            (folder / "artifacts").mkdir(parents=True, exist_ok=True)
            artifacts = str(folder / "artifacts")
        elif ":" not in artifacts:  # a local folder (mlflow server runs in `folder`)
            artifacts = str(Path(artifacts).expanduser().absolute())
        env = {**os.environ, **(extra_env or {})}
        for var in (
            "MLFLOW_TRACKING_URI",
            "MLFLOW_RUN_ID",
            "MLFLOW_EXPERIMENT_ID",
            "MLFLOW_EXPERIMENT_NAME",
            "MLFLOW_REGISTRY_STORE_URI",
            "MLFLOW_DEFAULT_ARTIFACT_ROOT",  # new experiments keep artifacts behind the proxy (mlflow-artifacts:/)
        ):
            env.pop(var, None)
        env["MLFLOW_BACKEND_STORE_URI"] = sqlalchemy_url(server_url, databases.mlflow)  # not in argv: a password
        credentials, generated = None, False
        if auth:
            credentials, generated = _auth_setup(folder, server_url, databases.auth, env)
        client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        tracking_uri = f"http://{client_host}:{port}" if ":" not in client_host else f"http://[{client_host}]:{port}"
        public_uri = tracking_uri
        if host in ("0.0.0.0", "::"):  # clients elsewhere name this machine: let MLflow accept that Host header
            name = socket.getfqdn()
            name = socket.gethostname() if name.startswith("localhost") else name
            public_uri = f"http://{name}:{port}"
            if not env.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
                from mlflow.server.security_utils import get_default_allowed_hosts

                names = dict.fromkeys([name, socket.gethostname()])
                env["MLFLOW_SERVER_ALLOWED_HOSTS"] = ",".join(
                    [*get_default_allowed_hosts(), *names, *(f"{n}:*" for n in names)]
                )
        log = folder / "mlflow-server.log"
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--serve-artifacts",
            "--artifacts-destination",
            artifacts,
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(workers),
            *(["--app-name", "basic-auth"] if auth else []),
        ]
        with log.open("ab") as out:
            store = _shown(env["MLFLOW_BACKEND_STORE_URI"])
            out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)} (store {store})\n".encode())
            out.flush()
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=folder,
                start_new_session=True,
            )  # fmt: skip
        server = TeamServer(
            tracking_uri=tracking_uri,
            public_uri=public_uri,
            db_url=sqlalchemy_url(server_url, databases.optuna),
            mlflow_db_url=sqlalchemy_url(server_url, databases.mlflow),
            auth=credentials,
            folder=folder,
            artifacts=artifacts,
            log=log,
            process=process,
            cluster=cluster,
            password_generated=generated,
        )
    except BaseException:
        if cluster is not None:
            stop_postgres(cluster)
        raise
    try:
        _wait_healthy(process, tracking_uri, log)
    except BaseException:
        server.stop()
        raise
    return server


def _auth_setup(folder: Path, server_url: str, database: str, env: dict) -> tuple[tuple[str, str | None], bool]:
    """Write the basic-auth config (users in `database`) and choose the admin password: MLFLOW_AUTH_ADMIN_PASSWORD,
    else, while the admin user does not exist yet, a generated one (printed once by the caller)."""
    config = folder / "basic_auth.ini"
    config.touch(mode=0o600)  # the database URL may hold a password
    os.chmod(config, 0o600)
    config.write_text(
        "[mlflow]\n"
        "default_permission = EDIT\n"  # every user may log runs to the shared experiments
        f"database_uri = {sqlalchemy_url(server_url, database).replace('%', '%%')}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):  # CSRF protection: one key, kept across restarts
        key = folder / "flask-secret-key"
        if not key.exists():
            key.touch(mode=0o600)
            key.write_text(secrets.token_hex(32))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = key.read_text().strip()
    env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or None
    if password is not None:
        if len(password) < 12:
            raise UserError("MLFLOW_AUTH_ADMIN_PASSWORD is shorter than 12 characters; expected at least 12")
        return (ADMIN_USER, password), False
    if _admin_exists(server_url, database):
        env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
        return (ADMIN_USER, None), False
    password = secrets.token_urlsafe(18)
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    return (ADMIN_USER, password), True


def _admin_exists(server_url: str, database: str) -> bool:
    import psycopg

    with _connect(server_url, database) as conn:
        try:
            return conn.execute("SELECT 1 FROM users WHERE username = %s", (ADMIN_USER,)).fetchone() is not None
        except psycopg.errors.UndefinedTable:
            return False


class _Stop(Exception):
    """SIGTERM while serving in the foreground."""


def serve(
    folder: Path,
    *,
    port: int = 5000,
    host: str = "127.0.0.1",
    auth: bool = False,
    database_url: str | None = None,
    postgres_port: int | None = None,
    artifacts: str | None = None,
    workers: int = 4,
) -> None:
    """Start the team server, print what clients export, and stay in the foreground until Ctrl-C or SIGTERM; then
    stop mlflow server and (if it started it) PostgreSQL."""
    server = start_server(
        folder,
        port=port,
        host=host,
        auth=auth,
        database_url=database_url,
        postgres_port=postgres_port,
        artifacts=artifacts,
        workers=workers,
    )

    def on_signal(signum, frame):
        raise _Stop()

    main_thread = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    for sig in previous:  # SIGINT too: a shell starts background jobs with it ignored
        signal.signal(sig, on_signal)
    try:
        shown = server.public_uri or server.tracking_uri
        print(f"MLflow tracking server {shown} (log: {server.log}, artifacts: {server.artifacts})")
        if host not in ("127.0.0.1", "localhost", "::1") and database_url is None:
            print(
                "note: PostgreSQL listens on 127.0.0.1 only: IMAGENET_TRANSFER_DB works on this machine; for "
                "workers on other machines, use --database-url of a PostgreSQL server they can reach"
            )
        if server.auth and server.password_generated:
            print(f"basic auth: admin user {server.auth[0]!r} created; its password is shown once, below")
        elif server.auth and server.auth[1] is None:
            print(f"basic auth: admin user {server.auth[0]!r} exists (password as printed when it was created)")
        print("clients export:")
        for line in server.exports():
            print(line)
        sys.stdout.flush()
        while server.process.poll() is None:
            time.sleep(0.5)
        code = server.process.returncode
        raise UserError(f"mlflow server stopped by itself (exit code {code}); see {server.log}:\n{_tail(server.log)}")
    except (KeyboardInterrupt, _Stop):
        print("stopping the team server", file=sys.stderr)
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def running_server(
    folder: Path,
    *,
    auth: bool = False,
    database_url: str | None = None,
    databases: Databases | None = None,
    workers: int = 1,
) -> Iterator[TeamServer]:
    """A team server on free ports (PostgreSQL in `folder` unless `database_url`), stopped on exit. The result has
    `.tracking_uri`, `.db_url` (Optuna / coordination database) and `.auth` (user, password) with `auth`."""
    server = start_server(
        folder,
        port=free_port(),
        auth=auth,
        database_url=database_url,
        databases=databases,
        postgres_port=None if database_url else free_port(),
        workers=workers,
        # no job runner (MLflow's GenAI jobs): one process less to start
        extra_env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")},
    )
    try:
        yield server
    finally:
        server.stop()
