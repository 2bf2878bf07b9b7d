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
root filesystem, non-root. The node-local pod (docs/node-local.md) reads the
kubelet's root-owned credentials, so it may run as uid 0, but only with every
capability dropped and those files mounted read-only. The node-local RBAC
file (Role and RoleBinding) must grant reads only, in `default`, to the
group system:nodes.
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
    # rbac.authorization.k8s.io/v1
    "Role": {"apiVersion", "kind", "metadata", "rules"},
    "RoleBinding": {"apiVersion", "kind", "metadata", "roleRef", "subjects"},
    "PolicyRule": {"apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"},
    "RoleRef": {"apiGroup", "kind", "name"},
    "Subject": {"apiGroup", "kind", "name", "namespace"},
}
KUBELET_CREDENTIALS = ("/etc/kubernetes/kubelet.conf", "/var/lib/kubelet")
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
        mounts = c.get("volumeMounts", [])
        reads_kubelet = any(m.get("mountPath", "").startswith(KUBELET_CREDENTIALS) for m in mounts)
        if reads_kubelet:
            # Root for the file permissions of root's 0600 files, no capability.
            require(caps.get("add", []) == [], f"{w}: a pod reading the kubelet's credentials adds no capability")
            require(sc.get("privileged") is False, f"{w}: privileged: false")
        else:
            require(psc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True, f"{w}: runAsNonRoot")
        for j, m in enumerate(mounts):
            keys(m, "VolumeMount", f"{w}.volumeMounts[{j}]")
            require(m.get("name") in volumes, f"{w}.volumeMounts[{j}]: no volume {m.get('name')}")
            if m.get("mountPath", "").startswith(("/etc/apilb", "/etc/kubernetes", "/var/lib/kubelet")):
                require(m.get("readOnly") is True, f"{w}.volumeMounts[{j}]: config and certificates read-only")


def check_rbac(docs, f):
    roles = {}
    for i, d in enumerate(docs):
        w = f"{f}[{i}]"
        kind = d.get("kind")
        require(kind in ("Role", "RoleBinding"), f"{w}: only Role and RoleBinding belong here, not {kind}")
        if kind not in ("Role", "RoleBinding"):
            continue
        keys(d, kind, w)
        require(d.get("apiVersion") == "rbac.authorization.k8s.io/v1", f"{w}: apiVersion rbac.authorization.k8s.io/v1")
        meta = keys(d.get("metadata", {}), "ObjectMeta", w + ".metadata")
        # The `kubernetes` slices live in `default`; nothing cluster-wide.
        require(meta.get("namespace") == "default", f"{w}: namespace default")
        if kind == "Role":
            roles[meta.get("name")] = d
            for j, r in enumerate(d.get("rules", [])):
                keys(r, "PolicyRule", f"{w}.rules[{j}]")
                require(set(r.get("verbs", [])) <= {"get", "list", "watch"}, f"{w}.rules[{j}]: reads only")
                require(set(r.get("resources", [])) <= {"endpointslices", "endpoints"},
                        f"{w}.rules[{j}]: endpointslices and endpoints only")
        else:
            ref = keys(d.get("roleRef", {}), "RoleRef", w + ".roleRef")
            require(ref.get("kind") == "Role" and ref.get("name") in roles, f"{w}: roleRef names the Role above")
            subjects = d.get("subjects", [])
            for j, sub in enumerate(subjects):
                keys(sub, "Subject", f"{w}.subjects[{j}]")
            require([(x.get("kind"), x.get("name")) for x in subjects] == [("Group", "system:nodes")],
                    f"{w}: bound to the group system:nodes (the kubelets' identity) only")
    require(len(roles) == 1, f"{f}: expected one Role")


for f in sys.argv[1:]:
    with open(f) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    if docs and docs[0].get("kind") == "Pod":
        require(len(docs) == 1, f"{f}: expected one document")
        check_pod(docs[0], f)
    else:
        check_rbac(docs, f)

for e in errors:
    print(e)
print(f"{len(sys.argv) - 1} manifest(s), {len(errors)} error(s)")
sys.exit(1 if errors else 0)
