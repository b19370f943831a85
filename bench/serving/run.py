"""Serving throughput and latency: Cascade against MLServer (+ mlserver-sklearn) and a bare grpc.aio
echo server, with one load generator, one model and one run; plus Triton's perf_analyzer against
Cascade, and the p99 while the champion is being swapped.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/serving/run.py

The model is a 50-tree RandomForest on breast_cancer: Cascade serves its skl2onnx export, MLServer
serves the sklearn object itself (joblib). The load generator is an asyncio grpc.aio client,
closed loop (each of `concurrency` tasks sends its next request when the previous one answered),
sending prepared ModelInferRequest bytes (FP32 rows as raw_input_contents) over several
connections, so that SO_REUSEPORT can spread them over server processes. The client shares the
machine's cores with the server under test. Cascade runs with tracing set up as a deployed service
has it (spans exported, here as OTLP-JSON to bench/.work/serving/traces.jsonl) and its default
root-span sample rate; the load generator sends no traceparent.

Set-up, all under bench/.work/ (made once, reused after): a venv with MLServer 1.7.1,
mlserver-sklearn, onnxruntime (for the hand-written MLServer ONNX runtime, mlserver_onnx.py) and
uvloop==0.21.0 (newer uvloop crashes MLServer's inference worker, MLServer#2286); and
perf_analyzer from the tritonclient 2.51.0 wheel with libcudart from pip's nvidia-cuda-runtime-cu12
(it also needs Debian's libb64-0d, which this script does not install).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.stack.certs import init_pki
from cascade.stack.identities import ensure_tokens, token_file
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc
from cascade.stubs.inference import grpc_service_pb2 as pb
from cascade.stubs.inference import grpc_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = REPO / "bench" / ".work" / "serving"
MLSERVER_VENV = REPO / "bench" / ".work" / "mlserver-venv"
PA_DIR = REPO / "bench" / ".work" / "perf_analyzer"
MODEL = "bench"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
PORT = 19501  # the server under test; its REST port and MLServer's metrics port follow it
HTTP_PORT = PORT + 1
REGISTRY_PORT = 19510
SHADOW_REGISTRY_PORT = 19512  # a registry whose model has a shadow at 100%
TLS_REGISTRY_PORT = 19511  # the fake registry again, over TLS, for servers whose channels verify a CA
# The interleaved batching comparison runs its servers side by side: the echo, then each Cascade.
ECHO_PORT = PORT + 20
BATCHING_PORTS = PORT + 30  # + 10 per configuration (each Cascade's REST port follows its gRPC port)
SECURITY = WORK / "security"  # a local CA, serving's certificate, tokens and principals (cascade.stack.certs)
CHUNK = 1 << 20


# -- the model -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Models:
    rows: np.ndarray
    onnx: dict[int, bytes]  # by version: odd versions are forest 1, even versions forest 2
    joblib_path: Path


def train_models() -> Models:
    data = load_breast_cancer()
    rows, labels = data.data.astype(np.float32), data.target
    forests = [RandomForestClassifier(50, random_state=seed).fit(rows, labels) for seed in (0, 1)]
    onnx = [
        convert_sklearn(
            forest,
            initial_types=[("input", FloatTensorType([None, rows.shape[1]]))],
            options={id(forest): {"zipmap": False}},
        ).SerializeToString()
        for forest in forests
    ]
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "forest.joblib"
    joblib.dump(forests[0], path)
    return Models(rows, {version: onnx[(version + 1) % 2] for version in range(1, 200)}, path)


class Registry(registry_pb2_grpc.RegistryServiceServicer):
    """The registry's read side, in memory, over the real registry protocol."""

    def __init__(self, artifacts: dict[int, bytes], shadow: int = 0, shadow_percent: float = 0.0) -> None:
        self.artifacts = artifacts
        self.champion = 1
        self.shadow = shadow  # a version scoring `shadow_percent` of the champion's requests beside it
        self.shadow_percent = shadow_percent

    async def GetTraffic(self, request: Any, context: Any) -> registry_pb2.Traffic:
        return registry_pb2.Traffic(
            model=MODEL,
            champion_version=self.champion,
            shadow_version=self.shadow,
            shadow_percent=self.shadow_percent,
            revision=self.champion,
        )

    async def GetModelVersion(self, request: Any, context: Any) -> registry_pb2.ModelVersion:
        version = self.champion if request.WhichOneof("selector") == "alias" else request.version
        data = self.artifacts[version]
        return registry_pb2.ModelVersion(
            model=MODEL,
            version=version,
            status=registry_pb2.VERSION_STATUS_READY,
            artifact_sha256=hashlib.sha256(data).hexdigest(),
            artifact_size=len(data),
        )

    async def ListModels(self, request: Any, context: Any) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse(
            models=[registry_pb2.Model(name=MODEL, latest_version=self.champion, aliases={"champion": 1})]
        )

    async def DownloadArtifact(self, request: Any, context: Any) -> AsyncIterator[registry_pb2.ArtifactChunk]:
        data = self.artifacts[request.version]
        digest = hashlib.sha256(data).hexdigest()
        for offset in range(request.offset, len(data), CHUNK):
            yield registry_pb2.ArtifactChunk(
                data=data[offset : offset + CHUNK], offset=offset, total_size=len(data), sha256=digest
            )


