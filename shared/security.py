"""Who is calling, and what they may do: one mechanism for every service's gRPC server and client.

**Transport.** A server with `tls_cert_file`/`tls_key_file` serves TLS only; with
`tls_require_client_cert` too, it accepts only callers presenting a certificate signed by
`tls_ca_file` (mTLS). A process with `tls_ca_file` opens every channel with TLS, verifying the server
against that bundle, and presents its own certificate when it has one.

**Principals.** A caller is identified by a bearer token (`authorization: Bearer <token>`) or, over
mTLS, by its certificate's common name. The principals file (TOML) names each principal, the
SHA-256 of its token (never the token) and its roles::

    [principals.trainer]
    token_sha256 = "9f2c..."
    roles = ["ingest:read", "registry:edit"]

    [principals.alice]          # no token: known by an mTLS certificate whose CN is "alice"
    roles = ["reader"]

Tokens are random 256-bit strings, so one unsalted SHA-256 is enough to make a leaked file useless
(a slow password hash protects guessable secrets; these are not). A presented token is compared
against every known hash in constant time.

**Roles.** Each service maps each of its RPCs to the role it needs (`MethodRoles`); health checks
and reflection are always open. With `auth_required` off (the local default) a caller without
credentials is the trusted `anonymous` principal, which may do anything, as on a private network;
credentials that are presented are still checked, so an audit trail names whoever did present them.
With it on, a call without credentials is UNAUTHENTICATED and one whose principal lacks the role is
PERMISSION_DENIED. The registry refines its RPCs per model (cascade.services.registry.permissions).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import os
import secrets
import tomllib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
from opentelemetry import trace

from cascade.errors import PermissionDenied, Unauthenticated
from cascade.interceptors import Behaviour, MethodInterceptor, RpcMethod

if TYPE_CHECKING:
    from cascade.settings import ServiceSettings

__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "ANY_PRINCIPAL",
    "OPEN",
    "ROLES",
    "SERVICE_ROLES",
    "AuthInterceptor",
    "Authenticator",
    "MethodRoles",
    "Principal",
    "PrincipalEntry",
    "Principals",
    "audit_actor",
    "current_principal",
    "expand_roles",
    "hash_token",
    "method_roles",
    "new_token",
    "server_credentials",
    "write_principals",
]

ADMIN: Final = "admin"
# Needs no role: health, reflection, and whatever a deployment leaves open (serving's inference).
OPEN: Final = "open"
# Any authenticated principal: the method checks finer permissions itself (the registry, per model).
ANY_PRINCIPAL: Final = "any-principal"

# Every role a principal may hold, and what it allows.
ROLES: Final[Mapping[str, str]] = {
    ADMIN: "everything, on every service",
    "ingest:read": "read datasets, versions, batches and rejected rows",
    "ingest:write": "register datasets and upload batches",
    "trainer:train": "request training",
    "monitor:read": "read drift reports and history",
    "serving:infer": "inference, metadata and statistics on serving",
    "registry:read": "read every model (else per model: granted level or the registry's default)",
    "registry:register": "register new models (which their registrant then manages)",
    "registry:edit": "register models, add versions and edit every model",
    "registry:manage": "move aliases, roll back and grant permissions on every model",
    "registry:rollout": "advance and abort rollouts on every model, nothing else (the monitor's policy)",
}
# Shorthands a principals file may use in `roles`.
ROLE_BUNDLES: Final[Mapping[str, frozenset[str]]] = {
    "reader": frozenset({"ingest:read", "monitor:read", "registry:read"}),
}
# The roles each service's own identity holds: only what its outgoing calls need.
SERVICE_ROLES: Final[Mapping[str, frozenset[str]]] = {
    "ingest": frozenset(),
    "registry": frozenset({"ingest:read"}),  # lineage reads a dataset's batches
    "trainer": frozenset({"ingest:read", "registry:edit"}),  # reads data and the spec, uploads versions
    "validator": frozenset({"ingest:read", "registry:read"}),  # its verdicts travel by Kafka
    # reads references and champions; uploads labelled production rows as a feedback batch;
    # advances or aborts rollouts on live traffic
    "monitor": frozenset({"ingest:read", "ingest:write", "registry:read", "registry:rollout"}),
    "serving": frozenset({"registry:read"}),
}

_REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str] = frozenset()
    # False only for the anonymous caller of a server that does not require authentication.
    authenticated: bool = True
    # "token", "certificate" or "" (anonymous).
    via: str = "token"

    @property
    def admin(self) -> bool:
        return ADMIN in self.roles

    def has(self, role: str) -> bool:
        return self.admin or role in self.roles


ANONYMOUS: Final = Principal("anonymous", frozenset({ADMIN}), authenticated=False, via="")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("cascade_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    """The caller of the RPC being handled (set by `AuthInterceptor`)."""
    return _current.get()


def audit_actor(claimed: str) -> str:
    """Who an audit trail names for the call being handled: its authenticated principal, with what
    the request claimed beside it when it claimed someone else (the CLI's default "cli" is no
    claim); with authentication off, the anonymous caller is trusted to name itself."""
    principal = current_principal()
    if not principal.authenticated:
        return claimed
    if claimed and claimed not in (principal.name, "cli"):
        return f"{principal.name} (claimed {claimed})"
    return principal.name


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class PrincipalEntry:
    name: str
    roles: frozenset[str]
    token_sha256: str = ""


def expand_roles(roles: Iterable[str], where: str) -> frozenset[str]:
    """Roles with bundles (`reader`) expanded; an unknown role is a ValueError naming `where`."""
    expanded: set[str] = set()
    for role in roles:
        if role in ROLE_BUNDLES:
            expanded |= ROLE_BUNDLES[role]
        elif role in ROLES:
            expanded.add(role)
        else:
            known = ", ".join([*ROLES, *ROLE_BUNDLES])
            raise ValueError(f"{where}: unknown role {role!r} (known: {known})")
    return frozenset(expanded)


class Principals:
    """The principals a server knows, from its principals file."""

    def __init__(self, entries: Iterable[PrincipalEntry] = ()) -> None:
        self.entries = {entry.name: entry for entry in entries}
        # Built once: a call authenticated by token allocates nothing.
        self._hashes = [
            (bytes.fromhex(entry.token_sha256), Principal(entry.name, entry.roles, via="token"))
            for entry in self.entries.values()
            if entry.token_sha256
        ]

    @classmethod
    def load(cls, path: Path) -> Principals:
        """Read a principals file; a malformed one is a ValueError naming the file and the entry."""
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read the principals file {path}: {exc}") from exc
        entries = []
        for name, body in (document.get("principals") or {}).items():
            where = f"{path}: principal {name!r}"
            if not isinstance(body, dict):
                raise ValueError(f"{where} is not a table")
            digest = str(body.get("token_sha256", ""))
            if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
                raise ValueError(f"{where}: token_sha256 must be 64 lowercase hex digits")
            entries.append(PrincipalEntry(name, expand_roles(body.get("roles", []), where), digest))
        return cls(entries)

    def by_token(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for known, principal in self._hashes:  # every entry, no early exit: constant time per entry
            if hmac.compare_digest(known, presented):
                found = principal
        return found

    def by_certificate(self, common_name: str) -> Principal:
        """A verified certificate's holder; one the file does not name holds no role."""
        entry = self.entries.get(common_name)
        return Principal(common_name, entry.roles if entry else frozenset(), via="certificate")


