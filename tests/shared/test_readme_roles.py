"""The README's table of the role each RPC needs is the code's: every method of every service is in
it, and where the table names a role, the service's role table (cascade.security) demands that one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cascade.security import ANY_PRINCIPAL, OPEN, ROLES
from cascade.services.ingest.grpc_api import ROLES as INGEST_ROLES
from cascade.services.monitor.grpc_api import ROLES as MONITOR_ROLES
from cascade.services.registry.grpc_api import ROLES as REGISTRY_ROLES
from cascade.services.trainer.grpc_api import ROLES as TRAINER_ROLES

README = Path(__file__).resolve().parents[2] / "README.md"


def _serving_roles() -> dict[str, str]:
    """Serving's roles, from a process of their own: its inference stubs and tritonclient's, which
    other tests load, cannot share one protobuf descriptor pool."""
    code = (
        "import json; from cascade.services.serving.app import serving_roles; "
        "print(json.dumps(serving_roles(False)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    roles: dict[str, str] = json.loads(done.stdout)
    return roles


SERVICES = {
    "ingest": INGEST_ROLES,
    "trainer": TRAINER_ROLES,
    "monitor": MONITOR_ROLES,
    "serving": _serving_roles(),
    "registry": REGISTRY_ROLES,
}


def _table() -> list[tuple[str, list[str], str]]:
    """(service, methods, role) of each row of the README's roles table."""
    text = README.read_text()
    start = text.index("| service | RPC | role |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        service, methods, role = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((service, re.findall(r"`([A-Za-z.]+)`", methods), role))
    return rows


def test_every_rpc_of_every_service_is_in_the_readme_with_the_role_the_code_demands() -> None:
    listed: dict[str, set[str]] = {name: set() for name in SERVICES}
    for service, methods, role in _table():
        if service not in SERVICES:
            continue
        roles = {path.rsplit("/", 1)[1]: needed for path, needed in SERVICES[service].items()}
        for method in methods:
            assert method in roles, f"README names {service}.{method}, which the service does not have"
            listed[service].add(method)
            expected = role.split()[0].strip("`")
            if roles[method] == ANY_PRINCIPAL:  # the registry: a level on the model, checked per call
                assert "on the model" in role or expected in ROLES, (service, method, role)
            elif roles[method] == OPEN:
                assert expected == "open", (service, method, role)
            else:
                assert roles[method] == expected, (service, method, roles[method], role)
    for service, roles in SERVICES.items():
        methods = {path.rsplit("/", 1)[1] for path in roles}
        assert methods <= listed[service], (
            f"{service}: {sorted(methods - listed[service])} missing from README"
        )
