"""Validates rendered manifests offline; no I/O but reading the files named on the command line.

    validate.py --crd crds/streamjob.yaml --kube-version 1.34.0 FILE...

For every object in every FILE:
- Kubernetes built-in kinds: kubernetes-validate against that version's strict schemas
  (unknown fields are errors, as `kubectl apply` with server-side field validation would report).
- The StreamJob CRD: additionally equal, spec and name, to crds/streamjob.yaml.
- StreamJobs: JSON Schema validation against the CRD's openAPIV3Schema (see streamjob_schema for
  what that does not check: CEL rules, list-type uniqueness, defaults).
- Prometheus Operator objects: only that they are well-formed objects (no schema offline).
- Pod templates: non-root, read-only root filesystem, every capability dropped, RuntimeDefault
  seccomp, no privilege escalation.
- ConfigMaps and container env: no secret-looking key with an inline value.
Prints one line per file and a total; exits 1 on any failure.
"""

import argparse
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

NO_SCHEMA_GROUPS = ("monitoring.coreos.com/",)
SECRET_WORDS = re.compile(r"(?i)(password|passwd|secret|token|credential|private[_-]?key|api[_-]?key)")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def streamjob_schema(crd):
    """The CRD's openAPIV3Schema as a JSON Schema. Checks types, required fields, enums, patterns,
    lengths, bounds and unknown fields (structural schemas reject them under strict field
    validation). Not checked: x-kubernetes-validations (CEL; the sluice-crds admission test runs
    those on manifests/examples), list-type set/map uniqueness, and defaulting."""

    def convert(node):
        if isinstance(node, list):
            return [convert(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: convert(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        return out

    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = convert(version["schema"]["openAPIV3Schema"])
    # The API server checks these itself; the CRD's schema does not declare them.
    schema["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                 "metadata": {"type": "object"}})
    return schema


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if "template" in spec:
        return spec["template"]["spec"]
    return None


def pod_security_errors(obj):
    spec = pod_spec(obj)
    if spec is None:
        return []
    errors = []
    pod_sc = spec.get("securityContext", {})
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            errors.append(f"{where}: runAsNonRoot is not true")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            errors.append(f"{where}: capabilities do not drop ALL (or add some)")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp != "RuntimeDefault":
            errors.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        for env in c.get("env", []):
            if "value" in env and SECRET_WORDS.search(env["name"]):
                errors.append(f"{where}: env {env['name']} has an inline value; use valueFrom.secretKeyRef")
    return errors


def configmap_errors(obj):
    errors = []
    for key, value in (obj.get("data") or {}).items():
        if SECRET_WORDS.search(key):
            errors.append(f"data key {key!r} looks like a secret; secrets belong in Secrets")
        if re.search(r"(?i)-----BEGIN [A-Z ]*PRIVATE KEY-----", value or ""):
            errors.append(f"data key {key!r} holds a private key")
    return errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crd", required=True)
    parser.add_argument("--kube-version", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    crd = load_all(args.crd)[0]
    job_validator = jsonschema.Draft7Validator(streamjob_schema(crd))
    total = {"objects": 0, "kubernetes": 0, "streamjobs": 0, "crds": 0, "unchecked": 0}
    failures = []
    for path in args.files:
        counts = {"objects": 0, "kubernetes": 0, "streamjobs": 0, "crds": 0, "unchecked": 0}
        for obj in load_all(path):
            counts["objects"] += 1
            kind, api = obj.get("kind"), obj.get("apiVersion", "")
            name = f"{kind} {obj.get('metadata', {}).get('namespace', '')}/{obj.get('metadata', {}).get('name')}"
            errors = []
            if api.startswith("sluice.dev/"):
                errors += [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                           for e in job_validator.iter_errors(obj)]
                counts["streamjobs"] += 1
            elif api.startswith(NO_SCHEMA_GROUPS):
                if not isinstance(obj.get("spec"), dict) or not obj.get("metadata", {}).get("name"):
                    errors.append("not a well-formed object (no spec or no metadata.name)")
                counts["unchecked"] += 1
            else:
                try:
                    kubernetes_validate.validate(obj, args.kube_version, strict=True)
                    counts["kubernetes"] += 1
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{'.'.join(map(str, e.path))}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors.append(f"no Kubernetes {args.kube_version} schema: {e}")
            if kind == "CustomResourceDefinition" and obj["metadata"]["name"] == crd["metadata"]["name"]:
                counts["crds"] += 1
                if obj["spec"] != crd["spec"]:
                    errors.append(f"spec differs from {args.crd}")
            errors += pod_security_errors(obj)
            if kind == "ConfigMap":
                errors += configmap_errors(obj)
            failures += [f"{path}: {name}: {e}" for e in errors]
        print(f"  {path}: {counts['objects']} objects, {counts['kubernetes']} valid against Kubernetes "
              f"{args.kube_version}, {counts['streamjobs']} StreamJobs against the CRD, {counts['crds']} CRD "
              f"equal to {args.crd}, {counts['unchecked']} without a schema")
        for k in total:
            total[k] += counts[k]
    print(f"validate: {len(args.files)} files, {total['objects']} objects: {total['kubernetes']} Kubernetes, "
          f"{total['streamjobs']} StreamJobs, {total['crds']} CRDs, {total['unchecked']} unchecked; "
          f"{len(failures)} failures")
    for f in failures:
        print("FAIL " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
