"""`python -m cascade.healthcheck HOST:PORT`: exit 0 only if the gRPC server there is SERVING.

The container health check of every service (the Dockerfile's HEALTHCHECK, and the exec probes in
deploy/k8s): one `grpc.health.v1.Health/Check` call, for the whole server (service "") unless
`--service` names one. Anything else (NOT_SERVING, an unknown service, nothing listening, no answer
in time, a certificate it does not trust) prints one line saying why to stderr and exits 1.

A service serving TLS is asked over TLS: `--tls-of NAME` takes the CA bundle, certificate and key
from that service's own settings (CASCADE_<NAME>_TLS_CA_FILE, _TLS_CERT_FILE, _TLS_KEY_FILE), so a
container configures them once; `--ca-file`, `--cert-file` and `--key-file` win over them. The
certificate is presented because a server requiring client certificates (mTLS) refuses a handshake
without one, even for health. No token: health is open on every service (cascade.security).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.settings import ServiceSettings

__all__ = ["REASON_METADATA_KEY", "Health", "check", "main", "probe", "security_of"]

# Straight to the address: a proxy named in the environment must not answer for the service. Not
# cascade.grpc_io.open_blocking_channel, whose tracing imports cost a probe run every few seconds
# more than the check itself.
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
# Trailing metadata of a NOT_SERVING answer saying why (cascade.services.serving.readiness sets it).
REASON_METADATA_KEY = "cascade-health-reason"


Health = Literal["SERVING", "NOT_SERVING", "DOWN"]


def probe(
    address: str, service: str = "", timeout: float = 3.0, security: ClientSecurity = PLAINTEXT
) -> tuple[Health, str]:
    """How the server at `address` answers `grpc.health.v1.Health/Check` for `service`, and why in
    one line ("" when SERVING): NOT_SERVING for any other answer, DOWN for none (nothing listening,
    no answer in time, a refused handshake). The one health probe: the container check and the
    local stack launcher (cascade.stack) both ask it."""
    credentials = security.channel_credentials
    if credentials is None:
        channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response, call = stub.Check.with_call(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            # Errors of sync calls are also a grpc.Call, which carries the status.
            if isinstance(error, grpc.Call):
                return "DOWN", f"{address}: {error.code().name}: {error.details()}"
            return "DOWN", f"{address}: {error}"
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return "SERVING", ""
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    # A service may say why in the trailing metadata (serving: "not ready: loading 2 models (...)").
    why = dict(call.trailing_metadata() or ()).get(REASON_METADATA_KEY, "")
    return "NOT_SERVING", f"{address}: {status}" + (f": {why}" if why else "")


def check(
    address: str, service: str = "", timeout: float = 3.0, security: ClientSecurity = PLAINTEXT
) -> str | None:
    """None if `address` reports `service` SERVING; otherwise the reason, in one line."""
    health, reason = probe(address, service, timeout, security)
    return None if health == "SERVING" else reason


def security_of(
    service_name: str | None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ClientSecurity:
    """TLS material for the check: the given files, else those of `service_name`'s settings."""
    if service_name is not None:
        # The service's own settings class would import its whole code; the TLS fields are shared.
        try:
            settings = ServiceSettings(_env_prefix=f"CASCADE_{service_name.upper()}_", _env_file=None)
        except ValidationError as error:  # one line, and never the inputs (a password may be one)
            reasons = "; ".join(f"{detail['msg']}" for detail in error.errors(include_input=False))
            raise ValueError(f"the settings of {service_name} are refused: {reasons}") from error
        ca_file = ca_file or settings.tls_ca_file
        cert_file = cert_file or settings.tls_cert_file
        key_file = key_file or settings.tls_key_file
    if ca_file is None:
        if cert_file is not None or key_file is not None:
            raise ValueError("a client certificate is presented over TLS: give the CA file too")
        return PLAINTEXT
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both the certificate and its key, or neither")
    security = ClientSecurity(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    try:
        # Reads the files now, so a missing or unreadable one is named rather than a failed call.
        _ = security.channel_credentials
    except OSError as error:
        raise ValueError(f"cannot read {error.filename}: {error.strerror}") from error
    return security


def _address(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.healthcheck",
        description="Exit 0 if the gRPC server at ADDRESS reports SERVING (grpc.health.v1), else 1.",
    )
    parser.add_argument("address", type=_address, help="HOST:PORT of the gRPC server")
    parser.add_argument("--service", default="", help='service name to ask about (default "": the server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument(
        "--tls-of",
        metavar="NAME",
        help="use the TLS files of Cascade service NAME's settings (CASCADE_NAME_TLS_CA_FILE, "
        "_TLS_CERT_FILE, _TLS_KEY_FILE); plaintext if it has no CA file",
    )
    parser.add_argument("--ca-file", type=Path, help="PEM CA bundle: ask over TLS, verifying the server")
    parser.add_argument("--cert-file", type=Path, help="PEM client certificate to present (mTLS)")
    parser.add_argument("--key-file", type=Path, help="PEM private key of --cert-file")
    args = parser.parse_args(argv)
    try:
        security = security_of(args.tls_of, args.ca_file, args.cert_file, args.key_file)
    except ValueError as error:
        # Exit 1, not argparse's 2 (which Docker reserves): a container missing its TLS files is
        # unhealthy, and says why.
        print(f"unhealthy: {args.address}: {error}", file=sys.stderr)
        return 1
    reason = check(args.address, args.service, args.timeout, security)
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
