#!/usr/bin/env python3
"""Static checks of the deployment files under deploy/ (run by .ci/check-deploy.sh).

No Kubernetes API server or JSON schemas are available offline, so this parses every YAML and JSON
file and asserts the fields that make the deployment work: privileges, /dev/fuse, mount
propagation, probes, the mountpoint layout (/mnt/s3 holds the mounts, /mnt/s3/jars is one),
read-only Spark volumes, local:///mnt/s3/ JARs, and that every s3cachefs command line in deploy/
and docs/DEPLOYMENT.md uses only flags that exist. Cross-file facts (node selector, mountpoint,
the unit embedded in the EC2 user data, the Rust version) are compared between the files. The shared
tier's files (deploy/shared-cache/: lifecycle rule, IAM and bucket policies) are checked for what
s3cachefs needs, and every --shared-cache URL in deploy/, docs/ and README.md against their prefix.

Usage: python3 deploy/validate.py [--verbose]
Prints one line per check ("ok" or "FAIL ... reason") and a last line
"validate.py: passed=N failed=M skipped=K"; exits 1 if any check failed.
Needs PyYAML. Optional: botocore (validates the EMR on EKS request and the lifecycle rule against the
AWS API models),
shellcheck (lints the shell scripts embedded in the YAML files and the unit), and S3CACHEFS_BIN=path
to a built s3cachefs (compares the flag lists above with its "mount --help" and "warm --help").
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("validate.py: PyYAML is required (python3 -m pip install pyyaml)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")

# Flags of "s3cachefs mount" and "s3cachefs warm" (docs/CONFIGURATION.md and the deployment contract).
MOUNT_FLAGS = {
    "--cache", "--max-cache-size", "--cache-min-free", "--metadata-ttl", "--negative-metadata-ttl",
    "--block-size", "--memory-cache-size", "--allow-other", "--allow-root", "--uid", "--gid",
    "--file-mode", "--dir-mode", "--fuse-threads", "--region", "--endpoint-url", "--force-path-style",
    "--max-attempts", "--request-timeout", "--profile", "--no-sign-request", "--prefix",
    "--foreground", "-f", "--log-level", "--log-file", "--metrics-addr", "--help", "-h",
}
# The shared tier's flags, on both "mount" and "warm".
SHARED_CACHE_FLAGS = {
    "--shared-cache", "--shared-cache-region", "--shared-cache-endpoint-url", "--shared-cache-read-only",
    "--shared-cache-key-file", "--shared-cache-lease-wait", "--shared-cache-timeout",
}
SHARED_CACHE_FLAGS_WITH_VALUE = SHARED_CACHE_FLAGS - {"--shared-cache-read-only"}
MOUNT_FLAGS |= SHARED_CACHE_FLAGS
MOUNT_FLAGS_WITH_VALUE = {
    "--cache", "--max-cache-size", "--cache-min-free", "--metadata-ttl", "--negative-metadata-ttl",
    "--block-size", "--memory-cache-size", "--uid", "--gid", "--file-mode", "--dir-mode",
    "--fuse-threads", "--region", "--endpoint-url", "--max-attempts", "--request-timeout",
    "--profile", "--prefix", "--log-level", "--log-file", "--metrics-addr",
} | SHARED_CACHE_FLAGS_WITH_VALUE
WARM_FLAGS = {
    "--cache", "--max-cache-size", "--cache-min-free", "--block-size", "--include", "--exclude",
    "--manifest", "--concurrency", "--log-level", "--prefix", "--region", "--endpoint-url",
    "--force-path-style", "--max-attempts", "--request-timeout", "--profile", "--no-sign-request",
    "--help", "-h",
} | SHARED_CACHE_FLAGS
# Mount options of fstab lines that are not s3cachefs flags.
GENERIC_MOUNT_OPTIONS = {"ro", "rw", "_netdev", "nofail", "noauto", "auto", "defaults", "user", "users", "nouser"}

MOUNTS_DIR = "/mnt/s3"            # host directory holding the mounts; what pods use as hostPath
MOUNTPOINT = "/mnt/s3/jars"       # the example mount
CACHE_HOST_PATH = "/nvme/s3cache"
JAR_PREFIX = "local:///mnt/s3/"
NODE_SELECTOR = {"s3cachefs/nvme": "true"}
SPARK_MAIN_CONTAINERS = {"driver": "spark-kubernetes-driver", "executor": "spark-kubernetes-executor"}
# Unit settings that give the service a mount namespace of its own (the FUSE mount would vanish).
NAMESPACING_KEYS = {
    "PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts", "ReadOnlyPaths", "ReadWritePaths",
    "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "BindPaths",
    "BindReadOnlyPaths", "PrivateDevices", "MountFlags", "RootDirectory", "RootImage",
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
    "ProtectProc", "ProcSubset", "ProtectHostname", "ProtectClock", "PrivateUsers",
}

VERBOSE = "--verbose" in sys.argv
results = {"passed": 0, "failed": 0, "skipped": 0}


class Skip(Exception):
    pass


def check(name):
    """Decorator: runs the function as one named check right away."""

    def run(fn):
        try:
            fn()
        except Skip as e:
            results["skipped"] += 1
            print(f"skip {name}: {e}")
        except AssertionError as e:
            results["failed"] += 1
            print(f"FAIL {name}: {e}")
        except Exception as e:  # a crash in a check is a failure of that check
            results["failed"] += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        else:
            results["passed"] += 1
            print(f"ok   {name}")
        return fn

    return run


def rel(path):
    return os.path.relpath(path, ROOT)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def files_under(top, exts):
    out = []
    for d, dirs, names in os.walk(top):
        dirs.sort()
        for n in sorted(names):
            if any(n.endswith(e) for e in exts):
                out.append(os.path.join(d, n))
    return out


def load_yaml_docs(path):
    return [d for d in yaml.safe_load_all(read(path)) if d is not None]


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


# ---------------------------------------------------------------------------------------------
# Kubernetes helpers
# ---------------------------------------------------------------------------------------------


def pod_spec(doc):
    """The PodSpec of a Pod, a workload with a pod template, or None."""
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec") or {}
    if kind in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers(spec):
    """(kind, container) pairs: 'init' or 'main'."""
    return [("init", c) for c in spec.get("initContainers") or []] + [
        ("main", c) for c in spec.get("containers") or []
    ]


def mount_argv(c):
    """The s3cachefs argv (starting at 'mount') of a container, or None."""
    args = c.get("args")
    if isinstance(args, list) and args and args[0] == "mount":
        return [str(a) for a in args]
    cmd = c.get("command")
    if isinstance(cmd, list) and len(cmd) >= 2 and os.path.basename(str(cmd[0])) == "s3cachefs" and cmd[1] == "mount":
        return [str(a) for a in cmd[1:]] + [str(a) for a in args or []]
    return None


def volume_by_name(spec, name):
    for v in spec.get("volumes") or []:
        if v.get("name") == name:
            return v
    raise AssertionError(f"volume {name!r} is not defined")


def covering_mount(c, path):
    """The container's volumeMount whose mountPath is path or its closest parent."""
    best = None
    for m in c.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def host_path_of(spec, c, path):
    """The host path that container path maps to through a hostPath volume, or None."""
    m = covering_mount(c, path)
    if m is None:
        return None
    v = volume_by_name(spec, m["name"])
    if "hostPath" not in v:
        return None
    mp = m["mountPath"].rstrip("/")
    return v["hostPath"]["path"].rstrip("/") + path[len(mp):]


