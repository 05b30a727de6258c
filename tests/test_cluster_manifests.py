"""cluster/: KubeRay manifests, the image recipe, the example configs and the submit script.

No Kubernetes here, so the manifests are checked three ways: against KubeRay's own
``ray.io/v1`` CRD schema (vendored in cluster/crd/, unknown fields rejected as
``kubectl apply`` does with its default strict field validation), against the rules
KubeRay's operator enforces in Go (ray-operator/controllers/ray/utils/validation.go), and
against what the pipeline configs ask of the cluster (GPUs per worker, teachers at once).
Each ``*_problems`` function returns readable problems; the last tests feed them broken
copies to show they bite.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pafo_ray.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
GPU = "nvidia.com/gpu"
# KubeRay's limits (utils/constant.go): RayCluster names feed pod and service names.
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RUNTIME_ENV_FIELDS = {"working_dir", "py_modules", "py_executable", "excludes", "pip", "uv",
                      "conda", "container", "image_uri", "env_vars", "config", "java_jars",
                      "nsight", "mpi", "rocprof_sys"}


# ------------------------------------------------------------------ reading the files


def load_yaml_docs(path: Path) -> list:
    with open(path) as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def manifest(name: str) -> dict:
    docs = load_yaml_docs(CLUSTER / name)
    assert len(docs) == 1, f"{name}: expected one object, found {len(docs)}"
    return docs[0]


def dockerfile() -> dict:
    """What the Dockerfile declares: its IMAGE tag comment, ARG defaults, WORKDIR, RUN text."""
    text = (CLUSTER / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    image = re.findall(r"^#\s*IMAGE:\s*(\S+)", text, flags=re.M)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S*)", logical, flags=re.M))
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", logical, flags=re.M)
    runs = re.findall(r"^RUN\s+(.*)$", logical, flags=re.M)
    froms = re.findall(r"^FROM\s+(\S+)", logical, flags=re.M)
    assert len(image) == 1, "cluster/Dockerfile must document its tag once as '# IMAGE: <tag>'"
    assert workdirs, "cluster/Dockerfile sets no WORKDIR"
    return {"image": image[0], "args": args, "workdir": workdirs[-1], "runs": runs,
            "froms": froms, "text": text}


def cluster_spec(obj: dict) -> dict:
    return obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]


def groups(obj: dict) -> list:
    """[(name, group spec)] for the head and every worker group."""
    spec = cluster_spec(obj)
    return [("head", spec["headGroupSpec"])] + [
        (g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])]


def containers(obj: dict) -> list:
    """[(where, container)] for every container the manifest defines, submitter included."""
    pods = [(name, g["template"]["spec"]) for name, g in groups(obj)]
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
        pods.append(("submitter", obj["spec"]["submitterPodTemplate"]["spec"]))
    found = []
    for name, pod in pods:
        for key in ("initContainers", "containers"):
            for c in pod.get(key) or []:
                found.append((f"{name}/{c.get('name', '?')}", c))
    return found


def quantity(value) -> float:
    """A Kubernetes quantity ("500m", "16Gi", 2) as a number (cores or bytes)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in units.keys() | {""}, f"not a quantity: {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def gpu_groups(obj: dict) -> list:
    return [(n, g) for n, g in groups(obj)[1:] if _gpu_limit(g) > 0]


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's RayContainerIndex


def _gpu_limit(group: dict) -> float:
    return quantity(_ray_container(group).get("resources", {}).get("limits", {}).get(GPU, 0))


def entrypoint(obj: dict) -> tuple:
    """(config path in the repo, overrides) of a RayJob's `pafo-ray run --config ...`."""
    argv = shlex.split(obj["spec"]["entrypoint"])
    assert argv[:2] == ["pafo-ray", "run"], f"entrypoint must start with 'pafo-ray run': {argv}"
    assert "--config" in argv, "the entrypoint names no --config"
    i = argv.index("--config")
    path = argv[i + 1]
    overrides = [a for a in argv[2:i] + argv[i + 2:] if not a.startswith("--")]
    if path.startswith("/"):
        # The image holds the repo at its WORKDIR; map the path back to this checkout.
        workdir = dockerfile()["workdir"].rstrip("/") + "/"
        assert path.startswith(workdir), (
            f"entrypoint config {path} is not under the image's WORKDIR {workdir}")
        path = path[len(workdir):]
    return REPO / path, overrides


