"""Offline checks of deploy/k8s (run by scripts/cluster-test.sh; no cluster, no network).

1. Every kustomization lists exactly the files of its folder (resources, generator files, patches),
   and everything it lists exists.
2. Every resource file validates against the Kubernetes 1.31 OpenAPI schemas, strictly (unknown
   fields are errors), with kubernetes-validate (it ships the schemas).
3. The overlays' strategic-merge patches target objects and containers that exist in the base.
4. The pieces agree: StatefulSet replicas = per-shard Services = gateway server lines (same names,
   same port), probes are gRPC on the container port, the flags' --listen port is that port,
   generated ConfigMaps are the ones mounted, pods run as non-root.
5. When `kubectl` is on PATH, `kubectl kustomize` renders the base and every overlay, and the
   rendered objects validate strictly too (the generated ConfigMaps and the patched StatefulSet
   included). Without kubectl this step is skipped, and it says so.

    python tests/cluster/check_manifests.py            exit 0 when every check passes
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from deploy_config import FLAGS_FILE, REPO, k8s_shard_servers, load_yaml_documents

K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.31.0"
KUSTOMIZATION = "kustomization.yaml"


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.items.append(message)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob(KUSTOMIZATION))


def listed_files(kdir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(resource files, generator files, patch files) a kustomization names; resources that are
    directories (another kustomization) are left out."""
    k = yaml.safe_load((kdir / KUSTOMIZATION).read_text())
    resources = [kdir / r for r in k.get("resources", []) if not (kdir / r).is_dir()]
    generated = [
        kdir / f.split("=", 1)[-1]
        for g in k.get("configMapGenerator", []) + k.get("secretGenerator", [])
        for f in g.get("files", [])
    ]
    patches = [kdir / p["path"] for p in k.get("patches", []) if "path" in p]
    patches += [kdir / p for p in k.get("patchesStrategicMerge", [])]
    return resources, generated, patches


def check_listing(kdir: Path, problems: Problems) -> None:
    resources, generated, patches = listed_files(kdir)
    listed = {p.resolve() for p in resources + generated + patches}
    for p in listed:
        problems.check(p.is_file(), f"{_rel(kdir / KUSTOMIZATION)} lists {p}, which does not exist")
    nested = {d.resolve() for d in kustomization_dirs() if d != kdir}
    present = {
        p.resolve()
        for p in kdir.rglob("*")
        if p.is_file() and p.name != KUSTOMIZATION and not any(n in p.resolve().parents for n in nested)
    }
    for p in sorted(present - listed):
        problems.check(False, f"{_rel(p)} is in {_rel(kdir)} but {KUSTOMIZATION} does not list it")


def validate_objects(objects: list[dict[str, Any]], where: str, problems: Problems) -> None:
    for obj in objects:
        name = f"{where}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.check(False, f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.check(False, f"{name}: no schema ({e})")


def base_objects() -> dict[tuple[str, str], dict[str, Any]]:
    base = K8S / "base"
    resources, _, _ = listed_files(base)
    objects = {}
    for f in resources:
        for obj in load_yaml_documents(f):
            objects[(obj["kind"], obj["metadata"]["name"])] = obj
    return objects


def check_patches(kdir: Path, base: dict[tuple[str, str], dict[str, Any]], problems: Problems) -> None:
    _, _, patches = listed_files(kdir)
    for path in patches:
        for patch in load_yaml_documents(path):
            key = (patch["kind"], patch["metadata"]["name"])
            target = base.get(key)
            problems.check(target is not None, f"{_rel(path)} patches {key}, not in the base")
            if target is None:
                continue
            names = {c["name"] for c in target["spec"]["template"]["spec"]["containers"]}
            for c in patch.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                problems.check(c["name"] in names, f"{_rel(path)} patches container {c['name']!r}, "
                               f"which {key} does not have ({sorted(names)})")


