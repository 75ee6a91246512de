"""The Helm chart, linted and rendered by Helm's own engine (the ``helm-python-sdk`` wheel
binds the Helm Go SDK; no ``helm`` binary is needed), for several sets of values; every
rendered document validated against the Kubernetes schemas."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from deploy_support import (
    CHART_DIR,
    KUSTOMIZE_DIR,
    NON_BUILTIN,
    POD_NAMESPACE,
    check_env_names,
    check_pod_hardening,
    container_env,
    image_env,
    load_documents,
    load_file,
    settings_for,
    validate_builtin,
)

from support import require_service

try:
    import helm_python
except ImportError as exc:  # pragma: no cover - depends on the environment
    helm_python = None
    HELM_IMPORT_ERROR = str(exc)
else:
    HELM_IMPORT_ERROR = ""

NAMESPACE = "backups"
RELEASE = "br"
FULLNAME = f"{RELEASE}-backup-repository"


@pytest.fixture(scope="module")
def helm() -> Iterator[Any]:
    if helm_python is None:
        # Installable from PyPI (pyproject's test extra), so CI must have it.
        require_service("helm-python-sdk", f"Helm's engine is not importable: {HELM_IMPORT_ERROR}")
    return helm_python


def render(helm: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    documents: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        documents += load_documents(text)
    return documents


def notes(helm: Any, values: dict[str, Any]) -> str:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(rendered[f"{CHART_DIR.name}/templates/NOTES.txt"])


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (document,) = [d for d in documents if d["kind"] == kind]
    return document


def kinds(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in documents)


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (result,) = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return result


def env(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(documents)["env"]}


SCALED_OUT: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.org/backup-repository", "tag": "0.1.0"},
    "database": {
        "type": "postgres",
        "postgres": {"host": "postgres.db.svc", "name": "backups", "password": "pg-secret"},
    },
    "storage": {
        "url": "s3://backups?endpoint=s3.example.org&region=eu-central-1",
        "s3": {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "s3-secret"},
    },
    "redis": {"url": "redis://redis.db.svc:6379/0"},
    "healthCheck": {"key": "health-code"},
    "server": {"trustedProxies": "10.42.0.0/16", "metricsProtected": True},
    "persistence": {"enabled": False},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "tls": [{"secretName": "backups-tls", "hosts": ["backups.example.org"]}],
    },
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5},
    "podDisruptionBudget": {"enabled": True},
    "serviceMonitor": {"enabled": True},
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "postgres-s3-redis-ingress-hpa": SCALED_OUT,
    "existing-secrets": {
        "replicaCount": 2,
        "jwt": {"existingSecret": "br-jwt"},
        "database": {
            "type": "postgres",
            "postgres": {"urlSecret": {"name": "br-db", "key": "url"}},
        },
        "storage": {"url": "gs://backups", "s3": {"existingSecret": "br-s3"}},
        "redis": {"existingSecret": "br-redis"},
        "persistence": {"enabled": False},
    },
    "openshift-route": {
        "route": {"enabled": True, "host": "backups.apps.example.org"},
        "jwt": {"secretKey": "0123456789abcdef0123456789abcdef"},
    },
    "sqlite-single-replica-without-volume": {"persistence": {"enabled": False}},
    "filesystem-provider": {
        "config": {
            "provider": "filesystem",
            "filesystem": {"volume": {"configMap": {"name": "backup-objects"}}},
        }
    },
    "file-storage-on-shared-volume": {
        "replicaCount": 2,
        "database": {"type": "postgres", "postgres": {"host": "pg", "name": "backups"}},
        "persistence": {"accessModes": ["ReadWriteMany"]},
    },
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_lints_without_warnings(helm: Any, scenario: str) -> None:
    report = helm.lint(str(CHART_DIR), SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # severity 1 is "info" (e.g. "icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_documents_are_valid(helm: Any, scenario: str) -> None:
    documents = render(helm, SCENARIOS[scenario])
    assert "Deployment" in kinds(documents)
    for document in documents:
        key = (document["apiVersion"], document["kind"])
        if key in NON_BUILTIN:
            assert document["metadata"]["name"] == FULLNAME
            assert isinstance(document["spec"], dict)
        else:
            validate_builtin(document)
    check_pod_hardening(one(documents, "Deployment")["spec"]["template"]["spec"])
    check_env_names(container(documents))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_secret_references_point_at_rendered_keys(helm: Any, scenario: str) -> None:
    """Every secretKeyRef to the chart's own Secret names a key that Secret holds."""
    documents = render(helm, SCENARIOS[scenario])
    secrets = [d for d in documents if d["kind"] == "Secret"]
    held = {key for s in secrets for key in s.get("data", {})}
    for entry in container(documents)["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] == FULLNAME:
            assert ref["key"] in held, (entry["name"], ref)


def test_defaults_are_one_replica_on_sqlite_with_a_volume(helm: Any) -> None:
    documents = render(helm, {})
    assert kinds(documents) == [
        "Deployment",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    deployment = one(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    variables = env(documents)
    assert variables["BR_DB_URL"]["value"] == "sqlite:////data/backup-repository.db"
    assert variables["BR_STORAGE_DRIVER_URL"]["value"] == "file:///data/storage"
    assert variables["BR_CONFIG_PROVIDER"]["value"] == "kubernetes"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-data"
    pvc = one(documents, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "Ingress" not in kinds(documents)
    assert "HorizontalPodAutoscaler" not in kinds(documents)


def test_generated_jwt_key_is_long_and_random(helm: Any) -> None:
    first = one(render(helm, {}), "Secret")["data"]["jwt-secret-key"]
    second = one(render(helm, {}), "Secret")["data"]["jwt-secret-key"]
    assert len(base64.b64decode(first)) == 48
    assert first != second  # offline renders make a new one: NOTES.txt says so
    assert "jwt.existingSecret" in notes(helm, {})


def test_scaled_out_deployment_wiring(helm: Any) -> None:
    documents = render(helm, SCALED_OUT)
    deployment = one(documents, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HorizontalPodAutoscaler owns it
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    variables = env(documents)
    assert variables["BR_DB_URL"]["value"] == ""
    assert variables["BR_DB_HOSTNAME"]["value"] == "postgres.db.svc"
    assert variables["BR_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "db-password"
    assert variables["BR_STORAGE_DRIVER_URL"]["value"].startswith("s3://backups?")
    assert variables["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == FULLNAME
    assert variables["BR_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    assert variables["BR_TRUSTED_PROXIES"]["value"] == "10.42.0.0/16"
    assert variables["BR_METRICS_PROTECTED"]["value"] == "true"
    secret = one(documents, "Secret")["data"]
    assert base64.b64decode(secret["db-password"]) == b"pg-secret"
    assert base64.b64decode(secret["AWS_SECRET_ACCESS_KEY"]) == b"s3-secret"
    readiness = container(documents)["readinessProbe"]["httpGet"]
    assert readiness["httpHeaders"] == [{"name": "Authorization", "value": "health-code"}]
    hpa = one(documents, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    monitor = one(documents, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": FULLNAME, "key": "health-check-key"},
    }
    assert "health-code" not in yaml.safe_dump(monitor)
    assert "PodDisruptionBudget" in kinds(documents)
    assert "PersistentVolumeClaim" not in kinds(documents)


def test_ingress_streams_large_uploads(helm: Any) -> None:
    ingress = one(render(helm, SCALED_OUT), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3 * 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3 * 3600
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


def test_openshift_route(helm: Any) -> None:
    documents = render(helm, SCENARIOS["openshift-route"])
    route = one(documents, "Route")
    assert route["spec"]["to"] == {"kind": "Service", "name": FULLNAME, "weight": 100}
    assert route["spec"]["port"] == {"targetPort": "http"}
    assert route["spec"]["tls"]["termination"] == "edge"
    assert route["metadata"]["annotations"]["haproxy.router.openshift.io/timeout"] == "3h"
    secret = one(documents, "Secret")["data"]
    assert base64.b64decode(secret["jwt-secret-key"]) == b"0123456789abcdef0123456789abcdef"


def test_role_is_namespaced_and_read_only(helm: Any) -> None:
    documents = render(helm, {})
    role = one(documents, "Role")
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    resources = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert resources == {
        ("backups.riotkit.org", "backupusers"),
        ("backups.riotkit.org", "backupcollections"),
        ("", "secrets"),
    }
    binding = one(documents, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    assert "ClusterRole" not in kinds(documents)
    # The same rules as the plain manifests' Role, which test_rbac_e2e checks against every
    # request the server makes.
    (plain,) = load_file(KUSTOMIZE_DIR / "role.yaml")
    assert role["rules"] == plain["rules"]


def test_filesystem_provider_mounts_the_objects_and_no_token(helm: Any) -> None:
    documents = render(helm, SCENARIOS["filesystem-provider"])
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert env(documents)["BR_CONFIG_LOCAL_PATH"]["value"] == "/etc/backup-repository"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"] == {"name": "backup-objects"}


REFUSED = {
    "sqlite-with-two-replicas": (
        {"replicaCount": 2},
        "database.type=sqlite allows a single replica only",
    ),
    "sqlite-with-autoscaling": (
        {"autoscaling": {"enabled": True}},
        "database.type=sqlite allows a single replica only",
    ),
    "replicas-on-a-read-write-once-volume": (
        {
            "replicaCount": 2,
            "database": {"type": "postgres", "postgres": {"host": "pg", "name": "b"}},
        },
        "several replicas need shared storage",
    ),
    "postgres-without-host": (
        {"database": {"type": "postgres"}},
        "database.postgres.host",
    ),
    "unknown-database": ({"database": {"type": "mysql"}}, "database.type must be"),
    "unknown-provider": ({"config": {"provider": "etcd"}}, "config.provider must be"),
    "filesystem-without-volume": (
        {"config": {"provider": "filesystem"}},
        "config.filesystem.volume",
    ),
    "short-jwt-key": ({"jwt": {"secretKey": "short"}}, "at least 16 characters"),
    "protected-metrics-without-key": (
        {"server": {"metricsProtected": True}},
        "server.metricsProtected needs healthCheck.key",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_values_that_would_lose_data_are_refused(helm: Any, case: str) -> None:
    values, message = REFUSED[case]
    with pytest.raises(helm.HelmRenderError) as caught:
        render(helm, values)
    assert message in str(caught.value)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_environment_gives_valid_server_settings(helm: Any, scenario: str) -> None:
    """The image's defaults overridden by the rendered variables (Secrets as stand-ins)
    make settings the server accepts, e.g. no --db-url beside the --db-* set."""
    documents = render(helm, SCENARIOS[scenario])
    (main,) = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    settings = settings_for({**image_env(), **container_env(main)}, main.get("args"))
    values = SCENARIOS[scenario]
    assert settings.namespace == POD_NAMESPACE
    assert settings.provider == values.get("config", {}).get("provider", "kubernetes")
    assert settings.listen.port == 8080
    if values.get("database", {}).get("type") == "postgres":
        assert not settings.db_url.startswith("sqlite")
    else:
        assert settings.db_url.startswith("sqlite")
        assert "/data/" in settings.db_url
    if "url" in values.get("storage", {}):
        assert settings.storage_url == values["storage"]["url"]
    else:
        assert settings.storage_url == "file:///data/storage"
    redis = values.get("redis", {})
    assert bool(settings.redis_url) == bool(redis.get("url") or redis.get("existingSecret"))


def test_notes_warn_only_when_data_would_be_lost(helm: Any) -> None:
    warning = "WARNING: persistence.enabled=false"
    lost = notes(helm, SCENARIOS["sqlite-single-replica-without-volume"])
    assert (
        f"{warning}: /data is an emptyDir, and the SQLite database and the stored backups" in lost
    )
    assert warning not in notes(helm, SCALED_OUT)
    assert warning not in notes(helm, {})
