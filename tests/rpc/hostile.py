"""Hostile JSON-RPC requests for fuzzing the transports, each with the answer it must get.

A generated :class:`Case` is the bytes a client sends and what SPDK's rules say comes back:
either one response whose id is the sent id's exact text, or a -32700 parse error with
``"id": null`` after which the connection closes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hypothesis import strategies as st

from pybdev.rpc.framing import MAX_REQUEST_BYTES

PARSE_ERROR = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}\n'
_RESPONSE_ID = re.compile(rb'^\{"jsonrpc":"2\.0","id":(.*?),"(?:result|error)":')


@dataclass
class Case:
    body: bytes
    # The id's text in the response, or None when the answer is a parse error.
    answer_id: bytes | None
    kind: str

    def check_response(self, data: bytes) -> None:
        """``data`` is everything the server sent before closing (or the HTTP body)."""
        if self.answer_id is None:
            assert data == PARSE_ERROR, (self.kind, data[:300])
            return
        assert data.endswith(b"\n") and data.count(b"\n") == 1, (self.kind, data[:300])
        m = _RESPONSE_ID.match(data)
        assert m is not None, (self.kind, data[:300])
        assert m.group(1) == self.answer_id, (self.kind, m.group(1)[:80], self.answer_id[:80])
        json.loads(data, parse_float=str, parse_int=str)  # the answer is JSON


BAD_NUMBERS = ["NaN", "Infinity", "-Infinity"]
BIG_NUMBERS = ["1e400", "-1e400", "2E+308", "9" * 4301, "-" + "8" * 6000, "1" * 4300]

ids = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(BIG_NUMBERS),
    st.text("abcXYZ019_-", min_size=0, max_size=8).map(json.dumps),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1E5", "1.50", "-0.0", "2e-3", "0.1e+2"]),
)
param_values = st.one_of(
    st.sampled_from(BIG_NUMBERS),
    st.integers().map(str),
    st.text(max_size=10).map(json.dumps),
    st.sampled_from(["true", "null", "[]", "{}", '"a\\u0000b"', '"\\\\u0000"']),
)
methods = st.sampled_from(["spdk_get_version", "bdev_get_bdevs", "nope", "rpc_get_methods"])


@st.composite
def requests(draw: st.DrawFn) -> Case:
    """One request of a kind chosen at random, and its required answer."""
    kind = draw(st.sampled_from(["valid", "valid", "non_finite", "truncated", "garbage",
                                 "oversize"]))
    req_id = draw(ids)
    method = draw(methods)
    params = ""
    if draw(st.booleans()):
        params = f',"params":{{"name":{draw(param_values)}}}'
    doc = f'{{"jsonrpc":"2.0","method":"{method}","id":{req_id}{params}}}'
    if kind == "valid":
        return Case(doc.encode(), req_id.encode(), kind)
    if kind == "non_finite":
        bad = draw(st.sampled_from(BAD_NUMBERS))
        where = draw(st.sampled_from(["id", "param"]))
        doc = (f'{{"jsonrpc":"2.0","method":"{method}","id":{bad}}}' if where == "id" else
               f'{{"jsonrpc":"2.0","method":"{method}","id":1,"params":{{"x":[{bad}]}}}}')
        return Case(doc.encode(), None, kind)
    if kind == "truncated":
        cut = draw(st.integers(1, len(doc) - 1))
        return Case(doc[:cut].encode(), None, kind)
    if kind == "garbage":
        junk = draw(st.sampled_from(["{bad json", "{'a':1}", "[1,]", '{"a" 1', "\x01", "}",
                                     '{"s":"\\x"}', "tru e"]))
        return Case(junk.encode(), None, kind)
    # A complete request beyond 256 KiB, padded inside a parameter.
    pad = "x" * (MAX_REQUEST_BYTES + draw(st.integers(0, 5000)))
    doc = f'{{"jsonrpc":"2.0","method":"{method}","id":{req_id},"params":{{"name":"{pad}"}}}}'
    return Case(doc.encode(), None, kind)
