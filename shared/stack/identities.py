"""The local stack's identities, kept in its home as Jupyter keeps its token:

    secrets/principals.toml   every principal's token hash and roles (what services check against)
    secrets/<name>.token      the token of `admin` (the CLI's) and of each service (0600)
    tls/                      a local CA and one certificate per service, `kafka` and `admin`
                              (cascade.stack.certs; made by `cascade certs init` or `cascade up --tls`)

Made on every start when missing, and kept: restarting a stack keeps its tokens. Principals a user
added to principals.toml stay; the built-in ones are rewritten when their token or roles changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cascade.client.channels import ClientSecurity
from cascade.security import (
    ADMIN,
    SERVICE_ROLES,
    PrincipalEntry,
    Principals,
    expand_roles,
    hash_token,
    new_token,
    write_principals,
)

__all__ = [
    "ADMIN_PRINCIPAL",
    "PKI_NAMES",
    "add_principal",
    "cli_security",
    "ensure_tokens",
    "principals_file",
    "secrets_dir",
    "tls_dir",
    "token_file",
    "write_private",
]

ADMIN_PRINCIPAL = "admin"
# Who gets a certificate: each service, the broker, and the CLI's user.
PKI_NAMES: tuple[str, ...] = (*SERVICE_ROLES, "kafka", ADMIN_PRINCIPAL)


def secrets_dir(home: Path) -> Path:
    return home / "secrets"


def principals_file(secrets: Path) -> Path:
    return secrets / "principals.toml"


def token_file(secrets: Path, name: str) -> Path:
    return secrets / f"{name}.token"


def tls_dir(home: Path) -> Path:
    return home / "tls"


def ensure_tokens(secrets: Path, services: Iterable[str] = SERVICE_ROLES) -> list[str]:
    """A token for `admin` and each service in the directory `secrets`, and the principals file
    naming them with their roles; the names whose token was made now."""
    roles = {ADMIN_PRINCIPAL: frozenset({ADMIN}), **{name: SERVICE_ROLES[name] for name in services}}
    secrets.mkdir(parents=True, exist_ok=True)
    secrets.chmod(0o700)
    created = []
    for name in roles:
        path = token_file(secrets, name)
        if not path.exists():
            write_private(path, new_token() + "\n")
            created.append(name)
    path = principals_file(secrets)
    known = Principals.load(path).entries if path.exists() else {}
    built_in = [
        PrincipalEntry(name, held, hash_token(token_file(secrets, name).read_text().strip()))
        for name, held in roles.items()
    ]
    # Rewritten only when a built-in principal changed (a new token, or roles of a newer release).
    if any(known.get(entry.name) != entry for entry in built_in):
        write_principals(path, [*built_in, *(e for e in known.values() if e.name not in roles)])
    return created


def add_principal(secrets: Path, name: str, roles: Iterable[str]) -> str:
    """A new principal with a new token (returned, and kept only as its hash), or new roles and a
    new token for an existing one."""
    path = principals_file(secrets)
    known = Principals.load(path).entries if path.exists() else {}
    token = new_token()
    entry = PrincipalEntry(name, expand_roles(roles, f"principal {name!r}"), hash_token(token))
    write_principals(path, [*(e for e in known.values() if e.name != name), entry])
    return token


def cli_security(home: Path, token: str = "", tls: bool = False) -> ClientSecurity:
    """How the CLI calls a local stack: with the given token, else the admin token the stack made;
    over TLS with the stack's CA (presenting the admin certificate) when the stack serves TLS."""
    if not token:
        admin_token = token_file(secrets_dir(home), ADMIN_PRINCIPAL)
        token = admin_token.read_text().strip() if admin_token.exists() else ""
    if not tls:
        return ClientSecurity(token=token)
    pki = tls_dir(home)
    return ClientSecurity(
        token=token,
        ca_file=pki / "ca.pem",
        cert_file=pki / f"{ADMIN_PRINCIPAL}.pem",
        key_file=pki / f"{ADMIN_PRINCIPAL}.key",
    )


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, from its first byte on."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