def flag_value(argv, flag):
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def positionals(argv):
    """Positional arguments of 'mount ...' (after the subcommand)."""
    out, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            if a in MOUNT_FLAGS_WITH_VALUE:
                skip = True
            continue
        out.append(a)
    return out


def check_flags(argv, known, where):
    bad = [a.split("=", 1)[0] for a in argv if a.startswith("-") and a.split("=", 1)[0] not in known]
    expect(not bad, f"{where}: unknown s3cachefs flag(s) {bad}")


def port_number(c, port):
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {c['name']}: named port {port!r} is not declared")


def wrapper_script(c):
    cmd = c.get("command") or []
    if len(cmd) >= 3 and cmd[0] in ("/bin/sh", "sh", "/bin/bash", "bash") and cmd[1] == "-c":
        return cmd[2]
    return None


def check_s3cachefs_container(path, spec, c, *, require_probe_kind):
    """Everything a container that runs 's3cachefs mount' needs; returns (argv, mountpoint)."""
    name = f"{rel(path)}:{c['name']}"
    argv = mount_argv(c)
    expect("--foreground" in argv or "-f" in argv, f"{name}: mount args lack --foreground")
    check_flags(argv, MOUNT_FLAGS, name)
    pos = positionals(argv)
    expect(len(pos) == 2, f"{name}: expected BUCKET and MOUNTPOINT, got {pos}")
    mountpoint = pos[1]
    expect(mountpoint == MOUNTPOINT, f"{name}: mountpoint {mountpoint}, expected {MOUNTPOINT}")
    expect((c.get("securityContext") or {}).get("privileged") is True, f"{name}: not privileged")

    fuse = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/dev/fuse"]
    expect(fuse, f"{name}: /dev/fuse is not mounted")
    fv = volume_by_name(spec, fuse[0]["name"])
    expect((fv.get("hostPath") or {}).get("path") == "/dev/fuse", f"{name}: /dev/fuse volume is not hostPath /dev/fuse")
    expect((fv.get("hostPath") or {}).get("type") == "CharDevice", f"{name}: /dev/fuse hostPath type should be CharDevice")

    m = covering_mount(c, mountpoint)
    expect(m is not None, f"{name}: no volume covers the mountpoint {mountpoint}")
    expect(m.get("mountPropagation") == "Bidirectional", f"{name}: the volume at {m['mountPath']} is not Bidirectional")
    expect(m["mountPath"].rstrip("/") != mountpoint,
           f"{name}: the volume must be the mountpoint's parent, not the mountpoint (a dead mount could not be re-bound)")
    expect(not m.get("readOnly"), f"{name}: the Bidirectional volume must not be readOnly")

    cache = flag_value(argv, "--cache")
    expect(cache, f"{name}: no --cache")
    expect(host_path_of(spec, c, cache) == CACHE_HOST_PATH, f"{name}: --cache {cache} is not the host's {CACHE_HOST_PATH}")

    addr = flag_value(argv, "--metrics-addr")
    expect(addr, f"{name}: no --metrics-addr (the probes need /healthz)")
    host, _, port = addr.rpartition(":")
    expect(host == "0.0.0.0", f"{name}: --metrics-addr {addr}: kubelet probes the pod IP, bind 0.0.0.0")
    for kind in require_probe_kind:
        probe = c.get(kind)
        expect(probe, f"{name}: no {kind}")
        hg = probe.get("httpGet") or {}
        expect(hg.get("path") == "/healthz", f"{name}: {kind} path is {hg.get('path')!r}, expected /healthz")
        expect(port_number(c, hg.get("port")) == int(port), f"{name}: {kind} port does not match --metrics-addr {addr}")

    pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
    expect(pre, f"{name}: no preStop exec command")
    pre_text = " ".join(pre)
    expect(re.search(r"\b(umount|fusermount3 -u)\b", pre_text) and mountpoint in pre_text,
           f"{name}: preStop does not unmount {mountpoint}: {pre_text}")

    script = wrapper_script(c)
    if script is not None:
        expect(re.search(r"^\s*mp=" + re.escape(mountpoint) + r"\s*$", script, re.M),
               f"{name}: the start wrapper's mp= is not the mountpoint {mountpoint}")
        expect('exec /usr/local/bin/s3cachefs "$@"' in script, f"{name}: the wrapper does not exec s3cachefs with the args")
        expect(c["command"][3:4] == ["s3cachefs"], f"{name}: the wrapper needs $0 (s3cachefs) after the script")

    # $(VAR) references must be defined in env, else Kubernetes passes them literally.
    env_names = {e["name"] for e in c.get("env") or []}
    for a in argv:
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
            expect(ref in env_names, f"{name}: $({ref}) is not defined in env")
    return argv, mountpoint


def check_generic_pod(path, spec):
    """Rules Kubernetes itself enforces, plus 'every image is set'."""
    vols = {v["name"] for v in spec.get("volumes") or []}
    spark_template = os.path.basename(path).endswith("-pod-template.yaml")
    for kind, c in containers(spec):
        name = f"{rel(path)}:{c.get('name')}"
        expect(c.get("name"), f"{rel(path)}: a container has no name")
        if spark_template and kind == "main" and c["name"] in SPARK_MAIN_CONTAINERS.values():
            expect("image" not in c, f"{name}: Spark sets the image of its container; do not set it in the template")
        else:
            expect(c.get("image"), f"{name}: image is not set")
        for m in c.get("volumeMounts") or []:
            expect(m["name"] in vols, f"{name}: volumeMount {m['name']!r} has no volume")
            prop = m.get("mountPropagation", "None")
            expect(prop in ("None", "HostToContainer", "Bidirectional"), f"{name}: bad mountPropagation {prop}")
            if prop == "Bidirectional":
                expect((c.get("securityContext") or {}).get("privileged") is True,
                       f"{name}: Bidirectional propagation is only allowed in privileged containers")
        if mount_argv(c) is not None:
            argv = mount_argv(c)
            expect("--foreground" in argv or "-f" in argv, f"{name}: 'mount' args without --foreground")