# ------------------------------------------------------------------ the checks


def strict(schema):
    """An OpenAPI v3 CRD schema as JSON Schema that rejects unknown fields.

    The API server would prune unknown fields silently; ``kubectl apply`` (strict field
    validation, the default since 1.27) refuses them, and a typo such as ``rayStartParam``
    must not pass here either.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schema(kind: str) -> dict:
    with open(CLUSTER / "crd" / "rayjob.v1.schema.json") as fh:
        rayjob = json.load(fh)
    if kind == "RayJob":
        return strict(rayjob)
    # RayJob.spec.rayClusterSpec is KubeRay's RayClusterSpec type, a RayCluster's spec.
    return strict({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": rayjob["properties"]["spec"]["properties"]["rayClusterSpec"],
        },
    })


def schema_problems(obj: dict) -> list:
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(obj["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)]


def kuberay_problems(obj: dict) -> list:
    """The checks KubeRay's validation.go makes before it creates anything, plus ours."""
    problems = []
    if obj.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion is {obj.get('apiVersion')!r}, not ray.io/v1")
    name = obj.get("metadata", {}).get("name", "")
    limit = MAX_RAYJOB_NAME if obj["kind"] == "RayJob" else MAX_RAYCLUSTER_NAME
    if not DNS1035.match(name) or len(name) > limit:
        problems.append(f"metadata.name {name!r} must be a DNS-1035 label of <= {limit} chars")
    spec = cluster_spec(obj)
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    head = spec.get("headGroupSpec", {})
    if not head.get("template", {}).get("spec", {}).get("containers"):
        problems.append("headGroupSpec has no container")
    # Work stays off the head: GCS, dashboard and the job driver live there.
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        problems.append('headGroupSpec.rayStartParams["num-cpus"] must be the string "0"')
    names = [n for n, _ in groups(obj)[1:]]
    if len(set(names)) != len(names):
        problems.append(f"duplicate worker groupName in {names}")
    for gname, g in groups(obj):
        params = g.get("rayStartParams", {})
        if any(not isinstance(v, str) for v in params.values()):
            problems.append(f"{gname}: rayStartParams values must be strings: {params}")
        if "labels" in params:
            problems.append(f"{gname}: rayStartParams['labels'] is not supported by KubeRay")
        if g.get("resources") and any(params.get(k) for k in
                                      ("num-cpus", "num-gpus", "memory", "resources")):
            problems.append(f"{gname}: resources set in both rayStartParams and resources")
        if gname == "head":
            continue
        lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas")
        if not autoscaling and (lo is None or hi is None):
            problems.append(f"{gname}: minReplicas and maxReplicas are required without autoscaling")
        if lo is not None and hi is not None and not (0 <= lo <= hi):
            problems.append(f"{gname}: need 0 <= minReplicas ({lo}) <= maxReplicas ({hi})")
        if n is not None and lo is not None and hi is not None and not (lo <= n <= hi):
            problems.append(f"{gname}: replicas {n} outside [{lo}, {hi}]")
    auth = spec.get("authOptions", {})
    # Ray 2.60 turns token auth on by default: either KubeRay hands every pod one token,
    # or every Ray container says what to do itself.
    if auth.get("mode") != "token":
        modes = {next((e.get("value") for e in c.get("env", []) if e["name"] == "RAY_AUTH_MODE"),
                      None) for _, c in containers(obj)}
        if len(modes) != 1 or None in modes:
            problems.append("set authOptions.mode: token (or the same RAY_AUTH_MODE in every "
                            "container), else each pod makes its own token and none can join")
    return problems


