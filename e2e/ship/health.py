"""Runs the Argo CD health check for StreamJob (manifests/argocd/health/health.lua) on every case
of health/health_test.yaml (Argo CD's own test format) in Lua through lupa, the way Argo CD runs it:
the live object as the global `obj`, the script's returned table as the health. Also checks that
argocd-cm-patch.yaml embeds the script verbatim. Reads files only.

    health.py manifests/argocd
"""

import os
import sys

import lupa.lua51 as lua51  # Argo CD's gopher-lua implements Lua 5.1
import yaml


def to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def main():
    root = sys.argv[1]
    script = open(os.path.join(root, "health", "health.lua")).read()
    failures = []

    patch = yaml.safe_load(open(os.path.join(root, "argocd-cm-patch.yaml")))
    embedded = patch["data"]["resource.customizations.health.sluice.dev_StreamJob"]
    if embedded != script:
        failures.append("argocd-cm-patch.yaml does not embed health/health.lua verbatim")

    tests = yaml.safe_load(open(os.path.join(root, "health", "health_test.yaml")))["tests"]
    for case in tests:
        obj = yaml.safe_load(open(os.path.join(root, "health", case["inputPath"])))
        lua = lua51.LuaRuntime(unpack_returned_tuples=True)
        lua.globals().obj = to_lua(lua, obj)
        result = lua.execute(script)
        got = {"status": result["status"], "message": result["message"]}
        ok = got == case["healthStatus"]
        print(f"  {'ok  ' if ok else 'FAIL'} {case['inputPath']}: {got['status']}: {got['message']}")
        if not ok:
            failures.append(f"{case['inputPath']}: wanted {case['healthStatus']}, got {got}")
    print(f"health: {len(tests)} cases, {len(failures)} failures")
    for f in failures:
        print("FAIL " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