# ---------------------------------------------------------------------------------------------
# Every YAML / JSON file parses; generic rules on every pod spec
# ---------------------------------------------------------------------------------------------

YAML_FILES = files_under(DEPLOY, (".yaml", ".yml"))
JSON_FILES = files_under(DEPLOY, (".json",))
DOCS = {}

for p in YAML_FILES:
    @check(f"parse {rel(p)}")
    def _(p=p):
        DOCS[p] = load_yaml_docs(p)
        expect(DOCS[p], "no YAML documents")
        for d in DOCS[p]:
            expect(isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), "a document lacks apiVersion/kind")

for p in JSON_FILES:
    @check(f"parse {rel(p)}")
    def _(p=p):
        json.loads(read(p))

for p in YAML_FILES:
    @check(f"containers of {rel(p)}: names, images, volumes, propagation, --foreground")
    def _(p=p):
        if p not in DOCS:
            raise Skip("did not parse")
        n = 0
        for d in DOCS[p]:
            spec = pod_spec(d)
            if spec is not None:
                check_generic_pod(p, spec)
                n += 1
            if d.get("kind") == "SparkApplication":
                s = d["spec"]
                pseudo = {"volumes": s.get("volumes"), "initContainers": [], "containers": []}
                for role in ("driver", "executor"):
                    pseudo["initContainers"] += s[role].get("initContainers") or []
                check_generic_pod(p, pseudo)
                n += 1
        if n == 0:
            raise Skip("no pod specs")


def doc_of_kind(path, kind):
    docs = [d for d in DOCS.get(path, []) if d.get("kind") == kind]
    expect(len(docs) == 1, f"{rel(path)}: expected one {kind}, found {len(docs)}")
    return docs[0]


# ---------------------------------------------------------------------------------------------
# DaemonSet
# ---------------------------------------------------------------------------------------------

DS_PATH = os.path.join(DEPLOY, "k8s", "daemonset.yaml")


@check("daemonset: s3cachefs container (privileged, /dev/fuse, Bidirectional, probes, preStop, cache)")
def _():
    ds = doc_of_kind(DS_PATH, "DaemonSet")
    spec = pod_spec(ds)
    cs = [c for _, c in containers(spec) if mount_argv(c)]
    expect(len(cs) == 1, f"expected one container running 's3cachefs mount', found {len(cs)}")
    c = cs[0]
    argv, mountpoint = check_s3cachefs_container(DS_PATH, spec, c, require_probe_kind=("livenessProbe", "readinessProbe"))
    m = covering_mount(c, mountpoint)
    v = volume_by_name(spec, m["name"])
    expect((v.get("hostPath") or {}).get("path") == MOUNTS_DIR,
           f"the Bidirectional volume should be hostPath {MOUNTS_DIR}, is {v}")
    expect(host_path_of(spec, c, mountpoint) == MOUNTPOINT, "the mountpoint does not map to the host's " + MOUNTPOINT)
    expect("--allow-other" in argv, "node mounts are read by pods running as other users: --allow-other")
    expect(flag_value(argv, "--metadata-ttl"), "no --metadata-ttl")
    res = c.get("resources") or {}
    expect((res.get("requests") or {}).get("memory") and (res.get("limits") or {}).get("memory"),
           "memory request and limit must be set")


