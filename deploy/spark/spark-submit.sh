#!/usr/bin/env bash
# spark-submit to Kubernetes with the application JAR and its dependencies read from the node's
# s3cachefs mount (/mnt/s3/jars = s3://my-bucket/jars/) instead of being downloaded by every pod.
#
#   K8S_API=https://ABCDEF.gr7.us-east-1.eks.amazonaws.com deploy/spark/spark-submit.sh [APP ARGS...]
#
# Needs: Spark 3.x or 4.x on this machine (SPARK_HOME), kubectl access to the cluster, a namespace
# and a service account for the driver (it creates the executor pods), and nodes labelled
# s3cachefs/nvme=true that run the s3cachefs DaemonSet or s3cachefs@jars.service.
# The pod templates give both pods the read-only hostPath volume on /mnt/s3 (with HostToContainer
# propagation), the node selector and an init container that waits for the mount. Do not also
# pass the hostPath volume settings of spark-defaults.conf: the volumes would clash.
# CHANGE: the variables below, the class and the JAR names.
set -euo pipefail

SPARK_HOME="${SPARK_HOME:-/opt/spark}"
K8S_API="${K8S_API:?set K8S_API to the Kubernetes API server URL, e.g. https://ABCDEF.gr7.us-east-1.eks.amazonaws.com}"
NAMESPACE="${NAMESPACE:-spark-jobs}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-spark}"
IMAGE="${IMAGE:-apache/spark:3.5.3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec "${SPARK_HOME}/bin/spark-submit" \
  --master "k8s://${K8S_API}" \
  --deploy-mode cluster \
  --name s3cachefs-example \
  --class com.example.Main \
  --jars local:///mnt/s3/jars/a.jar,local:///mnt/s3/jars/b.jar \
  --conf spark.kubernetes.namespace="${NAMESPACE}" \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName="${SERVICE_ACCOUNT}" \
  --conf spark.kubernetes.container.image="${IMAGE}" \
  --conf spark.kubernetes.driver.podTemplateFile="${HERE}/driver-pod-template.yaml" \
  --conf spark.kubernetes.driver.podTemplateContainerName=spark-kubernetes-driver \
  --conf spark.kubernetes.executor.podTemplateFile="${HERE}/executor-pod-template.yaml" \
  --conf spark.kubernetes.executor.podTemplateContainerName=spark-kubernetes-executor \
  --conf spark.executor.instances=4 \
  --conf spark.executor.cores=2 \
  --conf spark.executor.memory=4g \
  local:///mnt/s3/jars/app.jar \
  "$@"
