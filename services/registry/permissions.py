"""Who may do what to which model.

Off by default: without tokens the registry trusts the `actor` each request names, as a registry
on a private network does. With CASCADE_REGISTRY_AUTH_TOKENS set, every call must carry
`authorization: Bearer <token>`; the token's principal is then the actor the audit trail records,
whatever the request claims. Admins may do anything. Everyone else gets, per model, the level
granted to them (SetModelPermission), else the registry's default level. Whoever registers a
model manages it. Verdicts from the validator arrive over Kafka, inside the trust boundary.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

import sqlalchemy as sa

from services.registry.schema import model_permissions
from services.registry.store import RegistryStore
from shared.errors import InvalidArgument, PermissionDenied, Unauthenticated

Level = Literal["none", "read", "edit", "manage"]
LEVELS: tuple[Level, ...] = ("none", "read", "edit", "manage")


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False


def parse_tokens(spec: str) -> dict[str, str]:
    """`name:token,name:token` → {token: name}."""
    tokens: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, token = entry.partition(":")
        if not sep or not name or len(token) < 16:
            raise ValueError(
                f"auth token entries are name:token with a token of 16+ characters, not {name!r}"
            )
        tokens[token] = name
    return tokens


class Authenticator:
    def __init__(self, tokens: dict[str, str], admins: Iterable[str] = ()) -> None:
        self.tokens = tokens
        self.admins = frozenset(admins)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def principal(self, metadata: Any) -> Principal | None:
        """The caller, from its `authorization` metadata; None when authentication is off."""
        if not self.enabled:
            return None
        header = next((str(v) for k, v in metadata or () if k == "authorization"), "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("this registry needs `authorization: Bearer <token>`")
        for known, name in self.tokens.items():  # constant-time compare against each known token
            if hmac.compare_digest(known.encode(), token.encode()):
                return Principal(name, admin=name in self.admins)
        raise Unauthenticated("unknown token")


class Permissions:
    def __init__(self, store: RegistryStore, default_level: Level) -> None:
        self.store = store
        self.default_level = default_level

    def level(self, principal: Principal, model: str) -> Level:
        if principal.admin:
            return "manage"
        query = sa.select(model_permissions.c.level).where(
            model_permissions.c.model == model, model_permissions.c.principal == principal.name
        )
        with self.store.reader.connect() as db:
            granted = db.execute(query).scalar_one_or_none()
        return cast(Level, granted) if granted in LEVELS else self.default_level

    def require(self, principal: Principal | None, model: str, needed: Level) -> None:
        if principal is None:
            return
        held = self.level(principal, model)
        if LEVELS.index(held) < LEVELS.index(needed):
            raise PermissionDenied(
                f"{principal.name} may {held!r} model {model!r}, and this needs {needed!r}"
            )

    def can_read(self, principal: Principal | None, model: str) -> bool:
        return principal is None or LEVELS.index(self.level(principal, model)) >= LEVELS.index("read")

    def grant(self, db: sa.Connection, model: str, principal: str, level: Level) -> None:
        if level not in LEVELS:
            raise InvalidArgument(f"permission level must be one of {', '.join(LEVELS)}")
        db.execute(
            model_permissions.delete().where(
                model_permissions.c.model == model, model_permissions.c.principal == principal
            )
        )
        if level != "none" or self.default_level != "none":  # "none" is stored to override a default
            db.execute(model_permissions.insert().values(model=model, principal=principal, level=level))

    def grants(self, model: str) -> dict[str, Level]:
        query = sa.select(model_permissions.c.principal, model_permissions.c.level).where(
            model_permissions.c.model == model
        )
        with self.store.reader.connect() as db:
            return {principal: level for principal, level in db.execute(query)}
