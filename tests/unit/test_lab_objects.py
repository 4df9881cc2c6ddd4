"""Parsing the lab's YAML: valid objects are normalized; every error names the file, object and field."""

from __future__ import annotations

import pytest

from meshctl.lab.errors import LabObjectError
from meshctl.lab.objects import describe, key_of, parse_documents

GOOD = """
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server, version: v1}}
    spec:
      nodeName: node2
      containers:
      - name: server
        command: [python, -m, meshctl.apps.httpecho]
        env: [{name: VERSION, valueFrom: {fieldRef: {fieldPath: "metadata.labels['version']"}}}]
        ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: demo}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [legacy]}}]}]}
"""


def test_valid_documents_are_parsed_and_namespaced() -> None:
    objects = parse_documents(GOOD, source="cluster.yaml", node_names=["node1", "node2"])
    assert [key_of(o) for o in objects] == [
        ("Namespace", "", "demo"),
        ("Deployment", "demo", "server"),
        ("Service", "default", "server"),
        ("AuthorizationPolicy", "demo", "allow"),
    ]
    assert objects[3]["spec"] == {
        "action": "DENY",
        "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}],
    }
    assert describe(objects[1]) == "Deployment demo/server"


def test_list_documents_are_flattened() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n"
    assert [key_of(o) for o in parse_documents(text, source="l.yaml")] == [("Namespace", "", "a")]


DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: demo}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {labels}}}
    spec:
      {extra}
      containers: {containers}
"""


def deploy(
    *,
    replicas: str = "1",
    labels: str = "{app: web}",
    containers: str = "[{name: c, command: [sleep, '1']}]",
    extra: str = "",
) -> str:
    return DEPLOY.format(replicas=replicas, labels=labels, containers=containers, extra=extra)


@pytest.mark.parametrize(
    ("text", "obj", "field", "problem"),
    [
        ("a: [1, 2\nb: 3\n", "", "", "not valid YAML at line"),
        ("- just\n- a list\n", "document 1", "", "must be a mapping"),
        ("kind: Namespace\nmetadata: {name: x}\n", "document 1", "apiVersion", "is required"),
        ("apiVersion: v1\nkind: Namespace\n", "document 1", "metadata", "is required"),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n",
            "document 1",
            "metadata.name",
            "DNS",
        ),
        (deploy(replicas="two"), "Deployment demo/web", "spec.replicas", "integer >= 0, got 'two'"),
        (deploy(labels="{app: other}"), "Deployment demo/web", "spec.template.metadata.labels", "app=web"),
        (deploy(containers="[]"), "Deployment demo/web", "spec.template.spec.containers", "non-empty list"),
        (
            deploy(containers="[{name: c, command: [sleep, 1]}]"),
            "Deployment demo/web",
            "spec.template.spec.containers[0].command",
            "list of strings",
        ),
        (
            deploy(containers="[{name: c}]"),
            "Deployment demo/web",
            "spec.template.spec.containers[0].command",
            "required",
        ),
        (
            deploy(containers="[{name: c, command: [x], ports: [{containerPort: 70000}]}]"),
            "Deployment demo/web",
            "spec.template.spec.containers[0].ports[0].containerPort",
            "1-65535",
        ),
        (
            deploy(containers="[{name: c, command: [x], env: [{name: A, value: 1}]}]"),
            "Deployment demo/web",
            "spec.template.spec.containers[0].env[0].value",
            "must be a string",
        ),
        (
            deploy(extra="nodeName: node9"),
            "Deployment demo/web",
            "spec.template.spec.nodeName",
            "unknown node 'node9'",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: NodePort, ports: []}\n",
            "Service default/s",
            "spec.type",
            "ClusterIP services only",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1, targetPort: 0}]}\n",
            "Service default/s",
            "spec.ports[0].targetPort",
            "1-65535",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {a: 1}}\n",
            "Namespace n",
            "metadata.labels.a",
            "quote them",
        ),
        (
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: r}\n",
            "ReplicaSet default/r",
            "kind",
            "managed by",
        ),
    ],
)
def test_errors_name_file_object_and_field(text: str, obj: str, field: str, problem: str) -> None:
    with pytest.raises(LabObjectError) as info:
        parse_documents(text, source="cluster.yaml", node_names=["node1", "node2"])
    err = info.value
    assert err.source == "cluster.yaml" and err.obj.startswith(obj) and err.field == field
    assert problem in str(err)
    assert str(err).startswith(f"cluster.yaml: {obj}" if obj else "cluster.yaml: not valid YAML")


def test_the_document_number_is_in_the_message() -> None:
    text = GOOD + "---\n" + deploy(replicas="-1")
    with pytest.raises(LabObjectError, match=r"Deployment demo/web \(document 5\): field spec.replicas"):
        parse_documents(text, source="x.yaml")
