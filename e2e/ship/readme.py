"""Checks that the README's "Install on Kubernetes" section names only what exists: every
repository path it mentions, every chart value in its table (and their defaults), the Helm release
and namespace the kustomize base is rendered with, and the commands' files. Reads files only.

    readme.py README.md
"""

import glob
import re
import sys

import yaml


def section(text, title):
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def lookup(values, dotted):
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def main():
    readme = open(sys.argv[1]).read()
    install = section(readme, "Install on Kubernetes")
    values = yaml.safe_load(open("charts/sluice/values.yaml"))
    failures = []

    paths = set(re.findall(r"(?<![\w/.-])((?:charts|manifests|images|crds|e2e)/[\w./*-]+[\w*])", install))
    for path in sorted(paths):
        if not glob.glob(path.rstrip("/")):
            failures.append(f"path {path} does not exist")

    rows = [line.split("|")[1] for line in install.splitlines()
            if line.startswith("| `") and not line.startswith("| value")]
    for cell in rows:
        names = re.findall(r"`([^`]+)`", cell)
        for name in names:
            if name.startswith("."):  # a sibling of the row's first value: `.serviceMonitor.enabled`
                name = names[0].rsplit(".", 2)[0] + name
            name = name.removesuffix(".*")
            if lookup(values, name) is KeyError:
                failures.append(f"value {name} is not in charts/sluice/values.yaml")
    checks = {"operator.watchNamespaces": [], "operator.replicas": 1, "operator.leaderElection.enabled": True,
              "worker.serviceAccount.create": False, "monitoring.podMonitor.enabled": False,
              "monitoring.serviceMonitor.enabled": False, "monitoring.dashboard.enabled": False,
              "crds.install": True, "crds.keep": True}
    for name, want in checks.items():
        if lookup(values, name) != want:
            failures.append(f"the README says {name} defaults to {want!r}; values.yaml says {lookup(values, name)!r}")

    base = open("manifests/generate.sh").read()
    if "template sluice charts/sluice --namespace sluice-system" not in base:
        failures.append("manifests/generate.sh no longer renders release sluice in sluice-system, as the README says")
    if "helm install sluice charts/sluice --namespace sluice-system" not in install:
        failures.append("the README's helm install differs from the release the base is rendered as")
    app = yaml.safe_load(open("manifests/argocd/application.yaml"))
    if app["spec"]["source"]["path"] not in install:
        failures.append(f"the Argo CD Application syncs {app['spec']['source']['path']}, which the README does not say")
    if "ServerSideApply=true" not in app["spec"]["syncPolicy"]["syncOptions"]:
        failures.append("the Argo CD Application does not apply server-side")

    print(f"readme: {len(paths)} paths and {len(rows)} value rows in the install section; {len(failures)} failures")
    for f in failures:
        print("FAIL " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
