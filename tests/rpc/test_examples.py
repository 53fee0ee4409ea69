"""The reference's examples and errors (pybdev/rpc/examples.py) run against a live target,
in order, so a documented answer that the code no longer gives fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pybdev.reference import builtin_registry
from pybdev.rpc.examples import ANY, ANY_UUID, CAPTURE, SCENARIO, TMP, examples
from tests.conftest import Target

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def contains(actual: Any, declared: Any) -> bool:
    """``declared`` is a subset of ``actual``: keys of objects, elements of lists in order."""
    if isinstance(declared, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in declared.items())
    if declared == ANY:
        return isinstance(actual, str)
    if declared == ANY_UUID:
        return isinstance(actual, str) and re.fullmatch(UUID_RE, actual) is not None
    if isinstance(declared, list):
        return (isinstance(actual, list) and len(actual) == len(declared)
                and all(contains(a, d) for a, d in zip(actual, declared, strict=True)))
    return bool(actual == declared and type(actual) is type(declared))


def test_scenario_runs_as_documented(target: Target, tmp_path: Path) -> None:
    def here(value: Any) -> Any:
        return json.loads(json.dumps(value).replace(TMP, str(tmp_path)))

    with target.client() as client:
        for n, step in enumerate(SCENARIO):
            client.send_raw(client.request(step.method, here(step.params)))
            response = client.recv_value()
            where = f"step {n}: {step.method} {step.params}"
            assert step.error != CAPTURE, (where, response)  # fill in what it answered
            if step.error is not None:
                assert response.get("error") == {"code": step.error[0],
                                                 "message": step.error[1]}, (where, response)
            else:
                assert "result" in response, (where, response)
                assert contains(response["result"], here(step.answer)), (where, response)


def test_every_example_names_a_served_method() -> None:
    served = {m.name for m in builtin_registry().methods()}
    assert set(examples()) <= served
    assert {s.method for s in SCENARIO} <= served
