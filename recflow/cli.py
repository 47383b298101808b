"""The `recflow` command line: the only place that knows everything.

Domain errors (`ConfigError`, `BackendError`...) become click errors here
and nowhere else. Logging handlers are configured here only.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from recflow.errors import RecflowError
from recflow.log_output import counted

if TYPE_CHECKING:
    from recflow.config import Config
    from recflow.pipeline import Runtime
    from recflow.plugins import PluginHost

logger = logging.getLogger(__name__)

CONFIG_HELP = "config file (default: $RECFLOW_CONFIG, else ./config.yaml)"


def config_path(value: str | None) -> str:
    """The config file a command reads: -c, else $RECFLOW_CONFIG, else ./config.yaml.

    `-c` may stand before the command (`recflow -c FILE events`) or after
    it (`recflow events -c FILE`); the one nearer the command wins.
    """
    if value:
        return value
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("config_file"):
            return str(ctx.params["config_file"])
        ctx = ctx.parent
    return os.environ.get("RECFLOW_CONFIG") or "config.yaml"


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-c", "--config", "config_file", default=None, help=CONFIG_HELP)(func)


def setup_logging(level: int = logging.INFO) -> None:
    from recflow.log_output import BatchingStreamHandler, LineFormatter

    # The format below uses none of these; not collecting them saves the
    # receiver a few system calls and frame walks per log line (the
    # "Optimization" section of the logging HOWTO).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # noqa: SLF001 - documented there as the switch
    # Written at once, batched only at high rates (see recflow.log_output).
    handler = BatchingStreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # httpx logs every request at INFO; the actions log their own outcome.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))


class _Group(click.Group):
    """Turns recflow's own errors into one-line click errors."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RecflowError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(package_name="recflow")
@config_option
def cli(config_file: str | None) -> None:
    """Receive call-recording callbacks, verify them, and run rules on them."""


@cli.command()
@config_option
def check(config_file: str | None) -> None:
    """Validate the config and its templates; exit 1 with located errors."""
    from recflow import config as config_module
    from recflow.errors import ConfigError
    from recflow.plugins import build_plugin_manager

    host = build_plugin_manager()
    try:
        config = config_module.load(
            config_path(config_file), host.actions, missing_action=host.missing_action
        )
    except ConfigError as exc:
        for error in exc.all:
            click.echo(str(error), err=True)
        raise SystemExit(1) from None
    _exit_on_problems(config, host)
    for name, reason in sorted(host.broken.items()):
        click.echo(f"warning: plugin {name} is not loaded: {reason}", err=True)
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"ok: {counted(len(config.rules), 'rule')}, {counted(len(config.providers), 'provider')}"
    )


def _exit_on_problems(config: Config, host: PluginHost) -> None:
    """Print what `recflow check` finds beyond the schema, and exit 1 if anything.

    `serve` and `worker` refuse such a config too: a misspelt field or
    step output would otherwise fail every step that renders it, once
    callbacks arrive.
    """
    from recflow.secrets import Redactor
    from recflow.templates import check_config

    problems = check_config(config, host.actions)
    if problems:
        redactor = Redactor(config.secrets)
        for problem in problems:
            click.echo(redactor.mask(problem), err=True)
        raise SystemExit(1)


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.argument("payload", type=click.File("rb"))
def match(config_file: str | None, as_json: bool, payload: Any) -> None:
    """Dry run: which rules match a callback in PAYLOAD, why, and their steps.

    PAYLOAD is a file holding a form-encoded body or a JSON object (`-`
    reads stdin). Nothing runs: outputs of earlier steps show as
    placeholders such as <steps.archive.url>.
    """
    import json

    from recflow import config as config_module
    from recflow.plugins import build_plugin_manager
    from recflow.secrets import Redactor

    config = config_module.load(config_path(config_file), build_plugin_manager().actions)
    try:
        text = payload.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"payload: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    event = _payload_event(text)
    report = Redactor(config.secrets).mask_obj(_match_report(config, event))
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    shown = report["event"]
    _say(
        f"event {shown['status']} recording {shown['recording_sid']}"
        f" of account {shown['account_sid']},"
        f" duration {'unknown' if shown['duration'] is None else shown['duration']}"
    )
    for rule in report["rules"]:
        _say(f"{'match' if rule['matched'] else 'no   '}  {rule['name']}: {rule['reason']}")
        for number, step in enumerate(rule["steps"], 1):
            label = f" ({step['id']})" if step["id"] else ""
            _say(f"    {number}. {step['action']}{label}")
            if "error" in step:
                _say(f"         error: {step['error']}")
            for key, value in (step["with"] or {}).items():
                _say(f"         {key}: {json.dumps(value, ensure_ascii=False)}")


