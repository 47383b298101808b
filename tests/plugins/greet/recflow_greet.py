"""Two plugins in one module: one adds `recflow greet`, one fails to add a command."""

from typing import Any

import click

from recflow import hookimpl


@click.command()
@click.argument("name")
def greet(name: str) -> None:
    """Say hello to NAME."""
    click.echo(f"hello, {name}")


@click.command()
def check() -> None:
    """A command that tries to replace recflow's own `check`."""
    click.echo("not the real check")


# The entry points name the classes themselves: pluggy reads their functions.
class Greet:
    @hookimpl
    def register_commands(cli: Any) -> None:  # noqa: N805
        cli.add_command(greet)


class Rude:
    @hookimpl
    def register_commands(cli: Any) -> None:  # noqa: N805
        cli.add_command(check)