@check("daemonset: pod settings (node selector, tolerations, priority, hostPID, grace, scrape annotations)")
def _():
    ds = doc_of_kind(DS_PATH, "DaemonSet")
    spec = pod_spec(ds)
    expect(spec.get("nodeSelector") == NODE_SELECTOR, f"nodeSelector {spec.get('nodeSelector')} != {NODE_SELECTOR}")
    expect(spec.get("tolerations"), "no tolerations")
    expect(spec.get("priorityClassName") == "system-node-critical", "priorityClassName is not system-node-critical")
    expect(spec.get("hostPID") is not True, "hostPID must stay false")
    expect(isinstance(spec.get("terminationGracePeriodSeconds"), int), "terminationGracePeriodSeconds is not set")
    sel = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    expect(all(labels.get(k) == v for k, v in sel.items()), "selector does not match the template labels")
    ann = ds["spec"]["template"]["metadata"].get("annotations") or {}
    expect(ann.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape annotation")
    c = [c for _, c in containers(spec) if mount_argv(c)][0]
    port = flag_value(mount_argv(c), "--metrics-addr").rpartition(":")[2]
    expect(ann.get("prometheus.io/port") == port, "prometheus.io/port does not match --metrics-addr")
    expect(ann.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics")


@check("daemonset: namespace, IRSA service account, ConfigMap keys")
def _():
    ds = doc_of_kind(DS_PATH, "DaemonSet")
    ns = doc_of_kind(DS_PATH, "Namespace")["metadata"]["name"]
    sa = doc_of_kind(DS_PATH, "ServiceAccount")
    cm = doc_of_kind(DS_PATH, "ConfigMap")
    expect(ds["metadata"].get("namespace") == ns and sa["metadata"].get("namespace") == ns
           and cm["metadata"].get("namespace") == ns, "objects are not all in namespace " + ns)
    role = (sa["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
    expect(re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", role), f"bad IRSA role ARN {role!r}")
    spec = pod_spec(ds)
    expect(spec.get("serviceAccountName") == sa["metadata"]["name"], "the DaemonSet does not use the ServiceAccount")
    data = cm.get("data") or {}
    for _, c in containers(spec):
        for e in c.get("env") or []:
            ref = ((e.get("valueFrom") or {}).get("configMapKeyRef")) or None
            if ref:
                expect(ref["name"] == cm["metadata"]["name"], f"env {e['name']} refers to ConfigMap {ref['name']}")
                expect(ref["key"] in data, f"env {e['name']}: key {ref['key']!r} is missing from the ConfigMap")
                expect(isinstance(data[ref["key"]], str), f"ConfigMap value {ref['key']} must be a string")
    expect(data.get("bucket"), "ConfigMap has no bucket")


# ---------------------------------------------------------------------------------------------
# Sidecar pod
# ---------------------------------------------------------------------------------------------

SC_PATH = os.path.join(DEPLOY, "k8s", "sidecar-pod.yaml")


@check("sidecar: native sidecar with Bidirectional mount, startupProbe; consumer with HostToContainer, read-only")
def _():
    pod = doc_of_kind(SC_PATH, "Pod")
    spec = pod_spec(pod)
    sidecars = [c for c in spec.get("initContainers") or [] if mount_argv(c)]
    expect(len(sidecars) == 1, "expected one initContainer running 's3cachefs mount'")
    sc = sidecars[0]
    expect(sc.get("restartPolicy") == "Always", "the sidecar initContainer needs restartPolicy: Always")
    expect(not [c for c in spec.get("containers") or [] if mount_argv(c)], "s3cachefs must be a native sidecar, not in containers")
    argv, mountpoint = check_s3cachefs_container(SC_PATH, spec, sc, require_probe_kind=("startupProbe",))
    m = covering_mount(sc, mountpoint)
    v = volume_by_name(spec, m["name"])
    expect("emptyDir" in v, f"the shared volume {m['name']} should be an emptyDir")
    expect("--allow-other" in argv, "the application runs as another uid: --allow-other")
    consumers = [c for c in spec.get("containers") or [] if any(x["name"] == m["name"] for x in c.get("volumeMounts") or [])]
    expect(consumers, "no application container mounts the shared volume")
    for c in consumers:
        cm = [x for x in c["volumeMounts"] if x["name"] == m["name"]][0]
        expect(cm.get("mountPropagation") == "HostToContainer", f"{c['name']}: the shared volume must be HostToContainer")
        expect(cm.get("readOnly") is True, f"{c['name']}: the shared volume must be readOnly")
        expect(cm["mountPath"] == m["mountPath"], f"{c['name']}: mount the shared volume at {m['mountPath']} too")
    sa = doc_of_kind(SC_PATH, "ServiceAccount")
    expect(spec.get("serviceAccountName") == sa["metadata"]["name"], "the pod does not use the ServiceAccount")
    expect((sa["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn"), "no IRSA annotation")


# ---------------------------------------------------------------------------------------------
# Spark
# ---------------------------------------------------------------------------------------------

SPARK = os.path.join(DEPLOY, "spark")


def check_wait_init(where, spec_or_list, volumes):
    inits = [c for c in spec_or_list if c.get("name") == "wait-for-s3cachefs"]
    expect(inits, f"{where}: no wait-for-s3cachefs init container")
    c = inits[0]
    script = wrapper_script(c) or ""
    expect(MOUNTPOINT in script and "/proc/mounts" in script, f"{where}: the init container does not wait for {MOUNTPOINT}")
    m = covering_mount(c, MOUNTPOINT)
    expect(m and m.get("mountPropagation") == "HostToContainer", f"{where}: the init container needs the volume with HostToContainer")


def check_client_mount(where, c, volumes):
    ms = [m for m in c.get("volumeMounts") or [] if m["mountPath"].rstrip("/") == MOUNTS_DIR]
    expect(ms, f"{where}: {MOUNTS_DIR} is not mounted")
    m = ms[0]
    expect(m.get("readOnly") is True, f"{where}: {MOUNTS_DIR} is not mounted readOnly")
    expect(m.get("mountPropagation") == "HostToContainer", f"{where}: {MOUNTS_DIR} should use HostToContainer propagation")
    vs = [v for v in volumes or [] if v.get("name") == m["name"]]
    expect(vs and (vs[0].get("hostPath") or {}).get("path") == MOUNTS_DIR, f"{where}: volume {m['name']} is not hostPath {MOUNTS_DIR}")


for role in ("driver", "executor"):
    p = os.path.join(SPARK, f"{role}-pod-template.yaml")

    @check(f"spark {role} template: read-only {MOUNTS_DIR} hostPath, node selector, wait-for-mount")
    def _(p=p, role=role):
        pod = doc_of_kind(p, "Pod")
        spec = pod["spec"]
        expect(spec.get("nodeSelector") == NODE_SELECTOR, f"nodeSelector {spec.get('nodeSelector')} != the DaemonSet's {NODE_SELECTOR}")
        main = [c for c in spec.get("containers") or [] if c.get("name") == SPARK_MAIN_CONTAINERS[role]]
        expect(main, f"no container named {SPARK_MAIN_CONTAINERS[role]}")
        check_client_mount(rel(p), main[0], spec.get("volumes"))
        check_wait_init(rel(p), spec.get("initContainers") or [], spec.get("volumes"))


SA_PATH = os.path.join(SPARK, "sparkapplication.yaml")


@check("sparkapplication: v1beta2, local:///mnt/s3/ JARs, read-only hostPath, node selectors")
def _():
    app = doc_of_kind(SA_PATH, "SparkApplication")
    expect(app["apiVersion"] == "sparkoperator.k8s.io/v1beta2", "apiVersion is not sparkoperator.k8s.io/v1beta2")
    s = app["spec"]
    jars = (s.get("deps") or {}).get("jars") or []
    expect(jars, "deps.jars is empty")
    expect(all(j.startswith(JAR_PREFIX) for j in jars), f"deps.jars not under {JAR_PREFIX}: {jars}")
    expect(s.get("mainApplicationFile", "").startswith(JAR_PREFIX), "mainApplicationFile is not under " + JAR_PREFIX)
    for k in ("type", "mode", "image", "sparkVersion", "mainClass"):
        expect(s.get(k), f"spec.{k} is not set")
    for role in ("driver", "executor"):
        r = s[role]
        expect(r.get("nodeSelector") == NODE_SELECTOR, f"{role}.nodeSelector != the DaemonSet's {NODE_SELECTOR}")
        check_client_mount(f"{role}", r, s.get("volumes"))
        check_wait_init(role, r.get("initContainers") or [], s.get("volumes"))
    expect(s["driver"].get("serviceAccount"), "driver.serviceAccount is not set")


def parse_spark_conf(path):
    conf = {}
    for line in read(path).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, _, v = line.partition(" ") if " " in line else line.partition("=")
        conf[k.strip()] = v.strip()
    return conf


@check("spark-defaults.conf: hostPath volume settings for driver and executor, local:///mnt/s3/ JARs")
def _():
    conf = parse_spark_conf(os.path.join(SPARK, "spark-defaults.conf"))
    for role in ("driver", "executor"):
        vols = {k for k in conf if k.startswith(f"spark.kubernetes.{role}.volumes.hostPath.")}
        names = {k.split(".")[5] for k in vols}
        expect(len(names) == 1, f"{role}: expected one hostPath volume, found {names}")
        base = f"spark.kubernetes.{role}.volumes.hostPath.{names.pop()}."
        expect(conf.get(base + "mount.path") == MOUNTS_DIR, f"{role}: mount.path is not {MOUNTS_DIR}")
        expect(conf.get(base + "mount.readOnly") == "true", f"{role}: mount.readOnly is not true")
        expect(conf.get(base + "options.path") == MOUNTS_DIR, f"{role}: options.path is not {MOUNTS_DIR}")
    jars = conf.get("spark.jars", "").split(",")
    expect(jars and all(j.startswith(JAR_PREFIX) for j in jars), f"spark.jars not under {JAR_PREFIX}: {jars}")
    for k, v in NODE_SELECTOR.items():
        expect(conf.get(f"spark.kubernetes.node.selector.{k}") == v, f"no spark.kubernetes.node.selector.{k}={v}")


def submit_tokens(path):
    text = re.sub(r"\\\n", " ", read(path))
    return shlex.split(text, comments=True)


@check("spark-submit.sh: --jars local:///mnt/s3/, both pod templates, container names")
def _():
    toks = submit_tokens(os.path.join(SPARK, "spark-submit.sh"))
    jars = [toks[i + 1] for i, t in enumerate(toks) if t == "--jars"]
    expect(len(jars) == 1, "expected one --jars")
    expect(all(j.startswith(JAR_PREFIX) for j in jars[0].split(",")), f"--jars not under {JAR_PREFIX}: {jars[0]}")
    confs = dict(t.split("=", 1) for i, t in enumerate(toks) if i and toks[i - 1] == "--conf" and "=" in t)
    for role in ("driver", "executor"):
        tf = confs.get(f"spark.kubernetes.{role}.podTemplateFile", "")
        expect(tf.endswith(f"/{role}-pod-template.yaml"), f"no {role} podTemplateFile")
        expect(confs.get(f"spark.kubernetes.{role}.podTemplateContainerName") == SPARK_MAIN_CONTAINERS[role],
               f"{role} podTemplateContainerName is not {SPARK_MAIN_CONTAINERS[role]}")
    expect(any(t.startswith(JAR_PREFIX) and t.endswith(".jar") for t in toks if not t.startswith("--")),
           "the application JAR is not under " + JAR_PREFIX)
    expect(not any(".volumes.hostPath." in k for k in confs), "do not combine hostPath volume settings with the templates")


EMR_PATH = os.path.join(SPARK, "emr-eks-start-job-run.json")


@check("emr-eks-start-job-run.json: references both pod templates, local:///mnt/s3/ JARs")
def _():
    req = json.loads(read(EMR_PATH))
    drv = req["jobDriver"]["sparkSubmitJobDriver"]
    expect(drv["entryPoint"].startswith(JAR_PREFIX), "entryPoint is not under " + JAR_PREFIX)
    toks = shlex.split(drv.get("sparkSubmitParameters", ""))
    jars = [toks[i + 1] for i, t in enumerate(toks) if t == "--jars"]
    expect(jars and all(j.startswith(JAR_PREFIX) for j in jars[0].split(",")), f"--jars not under {JAR_PREFIX}")
    props = {}
    for c in req["configurationOverrides"]["applicationConfiguration"]:
        if c["classification"] == "spark-defaults":
            props.update(c.get("properties") or {})
    for role in ("driver", "executor"):
        tf = props.get(f"spark.kubernetes.{role}.podTemplateFile", "")
        expect(tf.startswith("s3://") and tf.endswith(f"/{role}-pod-template.yaml"),
               f"spark.kubernetes.{role}.podTemplateFile should be the s3:// copy of {role}-pod-template.yaml")
    expect(re.fullmatch(r"emr-\d+\.\d+\.\d+(-latest|-\d+)?", req["releaseLabel"]), "bad releaseLabel")


@check("emr-eks-start-job-run.json: valid StartJobRun request (AWS API model)")
def _():
    try:
        import botocore.session
        from botocore.validate import ParamValidator
    except ImportError:
        raise Skip("botocore is not installed")
    req = json.loads(read(EMR_PATH))
    op = botocore.session.get_session().get_service_model("emr-containers").operation_model("StartJobRun")
    for member, shape in op.input_shape.members.items():
        if shape.metadata.get("idempotencyToken") and member not in req:
            req[member] = "filled-in-by-the-cli"
    report = ParamValidator().validate(req, op.input_shape)
    expect(not report.has_errors(), report.generate_report())


# ---------------------------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------------------------

UNIT_PATH = os.path.join(DEPLOY, "systemd", "s3cachefs@.service")
ENV_PATH = os.path.join(DEPLOY, "systemd", "jars.env.example")


def parse_unit(text):
    sections, cur = {}, None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], {})
            continue
        k, _, v = line.partition("=")
        cur.setdefault(k.strip(), []).append(v.strip())
    return sections


@check("systemd unit: Type=notify, env file, ExecStart, ordering, restart, no mount namespacing")
def _():
    u = parse_unit(read(UNIT_PATH))
    unit, svc, inst = u.get("Unit", {}), u.get("Service", {}), u.get("Install", {})
    expect(svc.get("Type") == ["notify"], "Type is not notify")
    expect(svc.get("NotifyAccess") == ["main"], "NotifyAccess is not main")
    expect(svc.get("EnvironmentFile") == ["/etc/s3cachefs/%i.env"], "EnvironmentFile is not /etc/s3cachefs/%i.env")
    expect(svc.get("ExecStart") == ["/usr/local/bin/s3cachefs mount ${BUCKET} ${MOUNTPOINT} --foreground $S3CACHEFS_ARGS"],
           f"unexpected ExecStart {svc.get('ExecStart')}")
    pre = svc.get("ExecStartPre") or []
    expect(any("mkdir -p ${MOUNTPOINT}" in x for x in pre), "no ExecStartPre creating the mountpoint")
    expect(svc.get("Restart") == ["on-failure"], "Restart is not on-failure")
    expect(svc.get("ExecReload") == ["/bin/kill -HUP $MAINPID"], "ExecReload should send SIGHUP (metadata refresh)")
    expect(not svc.get("ExecStop"), "no ExecStop: SIGTERM unmounts (lazily when busy)")
    for k in ("RestartSec", "TimeoutStartSec", "TimeoutStopSec"):
        expect(svc.get(k), f"{k} is not set")
    expect("network-online.target" in " ".join(unit.get("After", [])), "not After=network-online.target")
    expect("network-online.target" in " ".join(unit.get("Wants", [])), "not Wants=network-online.target")
    expect("kubelet.service" in " ".join(unit.get("Before", [])), "not Before=kubelet.service")
    expect("multi-user.target" in " ".join(inst.get("WantedBy", [])), "not WantedBy=multi-user.target")
    bad = sorted(k for k in svc if k in NAMESPACING_KEYS)
    expect(not bad, f"{bad} would hide the FUSE mount in a private mount namespace")


def parse_env_file(text):
    env = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        k, eq, v = s.partition("=")
        expect(eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k), f"bad env line {line!r}")
        expect("#" not in v, f"{k}: '#' in a value is not a comment in EnvironmentFile= ({line!r})")
        env[k] = v
    return env


@check("jars.env.example: BUCKET, MOUNTPOINT under /mnt/s3, known flags in S3CACHEFS_ARGS")
def _():
    env = parse_env_file(read(ENV_PATH))
    for k in ("BUCKET", "MOUNTPOINT", "S3CACHEFS_ARGS"):
        expect(env.get(k), f"{k} is not set")
    expect(env["MOUNTPOINT"] == MOUNTPOINT, f"MOUNTPOINT should be {MOUNTPOINT}")
    args = env["S3CACHEFS_ARGS"].split()
    check_flags(args, MOUNT_FLAGS, "S3CACHEFS_ARGS")
    expect("--foreground" not in args, "--foreground is already in the unit's ExecStart")
    expect(flag_value(args, "--cache") == CACHE_HOST_PATH, f"--cache should be {CACHE_HOST_PATH}")
    expect("--allow-other" in args, "pods read as other users: --allow-other")


UD_PATH = os.path.join(DEPLOY, "ec2", "userdata.sh")


def shell_var(text, name):
    m = re.search(r"^" + name + r'="([^"]*)"', text, re.M)
    expect(m, f"{name} is not set")
    return m.group(1)


@check("ec2 userdata: strict mode, embedded unit identical to deploy/systemd, settings")
def _():
    text = read(UD_PATH)
    expect(text.startswith("#!/bin/bash\n"), "the first line must be #!/bin/bash (cloud-init runs it as a script)")
    expect(re.search(r"^set -euo pipefail$", text, re.M), "no 'set -euo pipefail'")
    m = re.search(r"<<'S3CACHEFS_UNIT'\n(.*?)\nS3CACHEFS_UNIT\n", text, re.S)
    expect(m, "no embedded unit (<<'S3CACHEFS_UNIT')")
    expect(m.group(1) == read(UNIT_PATH).rstrip("\n"),
           "the unit embedded in userdata.sh differs from deploy/systemd/s3cachefs@.service")
    expect(shell_var(text, "MOUNTPOINT") == MOUNTPOINT, f"MOUNTPOINT should be {MOUNTPOINT}")
    expect(shell_var(text, "CACHE_DIR") == CACHE_HOST_PATH, f"CACHE_DIR should be {CACHE_HOST_PATH}")
    check_flags(shell_var(text, "EXTRA_ARGS").split(), MOUNT_FLAGS, "EXTRA_ARGS")
    labels = shell_var(text, "EKS_NODE_LABELS")
    expect(all(f"{k}={v}" in labels for k, v in NODE_SELECTOR.items()), "EKS_NODE_LABELS do not match the DaemonSet's nodeSelector")
    expect("/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_" in text, "instance-store discovery by id is missing")
    expect("mdadm --create" in text and "--level=0" in text and "mkfs.xfs" in text, "RAID0 / XFS setup is missing")
    expect('install -d -m 0700' in text, "the cache directory is not created with mode 0700")


# ---------------------------------------------------------------------------------------------
# Docker
# ---------------------------------------------------------------------------------------------

DF_PATH = os.path.join(DEPLOY, "docker", "Dockerfile")


@check("Dockerfile: rust builder matching rust-version, --locked build, slim runtime with fuse3 + ca-certificates")
def _():
    text = read(DF_PATH)
    cargo = read(os.path.join(ROOT, "Cargo.toml"))
    rv = re.search(r'^rust-version\s*=\s*"([^"]+)"', cargo, re.M).group(1)
    arg = re.search(r"^ARG RUST_VERSION=(\S+)$", text, re.M)
    expect(arg and arg.group(1) == rv, f"ARG RUST_VERSION should be {rv} (Cargo.toml rust-version)")
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    expect(froms and froms[0][0] == "rust:${RUST_VERSION}-bookworm", f"first stage is {froms[0] if froms else None}")
    expect(froms[-1][0] == "debian:bookworm-slim", "the runtime stage is not debian:bookworm-slim")
    expect("cargo build --release --locked" in text, "no 'cargo build --release --locked'")
    joined = re.sub(r"\\\n", " ", text)
    inst = re.search(r"apt-get install ([^&]*)", joined)
    pkgs = {t for t in inst.group(1).split() if not t.startswith("-")} if inst else set()
    expect(pkgs == {"fuse3", "ca-certificates"}, f"runtime packages are {sorted(pkgs)}, expected fuse3 and ca-certificates")
    expect(re.search(r'^ENTRYPOINT \["/usr/local/bin/s3cachefs"\]$', text, re.M), "ENTRYPOINT is not the binary")
    expect(re.search(r"^COPY --from=\S+ \S+ /usr/local/bin/s3cachefs$", text, re.M), "the binary is not copied to /usr/local/bin")
    expect("docker build -f deploy/docker/Dockerfile" in text, "the build command is not documented")


@check("Dockerfile.dockerignore: keeps target/ and .git/ out, keeps the workspace in")
def _():
    p = os.path.join(DEPLOY, "docker", "Dockerfile.dockerignore")
    pats = [l.strip() for l in read(p).splitlines() if l.strip() and not l.startswith("#")]
    expect("target" in pats and ".git" in pats, "target and .git must be excluded")
    for keep in ("Cargo.toml", "Cargo.lock", "src", "testsrv", "benches", "tests", "examples"):
        expect(keep not in pats and not any(x in (keep + "/", "/" + keep) for x in pats), f"{keep} must stay in the context")
    expect(not os.path.exists(os.path.join(DEPLOY, "docker", ".dockerignore")),
           "deploy/docker/.dockerignore would be ignored (the context is the repository root); use Dockerfile.dockerignore")


# ---------------------------------------------------------------------------------------------
# The shared tier: lifecycle rule, IAM policies, and the --shared-cache URLs that use them
# ---------------------------------------------------------------------------------------------

SHARED = os.path.join(DEPLOY, "shared-cache")
LIFECYCLE_PATH = os.path.join(SHARED, "lifecycle.json")
DIRECTORY_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]*--[a-z0-9-]+--x-s3")
EXPRESS_BUCKET_ARN = re.compile(r"arn:aws[a-z-]*:s3express:[a-z0-9-]+:\d{12}:bucket/(" + DIRECTORY_BUCKET.pattern + ")")
# What s3cachefs sends to the shared bucket (src/tier/shared/): GET and HEAD of blocks, leases
# and the probe; conditional PUT and DELETE of blocks, leases and the probe (writers only).
WRITER_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
READER_ACTIONS = {"s3:GetObject"}


def statements(policy):
    expect(policy.get("Version") == "2012-10-17", "Version is not 2012-10-17")
    sts = policy.get("Statement")
    expect(isinstance(sts, list) and sts, "no Statement list")
    for st in sts:
        expect(st.get("Effect") == "Allow", f"statement {st.get('Sid')}: only Allow statements are expected")
        for k in ("Action", "Resource"):
            expect(st.get(k), f"statement {st.get('Sid')}: no {k}")
    return sts


def as_list(v):
    return v if isinstance(v, list) else [v]


def lifecycle_prefix():
    rules = json.loads(read(LIFECYCLE_PATH))["Rules"]
    expect(len(rules) == 1, f"expected one rule, found {len(rules)}")
    return rules[0]["Filter"]["Prefix"]


def shared_cache_urls(text):
    """(bucket, prefix) of every --shared-cache s3://... and shared_cache=s3://... in text."""
    out = []
    for m in re.finditer(r"(?:--shared-cache[ =]|shared_cache=)s3://([a-z0-9.-]+)(/[^\s,`'\"\\]*)?", text):
        prefix = (m.group(2) or "").strip("/")
        out.append((m.group(1), prefix + "/" if prefix else ""))
    return out


@check("shared-cache lifecycle.json: one enabled rule expiring <prefix>s3cachefs/ and aborting uploads; directory-bucket safe")
def _():
    rule = json.loads(read(LIFECYCLE_PATH))["Rules"][0]
    expect(rule.get("Status") == "Enabled", "the rule is not Enabled")
    flt = rule.get("Filter") or {}
    expect(set(flt) == {"Prefix"}, f"the filter should be a prefix only (directory buckets take no tag filters): {flt}")
    expect(lifecycle_prefix().endswith("s3cachefs/"), "the prefix must end in s3cachefs/ (src/tier/shared/object.rs names objects so)")
    days = (rule.get("Expiration") or {}).get("Days")
    expect(isinstance(days, int) and days >= 1, f"Expiration.Days should be a whole number of days, is {days!r}")
    abort = (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation")
    expect(isinstance(abort, int) and abort >= 1, "no AbortIncompleteMultipartUpload.DaysAfterInitiation")
    unsupported = sorted(k for k in rule if "Transition" in k or "Noncurrent" in k)
    expect(not unsupported, f"directory buckets support only expiration and aborting uploads: {unsupported}")


@check("shared-cache lifecycle.json: valid PutBucketLifecycleConfiguration request (AWS API model)")
def _():
    try:
        import botocore.session
        from botocore.validate import ParamValidator
    except ImportError:
        raise Skip("botocore is not installed")
    op = botocore.session.get_session().get_service_model("s3").operation_model("PutBucketLifecycleConfiguration")
    req = {"Bucket": "jars-cache--use1-az4--x-s3", "LifecycleConfiguration": json.loads(read(LIFECYCLE_PATH))}
    report = ParamValidator().validate(req, op.input_shape)
    expect(not report.has_errors(), report.generate_report())


@check("shared-cache IAM (general purpose bucket): writer and reader on <prefix>s3cachefs/*, s3:ListBucket for 404s")
def _():
    prefix = lifecycle_prefix()
    buckets = set()
    for name, want in (("iam-writer.json", WRITER_ACTIONS), ("iam-reader.json", READER_ACTIONS)):
        sts = statements(json.loads(read(os.path.join(SHARED, name))))
        objects = [st for st in sts if any(a != "s3:ListBucket" for a in as_list(st["Action"]))]
        actions = {a for st in objects for a in as_list(st["Action"])}
        expect(actions == want, f"{name}: object actions {sorted(actions)}, expected {sorted(want)}")
        for st in objects:
            for r in as_list(st["Resource"]):
                m = re.fullmatch(r"arn:aws[a-z-]*:s3:::([a-z0-9.-]+)/(.*)\*", r)
                expect(m and m.group(2) == prefix, f"{name}: object resource {r} is not arn:aws:s3:::BUCKET/{prefix}*")
                buckets.add(m.group(1))
        lists = [st for st in sts if as_list(st["Action"]) == ["s3:ListBucket"]]
        expect(lists, f"{name}: no s3:ListBucket (without it a missing block is 403, which opens the breaker)")
        for st in lists:
            expect(not st.get("Condition"), f"{name}: s3:ListBucket has a condition; a GET of a missing block carries no prefix")
            for r in as_list(st["Resource"]):
                m = re.fullmatch(r"arn:aws[a-z-]*:s3:::([a-z0-9.-]+)", r)
                expect(m, f"{name}: s3:ListBucket resource {r} is not a bucket ARN")
                buckets.add(m.group(1))
    expect(len(buckets) == 1, f"the policies name different buckets: {sorted(buckets)}")


@check("shared-cache IAM (S3 Express directory bucket): CreateSession, ReadOnly for readers; lifecycle service principal")
def _():
    arns = set()
    for name in ("iam-writer-express.json", "iam-reader-express.json", "bucket-policy-express-lifecycle.json"):
        sts = statements(json.loads(read(os.path.join(SHARED, name))))
        for st in sts:
            expect(as_list(st["Action"]) == ["s3express:CreateSession"], f"{name}: only s3express:CreateSession is needed")
            for r in as_list(st["Resource"]):
                expect(EXPRESS_BUCKET_ARN.fullmatch(r), f"{name}: {r} is not a directory bucket ARN (name--azid--x-s3)")
                arns.add(r)
        modes = [((st.get("Condition") or {}).get("StringEquals") or {}).get("s3express:SessionMode") for st in sts]
        if name.startswith("iam-reader"):
            expect(modes == ["ReadOnly"], f"{name}: readers must be limited to s3express:SessionMode ReadOnly")
        else:
            expect("ReadOnly" not in modes, f"{name}: needs ReadWrite sessions")
        if name.startswith("bucket-policy"):
            expect(all((st.get("Principal") or {}).get("Service") == "lifecycle.s3.amazonaws.com" for st in sts),
                   f"{name}: the principal must be the S3 Lifecycle service, lifecycle.s3.amazonaws.com")
    expect(len(arns) == 1, f"the files name different buckets: {sorted(arns)}")


@check("--shared-cache URLs in deploy/ and docs/ match the lifecycle prefix and the policies' buckets")
def _():
    prefix = lifecycle_prefix()
    policy_text = "".join(read(p) for p in files_under(SHARED, (".json",)))
    gp = set(re.findall(r"arn:aws[a-z-]*:s3:::([a-z0-9.-]+)", policy_text))
    express = {m.group(1) for m in EXPRESS_BUCKET_ARN.finditer(policy_text)}
    paths = [p for p in files_under(DEPLOY, ("",)) if not p.endswith("validate.py")]
    paths += files_under(os.path.join(ROOT, "docs"), (".md",)) + [os.path.join(ROOT, "README.md")]
    seen = set()
    for p in paths:
        try:
            text = read(p)
        except UnicodeDecodeError:
            continue
        for bucket, url_prefix in shared_cache_urls(text):
            if bucket in gp | express:
                expect(url_prefix + "s3cachefs/" == prefix,
                       f"{rel(p)}: s3://{bucket}/{url_prefix} keeps its objects under {url_prefix}s3cachefs/, "
                       f"but lifecycle.json and the policies cover {prefix}")
                seen.add(bucket)
        for ref in re.findall(r"file://(deploy/[\w./-]+)", text):
            expect(os.path.exists(os.path.join(ROOT, ref)), f"{rel(p)}: {ref} does not exist")
    expect(seen & express, f"no --shared-cache URL in deploy/, docs/ or README.md names the directory bucket {sorted(express)}")


# ---------------------------------------------------------------------------------------------
# s3cachefs command lines in deploy/ and docs/DEPLOYMENT.md use only existing flags
# ---------------------------------------------------------------------------------------------


def command_lines(text):
    """Every 's3cachefs mount|warm ...' command line, continuation lines joined."""
    text = re.sub(r"\\\n\s*(#\s*)?", " ", text)
    out = []
    for line in text.splitlines():
        for m in re.finditer(r"\bs3cachefs\s+(mount|warm)\s+(.*)", line):
            rest = re.split(r"\s(?:\||;|&&|\|\||#)\s|`|\)$", m.group(2))[0]
            out.append((m.group(1), rest, line.strip()))
    return out


@check("s3cachefs command lines in deploy/ and docs/DEPLOYMENT.md use existing flags")
def _():
    paths = [p for p in files_under(DEPLOY, ("",)) if not p.endswith("validate.py")]
    doc = os.path.join(ROOT, "docs", "DEPLOYMENT.md")
    if os.path.exists(doc):
        paths.append(doc)
    n = 0
    for p in paths:
        try:
            text = read(p)
        except UnicodeDecodeError:
            continue
        for sub, rest, line in command_lines(text):
            toks = re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest)
            known = MOUNT_FLAGS if sub == "mount" else WARM_FLAGS
            bad = [t for t in toks if t not in known]
            expect(not bad, f"{rel(p)}: {bad} in: {line[:120]}")
            n += 1
        # fstab lines / mount -o: option names are flag names with _ for -.
        for m in re.finditer(r"fuse\.s3cachefs\s+(?:-o\s+)?(\S+)", text):
            opts = m.group(1)
            if "=" not in opts and "," not in opts:
                continue
            for o in opts.split(","):
                name = o.split("=", 1)[0]
                if name in GENERIC_MOUNT_OPTIONS or name.startswith("x-"):
                    continue
                expect("--" + name.replace("_", "-") in MOUNT_FLAGS, f"{rel(p)}: mount option {name!r} is no s3cachefs flag")
    expect(n > 0, "no s3cachefs command line found")


@check("flag lists match the built binary's --help (S3CACHEFS_BIN)")
def _():
    binary = os.environ.get("S3CACHEFS_BIN")
    if not binary:
        raise Skip("set S3CACHEFS_BIN to a built s3cachefs to compare the flag lists with its --help")
    for sub, known in (("mount", MOUNT_FLAGS), ("warm", WARM_FLAGS)):
        r = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
        expect(r.returncode == 0, f"{binary} {sub} --help exited {r.returncode}: {r.stderr.strip()}")
        have = set(re.findall(r"(?:^|[\s,])(--?[a-z][a-z-]*)", r.stdout))
        missing = sorted(known - have)
        expect(not missing, f"{sub}: flags used by these files that {binary} does not have: {missing}")


# ---------------------------------------------------------------------------------------------
# Shell snippets embedded in YAML and in the unit: shellcheck
# ---------------------------------------------------------------------------------------------


def embedded_scripts():
    for p in YAML_FILES:
        for d in DOCS.get(p, []):
            specs = []
            spec = pod_spec(d)
            if spec is not None:
                specs.append(spec)
            if d.get("kind") == "SparkApplication":
                specs += [d["spec"]["driver"], d["spec"]["executor"]]
            for s in specs:
                for _, c in containers(s):
                    for src in (c.get("command"), ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command")):
                        if src and len(src) >= 3 and src[1] == "-c":
                            yield f"{rel(p)}:{c['name']}", src[2]
    for line in read(UNIT_PATH).splitlines():
        m = re.match(r"ExecStartPre=-?/bin/sh -c '(.*)'$", line)
        if m:
            yield f"{rel(UNIT_PATH)}:ExecStartPre", m.group(1).replace("$$", "$")


@check("shellcheck of the shell snippets embedded in YAML files and the unit")
def _():
    sc = shutil.which("shellcheck")
    if not sc:
        raise Skip("shellcheck is not installed")
    n = 0
    for where, script in embedded_scripts():
        r = subprocess.run([sc, "-s", "sh", "-"], input=script, capture_output=True, text=True)
        expect(r.returncode == 0, f"{where}:\n{r.stdout}{r.stderr}")
        n += 1
    expect(n >= 5, f"only {n} snippets found")
    if VERBOSE:
        print(f"     ({n} snippets)")


print(f"validate.py: passed={results['passed']} failed={results['failed']} skipped={results['skipped']}")
sys.exit(1 if results["failed"] else 0)
