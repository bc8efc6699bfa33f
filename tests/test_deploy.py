"""The deployment files (enclave/deploy/): schema checks, since no cluster or Docker daemon
exists in CI. Kubernetes manifests against the OpenAPI schemas kubernetes-validate bundles
(strict: unknown fields fail), the compose file against the compose-spec schema that
check-jsonschema vendors, the Dockerfiles parsed by dockerfile-parse and linted here; and
the image's health check against a real enclave on loopback."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")
dockerfile_parse = pytest.importorskip("dockerfile_parse")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "enclave" / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCKERFILES = sorted((DEPLOY / "container").glob("*.Dockerfile"))
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes these manifests are written for
SECRET_WORDS = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key|private[_-]?key)")


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_errors(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


def test_the_files_exist() -> None:
    assert [p.name for p in MANIFESTS] == ["cluster.yaml", "enclave.yaml"]
    assert [p.name for p in DOCKERFILES] == ["enclave.Dockerfile", "party.Dockerfile"]
    assert COMPOSE.is_file()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(path: Path) -> None:
    docs = k8s_documents(path)
    assert docs
    for doc in docs:
        assert k8s_errors(doc) is None, f"{path.name} {doc.get('kind')}: {k8s_errors(doc)}"


def test_kubernetes_validation_catches_a_misspelt_field() -> None:
    doc = next(
        d for d in k8s_documents(DEPLOY / "k8s" / "enclave.yaml") if d["kind"] == "StatefulSet"
    )
    bad = copy.deepcopy(doc)
    bad["spec"]["template"]["spec"]["runtimeClass"] = "kata-cc"  # not runtimeClassName
    assert k8s_errors(bad) is not None
    bad = copy.deepcopy(doc)
    bad["spec"]["replicas"] = "one"
    assert k8s_errors(bad) is not None


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in k8s_documents(path):
            if doc["kind"] == "StatefulSet":
                out.append(
                    (f"{path.name}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
                )
    return out


@pytest.mark.parametrize("name,spec", pod_specs(), ids=[n for n, _ in pod_specs()])
def test_pods_run_confidential_and_locked_down(name: str, spec: dict[str, Any]) -> None:
    assert spec["runtimeClassName"] == "kata-cc"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["privileged"] is False, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert "@sha256:" in c["image"], f"{name}: the image is not pinned by digest"
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
        assert any(m["mountPath"] == "/etc/cctrain" and m["readOnly"] for m in c["volumeMounts"])


def test_the_enclave_has_its_state_volume_port_and_policy() -> None:
    docs = {d["kind"]: d for d in k8s_documents(DEPLOY / "k8s" / "enclave.yaml")}
    sts = docs["StatefulSet"]
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/var/lib/cctrain"} in container[
        "volumeMounts"
    ]
    assert container["ports"] == [{"name": "grpc", "containerPort": 7443, "protocol": "TCP"}]
    assert docs["Service"]["spec"]["ports"][0]["port"] == 7443
    assert "policy.signed.json" in docs["ConfigMap"]["data"]
    args = container["args"]
    assert args[args.index("--platform") + 1] == "auto"  # never simulated on a cluster


def test_the_cluster_worker_joins_rank_0() -> None:
    docs = k8s_documents(DEPLOY / "k8s" / "cluster.yaml")
    sts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}
    rank0 = sts["cctrain-rank0"]["spec"]["template"]["spec"]["containers"][0]["args"]
    worker = sts["cctrain-rank1"]["spec"]["template"]["spec"]["containers"][0]
    listen = rank0[rank0.index("--cluster-listen") + 1]
    rendezvous = worker["args"][worker["args"].index("--rendezvous") + 1]
    assert worker["command"] == ["cctrain-enclave", "worker"]
    assert rendezvous.startswith("cctrain-rank0-0.cctrain-ranks.")
    assert rendezvous.rsplit(":", 1)[1] == listen.rsplit(":", 1)[1]


def compose_errors(doc: dict[str, Any]) -> list[str]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_compose_file_validates() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert compose_errors(doc) == []
    assert set(doc["services"]) == {"init", "enclave", "hospital-a", "hospital-b", "research-lab"}
    enclave = doc["services"]["enclave"]
    assert enclave["ports"] == ["127.0.0.1:7443:7443"]  # loopback only
    assert "healthcheck" in enclave
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_dir(), name
                assert volume.endswith(":ro"), f"{name}: bind mounts are read-only"


def test_compose_validation_catches_a_misspelt_key() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["enclave"]["healthchek"] = doc["services"]["enclave"].pop("healthcheck")
    assert compose_errors(doc)


def lint_dockerfile(text: str) -> list[str]:
    """The problems of a Dockerfile: base images not pinned, running as root, secrets in
    ENV/ARG/LABEL, no HEALTHCHECK instruction."""
    parser = dockerfile_parse.DockerfileParser(fileobj=None)
    parser.content = text
    problems = []
    stages: set[str] = set()
    for instr in parser.structure:
        if instr["instruction"] == "FROM":
            words = instr["value"].split()
            image = words[0]
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image in stages:
                continue
            tag = image.split("@")[0].rpartition(":")[2] if ":" in image.split("@")[0] else ""
            if "@sha256:" not in image and not re.fullmatch(r"\d+\.\d+\.\d+-[a-z0-9-]+", tag):
                problems.append(f"FROM: got {image!r}, want a full version tag or a digest")
        if instr["instruction"] in ("ENV", "ARG", "LABEL") and SECRET_WORDS.search(instr["value"]):
            problems.append(f"{instr['instruction']}: looks like a secret: {instr['value']!r}")
    users = [i["value"].strip() for i in parser.structure if i["instruction"] == "USER"]
    if not users:
        problems.append("USER: got none, want a non-root user")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"USER: got {users[-1]!r}, want a non-root user")
    if not any(i["instruction"] == "HEALTHCHECK" for i in parser.structure):
        problems.append("HEALTHCHECK: got none, want one (HEALTHCHECK NONE says so explicitly)")
    return problems


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_lint_clean(path: Path) -> None:
    assert lint_dockerfile(path.read_text()) == []


def test_the_enclave_image() -> None:
    text = (DEPLOY / "container" / "enclave.Dockerfile").read_text()
    parser = dockerfile_parse.DockerfileParser(fileobj=None)
    parser.content = text
    by = {}
    for instr in parser.structure:
        by.setdefault(instr["instruction"], []).append(instr["value"])
    assert by["ENTRYPOINT"] == ['["cctrain-enclave", "serve"]']
    assert "7443" in by["EXPOSE"]
    assert any("/var/lib/cctrain" in v for v in by["VOLUME"])
    assert "torch==2.13.0" in text and "/whl/cpu" in text
    assert "[enclave]" in text
    assert "cctrain-healthcheck" in by["HEALTHCHECK"][0]
    party = dockerfile_parse.DockerfileParser(fileobj=None)
    party.content = (DEPLOY / "container" / "party.Dockerfile").read_text()
    installs = [i["value"] for i in party.structure if "pip install" in i["value"]]
    assert installs and all("torch" not in v.split("&&")[0] for v in installs)
    assert all("[enclave]" not in v for v in installs)


@pytest.mark.parametrize(
    "text,problem",
    [
        ("FROM python:latest\nUSER 1\nHEALTHCHECK NONE\n", "FROM"),
        ("FROM python:3.11-slim\nUSER 1\nHEALTHCHECK NONE\n", "FROM"),
        ("FROM python:3.11.14-slim-bookworm\nHEALTHCHECK NONE\n", "USER"),
        ("FROM python:3.11.14-slim-bookworm\nUSER 1\nUSER root\nHEALTHCHECK NONE\n", "USER"),
        ("FROM python:3.11.14-slim-bookworm\nUSER 1\n", "HEALTHCHECK"),
        ("FROM python:3.11.14-slim-bookworm\nENV API_TOKEN=x\nUSER 1\nHEALTHCHECK NONE\n", "ENV"),
    ],
)
def test_the_dockerfile_lint_catches(text: str, problem: str) -> None:
    problems = lint_dockerfile(text)
    assert len(problems) == 1 and problems[0].startswith(problem + ":"), problems


def test_the_health_check_against_a_real_enclave(tmp_path: Path) -> None:
    from tests.consortium import make_consortium, running_enclave

    script = [sys.executable, str(DEPLOY / "container" / "healthcheck.py")]
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        up = subprocess.run([*script, address], capture_output=True, text=True, timeout=60)
    down = subprocess.run([*script, address], capture_output=True, text=True, timeout=60)
    bad = subprocess.run([*script, "no-port"], capture_output=True, text=True, timeout=60)
    assert (up.returncode, up.stdout.strip()) == (0, f"{address}: SERVING")
    assert down.returncode == 1 and "unhealthy" in down.stderr
    assert bad.returncode == 2 and "address: got 'no-port'" in bad.stderr