def _say(text: str) -> None:
    """Echo human output; control characters a callback carried are escaped."""
    from recflow.secrets import escape_controls

    click.echo(escape_controls(text))


def _payload_event(text: str) -> Any:
    """The event in a form-encoded or JSON callback body (JSON if it starts with `{`)."""
    import json
    from urllib.parse import parse_qsl

    from recflow.errors import RequestError
    from recflow.event import params_from_json, params_from_pairs, parse_event

    try:
        if text.lstrip().startswith("{"):
            try:
                document = json.loads(text)
            except ValueError as exc:
                raise click.ClickException(f"payload: not valid JSON: {exc}") from None
            params = params_from_json(document)
        else:
            params = params_from_pairs(parse_qsl(text.strip(), keep_blank_values=True))
        return parse_event(params)
    except RequestError as exc:
        raise click.ClickException(f"payload: {exc.reason}") from None


def _match_report(config: Any, event: Any) -> dict[str, Any]:
    """What `match --json` prints: every rule, why, and matched rules' rendered steps."""
    from recflow import rules as rules_module
    from recflow.errors import TemplateError
    from recflow.templates import placeholder_steps, render_params

    out = []
    for rule, matched, reason in rules_module.explain(config.rules, event):
        steps = []
        earlier: list[str | None] = []
        for step in rule.steps if matched else ():
            context = {
                "event": event,
                "rule": {"name": rule.name},
                "steps": placeholder_steps(earlier),
            }
            entry: dict[str, Any] = {"action": step.action, "id": step.id}
            try:
                entry["with"] = render_params(step.params, context)
            except TemplateError as exc:
                entry["with"] = None
                entry["error"] = str(exc)
            steps.append(entry)
            earlier.append(step.id)
        out.append({"name": rule.name, "matched": matched, "reason": reason, "steps": steps})
    return {"event": event.to_dict(), "rules": out}


@cli.command()
@config_option
@click.option("--listen", default=None, metavar="HOST:PORT", help="default: server.listen")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="worker threads (default: workers in the config)",
)
@click.option("--no-worker", is_flag=True, help="receive only; workers run elsewhere")
def serve(
    config_file: str | None, listen: str | None, workers: int | None, no_worker: bool
) -> None:
    """Receive callbacks over HTTP, and run their steps unless --no-worker."""
    import contextlib
    from collections.abc import AsyncIterator
    from types import FrameType

    import uvicorn
    from starlette.applications import Starlette

    from recflow import config as config_module
    from recflow import http_limits, pipeline, receive, secrets
    from recflow.plugins import build_plugin_manager
    from recflow.worker_process import WorkerProcess

    setup_logging()
    host = build_plugin_manager()
    config = config_module.load(config_path(config_file), host.actions)
    _exit_on_problems(config, host)
    secrets.install(secrets.Redactor(config.secrets))
    for warning in config.warnings:
        logger.warning("%s", warning)
    sock, url = _listen_socket(config.server.listen if listen is None else listen)
    runtime = pipeline.open_runtime(config, host, commit_process=True)
    threads = 0 if no_worker else (config.workers if workers is None else workers)

    workers_process: WorkerProcess | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The workers run in a process of their own (recflow.worker_process),
        # on the config loaded above, whatever the file says by then.
        nonlocal workers_process
        if threads:
            workers_process = WorkerProcess(config.real_path, config.source, threads)
            runtime.pipeline.on_fresh = workers_process.wake
        try:
            yield
        finally:
            if workers_process is not None:
                workers_process.stop()
            runtime.close()
            logger.info("recflow serve stopped: backend closed")

    def workers_problem() -> str | None:
        return None if workers_process is None else workers_process.problem()

    app = receive.create_app(
        config, host, runtime.pipeline, lifespan=lifespan, workers_problem=workers_problem
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Before uvicorn's own shutdown: the signal may have reached the
            # worker process too, which is then not to be started again.
            if workers_process is not None:
                workers_process.stopping()
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            # httptools, plus a deadline and a size cap on request heads.
            http=http_limits.protocol_class(config.server.read_timeout),
            timeout_keep_alive=5,
            lifespan="on",
            access_log=False,
            log_config=None,
            # recflow decides itself which X-Forwarded-* headers to believe.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=15,
        )
    )
    click.echo(f"recflow listening on {url}{config.server.path} ({threads} workers)")
    # What is loaded now (modules, config, compiled rules) lives as long as
    # the process: kept out of the cyclic collector's full passes, which
    # otherwise walk it all again and again under load.
    gc.freeze()
    server.run(sockets=[sock])
    if not server.started:
        raise click.ClickException("the server did not start; see the log above")


