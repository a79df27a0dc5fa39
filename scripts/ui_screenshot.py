"""Take a screenshot of the MLflow UI's runs table, as a researcher sees it, for the README.

    apt-get update && apt-get install -y chromium     # once: Debian's Chromium, the binary `chromium`
    .venv/bin/python scripts/ui_screenshot.py --backend-store-uri sqlite:///mlruns/mlflow.db \
        --out docs/mlflow-ui-transfer-runs.png

Options, with their defaults: --experiment imagenet-transfer, --filter "tags.benchmark = 'voc07_det'",
--columns (see DEFAULT_COLUMNS: the backbone's subset name, arch and recipe, then the transfer metrics),
--order-by "metrics.voc07_map DESC" (default: the UI's, newest first, child runs nested under their parent),
--width 1600 --height 900 (CSS pixels), --scale 1 (2 for a sharper PNG), --timeout 90, --chromium chromium.

Runtime: 15-25 s on 2 cores (mlflow server start ~8 s, Chromium start, page load and render ~5 s).

What it does:

1. starts `mlflow server` from this Python environment (`sys.executable -m mlflow server`) on 127.0.0.1 and a
   free port, with the given backend store (an `mlartifacts` folder beside a SQLite file as the artifacts
   destination; nothing is written there for a screenshot), waits until `/health` answers, and always stops it
   (on success, on error, on Ctrl-C or SIGTERM) together with its worker processes;
2. asks the server's REST API for the experiment, the runs the filter matches and their parent runs: a filter
   the server rejects, or one that matches no runs, is an error; a column whose param/metric/tag none of the
   matching runs has is left out (and named on stderr);
3. drives headless Chromium over the DevTools protocol (aiohttp's websocket client, which MLflow already
   depends on): on the server's origin it writes the runs table's state into local storage (the selected
   columns, their order and widths, the parent runs expanded, the assistant panel closed), then opens
   `#/experiments/<id>/runs?searchFilter=...&workflowType=machine_learning` (the search filter and the sort
   live in the URL; `workflowType` makes the sidebar show the model-training view instead of the GenAI one),
   waits until the table shows its rows, the "N matching runs" count is there, and no request has been in
   flight for a second, and captures the viewport;
4. checks the PNG is not blank (more than a handful of colours) and writes it.

`--columns` is a comma-separated list of `params.KEY`, `metrics.KEY`, `tags.KEY` or `attributes.NAME`
(NAME one of User, Source, Version, Models, Dataset, Description); `A|B` means the first of A, B that the
matching runs have. The table always shows Run Name, Created and Duration first. The runs view keeps the
table state in the browser only: the script writes nothing into the store (though `mlflow server` itself, like
`mlflow ui`, may migrate, or refuse to open, a store made by another MLflow version).

Exit status: 0 when the PNG is written; 1 when something failed (message on stderr: Chromium missing, the
server not starting, a bad filter, no matching runs, the table not rendering in time, a blank picture).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_COLUMNS = ",".join(
    [
        "params.backbone.subset_name|tags.subset_name",
        "params.backbone.arch|tags.backbone_arch",
        "params.backbone.recipe",
        "metrics.voc07_map",
        "metrics.voc12_action_map",
        "metrics.sun397_acc",
        "metrics.probe_linear_top1",
    ]
)
KINDS = {
    "params": "params",
    "param": "params",
    "metrics": "metrics",
    "metric": "metrics",
    "tags": "tags",
    "tag": "tags",
    "attributes": "attributes",
    "attribute": "attributes",
}
ATTRIBUTE_COLUMNS = ("User", "Source", "Version", "Models", "Dataset", "Description")
FIXED_COLUMNS = ["attributes.`Run Name`", "runDateAndNestInfo", "duration"]
APT_HINT = "apt-get update && apt-get install -y chromium"
TABLE_FONT = (
    '-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Oxygen-Sans, Ubuntu, Cantarell, '
    '"Helvetica Neue", sans-serif'
)
CELL_FONT, HEADER_FONT = f"400 12px {TABLE_FONT}", f"600 12px {TABLE_FONT}"  # the runs table's cells and headers
CELL_PAD_PX, HEADER_PAD_PX = 32, 56  # cell padding; header padding plus the sort and menu icons
RUN_NAME_PAD_PX, NEST_INDENT_PX = 72, 24  # expander and colour dot before a run name, padding; indent per level


class Failure(Exception):
    """An error with a message for the user; the script exits 1 with it."""


# --- the MLflow server -----------------------------------------------------------------------------------


def absolute_store_uri(uri: str) -> tuple[str, Path | None]:
    """The backend store URI with a relative SQLite/file path made absolute (the server runs in a temporary
    folder), and the SQLite file, if it is one."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else Path.cwd() / path
        return "sqlite:///" + str(path.resolve()), path.resolve()
    if uri.startswith("file:"):
        return Path(urllib.parse.urlparse(uri).path).resolve().as_uri(), None
    if "://" not in uri:
        return str(Path(uri).resolve()), None
    return uri, None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads (it was started in a new session), SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


