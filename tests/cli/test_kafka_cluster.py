"""`cascade kafka start --brokers 3`: three KRaft nodes, one quorum of three voters, topics kept in
three copies of which a write needs two. Rendering is checked without Java; one slow test starts
the real cluster through the CLI, loses a node and keeps writing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.settings import ServiceSettings
from cascade.stack import SERVICES, Stack, StackConfig, kafka_broker, remembered_config
from cascade.stack.kafka_broker import BrokerConfig, ClusterConfig

# Apart from a developer's `cascade up` (9092), the integration suite (29xxx) and the chaos test (31xxx).
KAFKA_PORT = 22092
CONTROLLER_PORT = 22093


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_a_cluster_of_three_renders_three_voters_and_three_copies(tmp_path: Path) -> None:
    cluster = ClusterConfig(tmp_path, brokers=3, port=KAFKA_PORT, controller_port=CONTROLLER_PORT)
    rendered = [_properties(kafka_broker.render_server_properties(node)) for node in cluster.nodes]

    assert [p["node.id"] for p in rendered] == ["1", "2", "3"]
    assert [p["listeners"] for p in rendered] == [
        f"PLAINTEXT://127.0.0.1:{KAFKA_PORT + 2 * i},CONTROLLER://127.0.0.1:{CONTROLLER_PORT + 2 * i}"
        for i in range(3)
    ]
    voters = ",".join(f"127.0.0.1:{CONTROLLER_PORT + 2 * i}" for i in range(3))
    for properties in rendered:
        assert properties["process.roles"] == "broker,controller"
        assert properties["controller.quorum.bootstrap.servers"] == voters
        assert properties["default.replication.factor"] == "3"
        assert properties["min.insync.replicas"] == "2"
        assert properties["offsets.topic.replication.factor"] == "3"
        assert properties["transaction.state.log.replication.factor"] == "3"
        assert properties["transaction.state.log.min.isr"] == "2"
    # Each node its own files; the jars and the cluster id shared.
    assert len({p["log.dirs"] for p in rendered}) == 3
    assert len({node.pid_file for node in cluster.nodes}) == 3
    assert {node.libs_dir for node in cluster.nodes} == {cluster.libs_dir}
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{KAFKA_PORT + 2 * i}" for i in range(3))


def test_a_single_broker_keeps_one_copy_and_its_own_layout(tmp_path: Path) -> None:
    (node,) = ClusterConfig(tmp_path, port=KAFKA_PORT, controller_port=CONTROLLER_PORT).nodes
    properties = _properties(kafka_broker.render_server_properties(node))

    assert node == BrokerConfig(tmp_path, KAFKA_PORT, CONTROLLER_PORT)
    assert properties["controller.quorum.bootstrap.servers"] == f"127.0.0.1:{CONTROLLER_PORT}"
    assert properties["default.replication.factor"] == "1"
    assert properties["min.insync.replicas"] == "1"
    assert properties["log.dirs"] == str(tmp_path / "data")


def test_every_service_of_a_cluster_stack_gets_the_bootstrap_list_and_three_copies(tmp_path: Path) -> None:
    stack = Stack(
        StackConfig(home=tmp_path, kafka_port=KAFKA_PORT, controller_port=CONTROLLER_PORT, kafka_brokers=3),
        environ={},
    )
    bootstrap = f"127.0.0.1:{KAFKA_PORT},127.0.0.1:{KAFKA_PORT + 2},127.0.0.1:{KAFKA_PORT + 4}"

    assert stack.address("kafka") == bootstrap
    for name in SERVICES:
        env = stack.service_env(name)
        assert env[f"CASCADE_{name.upper()}_KAFKA_BOOTSTRAP"] == bootstrap
        assert env[f"CASCADE_{name.upper()}_TOPIC_REPLICATION_FACTOR"] == "3"
    assert [row.name for row in stack.status()][:4] == ["kafka-1", "kafka-2", "kafka-3", "ingest"]
    assert all(row.health == "DOWN" for row in stack.status())


def test_the_broker_count_is_a_setting_of_the_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["--home", str(tmp_path), "--kafka-port", str(KAFKA_PORT), "status", "--json"],
        env={"CASCADE_KAFKA_BROKERS": "3"},
    )

    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(row["name"], row["endpoint"]) for row in rows[:3]] == [
        (f"kafka-{i + 1}", f"127.0.0.1:{KAFKA_PORT + 2 * i}") for i in range(3)
    ]


def test_no_brokers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(kafka_broker.BrokerError, match="at least one broker"):
        ClusterConfig(tmp_path, brokers=0)


# ---------------------------------------------------------------------- the real cluster


async def _write_and_read(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"{topic}-reader", auto_offset_reset="earliest"
    )
    await consumer.start()
    read: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while len(read) < len(values):
                batches = await consumer.getmany(timeout_ms=1000)
                read.extend(record.value or b"" for records in batches.values() for record in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return read


async def _replicas_and_min_isr(bootstrap: str, topics: list[str]) -> dict[str, tuple[set[int], str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    min_isr = {
        resource["resource_name"]: entry["config_value"]
        for response in configs
        for resource in response.to_object()["resources"]
        for entry in resource["config_entries"]
        if entry["config_names"] == "min.insync.replicas"
    }
    return {
        topic["topic"]: ({len(p["replicas"]) for p in topic["partitions"]}, min_isr.get(topic["topic"], "?"))
        for topic in described
    }


@pytest.mark.kafka
@pytest.mark.slow
def test_cascade_kafka_start_brokers_3_runs_a_cluster_that_survives_losing_a_node(tmp_path: Path) -> None:
    runner = CliRunner()
    home = [
        "--home",
        str(tmp_path),
        "--kafka-port",
        str(KAFKA_PORT),
        "--controller-port",
        str(CONTROLLER_PORT),
    ]
    started = runner.invoke(app, [*home, "kafka", "start", "--brokers", "3"])
    try:
        assert started.exit_code == 0, started.output
        config = remembered_config(tmp_path)
        assert config is not None and config.kafka_brokers == 3  # later commands find the cluster
        cluster = Stack(config).kafka
        status = runner.invoke(app, [*home, "kafka", "status"])
        assert status.output.count("is ready") == 3, status.output
        assert kafka_broker.quorum_status(cluster).voters == (1, 2, 3)

        values = [f"before-{i}".encode() for i in range(20)]
        assert asyncio.run(_write_and_read(cluster.bootstrap, "cluster-probe", values)) == values
        placement = asyncio.run(
            _replicas_and_min_isr(cluster.bootstrap, ["cluster-probe", "__consumer_offsets"])
        )
        assert placement["cluster-probe"] == ({3}, "2")
        assert placement["__consumer_offsets"][0] == {3}

        # A crashed node: acks=all writes still find two in-sync replicas, and reads go on.
        assert kafka_broker.kill(cluster.node(1))
        later = [f"after-{i}".encode() for i in range(20)]
        survivors = ",".join(node.bootstrap for node in cluster.nodes[1:])
        assert asyncio.run(_write_and_read(survivors, "cluster-probe-2", later)) == later
        assert "Kafka node 1 is not running" in runner.invoke(app, [*home, "kafka", "status"]).output
        assert kafka_broker.quorum_status(cluster).leader_id in (2, 3)  # two voters of three still lead

        kafka_broker.start(cluster.node(1), pom=kafka_broker.DEPLOY_DIR / "pom.xml")
        assert runner.invoke(app, [*home, "kafka", "status"]).output.count("is ready") == 3
    finally:
        stopped = runner.invoke(app, [*home, "kafka", "stop"])
    assert stopped.exit_code == 0 and "Kafka stopped" in stopped.output, stopped.output
    assert not any(kafka_broker.status(node).running for node in ClusterConfig(tmp_path / "kafka", 3).nodes)


def test_services_hand_kafka_clients_the_bootstrap_list_host_by_host() -> None:
    # FastStream passes a string on whole, as one host: "a,b,c" must reach it as three.
    settings = ServiceSettings(kafka_bootstrap="127.0.0.1:31092, 127.0.0.1:31094,127.0.0.1:31096")

    assert settings.kafka_bootstrap_servers == ["127.0.0.1:31092", "127.0.0.1:31094", "127.0.0.1:31096"]
    assert ServiceSettings().kafka_bootstrap_servers == ["127.0.0.1:9092"]