def _listen_socket(listen: str) -> tuple[socket.socket, str]:
    """A bound socket for HOST:PORT (port 0 picks a free one) and its URL."""
    host, sep, port_text = listen.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if host.startswith("[") != host.endswith("]"):
        host = ""
    host = host[1:-1] if bracketed else host
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_text)))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"http://{shown}:{port}"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plugins(as_json: bool) -> None:
    """List installed plugins, the hooks they implement and the actions they add."""
    import json

    from recflow.plugins import add_commands, build_plugin_manager, describe

    with _plugin_logs_off():  # the listing itself shows what is broken
        host = build_plugin_manager(strict=False)
    # Adding the commands again, to a copy, finds the plugins that fail to.
    add_commands(host, click.Group(commands=dict(cli.commands)))
    entries = describe(host)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        origin = "builtin" if entry["builtin"] else entry["distribution"] or "unpackaged"
        click.echo(f"{entry['name']}  {entry['version'] or '?'}  ({origin})")
        if entry["hooks"]:
            click.echo(f"  hooks: {', '.join(entry['hooks'])}")
        for action in entry["actions"]:
            click.echo(f"  action {action['name']}: {action['description']}")
        if entry["error"]:
            click.echo(f"  BROKEN: {entry['error']}")


def _open_backend(
    config_file: str | None,
    source: bytes | None = None,
    *,
    checked: bool = False,
    existing: bool = False,
) -> tuple[Config, Runtime]:
    """The loaded config (`source` instead of the file's bytes, if given)
    and an opened runtime (no workers) for it.

    `checked`: exit 1 first if `recflow check` would. `existing`: a
    command that reads the journal refuses to create an SQLite file, which
    would only say "no events" about a database that is elsewhere (a
    config copied to another folder, a release symlink switched since),
    and to upgrade one of an earlier release, which may still be running.
    """
    from recflow import config as config_module
    from recflow import pipeline
    from recflow.plugins import build_plugin_manager
    from recflow.queue import parse_backend

    host = build_plugin_manager()
    config = config_module.load(config_path(config_file), host.actions, source=source)
    if checked:
        _exit_on_problems(config, host)
    backend = parse_backend(config.backend, ".")
    if existing and backend.kind == "sqlite" and not os.path.exists(backend.location):
        raise click.ClickException(
            f"no database at {backend.location} (from {config.path}): nothing was received"
            " with this config there; is recflow serve running with another copy of it?"
        )
    return config, pipeline.open_runtime(config, host, upgrade=not existing)


