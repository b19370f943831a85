"""Generate the gRPC stubs (with typed .pyi from mypy-protobuf) from protos/ into shared/stubs/.

`python -m cascade.protogen` regenerates them in place; `--check` fails when the committed stubs
differ from what the protos generate (tests run it, so stale stubs never land).

The folder shared/ is the package `cascade` (see pyproject.toml), so the protos are mapped under the
virtual path `cascade/stubs`: generated modules import each other as `cascade.stubs.cascade.registry.v1...`
while the proto packages stay `cascade.registry.v1` and `inference`.

Beside the inference stubs goes `INFERENCE_DESCRIPTORS`, the serialized file descriptors of
protos/inference (a FileDescriptorSet). The SDK's serving client builds its message classes from it in
a private descriptor pool, so it never registers `inference.*` in protobuf's default pool, where
tritonclient registers its own (importing the generated stubs in the same process would clash).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
STUBS = REPO / "shared" / "stubs"
VIRTUAL_ROOT = "cascade/stubs"
# Relative to the stubs' root; read by cascade.client.serving.
INFERENCE_DESCRIPTORS = Path("inference") / "descriptor_set.binpb"


def generate(out_root: Path) -> list[Path]:
    """Write stubs for every proto under `out_root`/cascade/stubs; return the files written."""
    from grpc_tools import protoc

    protos = sorted(p.relative_to(PROTOS) for p in PROTOS.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    plugins = Path(sys.executable).parent  # mypy-protobuf's protoc plugins, installed beside python
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{VIRTUAL_ROOT}={PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(f"{VIRTUAL_ROOT}/{p.as_posix()}" for p in protos),
    ]
    # A child process, not protoc.main() in this one: protoc forks to run the plugins, and forking
    # a process that runs gRPC's threads (a test session, a service) can hang the child.
    if subprocess.run(args, check=False).returncode != 0:
        raise SystemExit("protoc failed")
    stubs = out_root / VIRTUAL_ROOT
    inference = [f"{VIRTUAL_ROOT}/{p.as_posix()}" for p in protos if p.parts[0] == "inference"]
    descriptors = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{VIRTUAL_ROOT}={PROTOS}",
        f"-I{well_known}",
        "--include_imports",
        f"--descriptor_set_out={stubs / INFERENCE_DESCRIPTORS}",
        *inference,
    ]
    if subprocess.run(descriptors, check=False).returncode != 0:
        raise SystemExit("protoc failed writing the inference descriptor set")
    for directory in [stubs, *(d for d in stubs.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()
    return sorted(p for p in stubs.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def stale_files() -> list[str]:
    """Relative paths whose committed content differs from a fresh generation (or is missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp) / VIRTUAL_ROOT
        fresh = {p.relative_to(fresh_root) for p in generate(Path(tmp))}
        current = {
            p.relative_to(STUBS) for p in STUBS.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        }
        differing = [
            str(rel)
            for rel in sorted(fresh & current)
            if not filecmp.cmp(fresh_root / rel, STUBS / rel, False)
        ]
        return (
            differing
            + [f"missing: {rel}" for rel in sorted(fresh - current)]
            + [f"extra: {rel}" for rel in sorted(current - fresh)]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale gRPC stubs (run `make protos`):", *stale, sep="\n  ", file=sys.stderr)
            raise SystemExit(1)
        print("gRPC stubs are up to date")
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp) / VIRTUAL_ROOT
        fresh = generate(Path(tmp))
        shutil.rmtree(STUBS)
        shutil.copytree(fresh_root, STUBS)
        for path in fresh:
            print((STUBS / path.relative_to(fresh_root)).relative_to(REPO))


if __name__ == "__main__":
    main()
