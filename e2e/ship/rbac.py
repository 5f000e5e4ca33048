"""Lists every permission a rendered install grants the operator's ServiceAccount and compares it
with what the operator's code needs; no I/O but reading the files named on the command line.

    rbac.py NEEDS.yaml RENDERED.yaml...

NEEDS.yaml is `sluice-operator rbac`'s output: `jobNamespaces` rules (granted cluster-wide, or in
each watched namespace) and `operatorNamespace` rules (the leader-election Lease, in the
operator's own namespace, needed only with leader election on). For each RENDERED install it finds
the operator Deployment, reads its ServiceAccount and SLUICE_WATCH_NAMESPACES /
SLUICE_LEADER_ELECTION, follows every (Cluster)RoleBinding naming that ServiceAccount to its
rules, prints each (scope, apiGroup, resource, verb) granted, and fails on
- a grant the needs do not list, or in a scope they do not need (cluster-wide in watch mode,
  another namespace than a watched one, the Lease anywhere but the operator's namespace),
- a need that is not granted in every scope that needs it,
- a wildcard verb, resource or apiGroup, or a binding to a role the install does not contain.
"""

import sys

import yaml

CLUSTER = "*cluster*"


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def triples(rules):
    out = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb))
        if rule.get("nonResourceURLs"):
            out.add(("(nonResourceURLs)", ",".join(rule["nonResourceURLs"]), ",".join(rule.get("verbs", []))))
    return out


def env_value(container, name, default):
    for env in container.get("env", []):
        if env["name"] == name:
            return env.get("value", default)
    return default


def check_install(path, needs):
    objects = load_all(path)
    deployments = [o for o in objects if o["kind"] == "Deployment"
                   and any(c["name"] == "operator" for c in o["spec"]["template"]["spec"]["containers"])]
    if len(deployments) != 1:
        return [f"expected one operator Deployment, found {len(deployments)}"], []
    deployment = deployments[0]
    op_ns = deployment["metadata"]["namespace"]
    sa = deployment["spec"]["template"]["spec"].get("serviceAccountName", "default")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    watched = [n for n in env_value(container, "SLUICE_WATCH_NAMESPACES", "").split(",") if n]
    leader_election = env_value(container, "SLUICE_LEADER_ELECTION", "true") != "false"

    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    errors = []
    granted = {}  # (scope, group, resource, verb) -> role that grants it
    for b in objects:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                   and s.get("namespace", b["metadata"].get("namespace")) == op_ns for s in b.get("subjects", [])):
            continue
        ref = b["roleRef"]
        role_ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        if role is None:
            errors.append(f"{b['kind']} {b['metadata']['name']} binds {ref['kind']} {ref['name']}, which the install does not contain")
            continue
        scope = CLUSTER if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
        for t in triples(role.get("rules", [])):
            granted[(scope, *t)] = f"{ref['kind']}/{ref['name']}"

    job_needs = triples(needs.get("jobNamespaces", []))
    op_needs = triples(needs.get("operatorNamespace", [])) if leader_election else set()
    job_scopes = watched or [CLUSTER]
    wanted = {(s, *t) for s in job_scopes for t in job_needs} | {(op_ns, *t) for t in op_needs}

    for g in sorted(granted):
        if "*" in g[1:]:
            errors.append(f"wildcard grant {g} by {granted[g]}")
        elif g not in wanted:
            errors.append(f"grant not needed by the operator's code: {g[1] or 'core'}/{g[2]} {g[3]} in "
                          f"{'the whole cluster' if g[0] == CLUSTER else 'namespace ' + g[0]} (by {granted[g]})")
    for w in sorted(wanted - set(granted)):
        errors.append(f"needed but not granted: {w[1] or 'core'}/{w[2]} {w[3]} in "
                      f"{'the whole cluster' if w[0] == CLUSTER else 'namespace ' + w[0]}")
    header = (f"{path}: ServiceAccount {op_ns}/{sa}, watching "
              f"{', '.join(watched) if watched else 'every namespace'}, leader election {'on' if leader_election else 'off'}")
    return errors, [header] + [f"    {g[0]:<16} {g[1] or 'core':<22} {g[2]:<24} {g[3]:<8} ({granted[g]})" for g in sorted(granted)]


def main():
    needs_path, renders = sys.argv[1], sys.argv[2:]
    with open(needs_path) as f:
        needs = yaml.safe_load(f)
    if not needs or not needs.get("jobNamespaces"):
        sys.exit(f"rbac: {needs_path} has no jobNamespaces rules; is it `sluice-operator rbac` output?")
    failures = 0
    for path in renders:
        errors, listing = check_install(path, needs)
        print("\n".join(listing))
        for e in errors:
            print(f"FAIL {path}: {e}")
        failures += len(errors)
        print(f"  {len(listing) - 1} grants, {len(errors)} problems")
    print(f"rbac: {len(renders)} installs checked against {needs_path}; {failures} problems")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
