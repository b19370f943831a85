"""`cascade ui`: the web console (cascade.console) of this stack, a Streamlit server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cascade.console.settings import DEFAULT_PORT
from cascade.stack.launcher import console_command, console_env

__all__ = ["console_command", "console_env", "ui"]


def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port of the console's web server.")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the web console of this stack (loop, models, lineage, datasets, drift, traces and a
    playground) until interrupted; `cascade up` starts it in the background too."""
    try:
        import streamlit  # noqa: F401
    except ImportError:
        typer.secho("The console needs Streamlit: pip install 'cascade-mlops[console]'", err=True, fg="red")
        raise typer.Exit(1) from None
    home: Path = ctx.obj.home.expanduser().resolve()
    typer.echo(f"Cascade console: http://{host}:{port}/  (Ctrl-C stops it)")
    sys.stdout.flush()
    # This process becomes the Streamlit server (exec, not a child), so a signal meant for
    # `cascade ui` (Ctrl-C, a service manager's SIGTERM) reaches the server itself.
    command = console_command(host, port, home)
    os.execve(command[0], command, console_env(home))