def rest_request(rows: np.ndarray) -> bytes:
    """The same rows as a KServe V2 REST JSON body: what curl, or any HTTP client, sends."""
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def infer_request(rows: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f4").tobytes())
    return request.SerializeToString()


# -- servers under test ----------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, processes: list[subprocess.Popen[str]]) -> None:
        self.name = name
        self.processes = processes

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _env(tracing: bool = False) -> dict[str, str]:
    """The environment of a server under test; with `tracing`, spans go to an OTLP-JSON file."""
    if not tracing:
        return {**os.environ, "PYTHONPATH": str(REPO), "OTEL_SDK_DISABLED": "true"}
    return {
        **{key: value for key, value in os.environ.items() if key != "OTEL_SDK_DISABLED"},
        "PYTHONPATH": str(REPO),
        "OTEL_TRACES_EXPORTER": "otlp_json_file",
        "CASCADE_TRACES_FILE": str(WORK / "traces.jsonl"),
    }


def _wait_line(process: subprocess.Popen[str], expected: str, timeout: float = 60) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before saying {expected}")
        if line.startswith(expected):
            return
    raise TimeoutError(expected)


async def wait_model_ready(port: int, limit: float = 120, security: ClientSecurity = PLAINTEXT) -> None:
    """ModelReady true on 16 fresh connections in a row: every worker has loaded the model."""
    deadline = time.monotonic() + limit
    ready = 0
    while ready < 16:
        if time.monotonic() > deadline:
            raise TimeoutError("the model never became ready")
        async with _channel(port, security) as channel:
            try:
                response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelReady(
                    pb.ModelReadyRequest(name=MODEL), timeout=2
                )
                ready = ready + 1 if response.ready else 0
            except grpc.aio.AioRpcError:
                ready = 0
        if ready == 0:
            await asyncio.sleep(0.2)


def _channel(port: int, security: ClientSecurity) -> grpc.aio.Channel:
    """A fresh connection of its own (a local subchannel pool), TLS if `security` says so."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    credentials = security.channel_credentials
    if credentials is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


def security_material() -> ClientSecurity:
    """A local CA with serving's certificate, and the stack's tokens and principals file, made once;
    the load generator calls as the admin, verifying serving against the CA."""
    pki = init_pki(SECURITY, ["serving"])
    ensure_tokens(SECURITY)
    return ClientSecurity(token=token_file(SECURITY, "admin").read_text().strip(), ca_file=pki.ca_file)


def start_cascade(
    workers: int,
    sample_rate: float,
    interceptors: bool = True,
    tls: bool = False,
    auth: bool = False,
    port: int = PORT,
    batching: bool | None = None,
    max_delay_us: int | None = None,
    registry_port: int = REGISTRY_PORT,
) -> Server:
    flags = [] if interceptors else ["--without-shared-interceptors"]
    if batching is not None:
        flags.append(f"--batching={'on' if batching else 'off'}")
    if max_delay_us is not None:
        flags.append(f"--batching-max-delay-us={max_delay_us}")
    if tls:
        flags += [f"--security-dir={SECURITY}", f"--registry=127.0.0.1:{TLS_REGISTRY_PORT}"]
    else:
        flags.append(f"--registry=127.0.0.1:{registry_port}")
    if auth:
        flags.append("--auth")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "cascade_worker.py"),
                f"--port={port}",
                f"--http-port={port + 1}",
                f"--workers={workers}",
                f"--index={index}",
                f"--sample-rate={sample_rate}",
                *flags,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(tracing=True),
            cwd=REPO,
        )
        for index in range(workers)
    ]
    for process in processes:
        _wait_line(process, "READY")
    name = f"cascade ({workers} worker{'s' if workers > 1 else ''})"
    if tls:
        name += " TLS" + ("+auth" if auth else "")
    if batching is not None:
        name += " batching " + ("on" if batching else "off")
    if max_delay_us is not None:
        name += f" ({max_delay_us} us)"
    if registry_port == SHADOW_REGISTRY_PORT:
        name += " + shadow 100%"
    return Server(name + ("" if interceptors else " without shared interceptors"), processes)


def promote(server: Server, version: int) -> None:
    """Promote `version` in every worker and wait until each has handled it."""
    for process in server.processes:
        assert process.stdin is not None
        process.stdin.write(f"promote {MODEL} {version}\n")
        process.stdin.flush()
    for process in server.processes:
        _wait_line(process, "PROMOTED")


def start_echo(
    processes: int, response: bytes, interceptors: bool = False, uvloop: bool = False, port: int = PORT
) -> Server:
    path = WORK / f"echo-response-{port}.bin"
    path.write_bytes(response)
    flags = ["--interceptors"] * interceptors + ["--uvloop"] * uvloop
    started = [
        subprocess.Popen(
            [sys.executable, str(HERE / "echo_server.py"), f"--port={port}", f"--response={path}", *flags],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(processes)
    ]
    for process in started:
        _wait_line(process, "READY")
    name = f"grpc.aio echo ({processes} process{'es' if processes > 1 else ''})"
    name += " + shared interceptors" if interceptors else ""
    return Server(name + (" on uvloop" if uvloop else ""), started)


def ensure_mlserver() -> Path:
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if not (MLSERVER_VENV / "onnxruntime.installed").exists():
        import onnxruntime
        import sklearn

        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run(
            [
                str(MLSERVER_VENV / "bin" / "pip"),
                "install",
                "--quiet",
                "mlserver==1.7.1",
                "mlserver-sklearn==1.7.1",
                "uvloop==0.21.0",  # MLServer#2286: newer uvloop crashes the inference worker
                f"scikit-learn=={sklearn.__version__}",  # the version that pickled the forest
                f"onnxruntime=={onnxruntime.__version__}",  # for mlserver_onnx.py, as Cascade's
            ],
            check=True,
        )
        (MLSERVER_VENV / "onnxruntime.installed").touch()
    return mlserver


def start_mlserver(models: Models, runtime: str) -> Server:
    """MLServer serving the forest with mlserver-sklearn ("sklearn") or mlserver_onnx.py ("onnx")."""
    mlserver = ensure_mlserver()
    root = WORK / "mlserver"
    shutil.rmtree(root, ignore_errors=True)
    (root / MODEL).mkdir(parents=True)
    if runtime == "sklearn":
        shutil.copy(models.joblib_path, root / MODEL / "model.joblib")
        implementation, uri = "mlserver_sklearn.SKLearnModel", "./model.joblib"
    else:
        (root / MODEL / "model.onnx").write_bytes(models.onnx[1])
        implementation, uri = "mlserver_onnx.OnnxModel", "./model.onnx"
    (root / MODEL / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": implementation,
                "parameters": {"uri": uri, "version": "1"},
            }
        )
    )
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "grpc_port": PORT,
                "http_port": HTTP_PORT,
                "metrics_port": PORT + 2,
                "load_models_at_startup": True,
            }
        )
    )
    process = subprocess.Popen(
        [str(mlserver), "start", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=open(WORK / f"mlserver-{runtime}.log", "w"),  # noqa: SIM115 - closed with the process
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(HERE)},  # for mlserver_onnx
    )
    name = "MLServer 1.7.1 + " + ("mlserver-sklearn" if runtime == "sklearn" else "ONNX runtime")
    return Server(name, [process])


# -- the load generator ----------------------------------------------------------------------------
@dataclass
class Run:
    server: str
    rows: int
    concurrency: int
    seconds: float
    latencies: list[float]  # seconds
    ends: list[float]  # perf_counter at each answer
    failures: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


class _Failed(Exception):
    """One request that did not get a good answer."""


async def _loop(
    send: Callable[[int], Awaitable[bytes]], concurrency: int, seconds: float, warmup: float
) -> tuple[list[float], list[float], int, list[bytes]]:
    """`concurrency` tasks, each sending its next request (`send(task index)`) once the last one
    answered; `send` raises `_Failed` for a failed request."""
    latencies: list[float] = []
    ends: list[float] = []
    failures = 0
    sample: list[bytes] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(index: int) -> None:
        nonlocal failures
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            try:
                answer = await send(index)
            except _Failed:
                if began >= measure_from:
                    failures += 1
                continue
            ended = time.perf_counter()
            if began >= measure_from:
                latencies.append(ended - began)
                ends.append(ended)
            if not sample:
                sample.append(answer)

    await asyncio.gather(*(client(index) for index in range(concurrency)))
    return latencies, ends, failures, sample


async def closed_loop(
    port: int,
    request: bytes,
    concurrency: int,
    seconds: float,
    warmup: float = 0.5,
    security: ClientSecurity = PLAINTEXT,
) -> tuple[list[float], list[float], int, list[bytes]]:
    """gRPC ModelInfer in a closed loop over up to 16 connections (TLS and a bearer token on each
    call as `security` says, as a secured client sends them)."""
    connections = min(concurrency, 16)
    channels = [_channel(port, security) for _ in range(connections)]
    calls = [channel.unary_unary(METHOD) for channel in channels]  # bytes in, bytes out
    metadata = security.metadata or None

    async def send(index: int) -> bytes:
        try:
            answer: bytes = await calls[index % connections](request, timeout=10, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise _Failed from exc
        return answer

    try:
        return await _loop(send, concurrency, seconds, warmup)
    finally:
        for channel in channels:
            await channel.close()


async def closed_loop_rest(
    port: int, body: bytes, concurrency: int, seconds: float, warmup: float = 0.5
) -> tuple[list[float], list[float], int, list[bytes]]:
    """KServe V2 REST inference (a JSON body) in a closed loop over up to 16 kept-alive connections."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=min(concurrency, 16))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def send(index: int) -> bytes:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    if response.status != 200:
                        raise _Failed(answer)
                    return answer
            except aiohttp.ClientError as exc:
                raise _Failed from exc

        return await _loop(send, concurrency, seconds, warmup)


async def measure(
    server: str,
    request: bytes,
    rows: int,
    concurrency: int,
    seconds: float,
    rest: bool = False,
    security: ClientSecurity = PLAINTEXT,
    port: int = PORT,
) -> Run:
    if rest:
        latencies, ends, failures, sample = await closed_loop_rest(HTTP_PORT, request, concurrency, seconds)
        if sample:  # a real answer, not garbage
            assert json.loads(sample[0])["outputs"][0]["shape"][0] == rows, sample[0][:200]
        server += " REST"
    else:
        latencies, ends, failures, sample = await closed_loop(
            port, request, concurrency, seconds, security=security
        )
        if sample:
            pb.ModelInferResponse.FromString(sample[0])  # a real answer, not garbage
    run = Run(server, rows, concurrency, seconds, latencies, ends, failures)
    print(
        f"  {server:<38} rows={rows:<3} c={concurrency:<3} {run.rate:>8.0f} req/s  "
        f"p50 {run.percentile(50):6.2f} ms  p99 {run.percentile(99):6.2f} ms  failed {failures}",
        flush=True,
    )
    return run


async def measure_each(
    server: str, requests: dict[int, bytes], concurrencies: list[int], seconds: float, rest: bool = False
) -> list[Run]:
    """`measure` for every number of rows (the keys of `requests`) and every concurrency."""
    return [
        await measure(server, request, rows, concurrency, seconds, rest)
        for rows, request in requests.items()
        for concurrency in concurrencies
    ]


# -- perf_analyzer ---------------------------------------------------------------------------------
def ensure_perf_analyzer() -> tuple[Path, dict[str, str]] | str:
    """The binary and its environment, or why it cannot run here."""
    binary = PA_DIR / "tritonclient-2.51.0.data" / "data" / "bin" / "perf_analyzer"
    venv = PA_DIR / "venv"
    try:
        if not binary.exists():
            PA_DIR.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "tritonclient==2.51.0",
                    "--dest",
                    str(PA_DIR),
                ],
                check=True,
            )
            (wheel,) = PA_DIR.glob("tritonclient-2.51.0-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                archive.extract("tritonclient-2.51.0.data/data/bin/perf_analyzer", PA_DIR)
            binary.chmod(0o755)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "--quiet", "nvidia-cuda-runtime-cu12"], check=True
            )
    except (subprocess.CalledProcessError, ValueError, KeyError) as exc:
        return f"could not fetch perf_analyzer or libcudart: {exc}"
    (cudart,) = venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib")
    env = {**os.environ, "LD_LIBRARY_PATH": str(cudart)}
    missing = subprocess.run(
        ["ldd", str(binary)], check=False, env=env, capture_output=True, text=True
    ).stdout
    if "not found" in missing:
        return "missing libraries: " + ", ".join(
            line.split()[0] for line in missing.splitlines() if "not found" in line
        )
    return binary, env


