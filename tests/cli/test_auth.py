"""`cascade auth` and the local stack's identities: tokens at rest, principals and roles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.client import security_of
from cascade.cli.main import app
from cascade.security import SERVICE_ROLES, PrincipalEntry, Principals, hash_token, write_principals
from cascade.stack import Stack, StackConfig
from cascade.stack.identities import cli_security, ensure_tokens, principals_file, secrets_dir, token_file


def _cascade(home: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["--home", str(home), "auth", *args])
    assert result.exit_code == code, result.output
    return result.stdout


def test_init_makes_one_private_token_per_principal_and_keeps_them(tmp_path: Path) -> None:
    created = json.loads(_cascade(tmp_path, "init", "--json"))["created"]
    assert set(created) == {"admin", *SERVICE_ROLES}
    secrets = secrets_dir(tmp_path)
    tokens = {name: token_file(secrets, name).read_text().strip() for name in created}
    assert len(set(tokens.values())) == len(tokens) and all(len(t) >= 40 for t in tokens.values())
    assert all(token_file(secrets, name).stat().st_mode & 0o077 == 0 for name in created)
    stored = principals_file(secrets).read_text()
    assert not any(token in stored for token in tokens.values())  # hashes only

    assert json.loads(_cascade(tmp_path, "init", "--json"))["created"] == []
    principals = Principals.load(principals_file(secrets))
    for name, token in tokens.items():
        found = principals.by_token(token)
        assert found is not None and found.name == name
    assert principals.entries["trainer"].roles == {"ingest:read", "registry:edit"}
    assert principals.entries["admin"].roles == {"admin"}


def test_added_principals_survive_restarts_and_built_in_roles_follow_the_release(tmp_path: Path) -> None:
    secrets = secrets_dir(tmp_path)
    ensure_tokens(secrets)
    token = _cascade(tmp_path, "add", "alice", "--role", "reader", "--role", "trainer:train").strip()
    # An older release gave the monitor fewer roles: the next start brings them up to date.
    entries = Principals.load(principals_file(secrets)).entries
    monitor_token = token_file(secrets, "monitor").read_text().strip()
    stale = PrincipalEntry("monitor", frozenset({"registry:read"}), hash_token(monitor_token))
    write_principals(principals_file(secrets), [*(e for e in entries.values() if e.name != "monitor"), stale])

    ensure_tokens(secrets)
    principals = Principals.load(principals_file(secrets))
    alice = principals.by_token(token)
    assert alice is not None and alice.name == "alice"
    assert alice.roles == {"ingest:read", "monitor:read", "registry:read", "trainer:train"}
    assert principals.entries["monitor"].roles == SERVICE_ROLES["monitor"]

    listed = {row["principal"]: row for row in json.loads(_cascade(tmp_path, "list", "--json"))}
    assert listed["alice"]["roles"] == sorted(alice.roles) and token not in json.dumps(listed)


def test_bad_principals_are_refused_with_a_usage_error(tmp_path: Path) -> None:
    assert _cascade(tmp_path, "add", "bob", "--role", "superuser", code=2) == ""
    assert _cascade(tmp_path, "add", "no spaces", "--role", "reader", code=2) == ""
    roles = json.loads(_cascade(tmp_path, "roles", "--json"))
    assert "serving:infer" in roles["roles"] and roles["bundles"]["reader"] == [
        "ingest:read",
        "monitor:read",
        "registry:read",
    ]


def test_the_cli_calls_a_stack_as_its_admin_and_over_tls_when_it_serves_tls(tmp_path: Path) -> None:
    ensure_tokens(secrets_dir(tmp_path))
    admin_token = token_file(secrets_dir(tmp_path), "admin").read_text().strip()
    plain = cli_security(tmp_path)
    assert plain.token == admin_token and plain.ca_file is None
    assert cli_security(tmp_path, token="given").token == "given"
    secured = Stack(StackConfig(home=tmp_path, tls=True, auth=True))
    assert secured.client_security.ca_file == tmp_path.resolve() / "tls" / "ca.pem"
    env = secured.service_env("trainer")
    assert env["CASCADE_TRAINER_AUTH_REQUIRED"] == "true"
    assert env["CASCADE_TRAINER_TLS_CERT_FILE"].endswith("tls/trainer.pem")
    assert env["CASCADE_TRAINER_TOKEN_FILE"].endswith("secrets/trainer.token")
    assert admin_token not in json.dumps(env)  # services get paths to secrets, never secrets
    default = Stack(StackConfig(home=tmp_path)).service_env("trainer")
    assert (
        default["CASCADE_TRAINER_AUTH_REQUIRED"] == "false" and "CASCADE_TRAINER_TLS_CERT_FILE" not in default
    )


def test_the_cli_reaches_a_stack_it_did_not_start_with_a_ca_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = StackConfig(home=tmp_path)  # a compose or Kubernetes stack: no TLS in this home
    assert security_of(config, token="t").ca_file is None
    monkeypatch.setenv("CASCADE_TLS_CA_FILE", str(tmp_path / "ca.pem"))
    security = security_of(config, token="t")
    assert security.ca_file == tmp_path / "ca.pem" and security.cert_file is None and security.token == "t"
    monkeypatch.setenv("CASCADE_TLS_CERT_FILE", str(tmp_path / "me.pem"))
    monkeypatch.setenv("CASCADE_TLS_KEY_FILE", str(tmp_path / "me.key"))
    assert security_of(config).key_file == tmp_path / "me.key"