@contextlib.contextmanager
def mlflow_server(store_uri: str, artifacts: Path | None, workdir: Path, timeout_s: float):
    """Yields the base URL of an `mlflow server` on 127.0.0.1; stops it on exit."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    env = dict(
        os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true"
    )
    log = workdir / "mlflow-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise Failure(
                    f"mlflow server exited with status {proc.returncode} before answering; its log:\n{log_tail(log)}"
                )
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise Failure(
                    f"mlflow server did not answer {base}/health within {timeout_s:.0f} s; its log:\n{log_tail(log)}"
                )
            time.sleep(0.5)
        yield base
    finally:
        stop_process_group(proc)


def api(base: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("message", "")
        except (ValueError, OSError):
            message = ""
        raise Failure(f"{path}: HTTP {err.code}: {message or err.reason}") from None


# --- what to show ------------------------------------------------------------------------------------------


def find_experiment(base: str, name_or_id: str) -> dict:
    try:
        return api(base, "experiments/get-by-name", query={"experiment_name": name_or_id})["experiment"]
    except Failure as by_name:
        if name_or_id.isdigit():
            with contextlib.suppress(Failure):
                return api(base, "experiments/get", query={"experiment_id": name_or_id})["experiment"]
        raise Failure(f"experiment {name_or_id!r} not found in the store ({by_name})") from None


def search_runs(base: str, experiment_id: str, filter_string: str, limit: int) -> list[dict]:
    runs, token = [], None
    while len(runs) < limit:
        body = {
            "experiment_ids": [experiment_id],
            "filter": filter_string,
            "run_view_type": "ACTIVE_ONLY",
            "max_results": min(1000, limit - len(runs)),
        }
        if token:
            body["page_token"] = token
        page = api(base, "runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            break
    return runs


def run_fields(run: dict) -> dict[str, dict[str, str]]:
    data = run.get("data", {})
    return {
        "params": {p["key"]: p.get("value", "") for p in data.get("params", [])},
        "metrics": {m["key"]: js_number(m.get("value", 0)) for m in data.get("metrics", [])},
        "tags": {t["key"]: t.get("value", "") for t in data.get("tags", [])},
    }


def js_number(value) -> str:
    """A metric value as the UI prints it (JavaScript's shortest round-trip form)."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e21 else repr(float(value))


def ancestors(base: str, runs: list[dict]) -> dict[str, dict]:
    """run id -> run, for the parents (and their parents) of `runs` that are not among them."""
    known = {r["info"]["run_id"]: r for r in runs}
    found: dict[str, dict] = {}
    todo = [run_fields(r)["tags"].get("mlflow.parentRunId") for r in runs]
    while todo:
        run_id = todo.pop()
        if not run_id or run_id in known or run_id in found:
            continue
        try:
            parent = api(base, "runs/get", query={"run_id": run_id})["run"]
        except Failure:
            continue
        found[run_id] = parent
        todo.append(run_fields(parent)["tags"].get("mlflow.parentRunId"))
    return found


def parse_columns(spec: str) -> list[list[tuple[str, str]]]:
    """`params.a|tags.b,metrics.c` -> [[("params", "a"), ("tags", "b")], [("metrics", "c")]]."""
    columns = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        alternatives = []
        for alt in filter(None, (s.strip() for s in item.split("|"))):
            kind, _, key = alt.partition(".")
            if kind not in KINDS or not key:
                raise Failure(f"--columns: {alt!r} is not params.KEY, metrics.KEY, tags.KEY or attributes.NAME")
            key = key.strip("`")
            if KINDS[kind] == "attributes" and key not in ATTRIBUTE_COLUMNS:
                raise Failure(f"--columns: attribute {key!r} is none of {', '.join(ATTRIBUTE_COLUMNS)}")
            alternatives.append((KINDS[kind], key))
        columns.append(alternatives)
    return columns


def resolve_columns(columns: list[list[tuple[str, str]]], runs: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (kind, key) shown per requested column, and the requested columns no matching run has."""
    fields = [run_fields(r) for r in runs]
    shown, missing = [], []
    for alternatives in columns:
        for kind, key in alternatives:
            if kind == "attributes" or any(key in f[kind] for f in fields):
                if (kind, key) not in shown:
                    shown.append((kind, key))
                break
        else:
            missing.append("|".join(f"{kind}.{key}" for kind, key in alternatives))
    return shown, missing


def column_id(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def table_texts(shown: list[tuple[str, str]], runs: list[dict], depth: dict[str, int]):
    """Per column id, the header and the cell texts it has to fit; Run Name's with their nesting depth."""
    fields = [run_fields(r) for r in runs]
    texts = {}
    for kind, key in shown:
        # Attribute cells (user, source, model links) are not known here: give them room for ~16 characters.
        values = ["m" * 12] if kind == "attributes" else sorted({f[kind].get(key, "") for f in fields}, key=len)[-50:]
        texts[column_id(kind, key)] = (key, [(v, 0) for v in values])
    names = [
        (f["tags"].get("mlflow.runName", r["info"].get("run_name", "")), depth.get(r["info"]["run_id"], 0))
        for f, r in zip(fields, runs)
    ]
    texts[FIXED_COLUMNS[0]] = ("Run Name", names)
    return texts


MEASURE_JS = """((texts, font) => {
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = font;
  return texts.map(t => Math.ceil(ctx.measureText(t).width));
})(%s, %s)"""


async def column_widths(tools: DevTools, texts: dict) -> dict[str, int]:
    """Widths (CSS px) that fit each column's header and longest value, measured in the table's fonts."""
    headers = await tools.evaluate(MEASURE_JS % (json.dumps([h for h, _ in texts.values()]), json.dumps(HEADER_FONT)))
    widths = {}
    for (column, (_, cells)), header_px in zip(texts.items(), headers):
        cell_px = await tools.evaluate(MEASURE_JS % (json.dumps([v for v, _ in cells]), json.dumps(CELL_FONT)))
        if column == FIXED_COLUMNS[0]:
            need = max(
                [header_px + HEADER_PAD_PX]
                + [px + RUN_NAME_PAD_PX + NEST_INDENT_PX * level for px, (_, level) in zip(cell_px, cells)]
            )
            widths[column] = max(190, min(480, need))
        else:
            need = max([header_px + HEADER_PAD_PX] + [px + CELL_PAD_PX for px in cell_px])
            widths[column] = max(80, min(360, need))
    return widths


# --- headless Chromium over the DevTools protocol ----------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools protocol client on one page target, tracking the page's requests in flight."""

    DATA_REQUESTS = ("XHR", "Fetch")  # what the runs table waits for; workers and icons may never report back

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.in_flight: dict[str, str] = {}
        self.last_network = time.monotonic()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for msg in self.ws:
            if msg.type.name != "TEXT":
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.pending.pop(data["id"], None)
                if fut and not fut.done():
                    fut.set_result(data)
                continue
            method, params = data.get("method", ""), data.get("params", {})
            if method == "Network.requestWillBeSent" and params.get("type") in self.DATA_REQUESTS:
                self.in_flight[params["requestId"]] = params.get("request", {}).get("url", "")
                self.last_network = time.monotonic()
            elif method in ("Network.loadingFinished", "Network.loadingFailed"):
                self.in_flight.pop(params["requestId"], None)
                self.last_network = time.monotonic()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(Failure("the DevTools connection to Chromium closed"))

    async def send(self, method: str, timeout_s: float = 60, **params):
        msg_id = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = fut
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        try:
            reply = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise Failure(f"Chromium did not answer {method} within {timeout_s:.0f} s") from None
        if "error" in reply:
            raise Failure(f"Chromium: {method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise Failure(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    async def navigate(self, url: str):
        reply = await self.send("Page.navigate", url=url)
        if reply.get("errorText"):
            raise Failure(f"Chromium could not open {url}: {reply['errorText']}")


def chromium_binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise Failure(
            f"{name!r} not found on PATH: install Debian's Chromium with `{APT_HINT}` (or pass --chromium PATH)"
        )
    return path


@contextlib.asynccontextmanager
async def chromium(binary: str, workdir: Path, width: int, height: int, timeout_s: float):
    """Yields a DevTools client on a blank page of a fresh headless Chromium; stops Chromium on exit."""
    import aiohttp

    profile = workdir / "chromium-profile"
    log = workdir / "chromium.log"
    args = [
        binary,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--mute-audio",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-sync",
        "--disable-component-update",
        "--disable-background-networking",
        "--disable-default-apps",
        "--disable-dev-shm-usage",
        "--lang=en-US",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    session = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if proc.poll() is not None:
                raise Failure(f"Chromium exited with status {proc.returncode}; its log:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise Failure(
                    f"Chromium did not open its DevTools port within {timeout_s:.0f} s; its log:\n{log_tail(log)}"
                )
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        session = aiohttp.ClientSession()
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            raise Failure("Chromium has no page to drive")
        ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        tools = DevTools(ws)
        try:
            await tools.send("Page.enable")
            await tools.send("Runtime.enable")
            await tools.send("Network.enable")
            yield tools
        finally:
            tools.reader.cancel()
            await ws.close()
    finally:
        if session is not None:
            await session.close()
        stop_process_group(proc, grace_s=5)


STATE_JS = "(() => {{ const items = {items}; for (const k in items) localStorage.setItem(k, items[k]); }})()"

PROBE_JS = r"""(() => {
  const rows = document.querySelectorAll('.ag-center-cols-container .ag-row').length;
  const text = document.body ? document.body.innerText : '';
  const m = text.match(/(\d+)\s+matching runs?/);
  const headers = [...document.querySelectorAll('.ag-header-cell[col-id]')].map(e => e.getAttribute('col-id'));
  const loading = [...document.querySelectorAll('.ag-overlay-loading-center, [data-testid="loading-spinner"]')]
    .filter(e => e.offsetWidth > 0 && e.offsetHeight > 0).map(e => e.outerHTML.slice(0, 200));
  const viewport = document.querySelector('.ag-center-cols-viewport');
  const overflow = viewport ? viewport.scrollWidth > viewport.clientWidth + 1 : false;
  return {rows, overflow, matching: m ? Number(m[1]) : null, headers, loading,
          fonts: document.fonts ? document.fonts.status : 'loaded', href: location.href};
})()"""


async def capture(
    base: str,
    experiment_id: str,
    filter_string: str,
    order: tuple[str, bool] | None,
    ui_state: dict,
    texts: dict,
    expected_rows: int,
    args,
    workdir: Path,
) -> tuple[bytes, dict]:
    """Opens the runs table with the given state and returns (PNG bytes, the last page probe)."""
    binary = chromium_binary(args.chromium)
    async with chromium(binary, workdir, args.width, args.height, args.timeout) as tools:
        await tools.send(
            "Emulation.setDeviceMetricsOverride",
            width=args.width,
            height=args.height,
            deviceScaleFactor=args.scale,
            mobile=False,
        )
        # Local storage belongs to the origin: open a plain page of the server first, then write the state.
        await tools.navigate(base + "/health")
        ui_state = dict(ui_state, columnWidths=await column_widths(tools, texts))
        items = {
            f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState': json.dumps(ui_state),
            "mlflow.assistant.panelOpen_v1": "false",
            "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        }
        await tools.evaluate(STATE_JS.format(items=json.dumps(items)))
        query = {"searchFilter": filter_string, "workflowType": "machine_learning"}
        if order:
            query.update(orderByKey=order[0], orderByAsc="true" if order[1] else "false")
        url = f"{base}/#/experiments/{experiment_id}/runs?" + urllib.parse.urlencode(
            query, quote_via=urllib.parse.quote
        )
        await tools.navigate(url)

        deadline = time.monotonic() + args.timeout
        probe, last_rows, rows_since = {}, -1, time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            probe = await tools.evaluate(PROBE_JS) or {}
            now = time.monotonic()
            if probe.get("rows") != last_rows:
                last_rows, rows_since = probe.get("rows"), now
            # Rows beyond the viewport are not rendered: a row count that stays put for 2 s is final too.
            rows = probe.get("rows", 0)
            rows_done = rows >= expected_rows or (rows > 0 and now - rows_since >= 2)
            network_idle = not tools.in_flight and now - tools.last_network >= 1.0
            if (
                rows_done
                and probe.get("matching") is not None
                and not (probe.get("loading") or [])
                and probe.get("fonts") == "loaded"
                and network_idle
            ):
                break
            if now > deadline:
                debug = Path(tempfile.gettempdir()) / "ui_screenshot-debug.png"
                with contextlib.suppress(Exception):
                    shot = await tools.send("Page.captureScreenshot", format="png")
                    debug.write_bytes(base64.b64decode(shot["data"]))
                raise Failure(
                    f"the runs table did not finish rendering within {args.timeout:.0f} s "
                    f"(page state {json.dumps(probe)}, "
                    f"requests in flight: {sorted(set(tools.in_flight.values()))}); "
                    f"what the page showed: {debug}"
                )
        # One more frame so that the last layout is painted.
        await tools.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        shot = await tools.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        return base64.b64decode(shot["data"]), probe


def check_not_blank(png: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        colours = img.convert("RGB").getcolors(maxcolors=16)
    if colours is not None:
        raise Failure(f"the screenshot is (nearly) blank: {len(colours)} colour(s)")


# --- main ------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend-store-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db"),
        help="the tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--experiment", default="imagenet-transfer", help="experiment name (or id)")
    parser.add_argument(
        "--filter",
        default="tags.benchmark = 'voc07_det'",
        help="the runs search filter, as typed into the UI's search box",
    )
    parser.add_argument(
        "--columns",
        default=DEFAULT_COLUMNS,
        help="comma-separated params.KEY / metrics.KEY / tags.KEY / attributes.NAME; A|B = the "
        "first of A, B the matching runs have; columns no matching run has are left out",
    )
    parser.add_argument(
        "--order-by", default="", help="sort column, e.g. 'metrics.voc07_map DESC' (default: the UI's, newest first)"
    )
    parser.add_argument("--width", type=int, default=1600, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=900, help="viewport height in CSS pixels")
    parser.add_argument("--scale", type=float, default=1.0, help="device pixel ratio (2 for a sharper PNG)")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"), help="the Chromium binary")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for the server, and for the page")
    return parser.parse_args(argv)


def parse_order(text: str) -> tuple[str, bool] | None:
    if not text.strip():
        return None
    parts = text.split()
    ascending = True
    if len(parts) > 1 and parts[-1].upper() in ("ASC", "DESC"):
        ascending = parts.pop().upper() == "ASC"
    kind, _, key = " ".join(parts).partition(".")
    if kind in ("attributes", "attribute") and key:
        return f"attributes.{key.strip('`')}", ascending
    if kind not in KINDS or not key:
        raise Failure(f"--order-by: {text!r} is not params.KEY, metrics.KEY or tags.KEY [ASC|DESC]")
    return column_id(KINDS[kind], key.strip("`")), ascending


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    store_uri, sqlite_file = absolute_store_uri(args.backend_store_uri)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise Failure(f"no SQLite store at {sqlite_file} (from --backend-store-uri {args.backend_store_uri})")
    columns = parse_columns(args.columns)
    order = parse_order(args.order_by)
    chromium_binary(args.chromium)  # fail before starting the server
    artifacts = sqlite_file.parent / "mlartifacts" if sqlite_file is not None else None

    with tempfile.TemporaryDirectory(prefix="ui_screenshot-") as tmp:
        workdir = Path(tmp)
        with mlflow_server(store_uri, artifacts, workdir, args.timeout) as base:
            experiment = find_experiment(base, args.experiment)
            experiment_id = experiment["experiment_id"]
            try:
                runs = search_runs(base, experiment_id, args.filter, limit=1000)
            except Failure as err:
                raise Failure(f"the server rejects the filter {args.filter!r}: {err}") from None
            if not runs:
                raise Failure(f"the filter {args.filter!r} matches no active run in experiment {experiment['name']!r}")
            parents = ancestors(base, runs)
            shown, missing = resolve_columns(columns, runs)
            if missing:
                print(f"ui_screenshot: no matching run has {', '.join(missing)}: left out", file=sys.stderr)

            # The UI nests child runs under their parents only when sorted by start time (its default).
            nested = order is None or order[0] == "attributes.start_time"
            if not nested:
                parents = {}
            by_id = {r["info"]["run_id"]: r for r in [*runs, *parents.values()]}
            depth = {}
            for run_id in by_id:
                level, parent = 0, run_fields(by_id[run_id])["tags"].get("mlflow.parentRunId")
                while parent in by_id and level < 20:
                    level, parent = level + 1, run_fields(by_id[parent])["tags"].get("mlflow.parentRunId")
                depth[run_id] = level
            texts = table_texts(shown, list(by_id.values()), depth)
            selected = [column_id(kind, key) for kind, key in shown]
            ui_state = {
                "selectedColumns": selected,
                "columnOrder": FIXED_COLUMNS + selected,
                "runsExpanded": dict.fromkeys(parents, True),
                "autoRefreshEnabled": False,
            }
            png, probe = asyncio.run(
                capture(
                    base,
                    experiment_id,
                    args.filter,
                    order,
                    ui_state,
                    texts,
                    expected_rows=len(by_id) if nested else len(runs),
                    args=args,
                    workdir=workdir,
                )
            )

    check_not_blank(png)
    absent = [c for c in selected if c not in probe.get("headers", [])]
    if absent:
        print(f"ui_screenshot: warning: the table does not show {', '.join(absent)}", file=sys.stderr)
    if probe.get("overflow"):
        print(
            "ui_screenshot: warning: the columns are wider than the table, the last ones are cut off: "
            "raise --width or drop columns",
            file=sys.stderr,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".part")
    partial.write_bytes(png)
    os.replace(partial, args.out)
    print(
        f"wrote {args.out} ({len(png) // 1024} KiB): {probe.get('matching')} matching runs, "
        f"{probe.get('rows')} rows shown, columns {', '.join(selected) or '(none)'}; "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        sys.exit(main())
    except Failure as err:
        print(f"ui_screenshot: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("ui_screenshot: interrupted", file=sys.stderr)
        sys.exit(130)