def perf_analyzer(binary: Path, env: dict[str, str], rows: int, concurrency: int) -> dict[str, str] | str:
    out = WORK / f"pa-{rows}-{concurrency}.csv"
    command = [
        str(binary),
        "-m",
        MODEL,
        "-u",
        f"127.0.0.1:{PORT}",
        "-i",
        "grpc",
        "--shape",
        f"input:{rows},30",
        "--concurrency-range",
        str(concurrency),
        "--measurement-interval",
        "3000",
        "--percentile",
        "99",
        "--stability-percentage",
        "50",
        "--max-trials",
        "20",
        "-f",
        str(out),
    ]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not out.exists():
        return (done.stdout + done.stderr).strip().splitlines()[-1] if (done.stdout + done.stderr) else "?"
    with out.open() as file:
        return next(csv.DictReader(file))


# -- the benchmark ---------------------------------------------------------------------------------
@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


async def swap_latency(cascade: Server, registry: Registry, request: bytes, args: argparse.Namespace) -> str:
    """The p99 under the same load, steady and while a new version is promoted every `swap_every` s
    (each a real download, session build, warm-up and swap, in every worker)."""
    steady = await measure(cascade.name + " steady", request, 1, 16, args.swap_seconds)
    swap_windows: list[tuple[float, float]] = []

    async def keep_promoting() -> None:
        version = 2
        end = time.perf_counter() + args.swap_seconds + 0.5
        while time.perf_counter() < end:
            await asyncio.sleep(args.swap_every)
            registry.champion = version
            began = time.perf_counter()
            await asyncio.to_thread(promote, cascade, version)
            swap_windows.append((began, time.perf_counter()))
            version += 1

    promoting = asyncio.create_task(keep_promoting())
    swapping = await measure(cascade.name + " swapping", request, 1, 16, args.swap_seconds)
    await promoting
    in_window = [
        latency
        for latency, ended in zip(swapping.latencies, swapping.ends, strict=True)
        if any(start <= ended and ended - latency <= stop for start, stop in swap_windows)
    ]
    window_p99 = float(np.percentile(in_window, 99)) * 1000 if in_window else float("nan")
    swap_seconds = [stop - start for start, stop in swap_windows]
    return (
        f"Swaps: {len(swap_windows)} promotions during {args.swap_seconds:g} s at concurrency 16, 1 row "
        f"(each {statistics.median(swap_seconds) * 1000:.0f} ms median from promotion to every worker "
        f"serving it); failed requests {swapping.failures}. Steady p99 {steady.percentile(99):.2f} ms; "
        f"p99 of the whole swapping period {swapping.percentile(99):.2f} ms "
        f"({swapping.percentile(99) / steady.percentile(99):.2f}x); p99 of the {len(in_window)} requests "
        f"overlapping a swap {window_p99:.2f} ms ({window_p99 / steady.percentile(99):.2f}x steady)."
    )


