"""`cascade certs init`: the local PKI in HOME/tls, what it says, and its exit codes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.stack.certs import load_pki
from cascade.stack.identities import PKI_NAMES


def _cascade(home: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["--home", str(home), "certs", "init", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_init_makes_a_ca_and_one_certificate_per_service_kafka_and_admin(tmp_path: Path) -> None:
    made = json.loads(_cascade(tmp_path, "--json", "--host", "cascade.internal", "--host", "10.9.8.7"))
    assert made["directory"] == str(tmp_path / "tls")
    assert made["ca_created"] is True
    assert (
        set(made["created"])
        == set(PKI_NAMES)
        == {
            "ingest",
            "registry",
            "trainer",
            "validator",
            "monitor",
            "serving",
            "kafka",
            "admin",
        }
    )
    pki = load_pki(tmp_path / "tls")
    assert pki is not None and str(pki.ca_file) == made["ca_file"]
    kafka = x509.load_pem_x509_certificate(Path(made["identities"]["kafka"]["cert_file"]).read_bytes())
    names = kafka.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "cascade.internal" in names.get_values_for_type(x509.DNSName)
    assert all(stat.S_IMODE(key.stat().st_mode) == 0o600 for key in pki.directory.glob("*.key"))


def test_init_again_keeps_everything_and_says_so(tmp_path: Path) -> None:
    _cascade(tmp_path)
    ca = (tmp_path / "tls" / "ca.pem").read_bytes()
    again = json.loads(_cascade(tmp_path, "--json"))
    assert again["ca_created"] is False and again["created"] == []
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == ca

    text = _cascade(tmp_path, "--host", "late.example")
    assert f"Certificates in {tmp_path / 'tls'}" in text
    assert "ca.pem, ca.key (kept)" in text and "kafka.pem, kafka.key (kept): the broker" in text
    assert "--force remakes them all" in text


def test_force_makes_a_new_ca(tmp_path: Path) -> None:
    _cascade(tmp_path)
    ca = (tmp_path / "tls" / "ca.pem").read_bytes()
    forced = json.loads(_cascade(tmp_path, "--force", "--json"))
    assert forced["ca_created"] is True and set(forced["created"]) == set(PKI_NAMES)
    assert (tmp_path / "tls" / "ca.pem").read_bytes() != ca


def test_a_host_no_certificate_can_hold_is_a_usage_error(tmp_path: Path) -> None:
    output = _cascade(tmp_path, "--host", "not a host", code=2)
    assert "'not a host' is neither an IP address nor a DNS name" in output
    assert not (tmp_path / "tls").exists()