def check_consistency(base: dict[tuple[str, str], dict[str, Any]], problems: Problems) -> None:
    sts = base[("StatefulSet", "nexuskv")]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    replicas = sts["spec"]["replicas"]
    problems.check(("Service", sts["spec"]["serviceName"]) in base, "serviceName has no Service")
    headless = base.get(("Service", sts["spec"]["serviceName"]), {})
    problems.check(
        headless.get("spec", {}).get("clusterIP") == "None", "the governing Service is not headless"
    )
    for probe in ("startupProbe", "readinessProbe"):
        problems.check(container.get(probe, {}).get("grpc", {}).get("port") == port,
                       f"{probe} is not a gRPC probe on port {port}")
    # Health is NOT_SERVING on a full disk (docs/metrics.md): liveness must not restart for that.
    problems.check(container.get("livenessProbe", {}).get("tcpSocket", {}).get("port") == port,
                   f"livenessProbe is not a TCP probe on port {port}")
    metrics_port = next((p["containerPort"] for p in container["ports"] if p["name"] == "metrics"), None)
    metrics = re.search(r"^--metrics_listen=\S*:(\d+)\s*$", FLAGS_FILE.read_text(), re.M)
    problems.check(bool(metrics) and metrics_port is not None and int(metrics.group(1)) == metrics_port,
                   f"{_rel(FLAGS_FILE)} --metrics_listen is not on the container port 'metrics'")
    problems.check(pod["securityContext"].get("runAsNonRoot") is True, "shards may run as root")
    problems.check(bool(sts["spec"].get("volumeClaimTemplates")), "no PersistentVolumeClaim per shard")

    listen = re.search(r"^--listen=\S*:(\d+)\s*$", FLAGS_FILE.read_text(), re.M)
    problems.check(bool(listen) and int(listen.group(1)) == port,
                   f"{_rel(FLAGS_FILE)} --listen is not on the container port {port}")
    problems.check(container.get("args") == [f"--flagfile=/etc/nexuskv/{FLAGS_FILE.name}"],
                   "the shard does not read the flags file")

    servers = k8s_shard_servers()
    expected = [f"nexuskv-{i}:{port}" for i in range(replicas)]
    problems.check([s for s, _ in servers] == expected,
                   f"gateway NEXUSKV_SHARDS {[s for s, _ in servers]} != shards {expected}")
    for i in range(replicas):
        svc = base.get(("Service", f"nexuskv-{i}"))
        problems.check(svc is not None, f"no Service nexuskv-{i} for shard {i}")
        if svc:
            problems.check(svc["spec"]["selector"] == {"statefulset.kubernetes.io/pod-name": f"nexuskv-{i}"},
                           f"Service nexuskv-{i} does not select pod nexuskv-{i}")
            problems.check(svc["spec"]["ports"][0]["port"] == port, f"Service nexuskv-{i} port != {port}")
            problems.check(svc["spec"].get("publishNotReadyAddresses") is True,
                           f"Service nexuskv-{i} hides its shard when not ready; it has no other")
    extra = [k for k in base if k[0] == "Service" and re.fullmatch(r"nexuskv-\d+", k[1])
             and int(k[1].split("-")[1]) >= replicas]
    problems.check(not extra, f"per-shard Services beyond the {replicas} replicas: {extra}")

    k = yaml.safe_load((K8S / "base" / KUSTOMIZATION).read_text())
    generated = {g["name"] for g in k.get("configMapGenerator", [])}
    gateway = base[("Deployment", "nexuskv-gateway")]["spec"]["template"]["spec"]
    for spec in (pod, gateway):
        for v in spec.get("volumes", []):
            if "configMap" in v:
                problems.check(v["configMap"]["name"] in generated,
                               f"volume {v['name']} mounts ConfigMap {v['configMap']['name']}, not generated")
    problems.check(gateway["securityContext"].get("runAsNonRoot") is True, "the gateway may run as root")


def render_and_validate(kdir: Path, problems: Problems) -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return f"{_rel(kdir)}: not rendered (no kubectl on PATH)"
    out = subprocess.run([kubectl, "kustomize", str(kdir)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        problems.check(False, f"kubectl kustomize {_rel(kdir)} failed: {out.stderr.strip()}")
        return f"{_rel(kdir)}: render failed"
    objects = [d for d in yaml.safe_load_all(io.StringIO(out.stdout)) if d]
    validate_objects(objects, f"rendered {_rel(kdir)}", problems)
    return f"{_rel(kdir)}: rendered by kubectl kustomize, {len(objects)} objects validated"


def main() -> int:
    problems = Problems()
    notes = []
    base = base_objects()
    dirs = kustomization_dirs()
    for kdir in dirs:
        check_listing(kdir, problems)
        resources, _, _ = listed_files(kdir)
        for f in resources:
            validate_objects(load_yaml_documents(f), _rel(f), problems)
        if kdir != K8S / "base":
            check_patches(kdir, base, problems)
    check_consistency(base, problems)
    for kdir in dirs:
        notes.append(render_and_validate(kdir, problems))
    for n in notes:
        print(f"check_manifests: {n}")
    if problems.items:
        for p in problems.items:
            print(f"check_manifests: FAIL {p}", file=sys.stderr)
        return 1
    print(f"check_manifests: {len(dirs)} kustomizations, {len(base)} base objects: all checks "
          f"passed (Kubernetes {K8S_VERSION} schemas, strict)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