def run_perf_analyzer() -> list[str]:
    lines: list[str] = []
    found = ensure_perf_analyzer()
    if isinstance(found, str):
        return [f"perf_analyzer: not run: {found}"]
    binary, env = found
    for rows in (1, 64):
        for concurrency in (1, 16):
            result = perf_analyzer(binary, env, rows, concurrency)
            if isinstance(result, str):
                lines.append(f"perf_analyzer rows={rows} c={concurrency}: failed: {result}")
            else:
                lines.append(
                    f"perf_analyzer rows={rows} c={concurrency}: "
                    f"{float(result['Inferences/Second']):.0f} infer/s, "
                    f"p50 {int(result['p50 latency']) / 1000:.2f} ms, "
                    f"p99 {int(result['p99 latency']) / 1000:.2f} ms"
                )
            print(lines[-1], flush=True)
    return lines


def raw_onnxruntime(models: Models, seconds: float = 0.5) -> list[str]:
    """session.run alone, in this process, with serving's session options: what one run of 1, 16, 64
    and 256 rows costs, and the rows per second one core gets from it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as serving opens its sessions (repository.py)
    session = ort.InferenceSession(models.onnx[1], options, providers=["CPUExecutionProvider"])
    parts = []
    for rows in (1, 16, 64, 256):
        feeds = {"input": np.ascontiguousarray(np.resize(models.rows, (rows, models.rows.shape[1])))}
        session.run(None, feeds)
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            session.run(None, feeds)
            runs += 1
        parts.append(f"{rows} rows {elapsed / runs * 1e6:.0f} us/run ({runs * rows / elapsed:,.0f} rows/s)")
    return ["raw onnxruntime session.run, one thread, in-process: " + "; ".join(parts)]


@dataclass(frozen=True)
class Point:
    """One configuration at one point: the median over rounds of its req/s, p50 and p99."""

    server: str
    rows: int
    concurrency: int
    rate: float
    p50: float
    p99: float
    failures: int

    @property
    def rows_rate(self) -> float:
        return self.rate * self.rows


def _median_point(runs: list[Run]) -> Point:
    first = runs[0]
    return Point(
        first.server,
        first.rows,
        first.concurrency,
        statistics.median(run.rate for run in runs),
        statistics.median(run.percentile(50) for run in runs),
        statistics.median(run.percentile(99) for run in runs),
        sum(run.failures for run in runs),
    )


Configuration = tuple[str, int, Callable[[int], Server]]  # key, gRPC port, start(port)


def comparison_configurations(
    args: argparse.Namespace, requests: dict[int, bytes], responses: dict[int, bytes]
) -> list[Configuration]:
    """Cascade with batching off ("cascade 0"), on per max delay ("cascade 1"...), off with a shadow
    ("shadow"), then an echo per request size ("echo ROWS"), answering `responses` (filled later)."""
    configurations: list[Configuration] = []
    cascades = [(False, None), *((True, delay) for delay in args.batching_delays)]
    for index, (batching, delay) in enumerate(cascades):
        configurations.append(
            (
                f"cascade {index}",
                BATCHING_PORTS + 10 * index,
                lambda port, batching=batching, delay=delay: start_cascade(
                    args.workers, args.sample_rate, port=port, batching=batching, max_delay_us=delay
                ),
            )
        )
    if not args.skip_shadow:  # the first Cascade again, its model with a shadow scoring every request
        configurations.append(
            (
                "shadow",
                BATCHING_PORTS + 10 * len(cascades),
                lambda port: start_cascade(
                    args.workers,
                    args.sample_rate,
                    port=port,
                    batching=False,
                    registry_port=SHADOW_REGISTRY_PORT,
                ),
            )
        )
    for index, rows in enumerate(requests):
        configurations.append(
            (
                f"echo {rows}",
                ECHO_PORT + 5 * index,
                lambda port, rows=rows: start_echo(args.workers, responses[rows], port=port),
            )
        )
    return configurations


async def batching_comparison(args: argparse.Namespace, requests: dict[int, bytes]) -> list[str]:
    """Cascade with adaptive batching off and on (one Cascade per max delay in --batching-delays),
    and with a shadow, against the 2-process echo, all running side by side and measured in turn,
    point by point, for --rounds rounds; each point's figure is its median over the rounds, so load
    from elsewhere falls on all alike."""
    responses: dict[int, bytes] = {}  # Cascade's answers, for the echo to send back
    configurations = comparison_configurations(args, requests, responses)
    runs: dict[tuple[str, int, int], list[Run]] = {}
    names: dict[str, str] = {}
    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:
        for key, port, start in configurations:
            if key.startswith("echo") and not responses:
                for rows, request in requests.items():
                    _, _, _, sample = await closed_loop(BATCHING_PORTS, request, 1, 0.2, warmup=0)
                    responses[rows] = sample[0]
            server = servers[key] = stack.enter_context(running(start(port)))
            names[key] = server.name
            if not key.startswith("echo"):
                await wait_model_ready(port)
        for round_ in range(args.rounds):
            print(f"  batching comparison, round {round_ + 1} of {args.rounds}", flush=True)
            for rows, request in requests.items():
                for concurrency in (1, 16, 64):
                    for key, port, _ in configurations:
                        if key.startswith("echo") and key != f"echo {rows}":
                            continue
                        run = await measure(names[key], request, rows, concurrency, args.seconds, port=port)
                        runs.setdefault((key, rows, concurrency), []).append(run)
        executions = {
            names[key]: await requests_per_execution(port)
            for key, port, _ in configurations
            if key.startswith("cascade")
        }
        await asyncio.sleep(2.5)  # the workers' last live-traffic reports (every 2 s)
        scorings = shadow_scorings(servers["shadow"]) if "shadow" in servers else (0, 0)
    points = [_median_point(each) for each in runs.values()]
    summary = _batching_summary(points, names, requests)
    if "shadow" in names:
        summary += ["", *_shadow_summary(points, names, requests, scorings, runs)]
    return [
        *summary,
        "",
        "Requests per session run over the whole comparison (ModelStatistics success_count ÷ "
        "execution_count, summed over the workers): "
        + "; ".join(f"{name}: {ratio:.2f}" for name, ratio in executions.items()),
    ]


def shadow_scorings(server: Server) -> tuple[int, int]:
    """Shadow scorings the server's workers reported, and those they dropped, their queue full
    (cascade_worker's STATS)."""
    scored = dropped = 0
    for process in server.processes:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("stats\n")
        process.stdin.flush()
        while not (line := process.stdout.readline()).startswith("STATS"):
            if not line:
                raise RuntimeError("a worker exited before its stats")
        _, worker_scored, worker_dropped = line.split()
        scored, dropped = scored + int(worker_scored), dropped + int(worker_dropped)
    return scored, dropped


def _shadow_summary(
    points: list[Point],
    names: dict[str, str],
    requests: dict[int, bytes],
    scorings: tuple[int, int],
    runs: dict[tuple[str, int, int], list[Run]],
) -> list[str]:
    """The champion's latency with a shadow scoring every request it answers, against the same
    Cascade without one."""
    by_key = {(point.server, point.rows, point.concurrency): point for point in points}
    without, shadowed = names["cascade 0"], names["shadow"]
    measured = sum(
        len(run.latencies) for (key, _, _), each in runs.items() if key == "shadow" for run in each
    )
    scored, dropped = scorings
    lines = [
        f"Shadow cost: {shadowed} against {without} (same settings, no shadow); the shadow (another "
        "forest) scores every request the champion answered, off the answer path. Its workers "
        f"reported {scored} scorings and dropped {dropped} (queue full), for {measured} measured "
        "requests (plus warm-ups).",
        "",
        "| rows | conc. | no shadow req/s (p50 / p99 ms) | shadow 100% req/s (p50 / p99 ms) | p99 ratio "
        "| req/s ratio |",
        "|---|---|---|---|---|---|",
    ]
    for rows in requests:
        for concurrency in (1, 16, 64):
            base, point = by_key[without, rows, concurrency], by_key[shadowed, rows, concurrency]
            lines.append(
                f"| {rows} | {concurrency} | {base.rate:.0f} ({base.p50:.2f} / {base.p99:.2f}) | "
                f"{point.rate:.0f} ({point.p50:.2f} / {point.p99:.2f}) | {point.p99 / base.p99:.2f}x | "
                f"{point.rate / base.rate:.2f}x |"
            )
    return lines


async def requests_per_execution(port: int) -> float:
    """Requests answered per session.run, from ModelStatistics of every worker (each keeps its own:
    fresh connections reach them all, told apart by their counts)."""
    seen: set[tuple[int, int]] = set()
    for _ in range(16):
        async with _channel(port, PLAINTEXT) as channel:
            response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name=MODEL), timeout=5
            )
        for stats in response.model_stats:
            seen.add((stats.inference_stats.success.count, stats.execution_count))
    successes = sum(success for success, _ in seen)
    executions = sum(execution for _, execution in seen)
    return successes / executions if executions else float("nan")