def write_principals(path: Path, entries: Iterable[PrincipalEntry]) -> None:
    """Write a principals file readable by its owner only (hashes are not secrets, roles are policy)."""
    lines = ["# Cascade principals: token hashes (sha256) and roles; see shared/security.py.", ""]
    for entry in entries:
        lines.append(f'[principals."{entry.name}"]')
        if entry.token_sha256:
            lines.append(f'token_sha256 = "{entry.token_sha256}"')
        lines.append("roles = [" + ", ".join(f'"{role}"' for role in sorted(entry.roles)) + "]")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    # Private from its first byte, then in place at once: a reader sees the old file or the new.
    temporary.unlink(missing_ok=True)  # a crash's leftover would keep its own mode
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("\n".join(lines))
    temporary.replace(path)


class Authenticator:
    """Turns a call's credentials into its principal."""

    def __init__(self, principals: Principals, required: bool) -> None:
        self.principals = principals
        self.required = required

    @classmethod
    def of(cls, settings: ServiceSettings) -> Authenticator:
        path = settings.auth_principals_file
        if path is None:
            if settings.auth_required:
                raise ValueError("auth_required needs auth_principals_file (the principals it knows)")
            return cls(Principals(), required=False)
        return cls(Principals.load(path), required=settings.auth_required)

    def authenticate(
        self, metadata: Iterable[tuple[str, Any]] | None, auth_context: Mapping[str, Any]
    ) -> Principal:
        header = next((str(value) for key, value in metadata or () if key == "authorization"), "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization header must be `Bearer <token>`")
            principal = self.principals.by_token(token.strip())
            if principal is None:
                raise Unauthenticated("unknown token")
            return principal
        names = auth_context.get("x509_common_name") or ()
        if names:
            return self.principals.by_certificate(_text(names[0]))
        if self.required:
            raise Unauthenticated("this service needs a bearer token or a client certificate")
        return ANONYMOUS

    def admit(
        self,
        metadata: Iterable[tuple[str, Any]] | None,
        auth_context: Mapping[str, Any],
        role: str,
        method: str,
    ) -> Principal:
        """The caller of `method`, if it may call a method needing `role` (anyone, for OPEN);
        Unauthenticated or PermissionDenied otherwise. Every transport asks this: gRPC through
        AuthInterceptor, serving's REST endpoint directly."""
        try:
            principal = self.authenticate(metadata, auth_context)
        except Unauthenticated:
            if role == OPEN:
                return ANONYMOUS
            raise
        if role in (OPEN, ANY_PRINCIPAL) or principal.has(role):
            return principal
        raise PermissionDenied(f"{principal.name} lacks the role {role} for {method}")


