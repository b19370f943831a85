"""`cascade ui`: the web console (cascade.console) of this stack, a Streamlit server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from cascade.console.settings import DEFAULT_PORT


def console_command(host: str, port: int, home: Path) -> list[str]:
    """The Streamlit command line serving the console of the stack in `home`."""
    import cascade.console.app as console_app

    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(Path(console_app.__file__ or "").resolve()),
        "--server.headless=true",
        f"--server.address={host}",
        f"--server.port={port}",
        "--browser.gatherUsageStats=false",
        # Pages are built from the installed package; no reload on file changes.
        "--server.runOnSave=false",
        "--server.fileWatcherType=none",
        "--global.developmentMode=false",
    ]


def console_env(home: Path) -> dict[str, str]:
    return {**os.environ, "CASCADE_CONSOLE_HOME": str(home)}


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
    try:
        completed = subprocess.run(console_command(host, port, home), env=console_env(home), check=False)
    except KeyboardInterrupt:
        return
    raise typer.Exit(completed.returncode)
