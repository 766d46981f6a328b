"""Deployment artefacts, validated without a cluster or a Docker engine (docs/deploy.md says
what this does and does not prove): the run Jobs that dagster-k8s's own launcher would submit
per lane, every kustomization rendered by kubectl and validated by kubernetes-validate
--strict, every Dockerfile linted by hadolint, the Helm values against the chart's schema."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes
import kubernetes_validate
import pytest
import yaml

from many_models_platform.core.spec import ConfigError, load_config, parse_config
from many_models_platform.defs.lanes import (
    FIRST_KEY_LABEL,
    LANES,
    LAST_KEY_LABEL,
    PROMOTION_SERVICE_ACCOUNT,
    PROMOTION_WRITE_SECRET,
    label_value,
    lane_tags,
)

REPO = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
K8S_VERSION = "1.33.0"  # AKS's supported line; kubernetes-validate bundles 1.25-1.37
IMAGE = "mmpregistry.azurecr.io/many-models-platform:0.1.0"


class CapturingBatchApi:
    """Stands in for the Kubernetes API server (which cannot run here): keeps the Job bodies."""

    def __init__(self):
        self.jobs = []

    def create_namespaced_job(self, body, namespace, **_):
        self.jobs.append((namespace, body))
        return body


@pytest.fixture(scope="module")
def launched_jobs(tmp_path_factory):
    """Per lane, the Job dict K8sRunLauncher.launch_run builds for a ranged run of retail_demand."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.test_utils import create_run_for_test, instance_for_test
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "none", "user": {"token": "unused"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    values = yaml.safe_load((REPO / "k8s/helm/values.yaml").read_text())["runLauncher"]["config"]["k8sRunLauncher"]
    batch = CapturingBatchApi()
    launcher = K8sRunLauncher(
        service_account_name="dagster",  # the chart's own account; runK8sConfig below replaces it
        # as the chart passes it: runK8sConfig's sections, their contents as written in the values
        run_k8s_config={"pod_spec_config": values["runK8sConfig"]["podSpecConfig"]},
        instance_config_map="dagster-instance",
        dagster_home="/opt/dagster/dagster_home",
        job_namespace="mmp",
        load_incluster_config=False,
        kubeconfig_file=str(kubeconfig),
        env_secrets=[s["name"] for s in values["envSecrets"]],
        resources=values.get("resources"),
        k8s_client_batch_api=batch,
    )
    spec = load_config().use_case("retail_demand")
    origin = JobPythonOrigin(
        "retail_demand_pipeline",
        RepositoryPythonOrigin(
            executable_path="/app/.venv/bin/python",
            code_pointer=ModuleCodePointer("many_models_platform.definitions", "defs", "/app"),
            container_image=IMAGE,
        ),
    )
    jobs = {}
    with instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_home"))) as instance:
        launcher.register_instance(instance)
        for lane in LANES:
            key_range = (f"1000.{lane}%20first", "1099.tropicana")
            run = create_run_for_test(
                instance,
                job_name="retail_demand_pipeline",
                tags=lane_tags(spec, lane, key_range),
                job_code_origin=origin,
            )
            launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
            _, body = batch.jobs[-1]
            jobs[lane] = kubernetes.client.ApiClient().sanitize_for_serialization(body)
    return spec, jobs


def test_run_jobs_validate_and_carry_lane_resources_key_labels_and_the_write_secret_only_for_promotion(
    launched_jobs,
):
    spec, jobs = launched_jobs
    assert set(jobs) == set(LANES)
    for lane, job in jobs.items():
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        assert pod["nodeSelector"] == {"agentpool": "runs"}  # the values' runK8sConfig reached the pod
        want = spec.resources.for_lane(lane)
        assert container["resources"] == {"requests": want.requests.as_k8s(), "limits": want.limits.as_k8s()}
        for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
            assert meta["labels"][FIRST_KEY_LABEL] == label_value(f"1000.{lane}%20first")
            assert meta["labels"][LAST_KEY_LABEL] == "1099.tropicana"
            assert meta["annotations"][FIRST_KEY_LABEL] == f"1000.{lane}%20first"  # exact, unshortened
            assert meta["labels"]["mmp/lane"] == lane
        secrets = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        # the stores every run reads from, as the launcher gives them (values.yaml envSecrets)
        assert "mmp-platform-stores" in secrets
        if lane == "promote":
            assert PROMOTION_WRITE_SECRET in secrets
            assert pod["serviceAccountName"] == PROMOTION_SERVICE_ACCOUNT
        else:
            assert PROMOTION_WRITE_SECRET not in json.dumps(job)
            assert pod["serviceAccountName"] == "mmp-runner"
    # a different resource block per lane really reaches the pods
    assert (
        jobs["train"]["spec"]["template"]["spec"]["containers"][0]["resources"]
        != (jobs["promote"]["spec"]["template"]["spec"]["containers"][0]["resources"])
    )


def test_label_values_are_valid_and_distinct_for_hostile_keys():
    keys = ["a", "x" * 80, "x" * 81, "%E2%9C%93.~", "~", "a_", "1.2"]
    labels = [label_value(k) for k in keys]
    assert len(set(labels)) == len(keys)
    assert labels[0] == "a" and labels[-1] == "1.2"  # valid keys stay as they are
    for value in labels:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"k": value}}},
            K8S_VERSION,
            strict=True,
        )
        assert len(value) <= 63


