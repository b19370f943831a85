"""Who may do what to which model.

The caller is authenticated by the shared mechanism (cascade.security): with authentication off,
an anonymous caller is trusted with everything and the audit trail records the `actor` each
request names, as a registry on a private network does. An authenticated principal is the actor the
audit trail records, whatever the request claims. Admins may do anything. Everyone else gets, per
model, the higher of the level granted to them (SetModelPermission) or else the registry's default
level, and the level of a global role they hold (`registry:read|edit|manage`). Registering a new
model needs `registry:register` (or edit/manage), and whoever registers a model manages it.
Advancing or aborting a rollout needs manage, or the role `registry:rollout` (the monitor's).
Verdicts from the validator arrive over Kafka, inside the trust boundary.
"""

from __future__ import annotations

from typing import Literal, cast

import sqlalchemy as sa

from cascade.errors import InvalidArgument, PermissionDenied
from cascade.security import Principal
from cascade.services.registry.schema import model_permissions
from cascade.services.registry.store import RegistryStore

Level = Literal["none", "read", "edit", "manage"]
LEVELS: tuple[Level, ...] = ("none", "read", "edit", "manage")
# The global role that gives a level on every model.
_ROLE_LEVELS: tuple[tuple[str, Level], ...] = (
    ("registry:manage", "manage"),
    ("registry:edit", "edit"),
    ("registry:read", "read"),
)


# Advances and aborts rollouts on every model, and may do nothing else (the monitor's).
ROLLOUT_ROLE = "registry:rollout"


def _higher(a: Level, b: Level) -> Level:
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


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
        level = cast(Level, granted) if granted in LEVELS else self.default_level
        for role, floor in _ROLE_LEVELS:
            if role in principal.roles:
                return _higher(level, floor)
        return level

    def require(self, principal: Principal, model: str, needed: Level) -> None:
        held = self.level(principal, model)
        if LEVELS.index(held) < LEVELS.index(needed):
            raise PermissionDenied(
                f"{principal.name} may {held!r} model {model!r}, and this needs {needed!r}"
            )

    def require_registering(self, principal: Principal) -> None:
        """Registering a new model, which its registrant then manages."""
        if not any(principal.has(role) for role in ("registry:register", "registry:edit", "registry:manage")):
            raise PermissionDenied(f"{principal.name} lacks the role registry:register to register a model")

    def require_rollout_move(self, principal: Principal, model: str) -> None:
        """Advancing or aborting a rollout: manage on the model, or the role `registry:rollout`,
        which is the monitor's (its rollout policy moves rollouts, and nothing else, on every model)."""
        if not principal.has(ROLLOUT_ROLE):
            self.require(principal, model, "manage")

    def can_read(self, principal: Principal, model: str) -> bool:
        return LEVELS.index(self.level(principal, model)) >= LEVELS.index("read")

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
