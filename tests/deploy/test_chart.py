"""The Helm chart, linted and rendered by Helm's own engine (the ``helm-python-sdk`` wheel
binds the Helm Go SDK; no ``helm`` binary is needed), for several sets of values; every
rendered document validated against the Kubernetes schemas."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
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
    sealed_secret_errors,
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
    # The pod network of the nodes the ingress controller runs on, not the whole cluster's.
    "server": {"trustedProxies": "10.42.3.0/24"},
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


def sealed(key: str) -> str:
    """A stand-in for what `kubeseal --raw` prints: base64 of a 2-byte length (512), a
    4096-bit RSA block and the AES-GCM sealed value (random-looking, 600 bytes)."""
    body = b"".join(hashlib.sha512(f"{key}{i}".encode()).digest() for i in range(10))
    return base64.b64encode(b"\x02\x00" + body[:598]).decode()


SEALED_KEYS = (
    "jwt-secret-key",
    "health-check-key",
    "db-password",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "redis-url",
)
SEALED: dict[str, Any] = {
    "replicaCount": 2,
    "secrets": {"type": "sealedSecrets", "encryptedData": {k: sealed(k) for k in SEALED_KEYS}},
    "database": {"type": "postgres", "postgres": {"host": "postgres.db.svc", "name": "backups"}},
    "storage": {"url": "s3://backups?endpoint=s3.example.org&region=eu-central-1"},
    # Sent by the readiness probe in clear (a probe cannot read a Secret): the same code as
    # the sealed health-check-key.
    "healthCheck": {"key": "health-code"},
    "server": {"trustedProxies": "10.42.3.0/24"},
    "persistence": {"enabled": False},
    "ingress": {"enabled": True, "className": "nginx"},
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
        # OpenShift's routers, host network included.
        "networkPolicy": {
            "ingressController": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"policy-group.network.openshift.io/ingress": ""}
                    }
                }
            ]
        },
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
    "sealed-secrets": SEALED,
    "sealed-secrets-with-existing-jwt-secret": {
        "jwt": {"existingSecret": "br-jwt"},
        "secrets": {
            "type": "sealedSecrets",
            "encryptedData": {"health-check-key": sealed("health-check-key")},
        },
        "healthCheck": {"key": "health-code"},
    },
    "network-policy-for-traefik-and-in-cluster-jobs": {
        "ingress": {"enabled": True, "className": "traefik"},
        "server": {"trustedProxies": "10.42.3.17,10.42.4.0/24"},
        "networkPolicy": {
            "ingressController": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}},
                }
            ],
            "prometheus": [],
            "extraFrom": [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "backup-maker"}}},
                {"ipBlock": {"cidr": "192.0.2.0/24"}},
            ],
        },
    },
    "network-policy-disabled": {"networkPolicy": {"enabled": False}},
    "private-ca-for-notification-channels": {
        "extraVolumes": [{"name": "private-ca", "configMap": {"name": "private-ca"}}],
        "extraVolumeMounts": [
            {"name": "private-ca", "mountPath": "/etc/backup-repository-ca", "readOnly": True}
        ],
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
        elif document["kind"] == "SealedSecret":
            assert sealed_secret_errors(document) == []
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
    for sealed_secret in [d for d in documents if d["kind"] == "SealedSecret"]:
        assert sealed_secret["metadata"]["name"] == FULLNAME
        held |= set(sealed_secret["spec"]["encryptedData"])
    for entry in container(documents)["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] == FULLNAME:
            assert ref["key"] in held, (entry["name"], ref)


def test_defaults_are_one_replica_on_sqlite_with_a_volume(helm: Any) -> None:
    documents = render(helm, {})
    assert kinds(documents) == [
        "Deployment",
        "NetworkPolicy",
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
    assert variables["BR_TRUSTED_PROXIES"]["value"] == "10.42.3.0/24"
    # The health check key alone protects /metrics; the ServiceMonitor sends it.
    assert "BR_METRICS_PUBLIC" not in variables
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
        ("backups.riotkit.org", "notificationchannels"),
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


def test_extra_volumes_are_mounted_beside_the_chart_s_own(helm: Any) -> None:
    """A NotificationChannel's caFile comes from a volume of the user's."""
    documents = render(helm, SCENARIOS["private-ca-for-notification-channels"])
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["private-ca"] == {"name": "private-ca", "configMap": {"name": "private-ca"}}
    assert {"data", "tmp"} <= set(volumes)
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["private-ca"]["mountPath"] == "/etc/backup-repository-ca"
    assert mounts["private-ca"]["readOnly"] is True
    assert mounts["data"]["mountPath"] == "/data"


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
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
    # Network exposure: who may claim client addresses, and who may reach the port.
    "every-ipv4-address-trusted": (
        {"server": {"trustedProxies": "0.0.0.0/0"}},
        "server.trustedProxies must not hold 0.0.0.0/0",
    ),
    "every-ipv6-address-trusted": (
        {"server": {"trustedProxies": "10.42.3.0/24, ::/0"}},
        "server.trustedProxies must not hold ::/0",
    ),
    "ingress-the-network-policy-keeps-out": (
        {"ingress": {"enabled": True}, "networkPolicy": {"ingressController": []}},
        "ingress.enabled needs networkPolicy.ingressController",
    ),
    "route-the-network-policy-keeps-out": (
        {"route": {"enabled": True}, "networkPolicy": {"ingressController": []}},
        "route.enabled needs networkPolicy.ingressController",
    ),
    "network-policy-peer-without-a-selector": (
        {"networkPolicy": {"ingressController": [{}]}},
        "networkPolicy.ingressController[0] needs podSelector, namespaceSelector or ipBlock",
    ),
    "network-policy-peer-not-a-map": (
        {"networkPolicy": {"prometheus": ["monitoring"]}},
        "networkPolicy.prometheus[0] needs podSelector, namespaceSelector or ipBlock",
    ),
    "network-policy-ip-block-with-a-selector": (
        {"networkPolicy": {"extraFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}},
        "networkPolicy.extraFrom[0]: ipBlock cannot be combined",
    ),
    # Sealed secrets: no plain secret in the values, nothing the server needs missing.
    "unknown-secrets-type": (
        {"secrets": {"type": "vault"}},
        "secrets.type must be plain or sealedSecrets",
    ),
    "sealed-secrets-without-encrypted-values": (
        {"secrets": {"type": "sealedSecrets"}},
        "secrets.type=sealedSecrets needs secrets.encryptedData",
    ),
    "sealed-secrets-without-the-jwt-key": (
        {
            "secrets": {
                "type": "sealedSecrets",
                "encryptedData": {"redis-url": sealed("redis-url")},
            }
        },
        "secrets.type=sealedSecrets needs secrets.encryptedData.jwt-secret-key",
    ),
    "sealed-secrets-with-a-plain-jwt-key": (
        {**SEALED, "jwt": {"secretKey": "0123456789abcdef0123456789abcdef"}},
        "jwt.secretKey is a plain secret",
    ),
    "sealed-secrets-with-a-plain-database-password": (
        {
            **SEALED,
            "database": {
                "type": "postgres",
                "postgres": {"host": "pg", "name": "b", "password": "pw"},
            },
        },
        "database.postgres.password is a plain secret",
    ),
    "sealed-secrets-with-plain-s3-keys": (
        {
            **SEALED,
            "storage": {
                **SEALED["storage"],
                "s3": {"accessKeyId": "AKIA", "secretAccessKey": "s3"},
            },
        },
        "storage.s3.accessKeyId is a plain secret",
    ),
    "sealed-secrets-with-a-plain-redis-url": (
        {**SEALED, "redis": {"url": "redis://:pw@redis:6379/0"}},
        "redis.url is a plain secret",
    ),
    "sealed-secrets-without-the-health-check-key": (
        {
            "secrets": {
                "type": "sealedSecrets",
                "encryptedData": {"jwt-secret-key": sealed("jwt-secret-key")},
            },
            "healthCheck": {"key": "health-code"},
        },
        "healthCheck.key needs secrets.encryptedData.health-check-key",
    ),
    "sealed-health-check-key-without-the-probe-code": (
        {
            "secrets": {
                "type": "sealedSecrets",
                "encryptedData": {
                    "jwt-secret-key": sealed("jwt-secret-key"),
                    "health-check-key": sealed("health-check-key"),
                },
            }
        },
        "secrets.encryptedData.health-check-key needs healthCheck.key",
    ),
    "sealed-secrets-holding-a-plain-value": (
        {
            "secrets": {
                "type": "sealedSecrets",
                "encryptedData": {"jwt-secret-key": "my-jwt-secret-key-in-clear-0123456789"},
            }
        },
        "secrets.encryptedData.jwt-secret-key does not look sealed",
    ),
    "sealed-secrets-with-half-the-s3-keys": (
        {
            "secrets": {
                "type": "sealedSecrets",
                "encryptedData": {
                    "jwt-secret-key": sealed("jwt-secret-key"),
                    "AWS_ACCESS_KEY_ID": sealed("AWS_ACCESS_KEY_ID"),
                },
            }
        },
        "needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    ),
    "encrypted-values-without-sealed-secrets": (
        {"secrets": {"encryptedData": {"jwt-secret-key": sealed("jwt-secret-key")}}},
        "secrets.encryptedData is read only with secrets.type=sealedSecrets",
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
    sealed_redis = "redis-url" in values.get("secrets", {}).get("encryptedData", {})
    assert bool(settings.redis_url) == bool(
        redis.get("url") or redis.get("existingSecret") or sealed_redis
    )
    proxies = values.get("server", {}).get("trustedProxies", "")
    assert [str(n) for n in settings.trusted_proxies] == [
        str(ipaddress.ip_network(p, strict=False)) for p in proxies.split(",") if p
    ]
    public = values.get("server", {}).get("metricsPublic", False)
    assert settings.metrics_need_key == (
        bool(values.get("healthCheck", {}).get("key")) and not public
    )


@pytest.mark.parametrize(
    ("values", "public", "scrape_with_key"),
    [
        ({}, None, False),  # no key: public (the server warns), nothing to send
        ({"healthCheck": {"key": "health-code"}}, None, True),
        ({"healthCheck": {"key": "health-code"}, "server": {"metricsPublic": True}}, "true", False),
    ],
)
def test_metrics_protection_follows_the_health_check_key(
    helm: Any, values: dict[str, Any], public: str | None, scrape_with_key: bool
) -> None:
    documents = render(helm, {**values, "serviceMonitor": {"enabled": True}})
    assert env(documents).get("BR_METRICS_PUBLIC", {}).get("value") == public
    (endpoint,) = one(documents, "ServiceMonitor")["spec"]["endpoints"]
    assert ("authorization" in endpoint) is scrape_with_key


def test_notes_warn_only_when_data_would_be_lost(helm: Any) -> None:
    warning = "WARNING: persistence.enabled=false"
    lost = notes(helm, SCENARIOS["sqlite-single-replica-without-volume"])
    assert (
        f"{warning}: /data is an emptyDir, and the SQLite database and the stored backups" in lost
    )
    assert warning not in notes(helm, SCALED_OUT)
    assert warning not in notes(helm, {})


# --- network exposure: trusted proxies and the NetworkPolicy ----------------------------------

INGRESS_NGINX = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
}
PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def network_policy_peers(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sources the NetworkPolicy admits, after checking that it selects the server's
    pods, restricts their ingress only, and opens nothing but the server's port."""
    policy = one(documents, "NetworkPolicy")
    validate_builtin(policy)
    spec = policy["spec"]
    assert spec["podSelector"] == one(documents, "Deployment")["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"]
    peers: list[dict[str, Any]] = []
    for rule in spec.get("ingress", []):
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        # A rule without `from` would admit every source.
        assert rule["from"], rule
        peers += rule["from"]
    return peers