def test_resources_are_validated_when_the_file_is_read():
    raw = yaml.safe_load((REPO / "many_models_platform/use_cases.yaml").read_text())
    body = raw["use_cases"]["group_regression"]
    body["resources"] = {"train": {"requests": {"cpu": "8", "memory": "4Gi"}, "limits": {"cpu": "4"}}}
    with pytest.raises(ConfigError, match=r"resources.train.*requests.cpu \(8\) is above limits.cpu \(4\)"):
        parse_config({"use_cases": {"g": body}})
    body["resources"] = {"score": {"limits": {"memory": "4 GB"}}}
    with pytest.raises(ConfigError, match="not a Kubernetes quantity"):
        parse_config({"use_cases": {"g": body}})
    body["resources"] = {"score": {"limits": {"memory": "512Mi", "cpu": "750m"}}}
    spec = parse_config({"use_cases": {"g": body}}).use_case("g")
    assert spec.resources.score.limits.as_k8s() == {"cpu": "750m", "memory": "512Mi"}
    assert spec.resources.train == load_config().use_case("group_regression").resources.train  # default kept


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in (REPO / "k8s").rglob("kustomization.yaml"))


def test_every_kustomization_renders_and_every_object_validates_strictly():
    dirs = kustomizations()
    assert {d.relative_to(REPO).as_posix() for d in dirs} >= {
        "k8s/base",
        "k8s/overlays/local-kind",
        "k8s/overlays/azure",
    }
    for directory in dirs:
        rendered = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, f"{directory}: {rendered.stderr}"
        objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
        assert objects, directory
        for obj in objects:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            assert obj["kind"] != "Secret" or ("data" not in obj and "stringData" not in obj), (
                f"{directory}: secret {obj['metadata']['name']} is inlined; reference it instead"
            )


def test_every_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    files = sorted((REPO / "docker").glob("*Dockerfile"))
    assert REPO / "docker/Dockerfile" in files
    for dockerfile in files:
        out = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{dockerfile.name}:\n{out.stdout}{out.stderr}"


# Required fields the chart's own values.yaml fills in (helm merges ours over it before validating).
CHART_DEFAULTED = {"PostgreSQL": ["image"], "UserDeployments": ["imagePullSecrets"]}