@cli.command()
@config_option
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="worker threads (default: workers in the config)",
)
@click.option("--parent-fd", type=int, default=None, hidden=True)
@click.option("--config-fd", type=int, default=None, hidden=True)
def worker(
    config_file: str | None, workers: int | None, parent_fd: int | None, config_fd: int | None
) -> None:
    """Run steps from the backend, without receiving callbacks.

    SIGTERM or Ctrl-C lets running steps finish (30 s at most) and leaves
    the rest queued for the next worker.
    """
    import signal
    import threading

    from recflow import secrets
    from recflow.worker_process import follow_parent, read_snapshot

    setup_logging()
    # Started by `recflow serve`: its config, as it loaded it.
    source = None if config_fd is None else read_snapshot(config_fd)
    # serve checked its config before handing it over.
    config, runtime = _open_backend(config_file, source, checked=source is None)
    secrets.install(secrets.Redactor(config.secrets))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threads = workers or config.workers or 1
    runtime.start(threads)
    if parent_fd is not None:
        # Started by `recflow serve`: woken by it, and gone with it.
        follow_parent(parent_fd, runtime.queue.wakeup)
    click.echo(f"recflow worker running {threads} workers", err=True)
    while not stop.wait(3600):
        pass
    logger.info("stopping: letting running steps finish")
    runtime.close(timeout=30)


@cli.group(invoke_without_command=True)
@config_option
@click.option("--failed", is_flag=True, help="only events with a failed step")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def events(
    ctx: click.Context, config_file: str | None, failed: bool, limit: int, as_json: bool
) -> None:
    """Recent events and each step's outcome, newest first."""
    ctx.obj = {"config_file": config_file, "as_json": as_json}
    if ctx.invoked_subcommand is not None:
        return
    import json

    config, runtime = _open_backend(config_file, existing=True)
    try:
        rows = runtime.journal.list_events(limit=limit, failed_only=failed)
    finally:
        runtime.close()
    rows = _masked(config, rows)
    if as_json:
        for row in rows:
            row.pop("event", None)
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no events" + (" with a failed step" if failed else ""))
        return
    _say(f"{'ID':<12}  {'RECEIVED':<19}  {'STATUS':<11}  RECORDING")
    for row in rows:
        received = (row["received_at"] or "")[:19].replace("T", " ")
        _say(f"{row['id'][:12]}  {received:<19}  {row['status']:<11}  {row['recording_sid']}")
        for step in row["steps"]:
            _say("  " + _step_line(step))
        if not row["steps"]:
            click.echo("  (no rule matched)")


def _event_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An event id as typed: ids are lowercase hex, so capitals and spaces
    pasted around it still find the event."""
    if value is None:
        return None
    typed = value.strip().lower()
    if not typed:
        raise click.BadParameter("give an event id, or the first characters of one")
    return typed


@events.command("show")
@config_option
@click.argument("event_id", callback=_event_id)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def events_show(ctx: click.Context, config_file: str | None, event_id: str, as_json: bool) -> None:
    """One event (id or unique id prefix): its fields, steps and every attempt."""
    import json

    config, runtime = _open_backend(config_file, existing=True)
    try:
        row = runtime.journal.get_event(event_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        runtime.close()
    if row is None:
        raise click.ClickException(f"no event with id {event_id!r}")
    row = _masked(config, [row])[0]
    if as_json or ctx.obj["as_json"]:
        click.echo(json.dumps(row, indent=2))
        return
    _say(f"event     {row['id']}")
    _say(f"received  {row['received_at']}")
    for name in ("account_sid", "call_sid", "recording_sid", "status", "duration"):
        _say(f"{name:<14}{row['event'].get(name)}")
    _say(f"rules     {', '.join(row['rules']) or '(none matched)'}")
    for step in row["steps"]:
        _say(_step_line(step))
        for run in step["runs"]:
            error = f"  {run['error']}" if run["error"] else ""
            _say(f"    attempt {run['attempt']}  {run['started_at']}  {run['outcome']}{error}")
        if step["outputs"]:
            _say(f"    outputs {json.dumps(step['outputs'])}")


def _step_line(step: dict[str, Any]) -> str:
    name = f"{step['rule']}#{step['index'] + 1}"
    error = f"  {step['error']}" if step["error"] and step["state"] != "done" else ""
    return f"{name:<20} {step['action']!s:<10} {step['state']!s:<8} {step['attempts']}{error}"


def _masked(config: Config, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from recflow.secrets import Redactor

    masked: list[dict[str, Any]] = Redactor(config.secrets).mask_obj(rows)
    return masked


@cli.command()
@config_option
@click.argument("event_id", required=False, callback=_event_id)
@click.option("--failed", "all_failed", is_flag=True, help="every failed step of every event")
def retry(config_file: str | None, event_id: str | None, all_failed: bool) -> None:
    """Run the failed steps of EVENT_ID (or, with --failed, of every event) again.

    Attempts start from zero; the workers of `recflow serve` or
    `recflow worker` pick the steps up.
    """
    import time

    if bool(event_id) == all_failed:
        raise click.UsageError("give either an EVENT_ID or --failed")
    _, runtime = _open_backend(config_file, existing=True)
    try:
        journal = runtime.journal
        if event_id:
            try:
                row = journal.get_event(event_id)
            except LookupError as exc:
                raise click.ClickException(str(exc)) from None
            if row is None:
                raise click.ClickException(f"no event with id {event_id!r}")
            event_id = row["id"]
        keys = journal.retry(event_id, time.time())
        runtime.queue.put_many(keys)
    finally:
        runtime.close()
    if not keys:
        click.echo("no failed steps" + (f" for event {event_id}" if event_id else ""))
        return
    for key in keys:
        click.echo(f"queued again: {key.event_id[:12]} {key.rule}#{key.step_index + 1}")


def _callback_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--url` as given, once it is an http(s) URL with a host and a valid port."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a URL: {exc}") from None
    if any(c.isspace() for c in value):
        raise click.BadParameter(f"{value!r} is not a URL: it has a space in it")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r}: give an http:// or https:// URL with a host")
    if port == 0:
        raise click.BadParameter(f"{value!r}: port 0 is not a port a server listens on")
    return value


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A number of seconds, not `nan`, which every range check lets through."""
    if value != value:
        raise click.BadParameter("nan is not a number of seconds")
    return value


