"""`cascade auth`: the principals services know, their tokens and roles (cascade.security)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cascade.cli.client import stack_config
from cascade.cli.errors import EXIT_USAGE
from cascade.errors import InvalidArgument
from cascade.names import check_name
from cascade.security import ROLE_BUNDLES, ROLES, Principals
from cascade.stack.identities import add_principal, ensure_tokens, principals_file, secrets_dir, token_file

__all__ = ["auth_app"]

auth_app = typer.Typer(
    help="Who may call the services: principals, their bearer tokens (kept as hashes in "
    "principals.toml) and their roles. `cascade up` makes the admin's and each service's token in "
    "HOME/secrets; `cascade up --auth` makes every service require them.",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Directory of principals.toml and the tokens [default: HOME/secrets].",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _directory(ctx: typer.Context, directory: Path | None) -> Path:
    return directory or secrets_dir(stack_config(ctx).home.expanduser().resolve())


@auth_app.command("init")
def init(ctx: typer.Context, directory: DirOption = None, as_json: JsonOption = False) -> None:
    """Make a token for `admin` and for each service (kept ones stay) and the principals file naming
    them with their roles: the files a deployment mounts as secrets, each service only its own."""
    where = _directory(ctx, directory)
    created = ensure_tokens(where)
    if as_json:
        typer.echo(json.dumps({"directory": str(where), "created": created}))
        return
    typer.echo(f"Principals: {principals_file(where)} (token hashes and roles; every service reads it)")
    for name in Principals.load(principals_file(where)).entries:
        state = "new" if name in created else "kept"
        if token_file(where, name).exists():
            typer.echo(f"  {name:<10} token {token_file(where, name)} ({state})")


@auth_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The principal's name, as the audit trail will show it.")],
    role: Annotated[
        list[str],
        typer.Option("--role", "-r", help="A role to hold (repeat); `cascade auth roles` lists them."),
    ],
    directory: DirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a principal (or replace one's roles and token) and print its new token, once: only its
    hash is kept. Services read the principals file at start-up: restart them to let it in."""
    try:
        check_name("principal", name)
        token = add_principal(_directory(ctx, directory), name, role)
    except (ValueError, InvalidArgument) as error:
        typer.secho(f"Error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        typer.echo(json.dumps({"principal": name, "token": token}))
        return
    typer.echo(token)
    typer.echo(f"# the token of {name}: shown once, kept only as its hash", err=True)


@auth_app.command("list")
def list_principals(ctx: typer.Context, directory: DirOption = None, as_json: JsonOption = False) -> None:
    """The principals and their roles (never their tokens)."""
    path = principals_file(_directory(ctx, directory))
    entries = Principals.load(path).entries.values() if path.exists() else []
    rows = [{"principal": e.name, "roles": sorted(e.roles), "token": bool(e.token_sha256)} for e in entries]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"No principals in {path}: `cascade auth init` makes them.")
    for row in rows:
        how = "token" if row["token"] else "certificate only"
        held = ", ".join(row["roles"]) or "(no role: calls nothing)"  # type: ignore[arg-type]
        typer.echo(f"{row['principal']:<12} {how:<17} {held}")


@auth_app.command("roles")
def roles(as_json: JsonOption = False) -> None:
    """Every role a principal may hold, and what it allows."""
    if as_json:
        bundles = {name: sorted(held) for name, held in ROLE_BUNDLES.items()}
        typer.echo(json.dumps({"roles": dict(ROLES), "bundles": bundles}, indent=2))
        return
    for name, meaning in ROLES.items():
        typer.echo(f"{name:<18} {meaning}")
    for name, held in ROLE_BUNDLES.items():
        typer.echo(f"{name:<18} shorthand for {', '.join(sorted(held))}")