def test_network_policy_admits_only_the_ingress_controller_and_prometheus(helm: Any) -> None:
    cases: list[dict[str, Any]] = [{}, SCALED_OUT]
    for values in cases:
        documents = render(helm, values)
        assert network_policy_peers(documents) == [INGRESS_NGINX, PROMETHEUS]
        assert [p["name"] for p in container(documents)["ports"]] == ["http"]


def test_network_policy_peers_replace_the_defaults(helm: Any) -> None:
    """Peers are lists, so values replace the defaults whole (maps would be merged with
    them, and the default labels would silently narrow the operator's selector)."""
    values = SCENARIOS["network-policy-for-traefik-and-in-cluster-jobs"]
    peers = network_policy_peers(render(helm, values))
    policy = values["networkPolicy"]
    assert peers == policy["ingressController"] + policy["extraFrom"]
    nobody: dict[str, Any] = {"networkPolicy": {"ingressController": [], "prometheus": []}}
    assert network_policy_peers(render(helm, nobody)) == []  # only port-forward gets in
    assert "NetworkPolicy" not in kinds(render(helm, SCENARIOS["network-policy-disabled"]))


def test_no_proxy_is_trusted_by_default(helm: Any) -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    assert values["server"]["trustedProxies"] == ""
    documents = render(helm, {"ingress": {"enabled": True}})
    assert "BR_TRUSTED_PROXIES" not in env(documents)
    settings = settings_for({**image_env(), **container_env(container(documents))})
    assert settings.trusted_proxies == ()


