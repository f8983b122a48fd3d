"""The deployment artefacts under deploy/, validated with the tools their engines use
and then *run*: each artefact's coordinator and node commands (args, environment,
keys) are started as the real `wasmesh` binary on loopback, the nodes register with
the coordinator, a job runs through the fleet, and every health check or probe the
artefact names answers 200.

No Kubernetes, Nomad, Docker daemon or systemd PID 1 runs here (deploy/README.md):
what those engines would do with the files is checked against their own validators
(helm lint, kubernetes-validate --strict, the compose-spec schema, python-hcl2,
systemd-analyze verify/security), and the commands they would run are run.

Run by scripts/test.sh, which installs the tools; `WASMESH_BIN` names the binary
(default target/debug/wasmesh), `HELM` the helm binary.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(os.environ.get("WASMESH_BIN", ROOT / "target/debug/wasmesh"))
HELM = os.environ.get("HELM", "helm")
GUEST = ROOT / "target/guests/wasm32-wasip1/release/hash.wasm"
KEYS = {
    "api": "tenant-key-0123456789abcdef",
    "admin": "admin-key-0123456789abcdef",
    "node": "node-key-0123456789abcdef",
}
# The chart's values a user sets at install.
HELM_SET = f"keys.apiKey={KEYS['api']},keys.adminKey={KEYS['admin']},keys.nodeKey={KEYS['node']}"
WAIT = 30.0


def run(*cmd, check=True, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, key=None):
    request = urllib.request.Request(url, headers={"x-api-key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def eventually(check, what):
    deadline = time.monotonic() + WAIT
    pause = 0.01
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {WAIT}s: {what}"
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


class Fleet:
    """The processes one artefact describes, started from its own args and env."""

    def __init__(self):
        self.procs = []
        self.dir = Path(tempfile.mkdtemp(prefix="wasmesh-deploy-"))

    def start(self, args, env, name):
        """Starts `wasmesh ARGS` with ENV (the artefact's, made local: see `localise`);
        returns its base URL once it listens."""
        log = open(self.dir / f"{name}.log", "w")
        full_env = {"PATH": os.environ["PATH"], "RUST_LOG": "warn", **env}
        proc = subprocess.Popen([str(BIN), *args], stdout=subprocess.PIPE, stderr=log, text=True, env=full_env)
        self.procs.append(proc)
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"{name}: {line!r}; log: {(self.dir / f'{name}.log').read_text()}"
        return match.group(1)

    def data_dir(self, name):
        path = self.dir / name
        path.mkdir(exist_ok=True)
        return str(path)

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def fleet():
    f = Fleet()
    yield f
    f.stop()


def localise(values, fleet, name, port, coordinator=None):
    """An artefact's args or env values, made to run here: its listen address on a free
    loopback port, its data directory a temporary one, the coordinator it names the one
    started here. Everything else is kept as written."""

    def one(v):
        v = re.sub(r"0\.0\.0\.0:\d+|127\.0\.0\.1:\d+", f"127.0.0.1:{port}", v)
        v = re.sub(r"^/var/lib/wasmesh$|^/alloc/data/wasmesh$", fleet.data_dir(name), v)
        if coordinator:
            v = re.sub(r"^http://[^/]*:9100$", coordinator, v)
            # A node advertises where it listens.
            v = re.sub(r"^http://[^/]+:9000$", f"http://127.0.0.1:{port}", v)
        return v

    if isinstance(values, dict):
        return {k: one(v) for k, v in values.items()}
    return [one(v) for v in values]


def check_fleet(coordinator, nodes, fleet, probes=("/health", "/compute/ready")):
    """The nodes registered under their ids, a job runs through the fleet, and every
    probe path answers 200 without a key on each process."""
    ids = sorted(nodes)
    listed = eventually(
        lambda: (lambda s, b: s == 200 and sorted(n["id"] for n in json.loads(b)["nodes"]) == ids and b)(
            *get(f"{coordinator}/api/v1/cluster/nodes", KEYS["admin"])
        ),
        f"nodes {ids} registered",
    )
    assert all(n["state"] in ("ready", "busy") for n in json.loads(listed)["nodes"]), listed
    for url in [coordinator, *nodes.values()]:
        for path in probes:
            status, body = get(url + path)
            assert status == 200, f"{url}{path}: {status} {body}"
    for url in nodes.values():
        # A fleet node serves no client API without a key (issue 25, item 1); its
        # /metrics answers the operator's key (Prometheus), not a tenant's.
        assert get(url + "/compute/sysinfo")[0] == 401, url
        assert get(url + "/metrics", KEYS["admin"])[0] == 200, url
        assert get(url + "/metrics", KEYS["api"])[0] in (401, 403), url
    server = ["--server", coordinator, "--api-key", KEYS["api"]]
    worker = run(BIN, "upload", GUEST, *server).stdout.strip()
    shard = fleet.dir / "input.txt"
    shard.write_text("deployed")
    got = run(BIN, "submit", worker, "--input", shard, "--wait", *server).stdout.strip()
    expected = run(BIN, "exec", GUEST, "--input", shard).stdout.strip()
    assert got == expected and len(got) == 64, (got, expected)


# ---- Kubernetes: the chart and the kustomize base ----------------------------------


def k8s_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def kube_validate(rendered, tmp_path):
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    out = run("kubernetes-validate", "--strict", "--quiet", path, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def container_env(container, secrets):
    """A container's environment as Kubernetes would set it: secret references from
    `secrets`, the downward API's pod name and namespace, $(VAR) expanded."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            value = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
        else:
            value = {"metadata.name": env.get("_POD"), "metadata.namespace": "default"}[
                item["valueFrom"]["fieldRef"]["fieldPath"]
            ]
        env[item["name"]] = value
    env.pop("_POD", None)
    return env


def run_statefulsets(docs, fleet, secrets):
    """Starts the coordinator and every node replica of rendered manifests; checks the
    fleet. The node ids are the pod names."""
    sets = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "StatefulSet"}
    coord = sets["coordinator"]["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    env = container_env(coord, secrets)
    coordinator = fleet.start(localise(coord["args"], fleet, "coordinator", port), localise(env, fleet, "c", port), "coordinator")
    node_set = sets["node"]
    container = node_set["spec"]["template"]["spec"]["containers"][0]
    nodes = {}
    for i in range(node_set["spec"]["replicas"]):
        pod = f"{node_set['metadata']['name']}-{i}"
        port = free_port()
        env = container_env({"env": [{"name": "_POD", "value": pod}, *container["env"]]}, secrets)
        assert env["WASMESH_NODE_ID"] == pod
        args = localise(container["args"], fleet, pod, port)
        nodes[pod] = fleet.start(args, localise(env, fleet, pod, port, coordinator), pod)
    probes = {c["livenessProbe"]["httpGet"]["path"] for c in (coord, container)} | {
        c["readinessProbe"]["httpGet"]["path"] for c in (coord, container)
    }
    check_fleet(coordinator, nodes, fleet, sorted(probes))


def helm(*args, check=True):
    return run(HELM, *args, check=check)


def test_the_chart_lints_validates_strictly_and_runs(fleet, tmp_path):
    chart = DEPLOY / "helm/wasmesh"
    lint = helm("lint", "--strict", chart, "--set", HELM_SET)
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    rendered = helm("template", "t", chart, "--set", HELM_SET).stdout
    kube_validate(rendered, tmp_path)
    docs = k8s_docs(rendered)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["Secret", "Service", "Service", "StatefulSet", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy", "Pod"]
    ), kinds
    test_pod = next(d for d in docs if d["kind"] == "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    for d in docs:
        if d["kind"] == "StatefulSet":
            pod = d["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["containers"][0]["resources"]["requests"], d["metadata"]["name"]
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    run_statefulsets(docs, fleet, secret)
    # `helm test`'s pod runs the binary's own probe against the coordinator.
    assert test_pod["spec"]["containers"][0]["args"][:2] == ["health", "--ready"]


def test_the_charts_schema_and_required_keys_refuse_bad_values():
    chart = DEPLOY / "helm/wasmesh"
    for bad in ["node.replicas=-1", "node.port=70000", "keys.apiKey=short", "serviceMonitor.interval=often"]:
        out = helm("template", "t", chart, "--set", HELM_SET, "--set", bad, check=False)
        assert out.returncode != 0 and "schema" in out.stderr.lower(), (bad, out.stderr)
    out = helm("template", "t", chart, check=False)
    assert out.returncode != 0 and "keys.apiKey (or keys.existingSecret) is required" in out.stderr, out.stderr
    # With an existing Secret the chart makes none and references that one.
    docs = k8s_docs(helm("template", "t", chart, "--set", "keys.existingSecret=mine").stdout)
    assert not [d for d in docs if d["kind"] == "Secret"]
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in docs
        if d["kind"] == "StatefulSet"
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"mine"}, refs


def render_chart(values, tmp_path):
    """The chart (release `t`) rendered with the keys and `values`, validated strictly;
    its objects."""
    rendered = helm("template", "t", DEPLOY / "helm/wasmesh", "--set", HELM_SET, "--set", values).stdout
    kube_validate(rendered, tmp_path)
    return k8s_docs(rendered)


def test_the_charts_options_render_what_they_say(tmp_path):
    chart = DEPLOY / "helm/wasmesh"
    docs = render_chart(
        "node.replicas=5,node.slots=3,node.labels.zone=eu-1,podDisruptionBudget.enabled=false,networkPolicy.enabled=false",
        tmp_path,
    )
    assert not [d for d in docs if d["kind"] in ("PodDisruptionBudget", "NetworkPolicy")]
    node = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "t-wasmesh-node")
    assert node["spec"]["replicas"] == 5
    args = node["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--slots") + 1] == "3" and args[args.index("--label") + 1] == "zone=eu-1", args
    # The ServiceMonitor (a Prometheus Operator CRD, which the validator has no schema
    # for) scrapes /metrics with the operator's key.
    docs = k8s_docs(helm("template", "t", chart, "--set", HELM_SET, "--set", "serviceMonitor.enabled=true").stdout)
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["bearerTokenSecret"]["key"] == "admin-key", endpoint