def chart_values_validator():
    """The chart's schema (excerpt, commit in its $comment) with its remote Kubernetes references
    resolved against the definitions kubernetes-validate bundles, as Helm (draft-07) reads it."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    schema = json.loads((REPO / "k8s/helm/dagster-chart-values.schema.excerpt.json").read_text())
    for name, fields in CHART_DEFAULTED.items():
        required = schema["definitions"][name]["required"]
        schema["definitions"][name]["required"] = [f for f in required if f not in fields]
    bundled = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    # the bundle keeps its definitions under $defs; the chart points into #/definitions
    defs = json.loads((bundled / "_definitions.json").read_text())["$defs"]
    k8s_defs = Resource.from_contents({"definitions": defs, "$defs": defs}, default_specification=DRAFT7)
    registry = Registry().with_resource("https://kubernetesjsonschema.dev/v1.18.0/_definitions.json", k8s_defs)
    return jsonschema.Draft7Validator(schema, registry=registry)


def test_helm_values_fit_the_dagster_charts_schema_and_a_typo_is_caught():
    validator = chart_values_validator()
    values = yaml.safe_load((REPO / "k8s/helm/values.yaml").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]
    assert not errors, errors
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["computeLogManager"]["type"] == "AzureBlobComputeLogManager"
    limits = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {"key": "mmp/use_case", "value": {"applyLimitPerUniqueValue": True}, "limit": 6} in limits
    # no credential in the values: only references to secrets
    assert values["postgresql"]["postgresqlPassword"] == ""
    assert PROMOTION_WRITE_SECRET not in json.dumps(values)

    typo = json.loads(json.dumps(values))
    queued = typo["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    queued["tagConcurencyLimits"] = queued.pop("tagConcurrencyLimits")
    assert list(validator.iter_errors(typo))
    wrong_type = json.loads(json.dumps(values))
    wrong_type["runLauncher"]["config"]["k8sRunLauncher"]["resources"] = {"limitz": {"cpu": "1"}}
    assert list(validator.iter_errors(wrong_type))  # through the Kubernetes definitions, strict


def test_instance_yamls_load_as_dagster_instances(tmp_path, monkeypatch):
    """Both dagster.yaml variants pass Dagster's own config schema (the production one is run for
    real by test_deploy_daemon.py)."""
    from dagster._core.instance.config import dagster_instance_config

    for name in ("dagster.local.yaml", "dagster.production.yaml"):
        home = tmp_path / name
        home.mkdir()
        shutil.copyfile(REPO / "deploy/instance" / name, home / "dagster.yaml")
        config, _ = dagster_instance_config(str(home))
        assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
        limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
        assert any(limit["key"] == "mmp/use_case" for limit in limits)


def dockerfile_runs(path: Path) -> list[str]:
    """The RUN commands of a Dockerfile, continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    return [" ".join(line.split()[1:]) for line in text.splitlines() if line.startswith("RUN ")]


def test_the_images_install_step_installs_the_locked_runtime_into_a_clean_venv(tmp_path):
    """The image's own `uv sync` commands, read from docker/Dockerfile, run into an empty venv
    from the warm uv cache (no network): the lock resolves without dev packages and the code
    location's modules import there, dbt manifest included (the build's `dbt parse` step)."""
    runs = dockerfile_runs(REPO / "docker/Dockerfile")
    syncs = [r for r in runs if r.startswith("uv sync")]
    assert syncs == ["uv sync --frozen --no-dev --no-install-project", "uv sync --frozen --no-dev"]
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_", "MMP_", "DAGSTER_"))}
    env |= {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_LINK_MODE": "hardlink", "UV_OFFLINE": "1"}
    for command in syncs:
        done = subprocess.run(command.split(), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    python = venv / "bin" / "python"
    (parse,) = [r for r in runs if "prepare_manifest" in r]
    code = parse.split('-c "', 1)[1].split('"', 1)[0]
    check = f"{code}\nimport importlib.util as u\nassert u.find_spec('pytest') is None, 'a dev package is in the image'"
    done = subprocess.run(
        [str(python), "-c", check],
        cwd=tmp_path,
        env=env | {"MMP_HOME": str(tmp_path / "mmp")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("manifest.json")
    # the editable project's own modules compiled too (uv compiles only installed packages)
    (compile_step,) = re.findall(r"python -m compileall -q (\S+)", parse)
    assert compile_step == "many_models_platform"
    done = subprocess.run([str(python), "-m", "compileall", "-q", compile_step], cwd=REPO, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_submit_usage_mistakes_exit_2(mmp_home):
    from typer.testing import CliRunner

    from many_models_platform.cli import app

    runner = CliRunner()
    no_submit = runner.invoke(app, ["run", "-u", "group_regression", "--lane", "promote"])
    assert no_submit.exit_code == 2 and "--lane needs --submit" in no_submit.output
    bad_lane = runner.invoke(app, ["run", "-u", "group_regression", "--submit", "--lane", "deploy"])
    assert bad_lane.exit_code == 2 and "unknown lane 'deploy'" in bad_lane.output
    assert "lanes are train, promote, score" in bad_lane.output
