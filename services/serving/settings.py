from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cascade.settings import RegistryClientSettings

__all__ = ["ServingSettings"]


class ServingSettings(RegistryClientSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_SERVING_", extra="ignore", frozen=True)

    grpc_port: int = Field(8001, description="gRPC port of the inference service (Triton's default).")
    auth_open_inference: bool = Field(
        False,
        description="With auth_required, let anyone call inference and metadata (ModelInfer, "
        "ModelMetadata, ModelConfig, ServerMetadata) while statistics and the index still need "
        "serving:infer. Health is always open.",
    )
    registry_timeout_seconds: float = Field(
        60.0, description="Deadline of one registry call, artifact download included."
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description=(
            "Name of this replica. Each replica consumes promotions in its own consumer group "
            "(<prefix>.serving.<instance_id>), so every replica sees every promotion; it must be "
            "unique per replica and stable across restarts of the same replica."
        ),
    )
    grpc_root_span_sample_rate: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description=(
            "Fraction of incoming gRPC calls without a trace context (no W3C traceparent metadata) "
            "that start a trace with a server span. Calls that carry one are always traced, as part "
            "of the caller's trace. Lower than other services' 1.0: a span costs an inference call "
            "more than the inference itself, and clients seldom want one trace per call."
        ),
    )
    degraded_not_serving_seconds: float = Field(
        7 * 24 * 3600.0,
        gt=0.0,
        description=(
            "How long a promotion may keep failing (the registry down, say) before health is "
            "NOT_SERVING. A week, not the services' 120 s: a replica still answers with its current "
            "champion, and every replica fails the same promotion, so draining them would stop "
            "inference altogether. Degraded is still reported (log and cascade_service_degraded)."
        ),
    )
    prediction_log_sample_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="Fraction of inference requests logged for the monitor."
    )
    prediction_log_queue_size: int = Field(
        10000, gt=0, description="Sampled predictions waiting to be published; beyond it they are dropped."
    )
    workers: int = Field(
        1,
        ge=1,
        description=(
            "Serving processes sharing the gRPC port (SO_REUSEPORT; the kernel spreads connections "
            "over them). Each follows every promotion in its own consumer group "
            "(<instance_id>-<worker index>) and, with METRICS_PORT set, serves /metrics on "
            "METRICS_PORT + its index; ModelStatistics counts the requests of the worker that "
            "answers it. More than 1 needs a fixed GRPC_PORT (and HTTP_PORT, shared the same way)."
        ),
    )
    worker_index: int = Field(
        0, ge=0, description="Set by serving itself for each worker process; leave it at 0."
    )
    inline_max_rows: int = Field(
        256,
        ge=0,
        description=(
            "Requests of at most this many rows run the model on the event loop (cheaper than a "
            "thread hop for small batches); larger ones run in a worker thread."
        ),
    )
    batching_enabled: bool = Field(
        False,
        description=(
            "Adaptive batching (cascade.services.serving.batching): concurrent requests for the same "
            "model version share one onnxruntime run, each caller getting its own rows' outputs."
        ),
    )
    batching_max_delay_microseconds: int = Field(
        500,
        ge=0,
        description=(
            "Longest a batch waits for more requests after its first one. It closes sooner when a "
            "turn of the event loop brings no new request, so a lone request does not wait; 0 "
            "batches only what arrives in the same turn."
        ),
    )
    batching_max_batch_rows: int = Field(
        256,
        ge=1,
        description="Rows of one batched run, at most; a request of this many rows or more runs alone.",
    )
    startup_budget_seconds: float = Field(
        120.0,
        gt=0.0,
        description=(
            "Longest a starting replica stays not ready (health NOT_SERVING, ServerReady false) "
            "while it loads the champions, canaries and shadows the registry names, or waits for "
            "an unreachable registry. Then it turns ready with what it has and keeps loading; a model "
            "still loading answers UNAVAILABLE. Keep it below the startup probe's window "
            "(deploy/k8s/serving.yaml: 180 s): a restart cannot make the registry answer."
        ),
    )
    keep_versions: int = Field(
        2,
        ge=1,
        description=(
            "Versions per model kept loaded, the champion included, for explicit addressing. A "
            "rollout's canary and shadow stay loaded beside the champion whatever this says."
        ),
    )
    shadow_queue_size: int = Field(
        1000,
        gt=0,
        description=(
            "Answered requests waiting to be scored off the answer path by a rollout's shadow (or, "
            "for a canary's answers, by the champion); beyond it they are dropped and counted "
            "(cascade_serving_shadow_dropped_total, LiveTrafficReported.shadow_dropped)."
        ),
    )
    shadow_nice: int = Field(
        10,
        ge=0,
        le=19,
        description=(
            "How much the thread scoring shadow and mirror comparisons lowers its CPU priority (a "
            "thread's nice value, Linux): on saturated cores the answers run first and comparisons "
            "are dropped and counted instead."
        ),
    )
    compare_max_rows: int = Field(
        100,
        ge=1,
        description=(
            "Rows of one request scored for a live comparison, at most (its first rows): a large "
            "batch is sampled, so the comparison costs a bounded amount per request."
        ),
    )
    live_stats_interval_seconds: float = Field(
        2.0,
        gt=0.0,
        description=(
            "How often each replica reports a model's live traffic (LiveTrafficReported) and "
            "publishes its pending comparisons (PredictionsCompared) while the model has a canary "
            "or a shadow."
        ),
    )
    http_enabled: bool = Field(
        True, description="Serve the KServe V2 REST API (cascade.services.serving.rest) beside gRPC."
    )
    http_port: int = Field(
        8000,
        ge=0,
        description=(
            "Port of the KServe V2 REST API (Triton's and KServe's default), on grpc_host; 0 picks a "
            "free one. Workers share it as they share the gRPC port."
        ),
    )
    explain_enabled: bool = Field(
        True,
        description=(
            "Serve cascade.explain.v1.Explainer (per-prediction attributions) on the gRPC port beside "
            "inference (cascade.services.serving.explain)."
        ),
    )
    explain_workers: int = Field(
        1,
        ge=1,
        description=(
            "Processes explanations run in, per serving process (started on the first Explain), at a "
            "lower CPU priority than inference; attributions are never computed in the serving process."
        ),
    )
    explain_nice: int = Field(
        10, ge=0, le=19, description="How much the explainer's processes lower their CPU priority (os.nice)."
    )
    explain_max_concurrent: int = Field(
        2,
        ge=1,
        description=(
            "Explain requests in progress per serving process, waiting for a worker included; beyond "
            "it a request is RESOURCE_EXHAUSTED."
        ),
    )
    explain_max_rows: int = Field(10, ge=1, description="Rows one Explain request may ask for, at most.")
    explain_max_evaluations: int = Field(
        2_000_000,
        ge=1,
        description=(
            "Model rows one Explain request may evaluate, at most (KernelSHAP evaluates coalitions x "
            "background rows per row explained); a request that needs more is INVALID_ARGUMENT."
        ),
    )
    explain_deadline_seconds: float = Field(
        30.0, gt=0.0, description="Longest an Explain request may take; then DEADLINE_EXCEEDED."
    )
    explain_background_rows: int = Field(
        100,
        ge=1,
        description=(
            "Background rows (from the version's explain_background tag) the attributions are "
            "measured against, at most; fewer is faster, more is steadier."
        ),
    )
