"""The `recflow` command line: the only place that knows everything.

Domain errors (`ConfigError`, `BackendError`...) become click errors here
and nowhere else. Logging handlers are configured here only.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import click

from recflow.errors import RecflowError

logger = logging.getLogger(__name__)

CONFIG_HELP = "config file (default: $RECFLOW_CONFIG, else ./config.yaml)"


def config_path(value: str | None) -> str:
    """The config file a command reads: -c, else $RECFLOW_CONFIG, else ./config.yaml."""
    return value or os.environ.get("RECFLOW_CONFIG") or "config.yaml"


def config_option(func):  # type: ignore[no-untyped-def]
    return click.option("-c", "--config", "config_file", default=None, help=CONFIG_HELP)(func)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class _Group(click.Group):
    """Turns recflow's own errors into one-line click errors."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RecflowError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(package_name="recflow")
def cli() -> None:
    """Receive call-recording callbacks, verify them, and run rules on them."""


@cli.command()
@config_option
def check(config_file: str | None) -> None:
    """Validate the config and its templates; exit 1 with located errors."""
    raise click.ClickException("check: not built yet")


@cli.command()
@config_option
@click.option("--listen", default=None, metavar="HOST:PORT", help="default: server.listen")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
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

    import uvicorn
    from starlette.applications import Starlette

    from recflow import config as config_module
    from recflow import pipeline, receive, secrets
    from recflow.plugins import build_plugin_manager

    setup_logging()
    host = build_plugin_manager()
    config = config_module.load(config_path(config_file), host.actions)
    secrets.install(secrets.Redactor(config.secrets))
    sock, url = _listen_socket(listen or config.server.listen)
    runtime = pipeline.open_runtime(config, host)
    threads = 0 if no_worker else (config.workers if workers is None else workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime.start(threads)
        try:
            yield
        finally:
            runtime.close()

    app = receive.create_app(config, host, runtime.pipeline, lifespan=lifespan)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
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
    server.run(sockets=[sock])
    if not server.started:
        raise click.ClickException("the server did not start; see the log above")


def _listen_socket(listen: str) -> tuple[socket.socket, str]:
    """A bound socket for HOST:PORT (port 0 picks a free one) and its URL."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
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

    from recflow.plugins import build_plugin_manager, describe

    entries = describe(build_plugin_manager(strict=False))
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


def _add_plugin_commands(group: click.Group) -> None:
    """Add the commands installed plugins contribute, whatever state they are in.

    Only installed plugins are loaded (the built-ins add no command), so
    `recflow --help` stays quick; a broken plugin is skipped here and
    `recflow plugins` says why.
    """
    from recflow.plugins import add_commands, build_plugin_manager

    try:
        host = build_plugin_manager(defaults=False, strict=False)
    except Exception as exc:  # never let a plugin stop the command line itself
        click.echo(f"recflow: plugins not loaded: {exc}", err=True)
        return
    add_commands(host, group)


def main() -> None:
    _add_plugin_commands(cli)
    cli()
