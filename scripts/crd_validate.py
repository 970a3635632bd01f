#!/usr/bin/env python3
"""Validates custom resources against the schemas of their CustomResourceDefinitions, offline.

    scripts/crd_validate.py --crd CRD.yaml [--crd ...] MANIFEST.yaml [...]

kubernetes-validate knows only Kubernetes' own kinds; a CRD carries its objects' schema itself
(spec.versions[].schema.openAPIV3Schema). Each object whose apiVersion and kind one of the CRDs
defines is validated against that version's schema, strictly: an object that declares its
properties accepts no others (unless x-kubernetes-preserve-unknown-fields), which is what the
API server's pruning would silently drop. metadata is checked as the API server does for every
object: a name is required. Prints one JSON line per object:
{"file", "apiVersion", "kind", "name", "result": "valid"|"invalid"|"no-crd", "errors": [...]}.
Exit status: 0 every object with a CRD is valid; 1 one is not; 2 bad usage or unreadable input.
Needs PyYAML and jsonschema (both come with kubernetes-validate: scripts/services.sh).
"""

import argparse
import copy
import json
import sys

import jsonschema
import yaml


def strict(schema):
    """The schema with additionalProperties false wherever properties are declared."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # The API server owns metadata's schema (ObjectMeta), not the CRD.
    schema.setdefault("properties", {})["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}},
    }
    return schema


def load_crds(paths):
    schemas = {}
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                group = doc["spec"]["group"]
                kind = doc["spec"]["names"]["kind"]
                for version in doc["spec"]["versions"]:
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = strict(schema)
    return schemas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crd", action="append", required=True, help="a CRD file (repeatable)")
    parser.add_argument("manifests", nargs="+")
    args = parser.parse_args()
    try:
        schemas = load_crds(args.crd)
    except (OSError, KeyError, yaml.YAMLError) as e:
        print(f"crd_validate: cannot read the CRDs: {e}", file=sys.stderr)
        return 2
    if not schemas:
        print("crd_validate: no CustomResourceDefinition in --crd files", file=sys.stderr)
        return 2
    failed = False
    for path in args.manifests:
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d]
        except (OSError, yaml.YAMLError) as e:
            print(f"crd_validate: cannot read {path}: {e}", file=sys.stderr)
            return 2
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            line = {
                "file": path,
                "apiVersion": key[0],
                "kind": key[1],
                "name": (doc.get("metadata") or {}).get("name"),
            }
            schema = schemas.get(key)
            if schema is None:
                line.update(result="no-crd", errors=[])
            else:
                validator = jsonschema.Draft7Validator(schema)
                errors = [
                    f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                    for e in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
                ]
                line.update(result="invalid" if errors else "valid", errors=errors)
                failed = failed or bool(errors)
            print(json.dumps(line))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