def rayjob_problems(obj: dict) -> list:
    spec = obj["spec"]
    problems = []
    for key in ("entrypoint", "runtimeEnvYAML", "shutdownAfterJobFinishes",
                "ttlSecondsAfterFinished", "submissionMode", "backoffLimit",
                "activeDeadlineSeconds", "rayClusterSpec"):
        if key not in spec:
            problems.append(f"spec.{key} is missing")
    if spec.get("ttlSecondsAfterFinished", 0) and not spec.get("shutdownAfterJobFinishes"):
        problems.append("ttlSecondsAfterFinished is set without shutdownAfterJobFinishes: true")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes must be true: the GPUs go back after the run")
    if spec.get("submissionMode") != "K8sJobMode":
        problems.append(f"submissionMode {spec.get('submissionMode')!r}, expected K8sJobMode")
    backoff = spec.get("backoffLimit")
    if not isinstance(backoff, int) or backoff < 0:
        problems.append(f"backoffLimit {backoff!r} must be an integer >= 0")
    deadline = spec.get("activeDeadlineSeconds")
    if not isinstance(deadline, int) or deadline <= 0:
        problems.append(f"activeDeadlineSeconds {deadline!r} must be a positive integer")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if not isinstance(ttl, int) or ttl < 0:
        problems.append(f"ttlSecondsAfterFinished {ttl!r} must be an integer >= 0")
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}
    except yaml.YAMLError as exc:
        return problems + [f"runtimeEnvYAML is not YAML: {exc}"]
    problems += runtime_env_problems(env, "runtimeEnvYAML")
    if "working_dir" in env:
        problems.append("runtimeEnvYAML.working_dir: the image holds the package; a local "
                        "working_dir cannot be uploaded by the K8s submitter")
    return problems


def runtime_env_problems(env, where: str) -> list:
    if not isinstance(env, dict):
        return [f"{where}: expected a mapping, got {type(env).__name__}"]
    problems = [f"{where}: unknown runtime_env field {k!r}" for k in env
                if k not in RUNTIME_ENV_FIELDS]
    for key, value in (env.get("env_vars") or {}).items():
        if not isinstance(value, str):
            problems.append(f"{where}.env_vars.{key}: Ray needs a string, got {value!r}")
    return problems


def container_problems(obj: dict) -> list:
    problems = []
    for where, c in containers(obj):
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(part) or {})
            if missing:
                problems.append(f"{where}: resources.{part} lacks {sorted(missing)}")
        for key in ("cpu", "memory"):
            req, lim = (res.get("requests") or {}).get(key), (res.get("limits") or {}).get(key)
            if req is not None and lim is not None and quantity(req) > quantity(lim):
                problems.append(f"{where}: {key} request {req} exceeds its limit {lim}")
        gpu_req, gpu_lim = (res.get("requests") or {}).get(GPU), (res.get("limits") or {}).get(GPU)
        if gpu_req is not None and gpu_req != gpu_lim:
            problems.append(f"{where}: {GPU} request {gpu_req} must equal its limit {gpu_lim}")
        if gpu_lim is not None and (quantity(gpu_lim) < 1 or quantity(gpu_lim) % 1):
            problems.append(f"{where}: {GPU} limit must be a whole number >= 1, got {gpu_lim}")
    return problems


def gpu_group_problems(obj: dict) -> list:
    problems = []
    gpu = gpu_groups(obj)
    cpu = [(n, g) for n, g in groups(obj)[1:] if _gpu_limit(g) == 0]
    if len(gpu) != 1:
        problems.append(f"expected one GPU worker group, found {[n for n, _ in gpu]}")
    if not cpu:
        problems.append("no CPU worker group (Ray Data prepare runs there)")
    for gname, g in gpu:
        tolerations = g["template"]["spec"].get("tolerations") or []
        if not any(t.get("key") == GPU and t.get("effect", "NoSchedule") == "NoSchedule"
                   for t in tolerations):
            problems.append(f"{gname}: no toleration for the {GPU}:NoSchedule taint")
    if obj["kind"] == "RayCluster":
        for gname, g in gpu:
            if g.get("minReplicas") != 0:
                problems.append(f"{gname}: minReplicas must be 0 so idle GPUs are given back")
    return problems


