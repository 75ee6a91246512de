"""The configuration provider named by ``--provider``, for the server and its commands."""

from __future__ import annotations

from pathlib import Path

from backup_repository.services.ports import ConfigurationProvider


def open_provider(
    kind: str, config_path: Path, namespace: str, kubeconfig: Path | None
) -> ConfigurationProvider:
    """``filesystem`` (the folder ``config_path``) or ``kubernetes`` (the API, through
    ``kubeconfig`` or the in-cluster service account). Not started yet."""
    if kind == "kubernetes":
        # Imported only when used: the Kubernetes client costs about 10 MiB of memory.
        from backup_repository.config.kubernetes import KubernetesProvider

        return KubernetesProvider(namespace, kubeconfig)
    if kind == "filesystem":
        from backup_repository.config.filesystem import FilesystemProvider

        return FilesystemProvider(config_path, namespace)
    raise ValueError(f"unknown configuration provider {kind!r}")
