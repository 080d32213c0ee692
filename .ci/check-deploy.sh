#!/usr/bin/env bash
# Checks the deployment files under deploy/ (and the s3cachefs command lines in docs/DEPLOYMENT.md):
#   - shellcheck on every *.sh under deploy/ and on this script;
#   - systemd-analyze verify on deploy/systemd/s3cachefs@.service and s3cachefs-node.service (skipped where systemd-analyze
#     is missing);
#   - deploy/validate.py: parses every YAML and JSON file under deploy/ and asserts the fields that
#     matter (see its docstring), the shared tier's lifecycle rule and IAM policies included.
# Installs shellcheck (apt), PyYAML and botocore (pip) when they are missing. hadolint is not
# available from the package registries, so the Dockerfile is only checked by validate.py.
# Set S3CACHEFS_BIN to a built binary (e.g. target/debug/s3cachefs) to also compare the flags used
# here with its --help. Prints "deploy checks: N passed, M failed" last; exits 1 if anything failed.
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

# --- validate.py ----------------------------------------------------------------------------------
echo "== deploy/validate.py"
if python3 -c 'import yaml' >/dev/null 2>&1; then
  set +e
  out="$(python3 deploy/validate.py 2>&1)"
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