def budget_problems(obj: dict, cfg: PipelineConfig) -> list:
    """Does the GPU group hold what the pipeline config asks for, stage by stage?"""
    gpu = gpu_groups(obj)
    if len(gpu) != 1:
        return ["no single GPU group to check the budget against"]
    _, g = gpu[0]
    per_pod = _gpu_limit(g)
    pod_cpus = quantity(_ray_container(g)["resources"]["limits"]["cpu"])
    # A RayJob's cluster has its fixed size; a RayCluster may autoscale up to maxReplicas.
    pods = g["maxReplicas"] if cluster_spec(obj).get("enableInTreeAutoscaling") else g["replicas"]
    total = per_pod * pods
    teachers = cfg.prepare.num_groups  # one teacher per group, all training at once
    problems = []

    def need(stage, count, gpus_each, cpus_each):
        if gpus_each <= 0:
            return
        if gpus_each > per_pod:
            problems.append(f"{stage}: {gpus_each} GPU per worker, a GPU pod has {per_pod}")
        if cpus_each > pod_cpus:
            problems.append(f"{stage}: {cpus_each} CPUs per worker, a GPU pod has {pod_cpus}")
        if count * gpus_each > total:
            problems.append(f"{stage}: {count} x {gpus_each} GPU at once, the GPU group "
                            f"has {pods} pods x {per_pod} = {total}")

    if cfg.train.use_gpu:
        need("teachers", teachers * cfg.train.num_workers, 1.0, cfg.train.cpus_per_worker)
    need("embed", cfg.embed.num_actors, cfg.embed.num_gpus_per_actor, cfg.embed.cpus_per_actor)
    need("margins", teachers * cfg.margins.num_actors, cfg.margins.num_gpus_per_actor, 0)
    need("tune", cfg.tune.max_concurrent_trials, cfg.tune.gpus_per_trial,
         cfg.tune.cpus_per_trial)
    for stage, each in (("embed", cfg.embed.num_gpus_per_actor),
                        ("margins", cfg.margins.num_gpus_per_actor)):
        if each > 1:
            problems.append(f"{stage}: {each} GPUs per actor; one actor uses at most one GPU")
    return problems


# ------------------------------------------------------------------ tests: files parse

