#!/bin/bash
# EC2 user data for Spark / Kubernetes worker nodes with NVMe instance storage: mounts an S3 bucket
# (prefix) read-only at /mnt/s3/jars through s3cachefs, with the disk block cache on the instance store, before
# kubelet starts. Runs as root, once, on the first boot (cloud-init). Safe to run again by hand.
#
# What it does:
#   1. installs fuse3, mdadm, xfsprogs and nvme-cli, and the s3cachefs binary from S3CACHEFS_URL;
#   2. finds the NVMe instance-store disks (never the EBS volumes), builds a RAID0 with mdadm when
#      there are several or uses the single one, makes an XFS filesystem, mounts it at /nvme
#      (fstab, by UUID, nofail) and creates the cache directory /nvme/s3cache (mode 0700, root);
#   3. installs s3cachefs@.service and /etc/s3cachefs/jars.env, enables and starts s3cachefs@jars,
#      which returns once the mount is live (Type=notify);
#   4. optionally preloads WARM_PREFIX into the cache with "s3cachefs warm";
#   5. optionally runs /etc/eks/bootstrap.sh (Amazon Linux 2 EKS AMIs).
# With SETUP_SYSTEMD_MOUNT=false it stops after step 2: use that on nodes where the Kubernetes
# DaemonSet (deploy/k8s/, docs/DEPLOYMENT.md) serves the mount.
#
# The instance profile's role needs s3:GetObject on S3CACHEFS_URL (when it is an s3:// URL) and
# the bucket permissions described in docs/DEPLOYMENT.md ("IAM").
#
# Where kubelet comes in:
#   * Amazon Linux 2023 EKS AMIs (nodeadm): kubelet is started by nodeadm-run.service, which is
#     ordered after cloud-final.service, i.e. after this script. Pass this script as one part of
#     a MIME multi-part user data, next to the NodeConfig, and label the node there:
#
#       MIME-Version: 1.0
#       Content-Type: multipart/mixed; boundary="BOUNDARY"
#
#       --BOUNDARY
#       Content-Type: application/node.eks.aws
#
#       apiVersion: node.eks.aws/v1alpha1
#       kind: NodeConfig
#       spec:
#         cluster: { name: my-cluster, apiServerEndpoint: https://..., certificateAuthority: ..., cidr: 10.100.0.0/16 }
#         kubelet:
#           flags: ["--node-labels=s3cachefs/nvme=true"]
#
#       --BOUNDARY
#       Content-Type: text/x-shellscript; charset="us-ascii"
#
#       #!/bin/bash
#       ... this file ...
#
#       --BOUNDARY--
#
#     With EKS managed node groups on the EKS AMI, give only the shell-script part (plus the label
#     in the node group's labels): EKS appends its own NodeConfig. Do not also set
#     NodeConfig spec.instance.localStorage: it would claim the same instance-store disks.
#   * Amazon Linux 2 EKS AMIs: kubelet starts when /etc/eks/bootstrap.sh runs. Set
#     EKS_CLUSTER_NAME below and this script calls it at the end, after the mount is live (managed
#     node groups on the EKS AMI append the bootstrap call themselves: leave it empty there). Do
#     not pass --local-disks to bootstrap.sh.
#   * Any other machine: the unit has Before=kubelet.service, so on every later boot kubelet waits
#     for the mount too.
#
# Logs: /var/log/cloud-init-output.log (this script), journalctl -u s3cachefs@jars (the daemon).

set -euo pipefail

