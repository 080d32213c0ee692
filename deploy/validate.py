#!/usr/bin/env python3
"""Cross-file checks of the deployment files that no schema can make (run by .ci/check-deploy.sh).

The schemas check each object on its own: .ci/check-deploy.sh renders every kustomization under
deploy/k8s/ with "kubectl kustomize" and validates each rendered object with kubernetes-validate,
and hadolint lints the Dockerfile. What is left for this script is what ties files together:

- every s3cachefs command line (rendered overlays, Spark files, systemd unit and env example, EC2
  user data, docs/DEPLOYMENT.md) uses flags the binary has, per subcommand (mount, serve, warm);
- the mount layout agrees: the DaemonSets mount under /mnt/s3 with a Bidirectional hostPath volume
  on /mnt/s3, the Spark pods read the same hostPath with HostToContainer, their JARs are under a
  mounted source (local:///mnt/s3/NAME/), and the node selector and the cache directory are the
  same everywhere;
- the PodMonitor (a CRD kubernetes-validate has no schema for) matches the schema written below,
  and selects the DaemonSet's pods and its metrics port, which is --metrics-addr's;
- the unit embedded in the EC2 user data is deploy/systemd's, the Dockerfile's RUST_VERSION is
  Cargo.toml's rust-version;
- the shared tier's IAM policies allow the S3 calls src/store/s3.rs makes, its lifecycle rule covers
  the prefix the code writes under, and every --shared-cache URL in the docs matches them; the EMR on
  EKS request and the lifecycle rule are valid against the AWS API models (botocore);
- the shell snippets embedded in YAML and in the unit pass shellcheck.

Usage: python3 deploy/validate.py --rendered DIR [--verbose]
DIR holds one file per kustomization, NAME.yaml, rendered by check-deploy.sh (base, node-multi,
warm, sidecar, monitoring). With S3CACHEFS_BIN=path to a built s3cachefs, the known flags of each
subcommand are read from its --help instead of the lists below.
Prints one line per check and a last line "validate.py: passed=N failed=M skipped=K"; exits 1 if
any check failed. Needs PyYAML and jsonschema (installed with kubernetes-validate).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
SPARK = os.path.join(DEPLOY, "spark")
UNIT_PATH = os.path.join(DEPLOY, "systemd", "s3cachefs@.service")
ENV_PATH = os.path.join(DEPLOY, "systemd", "jars.env.example")
UD_PATH = os.path.join(DEPLOY, "ec2", "userdata.sh")
DF_PATH = os.path.join(DEPLOY, "docker", "Dockerfile")
OVERLAYS = ("base", "node-multi", "warm", "sidecar", "monitoring")

# Known flags per subcommand, used when S3CACHEFS_BIN is not set (keep in step with
# docs/CONFIGURATION.md). "serve" takes every mount flag plus --source and --record-access.
SHARED_CACHE_FLAGS = {
    "--shared-cache", "--shared-cache-region", "--shared-cache-endpoint-url", "--shared-cache-read-only",
    "--shared-cache-key-file", "--shared-cache-lease-wait", "--shared-cache-timeout",
}
MOUNT_FLAGS = {
    "--cache", "--max-cache-size", "--cache-min-free", "--metadata-ttl", "--negative-metadata-ttl",
    "--block-size", "--memory-cache-size", "--allow-other", "--allow-root", "--uid", "--gid",
    "--file-mode", "--dir-mode", "--fuse-threads", "--region", "--endpoint-url", "--force-path-style",
    "--max-attempts", "--request-timeout", "--profile", "--no-sign-request", "--prefix",
    "--foreground", "-f", "--log-level", "--log-file", "--metrics-addr", "--record-access", "--help", "-h",
} | SHARED_CACHE_FLAGS
SERVE_FLAGS = (MOUNT_FLAGS - {"--prefix"}) | {"--source"}
WARM_FLAGS = {
    "--cache", "--max-cache-size", "--cache-min-free", "--block-size", "--include", "--exclude",
    "--manifest", "--concurrency", "--log-level", "--prefix", "--region", "--endpoint-url",
    "--force-path-style", "--max-attempts", "--request-timeout", "--profile", "--no-sign-request",
    "--help", "-h",
} | SHARED_CACHE_FLAGS
FLAGS = {"mount": MOUNT_FLAGS, "serve": SERVE_FLAGS, "warm": WARM_FLAGS}
GENERIC_MOUNT_OPTIONS = {"ro", "rw", "_netdev", "nofail", "noauto", "auto", "defaults", "user", "users", "nouser"}

MOUNTS_DIR = "/mnt/s3"
CACHE_HOST_PATH = "/nvme/s3cache"
NODE_SELECTOR = {"s3cachefs/nvme": "true"}
SPARK_MAIN_CONTAINERS = {"driver": "spark-kubernetes-driver", "executor": "spark-kubernetes-executor"}

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


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


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


def docs_of(path):
    return [d for d in yaml.safe_load_all(read(path)) if d is not None]


def rendered_dir():
    if "--rendered" not in sys.argv:
        sys.exit("usage: validate.py --rendered DIR [--verbose]")
    return sys.argv[sys.argv.index("--rendered") + 1]


RENDERED = {}
for name in OVERLAYS:
    p = os.path.join(rendered_dir(), f"{name}.yaml")
    RENDERED[name] = docs_of(p) if os.path.exists(p) else []


def pod_spec(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec") or {}
    if kind in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def all_containers(spec):
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def script_of(c):
    cmd = c.get("command") or []
    if len(cmd) >= 3 and cmd[0] in ("/bin/sh", "sh") and cmd[1] == "-c":
        return cmd[2]
    return None


def s3cachefs_argv(c):
    """The s3cachefs argv of a container (subcommand first): its args when its command execs
    s3cachefs with "$@", plus the flags its start script adds ("--source"), or None."""
    args = [str(a) for a in c.get("args") or []]
    if args and args[0] in FLAGS:
        extra = re.findall(r'set -- "\$@" (--[a-z-]+)', script_of(c) or "")
        return args + extra
    return None


def find(docs, kind, name=None):
    out = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    expect(out, f"no {kind} {name or ''}")
    return out[0]


def volume(spec, name):
    for v in spec.get("volumes") or []:
        if v.get("name") == name:
            return v
    raise AssertionError(f"volume {name!r} is not defined")


def mount_at(c, path):
    for m in c.get("volumeMounts") or []:
        if m["mountPath"].rstrip("/") == path:
            return m
    return None


def flag_value(argv, flag):
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def help_flags(sub):
    """The flags `s3cachefs SUB --help` lists (S3CACHEFS_BIN), or the list above."""
    binary = os.environ.get("S3CACHEFS_BIN")
    if not binary:
        return FLAGS[sub]
    r = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
    expect(r.returncode == 0, f"{binary} {sub} --help exited {r.returncode}: {r.stderr.strip()[:200]}")
    return set(re.findall(r"(?:^|[\s,])(--?[a-z][a-z-]*)", r.stdout))


def check_flags(sub, flags, where):
    bad = sorted({f for f in flags if f not in help_flags(sub)})
    expect(not bad, f"{where}: unknown s3cachefs {sub} flag(s) {bad}")


# ---------------------------------------------------------------------------------------------
# Flags: every s3cachefs command line uses flags its subcommand has
# ---------------------------------------------------------------------------------------------


def command_lines(text):
    """Every 's3cachefs mount|serve|warm ...' command line, continuation lines joined."""
    text = re.sub(r"\\\n\s*(#\s*)?", " ", text)
    out = []
    for line in text.splitlines():
        for m in re.finditer(r"\bs3cachefs\s+(mount|serve|warm)\s+(.*)", line):
            rest = re.split(r"\s(?:\||;|&&|\|\||#)\s|`|\)$", m.group(2))[0]
            out.append((m.group(1), rest, line.strip()))
    return out


@check("s3cachefs flags in the rendered overlays exist (mount, serve, warm)")
def _():
    n = 0
    for name, docs in RENDERED.items():
        for d in docs:
            spec = pod_spec(d)
            for c in all_containers(spec) if spec else []:
                argv = s3cachefs_argv(c)
                if argv:
                    check_flags(argv[0], [a for a in argv if a.startswith("-")], f"{name}: {c['name']}")
                    n += 1
                for sub, rest, _ in command_lines(script_of(c) or ""):
                    check_flags(sub, re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest), f"{name}: {c['name']} script")
                    n += 1
    expect(n >= 5, f"only {n} s3cachefs command lines found in the rendered overlays")


@check("s3cachefs command lines in deploy/ and docs/DEPLOYMENT.md use existing flags")
def _():
    paths = [p for p in files_under(DEPLOY, ("",)) if not p.endswith("validate.py")]
    paths.append(os.path.join(ROOT, "docs", "DEPLOYMENT.md"))
    n = 0
    for p in paths:
        try:
            text = read(p)
        except UnicodeDecodeError:
            continue
        for sub, rest, line in command_lines(text):
            toks = re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest)
            check_flags(sub, toks, f"{rel(p)}: {line[:100]}")
            n += 1
        for m in re.finditer(r"fuse\.s3cachefs\s+(?:-o\s+)?(\S+)", text):
            opts = m.group(1)
            if "=" not in opts and "," not in opts:
                continue
            for o in opts.split(","):
                name = o.split("=", 1)[0]
                if name in GENERIC_MOUNT_OPTIONS or name.startswith("x-"):
                    continue
                check_flags("mount", ["--" + name.replace("_", "-")], f"{rel(p)}: mount option {name!r}")
    env = dict(re.findall(r"^([A-Z_]+)=(.*)$", read(ENV_PATH), re.M))
    check_flags("mount", [t for t in env.get("S3CACHEFS_ARGS", "").strip('"').split() if t.startswith("-")],
                f"{rel(ENV_PATH)}: S3CACHEFS_ARGS")
    expect(n > 0, "no s3cachefs command line found")


# ---------------------------------------------------------------------------------------------
# Layout: mounts under /mnt/s3, the same hostPath, node selector and cache directory everywhere
# ---------------------------------------------------------------------------------------------


def node_sources():
    """Mountpoints the node-level overlays create: /mnt/s3/NAME."""
    names = set()
    base = find(RENDERED["base"], "DaemonSet")
    argv = s3cachefs_argv(pod_spec(base)["containers"][0])
    names.add(argv[2])
    cm = find(RENDERED["node-multi"], "ConfigMap", "s3cachefs")
    for s in cm["data"]["sources"].split():
        expect(re.fullmatch(r"[A-Za-z0-9._-]+=[a-z0-9.-]+(/\S*)?", s), f"node-multi source {s!r} is not NAME=BUCKET[/PREFIX/]")
        names.add(f"{MOUNTS_DIR}/{s.split('=', 1)[0]}")
    return names


@check("node DaemonSets: s3cachefs mounts under /mnt/s3, a Bidirectional hostPath /mnt/s3, the shared cache, the node selector")
def _():
    for name in ("base", "node-multi", "warm"):
        ds = find(RENDERED[name], "DaemonSet", "s3cachefs")
        spec = pod_spec(ds)
        expect(spec.get("nodeSelector") == NODE_SELECTOR, f"{name}: nodeSelector {spec.get('nodeSelector')}")
        c = [c for c in spec["containers"] if c["name"] == "s3cachefs"][0]
        argv = s3cachefs_argv(c)
        target = argv[2] if argv[0] == "mount" else argv[1]
        expect(target == MOUNTS_DIR or target.startswith(MOUNTS_DIR + "/"), f"{name}: mounts at {target}")
        m = mount_at(c, MOUNTS_DIR)
        expect(m and m.get("mountPropagation") == "Bidirectional", f"{name}: {MOUNTS_DIR} is not mounted Bidirectional")
        expect(volume(spec, m["name"])["hostPath"]["path"] == MOUNTS_DIR, f"{name}: {MOUNTS_DIR} is not hostPath {MOUNTS_DIR}")
        cache = flag_value(argv, "--cache")
        cm = mount_at(c, cache)
        expect(cm and volume(spec, cm["name"])["hostPath"]["path"] == CACHE_HOST_PATH,
               f"{name}: --cache {cache} is not the host's {CACHE_HOST_PATH}")
        prestop = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
        expect("umount" in prestop, f"{name}: preStop does not unmount")
        for init in spec.get("initContainers") or []:
            for sub, rest, _ in command_lines(script_of(init) or ""):
                if "--cache" in rest:
                    im = mount_at(init, CACHE_HOST_PATH)
                    expect(im and volume(spec, im["name"])["hostPath"]["path"] == CACHE_HOST_PATH,
                           f"{name}: init container {init['name']} warms a cache that is not the daemon's")


@check("sidecar: the pod's mount under /mnt/s3, and the node's cache directory")
def _():
    pod = find(RENDERED["sidecar"], "Pod")
    spec = pod["spec"]
    side = [c for c in spec["initContainers"] if s3cachefs_argv(c)][0]
    argv = s3cachefs_argv(side)
    expect(argv[2].startswith(MOUNTS_DIR + "/"), f"mounts at {argv[2]}")
    cm = mount_at(side, flag_value(argv, "--cache"))
    expect(cm and volume(spec, cm["name"])["hostPath"]["path"] == CACHE_HOST_PATH, "the cache is not the node's")
    expect(spec.get("nodeSelector") == NODE_SELECTOR, "nodeSelector differs from the DaemonSet's")


def check_reader(where, c, volumes):
    m = mount_at(c, MOUNTS_DIR)
    expect(m, f"{where}: {MOUNTS_DIR} is not mounted")
    expect(m.get("readOnly") is True and m.get("mountPropagation") == "HostToContainer",
           f"{where}: {MOUNTS_DIR} must be readOnly with HostToContainer")
    vs = [v for v in volumes or [] if v.get("name") == m["name"]]
    expect(vs and (vs[0].get("hostPath") or {}).get("path") == MOUNTS_DIR, f"{where}: not the hostPath {MOUNTS_DIR}")


def jar_mount(url, mounts):
    expect(url.startswith("local://" + MOUNTS_DIR + "/"), f"{url} is not under local://{MOUNTS_DIR}/")
    path = url[len("local://"):]
    expect(any(path.startswith(m + "/") for m in mounts), f"{url} is under no mounted source {sorted(mounts)}")


@check("Spark files: the node's /mnt/s3 hostPath, node selector, wait-for-mount, JARs under a mounted source")
def _():
    mounts = node_sources()
    for role in ("driver", "executor"):
        p = os.path.join(SPARK, f"{role}-pod-template.yaml")
        spec = find(docs_of(p), "Pod")["spec"]
        expect(spec.get("nodeSelector") == NODE_SELECTOR, f"{rel(p)}: nodeSelector differs from the DaemonSet's")
        main = [c for c in spec["containers"] if c["name"] == SPARK_MAIN_CONTAINERS[role]]
        expect(main, f"{rel(p)}: no container {SPARK_MAIN_CONTAINERS[role]}")
        check_reader(rel(p), main[0], spec.get("volumes"))
        wait = [c for c in spec.get("initContainers") or [] if c["name"] == "wait-for-s3cachefs"]
        expect(wait and any(m in (script_of(wait[0]) or "") for m in mounts),
               f"{rel(p)}: wait-for-s3cachefs waits for none of {sorted(mounts)}")
    app = find(docs_of(os.path.join(SPARK, "sparkapplication.yaml")), "SparkApplication")["spec"]
    for url in (app.get("deps") or {}).get("jars", []) + [app["mainApplicationFile"]]:
        jar_mount(url, mounts)
    for role in ("driver", "executor"):
        expect(app[role].get("nodeSelector") == NODE_SELECTOR, f"sparkapplication {role}: nodeSelector")
        check_reader(f"sparkapplication {role}", app[role], app.get("volumes"))
    texts = [read(os.path.join(SPARK, n)) for n in ("spark-defaults.conf", "spark-submit.sh", "emr-eks-start-job-run.json")]
    urls = set(re.findall(r"local://[^\s,\"']+", "\n".join(texts)))
    expect(urls, "no local:// JARs in spark-defaults.conf, spark-submit.sh or emr-eks-start-job-run.json")
    for url in urls:
        jar_mount(url, mounts)
    conf = read(os.path.join(SPARK, "spark-defaults.conf"))
    for role in ("driver", "executor"):
        expect(re.search(rf"spark\.kubernetes\.{role}\.volumes\.hostPath\.\S+\.options\.path\s+{MOUNTS_DIR}\s*$", conf, re.M),
               f"spark-defaults.conf: no {role} hostPath volume on {MOUNTS_DIR}")


@check("EC2 user data: embeds deploy/systemd's unit, the DaemonSet's node labels and cache directory")
def _():
    text = read(UD_PATH)
    m = re.search(r"<<'S3CACHEFS_UNIT'\n(.*?)\nS3CACHEFS_UNIT\n", text, re.S)
    expect(m and m.group(1) == read(UNIT_PATH).rstrip("\n"), "the unit embedded in userdata.sh differs from deploy/systemd's")
    var = lambda n: (re.search(r"^" + n + r'="([^"]*)"', text, re.M) or [None, None])[1]
    expect(var("CACHE_DIR") == CACHE_HOST_PATH, f"CACHE_DIR should be {CACHE_HOST_PATH}")
    expect(var("MOUNTPOINT", ) and var("MOUNTPOINT").startswith(MOUNTS_DIR + "/"), f"MOUNTPOINT is not under {MOUNTS_DIR}")
    labels = var("EKS_NODE_LABELS") or ""
    expect(all(f"{k}={v}" in labels for k, v in NODE_SELECTOR.items()), "EKS_NODE_LABELS do not match the nodeSelector")
    check_flags("mount", [t for t in (var("EXTRA_ARGS") or "").split() if t.startswith("-")], "EXTRA_ARGS")


@check("Dockerfile: ARG RUST_VERSION is Cargo.toml's rust-version")
def _():
    rv = re.search(r'^rust-version\s*=\s*"([^"]+)"', read(os.path.join(ROOT, "Cargo.toml")), re.M).group(1)
    arg = re.search(r"^ARG RUST_VERSION=(\S+)$", read(DF_PATH), re.M)
    expect(arg and arg.group(1) == rv, f"ARG RUST_VERSION should be {rv}")


# ---------------------------------------------------------------------------------------------
# PodMonitor: a CRD, so checked here against a schema of the fields used (Prometheus Operator
# monitoring.coreos.com/v1), and against the DaemonSet it scrapes
# ---------------------------------------------------------------------------------------------

LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS}},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array"}}},
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": {
                                "type": "object", "additionalProperties": False,
                                "properties": {
                                    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                                    "targetLabel": {"type": "string"}, "separator": {"type": "string"},
                                    "regex": {"type": "string"}, "replacement": {"type": "string"},
                                    "action": {"type": "string"}, "modulus": {"type": "integer"},
                                }}},
                        },
                    },
                },
            },
        },
    },
}


@check("monitoring: the PodMonitor matches its schema, selects the DaemonSet's pods and its --metrics-addr port")
def _():
    import jsonschema
    pm = find(RENDERED["monitoring"], "PodMonitor")
    jsonschema.validate(pm, PODMONITOR_SCHEMA)
    ds = find(RENDERED["node-multi"], "DaemonSet")
    expect(pm["metadata"]["namespace"] == ds["metadata"]["namespace"], "PodMonitor and DaemonSet namespaces differ")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    expect(all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items()),
           "the PodMonitor's selector does not select the DaemonSet's pods")
    c = [c for c in pod_spec(ds)["containers"] if c["name"] == "s3cachefs"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    addr = flag_value(s3cachefs_argv(c), "--metrics-addr")
    for ep in pm["spec"]["podMetricsEndpoints"]:
        expect(ep["port"] in ports, f"port {ep['port']!r} is not a port of the s3cachefs container")
        expect(addr.endswith(f":{ports[ep['port']]}"), f"--metrics-addr {addr} is not port {ports[ep['port']]}")
        expect(ep.get("path", "/metrics") == "/metrics", "the metrics path is /metrics")


# ---------------------------------------------------------------------------------------------
# The shared tier: lifecycle rule, IAM policies (against the calls the code makes), URLs
# ---------------------------------------------------------------------------------------------

SHARED = os.path.join(DEPLOY, "shared-cache")
LIFECYCLE_PATH = os.path.join(SHARED, "lifecycle.json")
DIRECTORY_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]*--[a-z0-9-]+--x-s3")
EXPRESS_BUCKET_ARN = re.compile(r"arn:aws[a-z-]*:s3express:[a-z0-9-]+:\d{12}:bucket/(" + DIRECTORY_BUCKET.pattern + ")")
# IAM action of each S3 SDK call (HEAD needs s3:GetObject; LIST is s3:ListBucket, on the bucket).
SDK_CALL_ACTIONS = {"get_object": "s3:GetObject", "head_object": "s3:GetObject", "put_object": "s3:PutObject",
                    "delete_object": "s3:DeleteObject", "list_objects_v2": "s3:ListBucket"}


def code_actions():
    """IAM object actions of the S3 calls src/store/s3.rs makes: all of them for a writer, those
    of the read-only ObjectStore for a reader."""
    text = read(os.path.join(ROOT, "src", "store", "s3.rs"))
    calls = set(re.findall(r"\.(get_object|head_object|put_object|delete_object|list_objects_v2)\(\)", text))
    expect({"get_object", "put_object", "delete_object"} <= calls, f"S3 calls found in src/store/s3.rs: {sorted(calls)}")
    writer = {SDK_CALL_ACTIONS[c] for c in calls} - {"s3:ListBucket"}
    reader = {SDK_CALL_ACTIONS[c] for c in calls if c in ("get_object", "head_object")}
    return writer, reader


WRITER_ACTIONS, READER_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}, {"s3:GetObject"}


@check("shared-cache IAM actions are those of the S3 calls in src/store/s3.rs")
def _():
    global WRITER_ACTIONS, READER_ACTIONS
    WRITER_ACTIONS, READER_ACTIONS = code_actions()


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



@check("EMR on EKS request: valid StartJobRun (AWS API model), references both pod templates")
def _():
    req = json.loads(read(os.path.join(SPARK, "emr-eks-start-job-run.json")))
    text = json.dumps(req)
    for role in ("driver", "executor"):
        expect(f"{role}-pod-template.yaml" in text, f"no {role} pod template")
    try:
        import botocore.session
        from botocore.validate import ParamValidator
    except ImportError:
        raise Skip("botocore is not installed")
    op = botocore.session.get_session().get_service_model("emr-containers").operation_model("StartJobRun")
    for member, shape in op.input_shape.members.items():
        if shape.metadata.get("idempotencyToken") and member not in req:
            req[member] = "filled-in-by-the-cli"
    report = ParamValidator().validate(req, op.input_shape)
    expect(not report.has_errors(), report.generate_report())


# ---------------------------------------------------------------------------------------------
# Shell snippets embedded in the rendered YAML, the Spark templates and the unit: shellcheck
# ---------------------------------------------------------------------------------------------


def embedded_scripts():
    docs = [(f"rendered {n}", d) for n, ds in RENDERED.items() for d in ds]
    for p in files_under(SPARK, (".yaml",)):
        docs += [(rel(p), d) for d in docs_of(p)]
    for where, d in docs:
        specs = [pod_spec(d)] if pod_spec(d) is not None else []
        if d.get("kind") == "SparkApplication":
            specs += [d["spec"]["driver"], d["spec"]["executor"]]
        for s in specs:
            for c in all_containers(s):
                for src in (c.get("command"), ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command")):
                    if src and len(src) >= 3 and src[1] == "-c":
                        yield f"{where}:{c['name']}", src[2]
    for line in read(UNIT_PATH).splitlines():
        m = re.match(r"ExecStartPre=-?/bin/sh -c '(.*)'$", line)
        if m:
            yield f"{rel(UNIT_PATH)}:ExecStartPre", m.group(1).replace("$$", "$")


@check("shellcheck of the shell snippets embedded in YAML files and the unit")
def _():
    sc = shutil.which("shellcheck")
    expect(sc, "shellcheck is not installed")
    n = 0
    for where, script in embedded_scripts():
        r = subprocess.run([sc, "-s", "sh", "-"], input=script, capture_output=True, text=True)
        expect(r.returncode == 0, f"{where}:\n{r.stdout}{r.stderr}")
        n += 1
    expect(n >= 8, f"only {n} snippets found")


print(f"validate.py: passed={results['passed']} failed={results['failed']} skipped={results['skipped']}")
sys.exit(1 if results["failed"] else 0)