ALL_YAML = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_cluster_folder_has_the_expected_files():
    for name in ("Dockerfile", "rayjob.yaml", "raycluster.yaml", "gpu.yaml", "local.yaml",
                 "runtime_env.yaml", "submit.sh", "README.md", "crd/rayjob.v1.schema.json"):
        assert (CLUSTER / name).is_file(), f"cluster/{name} is missing"
    assert len(ALL_YAML) >= 5


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_under_cluster_parses(path):
    docs = load_yaml_docs(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: no mapping inside"


@pytest.mark.parametrize("name", ["gpu.yaml", "local.yaml"])
def test_pipeline_configs_bind(name):
    cfg = load_config(str(CLUSTER / name))
    assert isinstance(cfg, PipelineConfig)


# ------------------------------------------------------------------ tests: manifests


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_manifest_validates_against_kuberay_crd_schema(name):
    obj = manifest(name)
    assert obj["kind"] == {"rayjob.yaml": "RayJob", "raycluster.yaml": "RayCluster"}[name]
    assert schema_problems(obj) == []


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_manifest_passes_kuberay_operator_rules(name):
    assert kuberay_problems(manifest(name)) == []


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_every_container_has_requests_and_limits(name):
    obj = manifest(name)
    assert len(containers(obj)) >= 3
    assert container_problems(obj) == []


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_gpu_and_cpu_worker_groups(name):
    assert gpu_group_problems(manifest(name)) == []


def test_rayjob_fields():
    obj = manifest("rayjob.yaml")
    assert rayjob_problems(obj) == []
    assert obj["spec"]["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


def test_raycluster_autoscales():
    spec = manifest("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    # The autoscaler sidecar is a container too: it gets its resources from here.
    assert {"cpu", "memory"} <= set(options["resources"]["requests"])
    assert {"cpu", "memory"} <= set(options["resources"]["limits"])
    assert options.get("idleTimeoutSeconds", 60) > 0


def test_rayjob_entrypoint_config_exists_binds_and_stores_remotely():
    obj = manifest("rayjob.yaml")
    path, overrides = entrypoint(obj)
    assert path.is_file(), f"the entrypoint's config {path} is not in the repo"
    cfg = load_config(str(path), overrides)
    # The cluster is deleted after the job: results must go to object storage.
    assert cfg.run.storage_path.startswith(("s3://", "gs://")), cfg.run.storage_path


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_gpu_group_holds_what_the_gpu_config_asks(name):
    obj = manifest(name)
    if obj["kind"] == "RayJob":
        path, overrides = entrypoint(obj)
    else:  # the interactive cluster is documented with cluster/gpu.yaml
        path, overrides = CLUSTER / "gpu.yaml", []
    cfg = load_config(str(path), overrides)
    assert budget_problems(obj, cfg) == []


def test_gpu_config_uses_the_gpus():
    cfg = load_config(str(CLUSTER / "gpu.yaml"))
    assert cfg.train.use_gpu and cfg.train.num_workers >= 1
    assert 0 < cfg.embed.num_gpus_per_actor <= 1
    assert 0 < cfg.margins.num_gpus_per_actor <= 1
    assert 0 < cfg.tune.gpus_per_trial < 1, "trials share a GPU (fractional gpus_per_trial)"
    assert cfg.model.backbone not in ("builtin-tiny",), "the GPU example uses a real backbone"
    assert cfg.run.storage_path.startswith(("s3://", "gs://"))


def test_local_config_needs_no_gpu():
    cfg = load_config(str(CLUSTER / "local.yaml"))
    assert not cfg.train.use_gpu
    assert cfg.embed.num_gpus_per_actor == cfg.margins.num_gpus_per_actor == 0
    assert cfg.tune.gpus_per_trial == 0
    assert "://" not in cfg.run.storage_path


# ------------------------------------------------------------------ tests: image


def test_manifest_images_are_the_dockerfile_tag():
    tag = dockerfile()["image"]
    for name in ("rayjob.yaml", "raycluster.yaml"):
        images = {c["image"] for _, c in containers(manifest(name))}
        assert images == {tag}, f"{name}: images {images} != Dockerfile tag {tag}"
    readme = (CLUSTER / "README.md").read_text()
    assert f"-t {tag}" in readme, "cluster/README.md does not build the manifests' tag"


def test_ray_version_agrees_everywhere():
    from packaging.requirements import Requirement

    df = dockerfile()
    ray_version = df["args"]["RAY_VERSION"]
    base = df["args"]["BASE_IMAGE"]
    match = re.fullmatch(r"rayproject/ray:([0-9.]+)-py3(\d+)-(gpu|cpu|cu\d+)", base)
    assert match, f"BASE_IMAGE {base} is not a rayproject/ray:<ver>-py3XX-<gpu|cpu|cuXXX> tag"
    assert match.group(1) == ray_version, f"BASE_IMAGE {base} vs RAY_VERSION {ray_version}"
    assert match.group(3) != "cpu", "the manifests' GPU group needs the GPU base image"
    for name in ("rayjob.yaml", "raycluster.yaml"):
        assert cluster_spec(manifest(name))["rayVersion"] == ray_version, name
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    assert deps["ray"].specifier.contains(ray_version), f"pyproject's {deps['ray']}"
    assert deps["torch"].specifier.contains(df["args"]["TORCH_VERSION"]), f"{deps['torch']}"
    python = f"3.{match.group(2)}"
    assert Requirement(f"x{project['requires-python']}").specifier.contains(python + ".0")


def test_dockerfile_installs_the_package_without_downloading_models():
    df = dockerfile()
    assert df["froms"] == ["${BASE_IMAGE}"]
    runs = " ".join(df["runs"])
    assert re.search(r'"torch==\$\{TORCH_VERSION\}"', runs), "torch is not pinned"
    assert re.search(r"pip install .*-c \S*constraints", runs), "Ray/torch not held by constraints"
    assert df["workdir"] in runs, "the repo at WORKDIR is not what pip installs"
    for banned in ("from_pretrained", "snapshot_download", "huggingface-cli", "hf download"):
        assert banned not in runs, f"the image build downloads a model ({banned})"
    assert not re.search(r"^ENV\s+.*RAY_AUTH_MODE", df["text"], flags=re.M), (
        "RAY_AUTH_MODE belongs to the cluster (authOptions), not baked into the image")
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignore)


# ------------------------------------------------------------------ tests: job submission


def test_runtime_env_file_is_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert runtime_env_problems(env, "runtime_env.yaml") == []
    assert "working_dir" not in env, "submit passes --working-dir; keep it out of the file"
    RuntimeEnv(**env)  # Ray's own type checks (env_vars: Dict[str, str], pip, excludes ...)
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_runtime_envs_do_not_clash_with_the_drivers_own():
    """Ray refuses to start a job's driver whose ray.init runtime_env sets an env var the
    job's runtime_env sets too ("Failed to merge the Job's runtime env"): seen with
    `ray job submit` when both set RAY_TRAIN_ENABLE_PREEMPTION_WATCHER."""
    from pafo_ray import ray_session

    driver_keys = set(getattr(ray_session, "_QUIET_ENV", {}))
    job_envs = {
        "runtime_env.yaml": yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text()),
        "rayjob.yaml runtimeEnvYAML": yaml.safe_load(
            manifest("rayjob.yaml")["spec"]["runtimeEnvYAML"]),
    }
    for where, env in job_envs.items():
        clash = driver_keys & set(env.get("env_vars") or {})
        assert not clash, f"{where} sets {sorted(clash)}, which the driver's ray.init sets too"


def _submit(*args):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(["bash", str(CLUSTER / "submit.sh"), *args], cwd=REPO / "tests",
                          env=env, capture_output=True, text=True, timeout=60)


def test_submit_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(CLUSTER / "submit.sh")], check=True)
    assert os.access(CLUSTER / "submit.sh", os.X_OK), "cluster/submit.sh is not executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed "
                    "(bash -n above still runs)")
