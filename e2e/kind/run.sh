#!/usr/bin/env bash
# The operator scenarios of e2e/tests/operator_cluster.rs on a real Kubernetes cluster (kind):
# apply the CDC example, scale up and down, suspend and resume, delete. NOT run by e2e/test.sh
# or CI: it needs Docker, kind and network access to image registries, which the machines that
# run CI do not have. See e2e/kind/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${SLUICE_KIND_CLUSTER:-sluice}
TAG=${SLUICE_IMAGE_TAG:-dev}
NS=shop
JOB=customers-table

step() { echo "== $*" >&2; }

step "cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
kubectl config use-context "kind-$CLUSTER"

step "images (sluice-operator:$TAG, sluice-worker:$TAG) into the cluster"
docker build -f images/operator.Dockerfile -t "sluice-operator:$TAG" .
docker build -f images/worker.Dockerfile -t "sluice-worker:$TAG" .
kind load docker-image --name "$CLUSTER" "sluice-operator:$TAG" "sluice-worker:$TAG"

step "Kafka and MinIO"
kubectl apply -f e2e/kind/deps.yaml
kubectl -n deps rollout status deploy/kafka deploy/minio deploy/azurite --timeout=5m
kubectl -n deps run mc --rm -i --restart=Never --image=minio/mc --command -- \
  sh -c 'mc alias set m http://minio.deps:9000 sluice sluice-secret && mc mb -p m/sluice'

step "the chart"
helm upgrade --install sluice charts/sluice --namespace sluice-system --create-namespace \
  --set operator.image.repository=sluice-operator --set operator.image.tag="$TAG" \
  --set worker.image.repository=sluice-worker --set worker.image.tag="$TAG" --wait

step "the CDC example, pointed at the cluster's Kafka and MinIO"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic sluice-s3 --dry-run=client -o yaml \
  --from-literal=AWS_ACCESS_KEY_ID=sluice --from-literal=AWS_SECRET_ACCESS_KEY=sluice-secret \
  --from-literal=AWS_REGION=us-east-1 --from-literal=AWS_ALLOW_HTTP=true | kubectl apply -f -
kubectl -n deps exec deploy/kafka -- /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 \
  --create --if-not-exists --topic dbserver1.inventory.customers --partitions 6
sed -e "s/namespace: default/namespace: $NS/" -e "s#kafka.kafka:9092#kafka.deps:9092#" \
  -e "s#s3://sluice-checkpoints/prod#s3://sluice/kind#" -e "s#http://minio.storage:9000#http://minio.deps:9000#" \
  -e "s/size: 20Gi/size: 1Gi/" manifests/examples/cdc-materialize.yaml | kubectl apply -f -

wait_ready() {
  kubectl -n "$NS" wait "sj/$JOB" --for=condition=Ready --timeout=5m
  kubectl -n "$NS" get sj "$JOB"
}
step "Ready with 3 workers"; wait_ready
step "scale up to 6"; kubectl -n "$NS" scale "sj/$JOB" --replicas=6; sleep 2; wait_ready
step "scale down to 2"; kubectl -n "$NS" scale "sj/$JOB" --replicas=2; sleep 2; wait_ready
step "suspend"
kubectl -n "$NS" patch sj "$JOB" --type=merge -p '{"spec":{"suspend":true}}'
kubectl -n "$NS" wait "sj/$JOB" --for=jsonpath='{.status.phase}'=Suspended --timeout=5m
step "resume"; kubectl -n "$NS" patch sj "$JOB" --type=merge -p '{"spec":{"suspend":false}}'; sleep 2; wait_ready
step "delete: children go, checkpoints stay"
kubectl -n "$NS" delete sj "$JOB" --wait
kubectl -n "$NS" wait statefulset/"$JOB" --for=delete --timeout=2m || true
kubectl -n deps run mc --rm -i --restart=Never --image=minio/mc --command -- \
  sh -c "mc alias set m http://minio.deps:9000 sluice sluice-secret && mc ls -r m/sluice/kind/$NS/$JOB/ | head"
step "a job on the SASL listener and a job checkpointing to Azurite (e2e/kind/jobs)"
kubectl -n deps exec deploy/kafka -- /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 \
  --create --if-not-exists --topic orders --partitions 2
kubectl -n deps run az --rm -i --restart=Never --image=mcr.microsoft.com/azure-cli --command -- \
  az storage container create --name sluice --connection-string \
  "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://azurite.deps:10000/devstoreaccount1;"
kubectl apply -f e2e/kind/jobs/auth-and-stores.yaml
for job in orders-sasl orders-azure; do
  kubectl -n "$NS" wait "sj/$job" --for=condition=Ready --timeout=5m
  # The operator's own clients reach the brokers and the store: lag and a checkpoint in status.
  kubectl -n "$NS" wait "sj/$job" --for=jsonpath='{.status.lag}'=0 --timeout=2m
  kubectl -n "$NS" get sj "$job" -o jsonpath='{.status.lastCheckpoint}{"\n"}'
done
step "done"
