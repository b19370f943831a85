"""`cascade certs`: the local CA and one certificate per service, the broker and the CLI's user
(cascade.stack.certs), in HOME/tls, for `cascade up --tls` and a secured Kafka, or to mount elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from cascade.cli.client import stack_config
from cascade.cli.errors import EXIT_FAILURE, EXIT_USAGE
from cascade.stack.identities import PKI_NAMES, tls_dir

__all__ = ["certs_app"]

certs_app = typer.Typer(
    help="TLS certificates from a local CA, kept in HOME/tls: one per service, `kafka` and `admin` "
    "(the CLI's user). `cascade up --tls` makes them when missing.",
    no_args_is_help=True,
)

# What each file is for, as `certs init` explains it.
_PURPOSES = {
    "ca": "the CA: give ca.pem to every client and mTLS server as the trust bundle; keep ca.key secret",
    "kafka": "the broker's SASL_SSL listener",
    "admin": "the CLI's client certificate (mTLS)",
}


@certs_app.command("init")
def init(
    ctx: typer.Context,
    hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Another name or IP address every certificate is valid for (repeatable); "
            "each is always valid for its own name, localhost, 127.0.0.1 and ::1.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Make a new CA and new certificates, replacing the old.")
    ] = False,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to write them [default: HOME/tls].", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Make the CA (kept if there is one, unless --force) and a certificate and key for each service,
    `kafka` and `admin` that has none. Keys are unencrypted, readable by you alone (0600)."""
    from cascade.stack.certs import init_pki  # cryptography loads only for this command

    where = directory or tls_dir(stack_config(ctx).home.expanduser().resolve())
    before = {name for name in PKI_NAMES if (where / f"{name}.pem").exists()}
    had_ca = (where / "ca.pem").exists()
    try:
        pki = init_pki(where, PKI_NAMES, hosts=hosts or (), force=force)
    except OSError as error:
        _fail(f"cannot write certificates in {where}: {error.strerror}", EXIT_FAILURE)
    except ValueError as error:  # an unusable host name, or an existing CA key of another kind
        _fail(f"cannot make certificates in {where}: {error}", EXIT_USAGE)
    made = [name for name in PKI_NAMES if force or name not in before]
    if as_json:
        identities = {
            name: {
                "cert_file": str(pki.identity(name).cert_file),
                "key_file": str(pki.identity(name).key_file),
            }
            for name in PKI_NAMES
        }
        typer.echo(
            json.dumps(
                {
                    "directory": str(pki.directory),
                    "ca_file": str(pki.ca_file),
                    "ca_created": force or not had_ca,
                    "created": made,
                    "identities": identities,
                }
            )
        )
        return
    state = "new" if force or not had_ca else "kept"
    typer.echo(f"Certificates in {pki.directory}")
    typer.echo(f"  ca.pem, ca.key ({state}): {_PURPOSES['ca']}")
    for name in PKI_NAMES:
        purpose = _PURPOSES.get(name, f"the {name} service's server and client certificate")
        typer.echo(f"  {name}.pem, {name}.key ({'new' if name in made else 'kept'}): {purpose}")
    if hosts and len(made) < len(PKI_NAMES):
        typer.echo(
            "Kept certificates keep the hosts they were made for; --force remakes them all with --host."
        )


def _fail(message: str, exit_code: int) -> NoReturn:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(exit_code)