class _PeerIdentity(Mapping[str, Any]):
    """A call's auth context, asked of gRPC only when needed: building it costs every call, and a
    caller with a token never needs it."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._properties: Mapping[str, Any] | None = None

    def _get(self) -> Mapping[str, Any]:
        if self._properties is None:
            self._properties = self._context.auth_context()
        return self._properties

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# The role each method needs, by its full path (/package.Service/Method).
MethodRoles = Mapping[str, str]


def method_roles(service: str, roles: Mapping[str, str]) -> dict[str, str]:
    """`roles` by method name, as full paths of `service` (a full protobuf service name)."""
    return {f"/{service}/{method}": role for method, role in roles.items()}


class AuthInterceptor(MethodInterceptor):
    """Authenticates every call but health and reflection, and lets it through only if its
    principal holds the method's role. A method nobody gave a role is refused to all but admins:
    forgetting one fails closed. The principal is `current_principal()` inside the handler and the
    span's `enduser.id`."""

    def __init__(self, authenticator: Authenticator, roles: MethodRoles) -> None:
        super().__init__()
        self.authenticator = authenticator
        self.roles = dict(roles)

    def _admit(self, context: Any, rpc: RpcMethod) -> Principal | tuple[grpc.StatusCode, str]:
        role = self.roles.get(rpc.path, ADMIN)
        try:
            principal = self.authenticator.admit(
                context.invocation_metadata(), _PeerIdentity(context), role, rpc.method
            )
        except (Unauthenticated, PermissionDenied) as refused:
            return refused.status, str(refused)
        span = trace.get_current_span()
        if principal.authenticated and span.is_recording():
            span.set_attribute("enduser.id", principal.name)
        return principal

    def wrap_unary_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        if rpc.service in _REFLECTION_SERVICES:
            return behaviour

        async def guarded(request: Any, context: Any) -> Any:
            admitted = self._admit(context, rpc)
            if isinstance(admitted, tuple):
                await context.abort(*admitted)
                raise AssertionError("unreachable: abort raises")  # pragma: no cover
            reset = _current.set(admitted)
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                _current.reset(reset)

        return guarded

    def wrap_stream_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        if rpc.service in _REFLECTION_SERVICES:
            return behaviour

        async def guarded(request: Any, context: Any) -> AsyncIterator[Any]:
            admitted = self._admit(context, rpc)
            if isinstance(admitted, tuple):
                await context.abort(*admitted)
                return
            # Set for this generator's frames only: each resumption runs in the handler's context.
            _current.set(admitted)
            async for response in behaviour(request, context):
                yield response

        return guarded


# ---------------------------------------------------------------------------------------- TLS


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials for a service's server, or None for a plaintext port."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        if settings.tls_require_client_cert:
            raise ValueError("tls_require_client_cert needs tls_cert_file and tls_key_file")
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    client_ca: bytes | None = None
    if settings.tls_require_client_cert:
        if settings.tls_ca_file is None:
            raise ValueError("tls_require_client_cert needs tls_ca_file (the CA of the client certificates)")
        client_ca = settings.tls_ca_file.read_bytes()
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=settings.tls_require_client_cert,
    )