def _batching_summary(points: list[Point], names: dict[str, str], requests: dict[int, bytes]) -> list[str]:
    by_key = {(point.server, point.rows, point.concurrency): point for point in points}
    cascades = [name for key, name in names.items() if key.startswith("cascade")]
    off, ons = cascades[0], cascades[1:]
    lines = [
        "| rows | conc. | echo req/s | "
        + " | ".join(f"{name} req/s (rows/s; p50 / p99 ms)" for name in cascades)
        + " | "
        + " | ".join(f"{name} ÷ off; ÷ echo" for name in ons)
        + " |",
        "|---" * (3 + len(cascades) + len(ons)) + "|",
    ]
    for rows in requests:
        echo = names[f"echo {rows}"]
        for concurrency in (1, 16, 64):
            floor = by_key[echo, rows, concurrency]
            cells = [str(rows), str(concurrency), f"{floor.rate:.0f}"]
            for name in cascades:
                point = by_key[name, rows, concurrency]
                cells.append(
                    f"{point.rate:.0f} ({point.rows_rate:,.0f}; {point.p50:.2f} / {point.p99:.2f})"
                    + (f" failed {point.failures}" if point.failures else "")
                )
            base = by_key[off, rows, concurrency]
            for name in ons:
                point = by_key[name, rows, concurrency]
                cells.append(f"{point.rate / base.rate:.2f}x; {point.rate / floor.rate:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


async def serve_registry(registry: Registry, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def main(args: argparse.Namespace) -> None:
    models = train_models()
    requests = {rows: infer_request(models.rows[:rows]) for rows in (1, 64)}
    rest_requests = {rows: rest_request(models.rows[:rows]) for rows in (1, 64)}
    grpc_requests = {} if args.only_rest else requests
    concurrencies = [1, 16, 64]
    registry = Registry(models.onnx)
    registry_server = await serve_registry(registry, REGISTRY_PORT)
    shadow_registry = await serve_registry(
        Registry(models.onnx, shadow=2, shadow_percent=100.0), SHADOW_REGISTRY_PORT
    )
    runs: list[Run] = []
    responses: dict[int, bytes] = {}
    lines: list[str] = []

    print(f"Serving benchmark: {args.seconds:g} s per point, {os.cpu_count()} cores", flush=True)
    lines.extend(raw_onnxruntime(models))
    print(lines[-1], flush=True)
    if args.only_batching:
        batching = await batching_comparison(args, requests)
        await registry_server.stop(None)
        await shadow_registry.stop(None)
        print("\nAdaptive batching, interleaved (median of rounds):\n" + "\n".join(batching))
        print("\n" + "\n".join(f"- {line}" for line in lines))
        return
    with running(start_cascade(args.workers, args.sample_rate)) as cascade:
        await wait_model_ready(PORT)
        runs += await measure_each(cascade.name, rest_requests, concurrencies, args.seconds, rest=True)
        for rows, request in grpc_requests.items():
            _, _, _, sample = await closed_loop(PORT, request, 1, 0.2, warmup=0)
            responses[rows] = sample[0]
            for concurrency in concurrencies:
                runs.append(await measure(cascade.name, request, rows, concurrency, args.seconds))

        if not args.only_rest:
            lines.append(await swap_latency(cascade, registry, requests[1], args))
            print(lines[-1], flush=True)
        if not (args.skip_perf_analyzer or args.only_rest):
            lines.extend(run_perf_analyzer())

    if not (args.skip_diagnosis or args.only_rest):
        with running(start_cascade(args.workers, args.sample_rate, interceptors=False)) as bare:
            await wait_model_ready(PORT)
            runs += await measure_each(bare.name, requests, concurrencies, args.seconds)

    # The floor (asyncio's loop, as the issue defines it), then what interceptors and uvloop add to it.
    echoes = [
        (1, False, False),
        (args.workers, False, False),
        (args.workers, True, False),
        (args.workers, False, True),
    ]
    for processes, interceptors, uvloop in [] if args.only_rest else echoes:
        for rows, request in requests.items():
            with running(start_echo(processes, responses[rows], interceptors, uvloop)) as echo:
                for concurrency in concurrencies:
                    runs.append(await measure(echo.name, request, rows, concurrency, args.seconds))

    batching = [] if (args.only_rest or args.skip_batching) else await batching_comparison(args, requests)

    runtimes = ["onnx"] if args.only_rest else ["sklearn", "onnx"]
    for runtime in [] if args.skip_mlserver else runtimes:
        with running(start_mlserver(models, runtime)) as mlserver:
            await wait_model_ready(PORT, limit=300)
            runs += await measure_each(mlserver.name, rest_requests, concurrencies, args.seconds, rest=True)
            runs += await measure_each(mlserver.name, grpc_requests, concurrencies, args.seconds)
    await registry_server.stop(None)
    await shadow_registry.stop(None)
    report(runs, lines, args)
    if batching:
        print("\nAdaptive batching, interleaved (median of rounds):\n" + "\n".join(batching))


def report(runs: list[Run], lines: list[str], args: argparse.Namespace) -> None:
    by_key = {(run.server, run.rows, run.concurrency): run for run in runs}
    cascade_rest = next(run.server for run in runs if run.server.startswith("cascade"))
    cascade = next(
        (run.server for run in runs if run.server.startswith("cascade") and "REST" not in run.server),
        cascade_rest,
    )
    print("\n| server | rows | concurrency | req/s | p50 ms | p99 ms | failed | Cascade ÷ this |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        # REST rows against Cascade's REST, gRPC rows against Cascade's gRPC.
        mine = by_key[cascade_rest if run.server.endswith(" REST") else cascade, run.rows, run.concurrency]
        print(
            f"| {run.server} | {run.rows} | {run.concurrency} | {run.rate:.0f} | {run.percentile(50):.2f} | "
            f"{run.percentile(99):.2f} | {run.failures} | {mine.rate / run.rate:.2f}x |"
        )
    print()
    for line in lines:
        print(f"- {line}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--workers", type=int, default=2, help="Cascade serving worker processes")
    parser.add_argument("--sample-rate", type=float, default=0.01, help="Cascade's prediction-log rate")
    parser.add_argument("--swap-seconds", type=float, default=6.0, help="length of each swap phase")
    parser.add_argument("--swap-every", type=float, default=0.5, help="seconds between promotions")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument(
        "--only-rest", action="store_true", help="only the REST rows: Cascade's and MLServer's (ONNX runtime)"
    )
    parser.add_argument("--skip-perf-analyzer", action="store_true")
    parser.add_argument("--skip-batching", action="store_true", help="skip the batching comparison")
    parser.add_argument("--skip-shadow", action="store_true", help="no shadow in the batching comparison")
    parser.add_argument(
        "--only-batching", action="store_true", help="only the batching comparison (and raw onnxruntime)"
    )
    parser.add_argument(
        "--batching-delays",
        type=int,
        nargs="+",
        default=[500],
        help="max delays (us) of the Cascades with batching on, one Cascade each, in the comparison",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the interleaved batching comparison")
    parser.add_argument(
        "--skip-diagnosis", action="store_true", help="skip Cascade without the shared gRPC interceptors"
    )
    asyncio.run(main(parser.parse_args()))