def test_notes_warn_about_shared_and_forgeable_client_addresses(helm: Any) -> None:
    shared = "WARNING: server.trustedProxies is empty"
    forgeable = "WARNING: networkPolicy.enabled=false"
    assert shared in notes(helm, {"ingress": {"enabled": True}})
    assert shared in notes(helm, {"route": {"enabled": True}})
    assert shared not in notes(helm, {})  # no proxy in front: clients' own addresses
    assert shared not in notes(helm, SCALED_OUT)
    exposed = {"server": {"trustedProxies": "10.42.3.0/24"}, "networkPolicy": {"enabled": False}}
    assert f"{forgeable}: every pod that can reach the server from 10.42.3.0/24" in notes(
        helm, exposed
    )
    assert forgeable not in notes(helm, SCALED_OUT)
    assert forgeable not in notes(helm, SCENARIOS["network-policy-disabled"])
    in_cluster = (
        "add clients running\nin the cluster, such as backup jobs, to networkPolicy.extraFrom"
    )
    assert in_cluster in notes(helm, {})
    assert in_cluster not in notes(helm, SCENARIOS["network-policy-disabled"])


# --- secrets.type=sealedSecrets ----------------------------------------------------------------


def checksum(documents: list[dict[str, Any]]) -> str:
    annotations = one(documents, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    return str(annotations["checksum/secret"])


def test_sealed_secrets_replace_the_plain_secret(helm: Any) -> None:
    documents = render(helm, SEALED)
    assert "Secret" not in kinds(documents)
    sealed_secret = one(documents, "SealedSecret")
    assert sealed_secret_errors(sealed_secret) == []
    # Sealed in the default strict scope: for this name in the release's namespace.
    assert sealed_secret["metadata"]["name"] == FULLNAME
    encrypted = SEALED["secrets"]["encryptedData"]
    assert sealed_secret["spec"]["encryptedData"] == encrypted
    template = sealed_secret["spec"]["template"]
    assert template["type"] == "Opaque"
    assert template["metadata"]["labels"] == sealed_secret["metadata"]["labels"]
    # The Secret the controller unseals it into is a valid Secret.
    validate_builtin(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {**template["metadata"], "name": FULLNAME, "namespace": NAMESPACE},
            "type": template["type"],
            "data": {key: base64.b64encode(b"unsealed").decode() for key in encrypted},
        }
    )
    variables = env(documents)
    for name, key in {
        "BR_JWT_SECRET_KEY": "jwt-secret-key",
        "BR_HEALTH_CHECK_KEY": "health-check-key",
        "BR_DB_PASSWORD": "db-password",
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "BR_REDIS_URL": "redis-url",
    }.items():
        assert variables[name]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": key}
    # Sealing a value again rolls the pods, as editing the plain Secret does.
    resealed = {**SEALED, "secrets": {**SEALED["secrets"]}}
    resealed["secrets"]["encryptedData"] = {**encrypted, "jwt-secret-key": sealed("new key")}
    assert checksum(render(helm, resealed)) != checksum(documents)
    assert "sealed-secrets controller" in notes(helm, SEALED)


def test_sealed_secrets_with_existing_secrets_seal_only_the_rest(helm: Any) -> None:
    documents = render(helm, SCENARIOS["sealed-secrets-with-existing-jwt-secret"])
    assert "Secret" not in kinds(documents)
    sealed_secret = one(documents, "SealedSecret")
    assert set(sealed_secret["spec"]["encryptedData"]) == {"health-check-key"}
    variables = env(documents)
    assert variables["BR_JWT_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "br-jwt"
    assert variables["BR_HEALTH_CHECK_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "health-check-key",
    }


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("spec.encryptedData", ..., "'encryptedData' is a required property"),
        ("spec.encryptedData.jwt-secret-key", 42, "is not of type 'string'"),
        ("spec.encrypted", {}, "Additional properties are not allowed"),
        ("spec.template.type", ["Opaque"], "is not of type 'string'"),
        ("spec", ..., "'spec' is a required property"),
    ],
)
def test_sealed_secret_schema_refuses_broken_objects(
    helm: Any, path: str, value: Any, fragment: str
) -> None:
    document = one(render(helm, SEALED), "SealedSecret")
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    errors = sealed_secret_errors(document)
    assert any(fragment in error for error in errors), errors