# ----------------------------------------------------------------------------------------------
# CHANGE THESE
# ----------------------------------------------------------------------------------------------
# Where to get the binary: s3://... (aws s3 cp, with the instance profile), https://... (curl),
# or a local path already on the AMI.
S3CACHEFS_URL="s3://my-artifacts-bucket/s3cachefs/0.1.0/s3cachefs-x86_64-unknown-linux-gnu"
# sha256sum of that file; empty skips the check (not recommended for https:// URLs).
S3CACHEFS_SHA256=""
# The mount: systemd instance name, what to mount (BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX)
# and where. /mnt/s3 is a directory of mounts and pods mount /mnt/s3 itself (see
# s3cachefs@.service): s3://my-bucket/jars/a.jar is /mnt/s3/jars/a.jar, for Spark
# local:///mnt/s3/jars/a.jar.
MOUNT_NAME="jars"
BUCKET="my-bucket/jars"
MOUNTPOINT="/mnt/s3/jars"
BUCKET_REGION="us-east-1"
# Disk cache: the instance store is formatted and mounted at CACHE_FS.
CACHE_FS="/nvme"
CACHE_DIR="/nvme/s3cache"
# "auto" = 90% of the instance-store filesystem (25% of the root filesystem when the instance has
# no instance store), or a size such as 200GiB.
MAX_CACHE_SIZE="auto"
# Extra flags of "s3cachefs mount" (after --cache and --max-cache-size, which are added below).
# For a cluster-wide shared tier, add e.g. --shared-cache s3://jars-cache--use1-az4--x-s3/ (a
# directory bucket in this instance's Availability Zone; see docs/DEPLOYMENT.md).
EXTRA_ARGS="--cache-min-free 5% --metadata-ttl indefinite --allow-other --metrics-addr 127.0.0.1:9464 --log-level info"
# Preload this BUCKET/PREFIX (e.g. "my-bucket/jars/") into the cache before kubelet starts (empty:
# no warm-up). It delays the node's readiness by the time the download takes; a failure is
# reported but not fatal.
WARM_PREFIX=""
WARM_CONCURRENCY=16
# false: only prepare the NVMe filesystem and the cache directory (the DaemonSet mounts).
SETUP_SYSTEMD_MOUNT=true
# Amazon Linux 2 EKS AMI with a self-managed node group: the cluster name (empty: no bootstrap).
EKS_CLUSTER_NAME=""
EKS_NODE_LABELS="s3cachefs/nvme=true"
# ----------------------------------------------------------------------------------------------

log() { echo "s3cachefs-userdata: $*"; }
warn() { echo "s3cachefs-userdata: WARNING: $*" >&2; }
die() { echo "s3cachefs-userdata: ERROR: $*" >&2; exit 1; }
trap 'echo "s3cachefs-userdata: failed at line $LINENO" >&2' ERR

[ "$(id -u)" -eq 0 ] || die "must run as root"

install_packages() {
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y -q "$@"
  elif command -v yum >/dev/null 2>&1; then
    yum install -y -q "$@"
  elif command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
  else
    die "no dnf, yum or apt-get: install $* yourself"
  fi
}

# --- 1. packages and binary ---------------------------------------------------------------------
log "installing packages"
install_packages mdadm xfsprogs nvme-cli
# fusermount3 is only needed to mount as a non-root user; the unit runs as root, so a distribution
# without a fuse3 package still works.
install_packages fuse3 || warn "could not install fuse3 (fusermount3); root mounts still work"
modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || die "/dev/fuse is missing: the kernel has no FUSE support"