@cli.command()
@config_option
@click.argument("status", type=click.Choice(["completed", "in-progress", "absent", "failed"]))
@click.option("--duration", type=click.IntRange(1, 3600), default=5, show_default=True,
              help="seconds of audio")  # fmt: skip
@click.option("--url", default=None, callback=_callback_url,
              help="callback URL (default: server.listen + server.path)")  # fmt: skip
@click.option("--provider", "provider_name", default=None, help="provider name (default: first)")
@click.option("--timeout", type=click.FloatRange(min=1, max=86400), default=60,
              show_default=True, callback=_finite,
              help="seconds to keep serving the media")  # fmt: skip
def trigger(
    config_file: str | None,
    status: str,
    duration: int,
    url: str | None,
    provider_name: str | None,
    timeout: float,
) -> None:
    """Send a realistic signed callback to a running server and serve its audio.

    The audio is served from a throwaway local server at the provider's
    api_url (point it at http://127.0.0.1:PORT/... for trials) until it is
    fetched, and deleted if the matching rules delete it.
    """
    from recflow import config as config_module
    from recflow import trigger as trigger_module
    from recflow.plugins import build_plugin_manager

    loaded = config_module.load(config_path(config_file), build_plugin_manager().actions)
    ok = trigger_module.run(
        loaded,
        status,
        duration=duration,
        url=url,
        provider_name=provider_name,
        timeout=timeout,
        echo=click.echo,
    )
    if not ok:
        sys.exit(1)


def _add_plugin_commands(group: click.Group) -> None:
    """Add the commands installed plugins contribute, whatever state they are in.

    Only installed plugins are loaded (the built-ins add no command), so
    `recflow --help` stays quick; a broken plugin is skipped here and
    `recflow plugins` says why.
    """
    from recflow.plugins import add_commands, build_plugin_manager

    # The command that runs reports broken plugins itself; saying it here too
    # would print every complaint twice, before logging is even set up.
    try:
        with _plugin_logs_off():
            host = build_plugin_manager(defaults=False, strict=False)
    except Exception as exc:  # never let a plugin stop the command line itself
        click.echo(f"recflow: plugins not loaded: {exc}", err=True)
        return
    add_commands(host, group)


@contextlib.contextmanager
def _plugin_logs_off() -> Iterator[None]:
    plugins_logger = logging.getLogger("recflow.plugins")
    plugins_logger.disabled = True
    try:
        yield
    finally:
        plugins_logger.disabled = False


def main() -> None:
    _add_plugin_commands(cli)
    cli()