def test_the_charts_several_coordinators_share_a_postgresql_journal_and_run(fleet, tmp_path):
    """coordinator.replicas above 1: the coordinators share a journal in PostgreSQL
    (--shared, the URL from journal.existingSecret) and a blob volume (a
    ReadWriteMany claim), each at its pod's name behind a headless Service, and the
    nodes spread over them. Run with the test PostgreSQL server scripts/test.sh
    starts: each node joins the coordinator its ordinal gives, and a job runs through
    each coordinator."""
    chart = DEPLOY / "helm/wasmesh"
    for missing, given in [("journal.existingSecret", "sharedBlobs.existingClaim=blobs"), ("sharedBlobs.existingClaim", "journal.existingSecret=pg")]:
        out = helm("template", "t", chart, "--set", HELM_SET, "--set", f"coordinator.replicas=2,{given}", check=False)
        assert out.returncode != 0 and f"coordinator.replicas above 1 needs {missing}" in out.stderr, out.stderr
    docs = render_chart("coordinator.replicas=2,journal.existingSecret=pg,sharedBlobs.existingClaim=blobs", tmp_path)
    sets = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "StatefulSet"}
    coord_set = sets["coordinator"]
    assert coord_set["spec"]["replicas"] == 2
    headless = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == coord_set["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None", headless
    api = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "t-wasmesh-coordinator")
    assert api["spec"]["sessionAffinity"] == "ClientIP", api
    pod = coord_set["spec"]["template"]["spec"]
    coord = pod["containers"][0]
    args = coord["args"]
    assert "--shared" in args and args[args.index("--cas-dir") + 1] == "/var/lib/wasmesh-blobs", args
    assert {"name": "blobs", "mountPath": "/var/lib/wasmesh-blobs"} in coord["volumeMounts"]
    assert {"name": "blobs", "persistentVolumeClaim": {"claimName": "blobs"}} in pod["volumes"]
    journal = next(e for e in coord["env"] if e["name"] == "WASMESH_JOURNAL")
    assert journal["valueFrom"]["secretKeyRef"] == {"name": "pg", "key": "url"}, journal
    budgets = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert budgets["t-wasmesh-coordinator"]["maxUnavailable"] == 1, budgets
    node = sets["node"]["spec"]["template"]["spec"]["containers"][0]
    assert "--coordinator-spread" in node["args"], node["args"]
    listed = next(e["value"] for e in node["env"] if e["name"] == "WASMESH_COORDINATOR").split(",")
    pods = [f"t-wasmesh-coordinator-{i}" for i in range(2)]
    assert listed == [f"http://{p}.t-wasmesh-coordinator-pods:9100" for p in pods], listed

    # Run: the coordinators on the test server's journal (a schema of this test's
    # own) and one blob directory; the nodes' list pointed at them.
    postgres = os.environ.get("WASMESH_TEST_JOURNAL")
    assert postgres, "needs a PostgreSQL server: run through scripts/test.sh (or set WASMESH_TEST_JOURNAL)"
    joiner = "&" if "?" in postgres else "?"
    secrets = {
        "api-key": KEYS["api"], "admin-key": KEYS["admin"], "node-key": KEYS["node"],
        "url": f"{postgres}{joiner}options=-csearch_path%3Ddeploy_{os.getpid()}",
    }
    blobs = fleet.data_dir("blobs")
    coordinators = []
    for p in pods:
        port = free_port()
        args = [blobs if a == "/var/lib/wasmesh-blobs" else a for a in localise(coord["args"], fleet, p, port)]
        env = localise(container_env(coord, secrets), fleet, p, port)
        # (After localise, which would take the server's loopback port for the listen address.)
        env["WASMESH_JOURNAL"] = secrets["url"]
        coordinators.append(fleet.start(args, env, p))
    here = dict(zip(listed, coordinators))
    nodes = {}
    for i in range(sets["node"]["spec"]["replicas"]):
        name = f"t-wasmesh-node-{i}"
        port = free_port()
        env = container_env({"env": [{"name": "_POD", "value": name}, *node["env"]]}, secrets)
        env = localise(env, fleet, name, port, coordinators[0])
        # (After localise, which would take every loopback port for the node's own.)
        env["WASMESH_COORDINATOR"] = ",".join(here[u] for u in listed)
        nodes[name] = fleet.start(localise(node["args"], fleet, name, port), env, name)
    # Node N joins coordinator N (modulo 2); each coordinator runs a job.
    for i, coordinator in enumerate(coordinators):
        check_fleet(coordinator, {f"t-wasmesh-node-{i}": nodes[f"t-wasmesh-node-{i}"]}, fleet)
    # One of them leads.
    def leaders():
        infos = [json.loads(get(f"{c}/compute/sysinfo", KEYS["api"])[1]) for c in coordinators]
        assert all(i["journal"]["shared"] for i in infos), infos
        return sorted(i["journal"]["leader"] for i in infos) == [False, True]

    eventually(leaders, "one coordinator leads")