log "installing s3cachefs from ${S3CACHEFS_URL}"
tmp_bin="$(mktemp)"
case "${S3CACHEFS_URL}" in
  s3://*)
    command -v aws >/dev/null 2>&1 || die "the aws CLI is needed for ${S3CACHEFS_URL}"
    aws s3 cp --only-show-errors "${S3CACHEFS_URL}" "${tmp_bin}"
    ;;
  http://* | https://*)
    curl -fsSL --retry 5 --retry-connrefused -o "${tmp_bin}" "${S3CACHEFS_URL}"
    ;;
  /*)
    cp "${S3CACHEFS_URL}" "${tmp_bin}"
    ;;
  *)
    die "S3CACHEFS_URL must be s3://..., https://... or an absolute path"
    ;;
esac
if [ -n "${S3CACHEFS_SHA256}" ]; then
  echo "${S3CACHEFS_SHA256}  ${tmp_bin}" | sha256sum -c --quiet - || die "checksum mismatch for ${S3CACHEFS_URL}"
fi
install -m 0755 "${tmp_bin}" /usr/local/bin/s3cachefs
rm -f "${tmp_bin}"
/usr/local/bin/s3cachefs --version
# Mount helper, so "mount -t fuse.s3cachefs" and /etc/fstab lines work as well.
ln -sf /usr/local/bin/s3cachefs /sbin/mount.fuse.s3cachefs

# --- 2. instance store -> /nvme -----------------------------------------------------------------
# Instance-store namespaces, one per line (/dev/nvmeXnY). EBS volumes (the root volume included)
# show up as "Amazon Elastic Block Store" and are never listed.
find_instance_store() {
  local link
  {
    for link in /dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*; do
      [ -e "${link}" ] && readlink -f "${link}"
    done
    if command -v nvme >/dev/null 2>&1; then
      nvme list 2>/dev/null | awk '/Amazon EC2 NVMe Instance Storage/ { print $1 }'
    fi
  } | grep -E '^/dev/nvme[0-9]+n[0-9]+$' | sort -u || true
}

dedicated_cache_fs=false
setup_cache_fs() {
  if mountpoint -q "${CACHE_FS}"; then
    log "${CACHE_FS} is already mounted"
    dedicated_cache_fs=true
    return
  fi
  if grep -qsE "^[^#]\S*\s+${CACHE_FS}\s" /etc/fstab && mount "${CACHE_FS}"; then
    log "mounted ${CACHE_FS} from /etc/fstab"
    dedicated_cache_fs=true
    return
  fi

  local disks dev
  mapfile -t disks < <(find_instance_store)
  if [ "${#disks[@]}" -eq 0 ]; then
    warn "no NVMe instance storage found: the cache goes to ${CACHE_FS} on the root volume"
    mkdir -p "${CACHE_FS}"
    return
  fi
  for dev in "${disks[@]}"; do
    if [ -n "$(lsblk -no FSTYPE,MOUNTPOINT "${dev}" | tr -d '[:space:]')" ]; then
      die "${dev} is already in use (filesystem, RAID member or mounted). Is NodeConfig" \
        "localStorage or bootstrap.sh --local-disks set as well? Use one or the other."
    fi
  done

  local mkfs_opts=()
  if [ "${#disks[@]}" -eq 1 ]; then
    dev="${disks[0]}"
    log "using the single instance-store disk ${dev}"
  else
    dev=/dev/md/s3cache
    log "building RAID0 ${dev} from ${disks[*]}"
    mdadm --create "${dev}" --name=s3cache --level=0 --raid-devices="${#disks[@]}" --run "${disks[@]}"
    # The array's stripe (512 KiB chunks) would also be used as the log stripe unit, which XFS
    # caps at 256 KiB (it warns and falls back to 32 KiB): ask for 32 KiB directly.
    mkfs_opts=(-l su=32k)
    if [ -d /etc/mdadm ]; then
      mdadm --detail --scan >>/etc/mdadm/mdadm.conf
    else
      mdadm --detail --scan >>/etc/mdadm.conf
    fi
  fi
  # (${a[@]+"${a[@]}"}: an empty array under set -u, which bash 4.2 on Amazon Linux 2 rejects)
  mkfs.xfs -f -q ${mkfs_opts[@]+"${mkfs_opts[@]}"} "${dev}"
  local uuid
  uuid="$(blkid -s UUID -o value "${dev}")"
  [ -n "${uuid}" ] || die "no filesystem UUID on ${dev}"
  mkdir -p "${CACHE_FS}"
  # nofail: after a stop/start the instance store is blank and the boot must not hang on it;
  # the unit's RequiresMountsFor= then keeps s3cachefs from caching on the root volume.
  echo "UUID=${uuid} ${CACHE_FS} xfs defaults,noatime,nofail,x-systemd.device-timeout=30s 0 2" >>/etc/fstab
  systemctl daemon-reload
  mount "${CACHE_FS}"
  dedicated_cache_fs=true
  log "mounted ${dev} (XFS) at ${CACHE_FS}"
}

setup_cache_fs
# Owned by root and private: every s3cachefs process sharing it must run as root too.
install -d -m 0700 -o root -g root "${CACHE_DIR}"

if [ "${MAX_CACHE_SIZE}" = "auto" ]; then
  fs_bytes="$(df -B1 --output=size "${CACHE_FS}" | tail -n 1 | tr -d '[:space:]')"
  if [ "${dedicated_cache_fs}" = true ]; then
    MAX_CACHE_SIZE="$((fs_bytes * 90 / 100))"
  else
    MAX_CACHE_SIZE="$((fs_bytes * 25 / 100))"
  fi
  log "cache bound: ${MAX_CACHE_SIZE} bytes"
fi

if [ "${SETUP_SYSTEMD_MOUNT}" != true ]; then
  log "SETUP_SYSTEMD_MOUNT=${SETUP_SYSTEMD_MOUNT}: ${CACHE_DIR} is ready for the DaemonSet"
else
  # --- 3. systemd unit, settings, start ---------------------------------------------------------
  # A copy of deploy/systemd/s3cachefs@.service (.ci/check-deploy.sh checks that they match).
  cat >/etc/systemd/system/s3cachefs@.service <<'S3CACHEFS_UNIT'
# s3cachefs@.service: one read-only S3 mount per instance, started before kubelet.
#
# The instance name is the mount's name: s3cachefs@jars.service reads /etc/s3cachefs/jars.env,
# which must set BUCKET, MOUNTPOINT and S3CACHEFS_ARGS (see jars.env.example next to this file).
# Any other variable in that file (AWS_REGION, AWS_PROFILE, RUST_LOG, ...) reaches the daemon's
# environment too.
#
# Layout: /mnt/s3 is a plain directory holding one mount per instance (/mnt/s3/jars, ...). Pods
# mount the parent /mnt/s3 as a hostPath: a bind of the mountpoint itself would keep the old
# mount, dead, after the daemon restarts, while a bind of the parent (with HostToContainer
# propagation) follows the new mount.
#
# Install (deploy/ec2/userdata.sh does all of this on EC2):
#   install -m 0755 s3cachefs /usr/local/bin/s3cachefs
#   install -m 0644 deploy/systemd/s3cachefs@.service /etc/systemd/system/
#   install -d -m 0755 /etc/s3cachefs
#   install -m 0600 deploy/systemd/jars.env.example /etc/s3cachefs/jars.env   # then edit it
#   systemctl daemon-reload
#   systemctl enable --now s3cachefs@jars
# Logs: journalctl -u s3cachefs@jars. Status: systemctl status s3cachefs@jars.
#
# When the disk cache lives on a separately mounted filesystem (/nvme), add a drop-in so the
# service waits for it (userdata.sh writes this one):
#   /etc/systemd/system/s3cachefs@jars.service.d/cache-mount.conf
#     [Unit]
#     RequiresMountsFor=/nvme
#
# Do NOT add mount-namespace sandboxing (PrivateTmp=, ProtectSystem=, ProtectHome=,
# ReadOnlyPaths=, TemporaryFileSystem=, PrivateMounts=, ...): any of them puts the daemon in a
# mount namespace of its own, and the FUSE mount would then be invisible to the rest of the host
# and to kubelet's pods.

[Unit]
Description=s3cachefs read-only S3 mount %i
Wants=network-online.target
After=network-online.target
# Ordering only: when both start in the same boot, kubelet waits until the mount is live
# (Type=notify: READY=1), so pods reading MOUNTPOINT (through a hostPath volume on its parent
# directory, /mnt/s3) never see an empty directory.
# A failed mount does not keep kubelet from starting. To make kubelet depend on the mount, add
# "RequiredBy=kubelet.service" under [Install] (then a broken mount keeps the node NotReady).
Before=kubelet.service
# Give up after 5 failed starts in 10 minutes (systemctl reset-failed s3cachefs@%i to retry).
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
# READY=1 (mount live) and STOPPING=1 come from the s3cachefs process itself.
NotifyAccess=main
EnvironmentFile=/etc/s3cachefs/%i.env
# With --foreground under systemd, logs go to journald natively (JOURNAL_STREAM), each with its priority.
Environment=NO_COLOR=1
# A daemon that crashed or was killed (-9, OOM) leaves a dead FUSE mount on MOUNTPOINT
# ("Transport endpoint is not connected"). s3cachefs clears it itself when it mounts, but the
# "mkdir -p" below would already fail on it, so detach it first: only when MOUNTPOINT cannot be
# stat'ed, never a live mount. ($$ is a literal $ for the shell, which reads the variable from the
# environment that EnvironmentFile= set.)
ExecStartPre=/bin/sh -c 'if [ -n "$$MOUNTPOINT" ] && ! stat "$$MOUNTPOINT" >/dev/null 2>&1; then umount -l "$$MOUNTPOINT" 2>/dev/null || true; fi'
ExecStartPre=/bin/mkdir -p ${MOUNTPOINT}
# ${BUCKET} and ${MOUNTPOINT} stay one word each; $S3CACHEFS_ARGS is split at whitespace
# (values containing spaces are therefore not possible in S3CACHEFS_ARGS).
ExecStart=/usr/local/bin/s3cachefs mount ${BUCKET} ${MOUNTPOINT} --foreground $S3CACHEFS_ARGS
# No ExecStop=: "systemctl stop" sends SIGTERM to the daemon, which unmounts and exits 0. If
# files are still open on the mount (a running executor), the unmount would fail with EBUSY, so
# the daemon detaches the mount lazily instead (umount -l) and exits; reads of files that were
# open then fail with ENOTCONN. An "ExecStop=/bin/umount ${MOUNTPOINT}" would add nothing: it
# fails with EBUSY in exactly that case and systemd falls back to SIGTERM anyway.
KillSignal=SIGTERM
TimeoutStopSec=30
# "systemctl reload s3cachefs@%i": SIGHUP drops the cached metadata (listings, sizes, ETags, and
# the kernel's entries), so objects added or replaced in S3 show up even with
# --metadata-ttl indefinite. The mount and the disk cache stay.
ExecReload=/bin/kill -HUP $MAINPID
# The mount first checks that the bucket can be listed; with the default retries
# (--max-attempts 5, --request-timeout 30) an unreachable endpoint takes minutes to give up.
TimeoutStartSec=300
# Restart after a crash or a failed start, not after a clean exit (an operator's umount).
Restart=on-failure
RestartSec=5
# The mount serves every process on the node: let it finish I/O even under memory pressure.
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
S3CACHEFS_UNIT

  if [ "${dedicated_cache_fs}" = true ]; then
    install -d -m 0755 "/etc/systemd/system/s3cachefs@${MOUNT_NAME}.service.d"
    printf '[Unit]\nRequiresMountsFor=%s\n' "${CACHE_FS}" \
      >"/etc/systemd/system/s3cachefs@${MOUNT_NAME}.service.d/cache-mount.conf"
  fi

  install -d -m 0755 /etc/s3cachefs
  (
    umask 077
    cat >"/etc/s3cachefs/${MOUNT_NAME}.env" <<EOF
# Written by the EC2 user data; see deploy/systemd/jars.env.example for every setting.
BUCKET=${BUCKET}
MOUNTPOINT=${MOUNTPOINT}
S3CACHEFS_ARGS=--cache ${CACHE_DIR} --max-cache-size ${MAX_CACHE_SIZE} ${EXTRA_ARGS}
AWS_REGION=${BUCKET_REGION}
EOF
  )

  systemctl daemon-reload
  log "starting s3cachefs@${MOUNT_NAME} (returns once ${MOUNTPOINT} is mounted)"
  if ! systemctl enable --now "s3cachefs@${MOUNT_NAME}.service"; then
    journalctl -u "s3cachefs@${MOUNT_NAME}.service" --no-pager -n 50 >&2 || true
    die "s3cachefs@${MOUNT_NAME} did not start"
  fi
  mountpoint -q "${MOUNTPOINT}" || die "${MOUNTPOINT} is not a mount point after the start"
  log "${BUCKET} is mounted at ${MOUNTPOINT}"
fi

# --- 4. warm-up ---------------------------------------------------------------------------------
# Writes into the same cache the mount reads, under the same size bound. It must name the same
# bucket (and endpoint) and use the same --block-size as the mount (both default to 1MiB here), or
# the mount does not find the blocks.
if [ -n "${WARM_PREFIX}" ]; then
  log "warming ${WARM_PREFIX} into ${CACHE_DIR}"
  if ! /usr/local/bin/s3cachefs warm "${WARM_PREFIX}" --cache "${CACHE_DIR}" \
    --max-cache-size "${MAX_CACHE_SIZE}" --concurrency "${WARM_CONCURRENCY}" --region "${BUCKET_REGION}"; then
    warn "warm-up of ${WARM_PREFIX} failed for the objects named above; they are read from S3 on first use"
  fi
fi

# --- 5. kubelet (Amazon Linux 2 EKS AMI) --------------------------------------------------------
if [ -n "${EKS_CLUSTER_NAME}" ]; then
  if [ -x /etc/eks/bootstrap.sh ]; then
    log "joining EKS cluster ${EKS_CLUSTER_NAME}"
    /etc/eks/bootstrap.sh "${EKS_CLUSTER_NAME}" --kubelet-extra-args "--node-labels=${EKS_NODE_LABELS}"
  else
    warn "no /etc/eks/bootstrap.sh (Amazon Linux 2023 uses nodeadm and a NodeConfig part; see the header)"
  fi
fi
log "done"