def test_submit_script_passes_shellcheck():
    done = subprocess.run(["shellcheck", str(CLUSTER / "submit.sh")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout


def test_submit_script_builds_the_documented_command():
    done = _submit("--dry-run", "--address", "http://ray-head.example:8265",
                   "--config", "cluster/gpu.yaml", "run.run_name=try2")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "results: s3://YOUR-BUCKET/pafo_runs/try2/  (report.md, metrics.json, plots/; one folder per stage)"
    argv = shlex.split(out[-1])
    assert argv[:5] == ["ray", "job", "submit", "--address", "http://ray-head.example:8265"]
    assert argv[argv.index("--working-dir") + 1] == "."
    assert argv[argv.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
    assert argv[argv.index("--") + 1:] == ["pafo-ray", "run", "--config", "cluster/gpu.yaml",
                                           "run.run_name=try2"]


def test_submit_script_pins_local_results_to_the_checkout_and_merges_env():
    done = _submit("--dry-run", "--env", "HF_HUB_OFFLINE=0")
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout.splitlines()[-1])
    assert argv[argv.index("--address") + 1] == "http://127.0.0.1:8265"
    assert f"run.storage_path={REPO}/pafo_runs" in argv
    env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "0" and env["excludes"]


def test_submit_script_rejects_bad_overrides_before_submitting():
    done = _submit("--dry-run", "train.no_such_key=1")
    assert done.returncode == 2 and "train.no_such_key" in done.stderr
    done = _submit("--dry-run", "--config", "cluster/missing.yaml")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_readme_covers_build_apply_logs_and_results():
    text = (CLUSTER / "README.md").read_text()
    for needle in ("docker build -f cluster/Dockerfile", "kubectl apply -f cluster/rayjob.yaml",
                   "kubectl logs", "ray job logs", "report.md", "metrics.json",
                   "num-cpus", "train.num_workers", "IRSA", "Workload Identity"):
        assert needle in text, f"cluster/README.md does not mention {needle!r}"


# ------------------------------------------------------------------ tests: the checks bite


def _broken(name, edit):
    obj = copy.deepcopy(manifest(name))
    edit(obj)
    return obj


def test_schema_check_rejects_typos_and_bad_values():
    def typo(o):
        head = o["spec"]["rayClusterSpec"]["headGroupSpec"]
        head["rayStartParam"] = head.pop("rayStartParams")

    def bad_quantity(o):
        g = o["spec"]["rayClusterSpec"]["workerGroupSpecs"][-1]
        _ray_container(g)["resources"]["limits"][GPU] = "one"

    def bad_mode(o):
        o["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "on"

    for edit in (typo, bad_quantity, bad_mode):
        assert schema_problems(_broken("rayjob.yaml", edit)), edit.__name__
    assert schema_problems(_broken("raycluster.yaml", lambda o: o["spec"].update(enableInTreeAutoscale=True)))


def test_rule_checks_reject_broken_manifests():
    def head_cpus(o):
        cluster_spec(o)["headGroupSpec"]["rayStartParams"]["num-cpus"] = "4"

    def ttl_without_shutdown(o):
        o["spec"]["shutdownAfterJobFinishes"] = False

    def no_toleration(o):
        gpu_groups(o)[0][1]["template"]["spec"].pop("tolerations")

    def no_limits(o):
        _ray_container(cluster_spec(o)["workerGroupSpecs"][0])["resources"].pop("limits")

    def no_auth(o):
        cluster_spec(o).pop("authOptions")

    def replicas_out_of_range(o):
        gpu_groups(o)[0][1]["replicas"] = 9

    assert kuberay_problems(_broken("rayjob.yaml", head_cpus))
    assert kuberay_problems(_broken("rayjob.yaml", no_auth))
    assert kuberay_problems(_broken("rayjob.yaml", replicas_out_of_range))
    assert rayjob_problems(_broken("rayjob.yaml", ttl_without_shutdown))
    assert gpu_group_problems(_broken("raycluster.yaml", no_toleration))
    assert container_problems(_broken("raycluster.yaml", no_limits))
    assert gpu_group_problems(_broken("raycluster.yaml",
                                      lambda o: gpu_groups(o)[0][1].update(minReplicas=1)))


def test_budget_check_rejects_configs_the_gpu_group_cannot_hold():
    obj = manifest("rayjob.yaml")
    path, overrides = entrypoint(obj)
    too_many_teachers = load_config(str(path), overrides + ["train.num_workers=2"])
    assert any("teachers" in p for p in budget_problems(obj, too_many_teachers))
    two_gpu_actors = load_config(str(path), overrides + ["embed.num_gpus_per_actor=2"])
    assert any("embed" in p for p in budget_problems(obj, two_gpu_actors))
    crowded_tune = load_config(str(path), overrides + ["tune.max_concurrent_trials=16"])
    assert any("tune" in p for p in budget_problems(obj, crowded_tune))
    one_gpu_pod = _broken("rayjob.yaml", lambda o: gpu_groups(o)[0][1].update(
        replicas=1, minReplicas=1, maxReplicas=1))
    assert any("teachers" in p for p in budget_problems(one_gpu_pod, load_config(str(path))))
