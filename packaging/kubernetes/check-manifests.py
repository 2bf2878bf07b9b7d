#!/usr/bin/env python3
"""Checks the static pod manifests without a cluster.

    check-manifests.py MANIFEST...

kubectl validates against the API server's OpenAPI schema, which needs a
server (`kubectl apply --dry-run=client` and `kubectl create --dry-run=client
--validate=false` both ask for discovery). Instead this checks, for the
fields these manifests use, that every key is a real field of its Kubernetes
v1 type (a misspelt key is silently dropped by the kubelet), that values
have the right shape, and that the properties docs/kubeadm-ha.md promises
hold: hostNetwork, system-node-critical, read-only hostPath config, probes on
the admin /livez and /readyz, requests, all capabilities dropped, read-only
root filesystem, non-root.
"""
import sys
import yaml

# Field names of the core/v1 types used here (k8s.io/api/core/v1/types.go).
FIELDS = {
    "Pod": {"apiVersion", "kind", "metadata", "spec"},
    "ObjectMeta": {"name", "namespace", "labels", "annotations"},
    "PodSpec": {"hostNetwork", "hostPID", "priorityClassName", "priority",
                "terminationGracePeriodSeconds", "securityContext", "containers",
                "initContainers", "volumes", "dnsPolicy", "restartPolicy",
                "tolerations", "nodeSelector"},
    "PodSecurityContext": {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup",
                           "seccompProfile", "supplementalGroups", "sysctls"},
    "Container": {"name", "image", "imagePullPolicy", "command", "args", "env",
                  "ports", "livenessProbe", "readinessProbe", "startupProbe",
                  "resources", "securityContext", "volumeMounts", "workingDir"},
    "ContainerPort": {"name", "containerPort", "hostPort", "protocol", "hostIP"},
    "Probe": {"httpGet", "tcpSocket", "exec", "grpc", "initialDelaySeconds",
              "periodSeconds", "timeoutSeconds", "failureThreshold",
              "successThreshold", "terminationGracePeriodSeconds"},
    "HTTPGetAction": {"host", "port", "path", "scheme", "httpHeaders"},
    "ResourceRequirements": {"requests", "limits"},
    "SecurityContext": {"allowPrivilegeEscalation", "readOnlyRootFilesystem",
                        "privileged", "capabilities", "runAsUser", "runAsGroup",
                        "runAsNonRoot", "seccompProfile", "procMount"},
    "Capabilities": {"add", "drop"},
    "VolumeMount": {"name", "mountPath", "readOnly", "subPath", "mountPropagation"},
    "Volume": {"name", "hostPath", "emptyDir", "configMap", "secret"},
    "HostPathVolumeSource": {"path", "type"},
    "SeccompProfile": {"type", "localhostProfile"},
}
HOSTPATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File",
                  "Socket", "CharDevice", "BlockDevice"}

errors = []


def keys(obj, typ, where):
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected a mapping ({typ})")
        return {}
    for k in obj:
        if k not in FIELDS[typ]:
            errors.append(f"{where}.{k}: not a field of {typ}")
    return obj


def require(cond, what):
    if not cond:
        errors.append(what)


def check_probe(p, where, path):
    keys(p, "Probe", where)
    h = keys(p.get("httpGet", {}), "HTTPGetAction", where + ".httpGet")
    require(h.get("path") == path, f"{where}: httpGet.path must be {path}")
    require(h.get("host") == "127.0.0.1", f"{where}: probe the admin endpoint on 127.0.0.1")
    require(isinstance(h.get("port"), int) and 0 < h["port"] < 65536, f"{where}: port")


def check_pod(doc, f):
    keys(doc, "Pod", f)
    require(doc.get("apiVersion") == "v1" and doc.get("kind") == "Pod", f"{f}: must be a v1 Pod")
    meta = keys(doc.get("metadata", {}), "ObjectMeta", f + ".metadata")
    require(meta.get("namespace") == "kube-system", f"{f}: namespace kube-system")
    spec = keys(doc.get("spec", {}), "PodSpec", f + ".spec")
    require(spec.get("hostNetwork") is True, f"{f}: hostNetwork: true")
    require(spec.get("priorityClassName") == "system-node-critical", f"{f}: system-node-critical")
    psc = keys(spec.get("securityContext", {}), "PodSecurityContext", f + ".spec.securityContext")
    if "seccompProfile" in psc:
        keys(psc["seccompProfile"], "SeccompProfile", f + ".spec.securityContext.seccompProfile")
    volumes = {}
    for i, v in enumerate(spec.get("volumes", [])):
        keys(v, "Volume", f"{f}.spec.volumes[{i}]")
        hp = keys(v.get("hostPath", {}), "HostPathVolumeSource", f"{f}.spec.volumes[{i}].hostPath")
        require(hp.get("type", "") in HOSTPATH_TYPES, f"{f}: volumes[{i}]: bad hostPath type")
        volumes[v.get("name")] = v
    containers = spec.get("containers", [])
    require(len(containers) >= 1, f"{f}: no containers")
    for i, c in enumerate(containers):
        w = f"{f}.spec.containers[{i}]"
        keys(c, "Container", w)
        require(bool(c.get("image")), f"{w}: image")
        for j, p in enumerate(c.get("ports", [])):
            keys(p, "ContainerPort", f"{w}.ports[{j}]")
        check_probe(c.get("livenessProbe", {}), w + ".livenessProbe", "/livez")
        check_probe(c.get("readinessProbe", {}), w + ".readinessProbe", "/readyz")
        if "startupProbe" in c:
            check_probe(c["startupProbe"], w + ".startupProbe", "/livez")
        res = keys(c.get("resources", {}), "ResourceRequirements", w + ".resources")
        require({"cpu", "memory"} <= set(res.get("requests", {})), f"{w}: cpu and memory requests")
        sc = keys(c.get("securityContext", {}), "SecurityContext", w + ".securityContext")
        caps = keys(sc.get("capabilities", {}), "Capabilities", w + ".securityContext.capabilities")
        require(caps.get("drop") == ["ALL"], f"{w}: capabilities.drop must be [ALL]")
        require(set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{w}: only NET_BIND_SERVICE may be added")
        require(sc.get("readOnlyRootFilesystem") is True, f"{w}: readOnlyRootFilesystem")
        require(sc.get("allowPrivilegeEscalation") is False, f"{w}: allowPrivilegeEscalation: false")
        require(psc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True, f"{w}: runAsNonRoot")
        for j, m in enumerate(c.get("volumeMounts", [])):
            keys(m, "VolumeMount", f"{w}.volumeMounts[{j}]")
            require(m.get("name") in volumes, f"{w}.volumeMounts[{j}]: no volume {m.get('name')}")
            if m.get("mountPath", "").startswith(("/etc/apilb", "/etc/kubernetes")):
                require(m.get("readOnly") is True, f"{w}.volumeMounts[{j}]: config and certificates read-only")


for f in sys.argv[1:]:
    with open(f) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    require(len(docs) == 1, f"{f}: expected one document")
    for d in docs:
        check_pod(d, f)

for e in errors:
    print(e)
print(f"{len(sys.argv) - 1} manifest(s), {len(errors)} error(s)")
sys.exit(1 if errors else 0)
