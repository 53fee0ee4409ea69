"""Machine-readable description of every RPC method, and the Markdown reference.

Both come from a registry, so they cannot drift from the code: ``rpc_schemas/`` and
``docs/rpc-reference.md`` are generated from the built-in methods by
``python -m pybdev.reference --write`` and a test fails when the committed files differ
from what the code would generate.
The document is OpenRPC 1.2 (JSON Schema for params and results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pybdev import __version__
from pybdev.rpc.examples import errors, examples
from pybdev.rpc.registry import IGNORE_PARAMS, NO_PARAMS, Method, Registry, State

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "rpc_schemas" / "pybdev.openrpc.json"
REFERENCE_FILE = ROOT / "docs" / "rpc-reference.md"


def _states(method: Method) -> list[str]:
    return [s.name or "" for s in (State.STARTUP, State.RUNTIME) if method.states & s]


def _params(method: Method) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """OpenRPC ``params`` (by name) and the shared ``$defs`` they refer to."""
    if isinstance(method.params, str):
        return [], {}
    schema = method.params.model_json_schema()
    defs = schema.pop("$defs", {})
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        entry: dict[str, Any] = {"name": name, "required": name in required, "schema": prop}
        if "description" in prop:
            entry["description"] = prop["description"]
        params.append(entry)
    return params, defs


def openrpc_document(registry: Registry) -> dict[str, Any]:
    methods = []
    components: dict[str, Any] = {}
    for method in sorted(registry.methods(), key=lambda m: (m.subsystem, m.name)):
        params, defs = _params(method)
        components.update(defs)
        methods.append({
            "name": method.name,
            "summary": method.summary,
            "paramStructure": "by-name",
            "params": params,
            "result": {"name": "result", "schema": method.result or {}},
            "x-subsystem": method.subsystem,
            "x-states": _states(method),
            "x-params": {NO_PARAMS: "none", IGNORE_PARAMS: "ignored"}.get(
                method.params if isinstance(method.params, str) else "", "object"),
            "x-decode-error": {"code": method.decode_error_code,
                               "message": method.decode_error_message},
        })
        if method.spec.aliases:
            methods[-1]["x-deprecated-aliases"] = list(method.spec.aliases)
        example = examples().get(method.name)
        if example is not None:
            methods[-1]["examples"] = [{
                "name": f"{method.name} example",
                "params": [{"name": k, "value": v} for k, v in (example.params or {}).items()],
                "result": {"name": "result", "value": example.answer},
            }]
        known = errors().get(method.name)
        if known:
            methods[-1]["x-errors"] = [{"code": c, "message": m} for c, m in known]
    doc: dict[str, Any] = {
        "openrpc": "1.2.6",
        "info": {"title": "pybdev JSON-RPC", "version": __version__,
                 "description": "SPDK-compatible JSON-RPC methods served by pybdev."},
        "methods": methods,
    }
    if components:
        doc["components"] = {"schemas": dict(sorted(components.items()))}
    return doc


def _type_text(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type_text(s) for s in schema["anyOf"] if s.get("type") != "null")
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    t = schema.get("type", "any")
    if t == "array":
        return f"array of {_type_text(schema.get('items', {}))}"
    bounds = []
    if "minimum" in schema:
        bounds.append(f"≥ {schema['minimum']}")
    if "maximum" in schema:
        bounds.append(f"≤ {schema['maximum']}")
    fmt = f" ({schema['format']})" if "format" in schema else ""
    return f"{t}{fmt}" + (f" ({', '.join(bounds)})" if bounds else "")


def markdown_reference(doc: dict[str, Any]) -> str:
    lines = [
        "# RPC reference",
        "",
        "Generated from the method registry by `python -m pybdev.reference --write`; do not "
        "edit by hand. The same information, machine-readable, is in "
        "`rpc_schemas/pybdev.openrpc.json`.",
        "",
        "Examples and errors come from one scenario (`pybdev/rpc/examples.py`) that a test "
        "runs against a live target; an example answer shows the fields the test checks, "
        "and a real answer may have more.",
        "",
    ]
    by_subsystem: dict[str, list[dict[str, Any]]] = {}
    for m in doc["methods"]:
        by_subsystem.setdefault(m["x-subsystem"], []).append(m)
    for subsystem, methods in by_subsystem.items():
        lines += [f"## {subsystem}", ""]
        for m in methods:
            lines += [f"### `{m['name']}`", "", m["summary"] or "", ""]
            lines.append(f"States: {', '.join(m['x-states'])}. "
                         f"Params that fail to decode: `{m['x-decode-error']['code']}` "
                         f"\"{m['x-decode-error']['message']}\".")
            if m.get("x-deprecated-aliases"):
                old = ", ".join(f"`{a}`" for a in m["x-deprecated-aliases"])
                lines.append(f"Deprecated alias (accepted, with a warning): {old}.")
            lines.append("")
            if m["params"]:
                described = any(p.get("description") for p in m["params"])
                head = "| param | type | required | default |"
                lines += [head + (" description |" if described else ""),
                          "|---|---|---|---|" + ("---|" if described else "")]
                for p in m["params"]:
                    default = p["schema"].get("default", "")
                    default_text = "" if default == "" else f"`{json.dumps(default)}`"
                    text = p.get("description", "").replace("|", "\\|")
                    lines.append(f"| `{p['name']}` | {_type_text(p['schema'])} | "
                                 f"{'yes' if p['required'] else 'no'} | {default_text} |"
                                 + (f" {text} |" if described else ""))
                lines.append("")
            elif m["x-params"] == "none":
                lines += ["No params.", ""]
            result = m["result"]["schema"]
            if result:
                lines += [f"Result: {_type_text(result)}.", ""]
            for example in m.get("examples", []):
                request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": m["name"]}
                if example["params"]:
                    request["params"] = {p["name"]: p["value"] for p in example["params"]}
                answer = {"jsonrpc": "2.0", "id": 1, "result": example["result"]["value"]}
                lines += ["Example request and answer:", "", "```json",
                          json.dumps(request, indent=2), "```", "", "```json",
                          json.dumps(answer, indent=2), "```", ""]
            if m.get("x-errors"):
                lines += ["Errors (besides the decode error):", ""]
                lines += [f"- `{e['code']}` \"{e['message']}\"" for e in m["x-errors"]]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def rendered(registry: Registry) -> dict[Path, str]:
    """What the generated files must contain for the methods of ``registry``."""
    doc = openrpc_document(registry)
    return {
        SCHEMA_FILE: json.dumps(doc, indent=2, sort_keys=False) + "\n",
        REFERENCE_FILE: markdown_reference(doc),
    }
