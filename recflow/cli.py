"""The `recflow` command line: the only place that knows everything.

Domain errors (`ConfigError`, `BackendError`...) become click errors here
and nowhere else. Logging handlers are configured here only.
"""

from __future__ import annotations

import logging
import os
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


def main() -> None:
    cli()