def test_the_kustomize_base_validates_strictly_and_runs(fleet, tmp_path):
    rendered = run("kubectl", "kustomize", DEPLOY / "kustomize/base").stdout
    kube_validate(rendered, tmp_path)
    docs = k8s_docs(rendered)
    secrets = {"api-key": KEYS["api"], "admin-key": KEYS["admin"], "node-key": KEYS["node"]}
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in docs
        if d["kind"] == "StatefulSet"
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"wasmesh-keys"}, refs
    run_statefulsets(docs, fleet, secrets)


# ---- Docker and Compose -------------------------------------------------------------


def dockerfile():
    """The final stage's instructions: (INSTRUCTION, text) with continuations joined."""
    text = (DEPLOY / "docker/Dockerfile").read_text().replace("\\\n", " ")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    assert len(stages) >= 2, "a multi-stage build"
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1]) for l in lines[stages[-1]:]]


def test_the_image_runs_as_a_non_root_user_with_its_health_check(fleet):
    final = dockerfile()
    get_one = lambda name: [v for k, v in final if k == name]
    user = get_one("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert json.loads(get_one("VOLUME")[0]) == ["/var/lib/wasmesh"]
    assert get_one("COPY")[0].startswith("--from=build"), "only the binary comes from the build stage"
    entry, cmd = json.loads(get_one("ENTRYPOINT")[0]), json.loads(get_one("CMD")[0])
    assert entry == ["wasmesh"]
    env = dict(re.findall(r"(\w+)=(\S+)", get_one("ENV")[0]))
    assert env["WASMESH_DATA_DIR"] == "/var/lib/wasmesh"
    health = get_one("HEALTHCHECK")[0]
    probe = json.loads(health.split("CMD", 1)[1].strip())
    assert probe[0] == "wasmesh"
    # The default command (a lone node) with the image's environment, then its health
    # check as Docker would run it inside the container.
    port = free_port()
    env = localise({**env, "WASMESH_DATA_DIR": "/var/lib/wasmesh"}, fleet, "image", port)
    url = fleet.start(cmd, env, "image")
    check = run(BIN, *probe[1:], env={"PATH": os.environ["PATH"], **env}, check=False)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["status"] == "healthy"
    # A probe of nothing fails, so the check can fail.
    down = run(BIN, "health", "--server", f"http://127.0.0.1:{free_port()}", check=False)
    assert down.returncode == 1
    assert get(url + "/health")[0] == 200
    # The build stage builds the binary the image runs.
    build = (DEPLOY / "docker/Dockerfile").read_text()
    assert "cargo build --release --locked -p wasmesh-host" in build
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target" in ignored and ".git" in ignored


def interpolate(value, env):
    """Compose's ${VAR:?message} and ${VAR}; $$ is a literal $."""
    value = re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", lambda m: env[m.group(1)], value)
    return value.replace("$$", "$")


def test_compose_is_valid_and_its_services_run(fleet):
    path = DEPLOY / "compose/compose.yaml"
    out = run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", path, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    assert {"coordinator", "node1", "node2", "prometheus", "grafana"} <= set(services)
    env_in = {"WASMESH_API_KEY": KEYS["api"], "WASMESH_ADMIN_KEY": KEYS["admin"], "WASMESH_NODE_KEY": KEYS["node"]}
    # Keys are never written in the file: each is required from the environment.
    for var in env_in:
        assert f"${{{var}:?" in path.read_text(), var

    coord = services["coordinator"]
    port = free_port()
    env = {k: interpolate(v, env_in) for k, v in coord["environment"].items()}
    coordinator = fleet.start(localise(coord["command"], fleet, "coordinator", port), localise(env, fleet, "c", port), "coordinator")
    health = coord["healthcheck"]["test"]
    assert health[0] == "CMD"
    c_env = localise(env, fleet, "c", port)
    assert run(BIN, *health[2:], env={"PATH": os.environ["PATH"], **c_env}).returncode == 0
    nodes = {}
    for name in ("node1", "node2"):
        node = services[name]
        assert node["depends_on"]["coordinator"]["condition"] == "service_healthy"
        port = free_port()
        env = {k: interpolate(v, env_in) for k, v in node["environment"].items()}
        nodes[env["WASMESH_NODE_ID"]] = fleet.start(
            localise(node["command"], fleet, name, port), localise(env, fleet, name, port, coordinator), name
        )
    check_fleet(coordinator, nodes, fleet)

    # Prometheus scrapes every wasmesh service where it listens, with the operator's key.
    prometheus = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["authorization"]["type"] == "Bearer"
    key_file = job["authorization"]["credentials_file"]
    assert key_file in " ".join(services["prometheus"]["command"])
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"coordinator:9100", "node1:9000", "node2:9000"}, targets
    assert services["coordinator"]["environment"]["WASMESH_LISTEN"].endswith(":9100")
    # Every metric the Grafana dashboard draws is one wasmesh exports.
    status, metrics = get(f"{coordinator}/metrics", KEYS["admin"])
    assert status == 200
    _, node_metrics = get(f"{next(iter(nodes.values()))}/metrics", KEYS["admin"])
    exported = set(re.findall(r"^# TYPE (\w+)", metrics + node_metrics, re.M))
    dashboard = json.loads((DEPLOY / "compose/grafana/dashboards/wasmesh.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"wasmesh_\w+", e)}
    assert used and used <= exported, used - exported
    for title in ("Jobs finished per second", "Queue depth", "Run latency", "Fuel consumed per second", "Nodes by state",
                  "Autoscaler: nodes wanted and there"):
        assert title in [p["title"] for p in dashboard["panels"]], title
    provisioned = yaml.safe_load((DEPLOY / "compose/grafana/provisioning/dashboards/wasmesh.yaml").read_text())
    assert provisioned["providers"][0]["options"]["path"] in " ".join(services["grafana"]["volumes"])


# ---- Nomad --------------------------------------------------------------------------


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def blocks(parent, kind):
    """Named blocks of one kind: {name: body}."""
    return {unquote(name): body for item in parent.get(kind, []) for name, body in item.items()}


def template_env(task, values):
    """What a task's env templates give it, with Nomad's lookups answered by `values`."""
    env = {}
    for template in task.get("template", []):
        if not template.get("env"):
            continue
        text = unquote(template["data"]).removeprefix("<<-EOT").removesuffix("EOT")
        for name, value in values.items():
            text = text.replace("{{ ." + name + " }}", value)
        # What nomadService answers for the coordinator: its address and port.
        if "coordinator" in values:
            text = text.replace("http://{{ .Address }}:{{ .Port }}", values["coordinator"])
        text = re.sub(r"\{\{.*?\}\}", "", text)
        for line in text.split("\\n" if "\\n" in text else "\n"):
            line = line.strip()
            if "=" in line:
                key, value = line.split("=", 1)
                env[key] = value
    return env


def test_the_nomad_job_parses_and_its_tasks_run(fleet):
    parsed = hcl2.load(open(DEPLOY / "nomad/wasmesh.nomad.hcl"))
    job = blocks(parsed, "job")["wasmesh"]
    groups = blocks(job, "group")
    assert set(groups) == {"coordinator", "node"}
    variables = blocks(parsed, "variable")
    assert variables["nodes"]["default"] == 2
    keys = {"api_key": KEYS["api"], "admin_key": KEYS["admin"], "node_key": KEYS["node"]}

    def task_of(group):
        task = next(iter(blocks(groups[group], "task").values()))
        checks = [unquote(c["path"]) for s in groups[group]["service"] for c in s["check"]]
        assert sorted(checks) == ["/compute/ready", "/health"], checks
        assert unquote(task["driver"]) == "docker"
        assert task["config"][0]["image"] == "${var.image}"
        return task, checks

    task, checks = task_of("coordinator")
    args = unquote(task["config"][0]["args"])
    assert args[0] == "coordinator"
    port = free_port()
    env = template_env(task, keys)
    assert set(env) == {"WASMESH_API_KEY", "WASMESH_ADMIN_KEYS", "WASMESH_NODE_KEY"}, env
    coordinator = fleet.start(localise(args, fleet, "coordinator", port), env, "coordinator")

    task, checks = task_of("node")
    args = unquote(task["config"][0]["args"])
    assert args[0] == "node"
    nodes = {}
    for index in range(variables["nodes"]["default"]):
        port = free_port()
        env = {k: unquote(v) for k, v in task["env"][0].items() if not k.startswith("__")}
        env = {
            k: v.replace("${NOMAD_ALLOC_INDEX}", str(index)).replace("${NOMAD_ADDR_http}", f"127.0.0.1:{port}")
            for k, v in env.items()
        }
        env.update(template_env(task, {**keys, "coordinator": coordinator}))
        assert env["WASMESH_COORDINATOR"] == coordinator, env
        name = env["WASMESH_NODE_ID"]
        nodes[name] = fleet.start(localise(args, fleet, name, port), env, name)
    check_fleet(coordinator, nodes, fleet, checks)


# ---- systemd ------------------------------------------------------------------------


def units(tmp_path):
    """The units with ExecStart= pointing at the binary under test (verify checks that
    the executable exists)."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in (DEPLOY / "systemd").glob("*.service"):
        (out / unit.name).write_text(unit.read_text().replace("/usr/local/bin/wasmesh", str(BIN)))
    return out


def test_the_systemd_units_verify_clean_are_hardened_and_run(fleet, tmp_path):
    folder = units(tmp_path)
    for unit in ("wasmesh-coordinator.service", "wasmesh-node@n1.service"):
        verify = run("systemd-analyze", "verify", folder / unit, check=False, cwd=folder)
        assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), (
            unit, verify.stdout, verify.stderr)
        security = run("systemd-analyze", "security", "--offline=yes", folder / unit, check=False, cwd=folder)
        exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
        assert exposure <= 5.0, (unit, exposure)
    text = (DEPLOY / "systemd/wasmesh-coordinator.service").read_text()
    for setting in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "EnvironmentFile="):
        assert setting in text, setting
    assert "MemoryDenyWriteExecute=yes" not in text, "wasmtime's compiled code needs W^X flips"

    # ExecStart as systemd expands it, with the example environment file.
    example = dict(
        l.split("=", 1) for l in (DEPLOY / "systemd/wasmesh.env.example").read_text().splitlines()
        if l and not l.startswith("#")
    )
    example.update({"WASMESH_API_KEY": KEYS["api"], "WASMESH_ADMIN_KEYS": KEYS["admin"], "WASMESH_NODE_KEY": KEYS["node"]})

    def exec_start(unit, env, instance=None):
        line = next(l for l in (DEPLOY / "systemd" / unit).read_text().splitlines() if l.startswith("ExecStart="))
        words = shlex.split(line.removeprefix("ExecStart="))
        assert words[0] == "/usr/local/bin/wasmesh"
        return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in words[1:]]

    port = free_port()
    env = localise(example, fleet, "c", port)
    env["STATE_DIRECTORY"] = fleet.data_dir("coordinator")
    coordinator = fleet.start(exec_start("wasmesh-coordinator.service", env), env, "coordinator")
    port = free_port()
    node_env = {
        "WASMESH_LISTEN": f"127.0.0.1:{port}",
        "WASMESH_COORDINATOR": coordinator,
        "WASMESH_NODE_KEY": KEYS["node"],
        "WASMESH_ADMIN_KEYS": KEYS["admin"],
        "WASMESH_NODE_ID": "n1",
        "STATE_DIRECTORY": fleet.data_dir("n1"),
    }
    node_text = (DEPLOY / "systemd/wasmesh-node@.service").read_text()
    assert "Environment=WASMESH_NODE_ID=%i" in node_text
    node = fleet.start(exec_start("wasmesh-node@.service", node_env), node_env, "n1")
    check_fleet(coordinator, {"n1": node}, fleet)


def test_the_plain_yaml_files_lint_clean():
    files = [
        DEPLOY / "compose/compose.yaml",
        DEPLOY / "compose/prometheus.yml",
        *sorted((DEPLOY / "compose/grafana/provisioning").rglob("*.yaml")),
        *sorted((DEPLOY / "kustomize/base").glob("*.yaml")),
        DEPLOY / "helm/wasmesh/Chart.yaml",
        DEPLOY / "helm/wasmesh/values.yaml",
    ]
    config = "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
    out = run("yamllint", "-s", "-d", config, *files, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_charts_autoscaling_may_scale_the_node_statefulset_and_nothing_else(fleet, tmp_path):
    chart = DEPLOY / "helm/wasmesh"
    rendered = helm("template", "t", chart, "--set", HELM_SET, "--set", "autoscaling.enabled=true,autoscaling.maxNodes=6").stdout
    kube_validate(rendered, tmp_path)
    docs = k8s_docs(rendered)
    by_kind = {d["kind"]: d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")}
    node_set = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "node")
    coord_set = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "coordinator")
    rules = by_kind["Role"]["rules"]
    assert rules == [{
        "apiGroups": ["apps"], "resources": ["statefulsets/scale"],
        "resourceNames": [node_set["metadata"]["name"]], "verbs": ["get", "patch"],
    }], rules
    binding = by_kind["RoleBinding"]
    assert binding["subjects"][0]["name"] == by_kind["ServiceAccount"]["metadata"]["name"]
    assert binding["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    pod = coord_set["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    args = pod["containers"][0]["args"]
    assert args[args.index("--autoscale") + 1] == "kubernetes"
    assert args[args.index("--k8s-statefulset") + 1] == node_set["metadata"]["name"]
    assert args[args.index("--max-nodes") + 1] == "6"
    # The binary takes those flags (the service account's files given here by hand).
    token = tmp_path / "token"
    token.write_text("t")
    extra = ["--k8s-namespace", "default", "--k8s-token-file", str(token), "--k8s-api", f"http://127.0.0.1:{free_port()}"]
    secrets = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    env = container_env(pod["containers"][0], secrets)
    port = free_port()
    url = fleet.start(localise(args, fleet, "coordinator", port) + extra, localise(env, fleet, "c", port), "coordinator")
    status, body = get(f"{url}/api/v1/cluster/autoscaler", KEYS["admin"])
    assert status == 200 and json.loads(body)["provisioner"] == "kubernetes", body
