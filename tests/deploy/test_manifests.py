"""The Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate),
and agree with the server: probe paths it serves, a grace period longer than its drain."""

from pathlib import Path

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).parents[2] / "deploy" / "k8s"
VERSION = "1.30.0"
CORE = ["deployment.yaml", "service.yaml", "hpa.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def test_every_manifest_is_checked():
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted([*CORE, "kserve-inferenceservice.yaml"])


@pytest.mark.parametrize("name", CORE)
def test_core_manifests_match_the_schemas(name):
    kv.validate(load(name), VERSION, strict=True)


def test_validator_rejects_a_typo():
    bad = load("deployment.yaml")
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kv.ValidationError, match="paht"):
        kv.validate(bad, VERSION, strict=True)


def test_inference_service_predictor_is_a_valid_pod_spec():
    """KServe's InferenceService is a CRD, not in the core schemas: its predictor is a PodSpec
    plus KServe's scaling fields, so the PodSpec part is validated as a Pod."""
    isvc = load("kserve-inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = dict(isvc["spec"]["predictor"])
    kserve_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
    pod_spec = {k: v for k, v in predictor.items() if k not in kserve_fields}
    assert predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": isvc["metadata"], "spec": pod_spec}
    kv.validate(pod, VERSION, strict=True)
    container = pod_spec["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["TRUNKLINE_PORT"]) == container["ports"][0]["containerPort"] == 8080


def test_probes_and_grace_period_agree_with_the_server():
    from server.app import create_app
    from server.settings import Settings

    paths = set(create_app().openapi()["paths"])
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in paths
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = Settings.model_fields
    assert ports == {"http": defaults["port"].default, "grpc": defaults["grpc_port"].default}
    service = load("service.yaml")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    env = {e["name"]: e["value"] for e in container["env"]}
    drain = float(env.get("TRUNKLINE_DRAIN_TIMEOUT_S", Settings().drain_timeout_s))
    assert spec["terminationGracePeriodSeconds"] > drain
    for name in env:
        assert name.removeprefix("TRUNKLINE_").lower() in Settings.model_fields, name
