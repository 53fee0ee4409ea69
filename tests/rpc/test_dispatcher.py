"""Dispatcher rules (SPDK's lib/jsonrpc and lib/rpc) on a private registry, without sockets."""

from __future__ import annotations

import asyncio
import errno
import json
from typing import Any

import pytest

from pybdev.errors import OperationError
from pybdev.rpc import audit
from pybdev.rpc.dispatcher import Dispatcher, ParseError, encode
from pybdev.rpc.errors import RpcError
from pybdev.rpc.registry import BOTH, IGNORE_PARAMS, Registry, RpcTable, State
from pybdev.rpc.types import U32, Params, Str


class Ctx:
    state = State.RUNTIME


SEEN: list[str | None] = []


class EchoParams(Params):
    name: Str
    count: U32 = 1
    flag: bool = False


def make() -> tuple[Dispatcher, Ctx]:
    table = RpcTable()

    @table.method("echo", EchoParams, states=BOTH,
                decode_error=(-32603, "spdk_json_decode_object failed"))
    def echo(ctx: Ctx, p: EchoParams) -> dict[str, Any]:
        return {"name": p.name, "count": p.count, "flag": p.flag}

    @table.method("noparams", decode_error=(-32602, "noparams requires none"))
    def noparams(ctx: Ctx) -> bool:
        return True

    @table.method("whatever", IGNORE_PARAMS)
    def whatever(ctx: Ctx) -> str:
        return "ok"

    @table.method("startup_only", states=State.STARTUP)
    def startup_only(ctx: Ctx) -> bool:
        return True

    @table.method("slow", states=BOTH)
    async def slow(ctx: Ctx) -> str:
        await asyncio.sleep(0.01)
        return "slow"

    @table.method("fail", states=BOTH)
    def fail(ctx: Ctx) -> None:
        raise RpcError(-19, "No such device")

    @table.method("slow_fail", states=BOTH)
    async def slow_fail(ctx: Ctx) -> None:
        await asyncio.sleep(0)
        raise OperationError(errno.ENODEV, "gone while waiting")

    @table.method("who", states=BOTH)
    def who(ctx: Ctx) -> str | None:
        # What a callback scheduled by the call sees when it runs, after the call.
        asyncio.get_running_loop().call_soon(lambda: SEEN.append(audit.current_method()))
        return audit.current_method()

    @table.method("slow_who", states=BOTH)
    async def slow_who(ctx: Ctx) -> str | None:
        await asyncio.sleep(0)
        return audit.current_method()

    @table.method("crash", states=BOTH)
    def crash(ctx: Ctx) -> None:
        raise ValueError("secret internal detail")

    ctx = Ctx()
    reg = Registry()
    reg.add_table(table, ctx, "framework")
    return Dispatcher(ctx, reg), ctx


async def answer(raw: bytes | str, d: Dispatcher | None = None) -> Any:
    d = d or make()[0]
    out = await d.handle_raw(raw.encode() if isinstance(raw, str) else raw)
    if out is None:
        return None
    assert out.endswith(b"\n") and not out.endswith(b"\n\n")
    return json.loads(out)


async def test_success_format_is_exact() -> None:
    d, _ = make()
    out = await d.handle_raw(b'{"jsonrpc":"2.0","method":"echo","id":7,"params":{"name":"a/b"}}')
    assert out == b'{"jsonrpc":"2.0","id":7,"result":{"name":"a/b","count":1,"flag":false}}\n'


@pytest.mark.parametrize("req", [
    '{"method":"echo","id":1,"extra":1}',
    '{"jsonrpc":"1.0","method":"echo","id":1}',
    '{"method":null,"id":1}',
    '{"method":1,"id":1}',
    '{"method":"echo","id":1,"params":"x"}',
    '{"method":"echo","id":[1]}',
    '{"method":"echo","id":true}',
    '{"method":"echo","method":"echo","id":1}',
    "1",
    '"str"',
    "[]",
])
async def test_invalid_requests(req: str) -> None:
    resp = await answer(req)
    assert resp["error"] == {"code": -32600, "message": "Invalid request"}


async def test_jsonrpc_member_is_optional() -> None:
    resp = await answer('{"method":"echo","id":1,"params":{"name":"x"}}')
    assert resp["result"]["name"] == "x"


async def test_unknown_method_and_case_sensitivity() -> None:
    assert (await answer('{"method":"ECHO","id":1}'))["error"]["code"] == -32601


async def test_allowlist_hides_methods() -> None:
    d, _ = make()
    d.allowed = frozenset({"noparams"})
    assert (await answer('{"method":"echo","id":1,"params":{"name":"x"}}', d))["error"][
        "code"] == -32601


async def test_state_messages() -> None:
    d, ctx = make()
    resp = await answer('{"method":"startup_only","id":1}', d)
    assert resp["error"]["code"] == -1
    assert resp["error"]["message"].startswith("Method may only be called before framework")
    ctx.state = State.STARTUP
    resp = await answer('{"method":"noparams","id":1}', d)
    assert resp["error"] == {"code": -1, "message": "Method may only be called after framework "
                             "is initialized using framework_start_init RPC."}


@pytest.mark.parametrize(("params", "detail"), [
    ('{"count":1}', "name: required parameter missing"),
    ('{"name":"a","bogus":1}', "bogus: unknown parameter"),
    ('{"name":"a","count":"1"}', "count: input should be a valid integer"),
    ('{"name":"a","count":-1}', "count: input should be greater than or equal to 0"),
    ('{"name":"a","count":1.5}', "count"),
    ('{"name":"a","flag":1}', "flag: input should be a valid boolean"),
    ('{"name":"a","name":"b"}', "duplicate key"),
    ('["a"]', "expected a JSON object"),
])
async def test_params_errors_name_field_and_reason(params: str, detail: str) -> None:
    resp = await answer(f'{{"method":"echo","id":1,"params":{params}}}')
    assert resp["error"]["code"] == -32603
    assert resp["error"]["message"].startswith("spdk_json_decode_object failed: ")
    assert detail in resp["error"]["message"]


async def test_integral_floats_are_integers() -> None:
    resp = await answer('{"method":"echo","id":1,"params":{"name":"a","count":1e3}}')
    assert resp["result"]["count"] == 1000


async def test_params_null_means_none() -> None:
    assert (await answer('{"method":"noparams","id":1,"params":null}'))["result"] is True
    resp = await answer('{"method":"noparams","id":1,"params":{}}')
    assert resp["error"] == {"code": -32602, "message": "noparams requires none"}
    assert (await answer('{"method":"whatever","id":1,"params":{"x":1}}'))["result"] == "ok"


async def test_notifications() -> None:
    assert await answer('{"method":"noparams"}') is None
    assert await answer('{"method":"noparams","id":null}') is None
    resp = await answer('{"method":"nope"}')
    assert resp == {"jsonrpc": "2.0", "id": None,
                    "error": {"code": -32601, "message": "Method not found"}}


async def test_batch_mixing_good_bad_and_notifications() -> None:
    d, _ = make()
    out = await d.handle_raw(
        b'[{"method":"noparams","id":1},1,{"method":"noparams"},{"method":"fail","id":"x"}]')
    assert out is not None and out.endswith(b"]\n")
    assert json.loads(out) == [
        {"jsonrpc": "2.0", "id": 1, "result": True},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid request"}},
        {"jsonrpc": "2.0", "id": "x", "error": {"code": -19, "message": "No such device"}},
    ]


async def test_batch_of_notifications_sends_nothing() -> None:
    assert await answer('[{"method":"noparams"},{"method":"noparams"}]') is None


async def test_batch_of_scalars() -> None:
    resp = await answer("[1,2,3]")
    assert [r["error"]["code"] for r in resp] == [-32600] * 3


async def test_internal_errors_do_not_leak_details() -> None:
    resp = await answer('{"method":"crash","id":1}')
    assert resp["error"] == {"code": -32603, "message": "Internal error"}


@pytest.mark.parametrize(
    "raw", [b'{"a":', b"\xff\xfe{}", b"{'a':1}", b'{"id":NaN}', b'{"id":-Infinity}']
)
async def test_parse_errors(raw: bytes) -> None:
    with pytest.raises(ParseError):
        await make()[0].handle_raw(raw)


def test_encode_escapes_like_spdk() -> None:
    assert encode({"s": "a/b\x7f\u00e9\U0001f600"}) == '{"s":"a/b\\u007f\\u00e9\\ud83d\\ude00"}'


# --- every request answered; the id as SPDK's parse_single_request reads it -----------------


@pytest.mark.parametrize("req", [
    '{"method":"echo","id":5,"extra":1}',
    '{"method":"echo","id":5,"id":6}',
    '{"jsonrpc":"1.0","method":"echo","id":5}',
    '{"jsonrpc":2.0,"method":"echo","id":5}',
    '{"id":5}',
    '{"method":null,"id":5}',
    '{"method":["echo"],"id":5}',
])
async def test_rejected_before_the_id_is_read_answers_id_null(req: str) -> None:
    resp = await answer(req)
    assert resp == {"jsonrpc": "2.0", "id": None,
                    "error": {"code": -32600, "message": "Invalid request"}}


async def test_invalid_params_member_echoes_the_id() -> None:
    # SPDK checks params after it has taken the id.
    resp = await answer('{"method":"echo","id":5,"params":"x"}')
    assert resp["id"] == 5 and resp["error"]["code"] == -32600


@pytest.mark.parametrize("raw_id", [
    "1e400", "-1e400", "1E+999", "9" * 5000, "-" + "1" * 4301, "12345678901234567890.5e300",
])
async def test_ids_python_cannot_hold_are_echoed_verbatim(raw_id: str) -> None:
    d, _ = make()
    out = await d.handle_raw(f'{{"method":"noparams","id":{raw_id}}}'.encode())
    assert out == f'{{"jsonrpc":"2.0","id":{raw_id},"result":true}}\n'.encode()
    out = await d.handle_raw(f'{{"method":"nope","id":{raw_id}}}'.encode())
    assert out is not None and out.startswith(f'{{"jsonrpc":"2.0","id":{raw_id},"error"'.encode())


@pytest.mark.parametrize("value", ["1e400", "-1e400", "7" * 4400])
async def test_numbers_python_cannot_hold_fail_param_decoding(value: str) -> None:
    resp = await answer(f'{{"method":"echo","id":1,"params":{{"name":"a","count":{value}}}}}')
    assert resp["id"] == 1
    assert resp["error"]["code"] == -32603
    assert "count" in resp["error"]["message"]
    # Anywhere else in a request, such a number is just answered.
    resp = await answer(f'{{"method":"whatever","id":1,"params":{{"x":[{value}]}}}}')
    assert resp["result"] == "ok"


async def test_escaped_nul_text_is_valid_json() -> None:
    # The text \u0000 (escaped backslash) holds no NUL at all.
    resp = await answer('{"method":"echo","id":1,"params":{"name":"a\\\\u0000"}}')
    assert resp["result"]["name"] == "a\\u0000"


async def test_nul_in_a_string_parameter_fails_decoding_like_spdk() -> None:
    # SPDK's parser accepts \u0000; spdk_json_strdup refuses it when a handler decodes it.
    resp = await answer('{"method":"echo","id":1,"params":{"name":"a\\u0000b"}}')
    assert resp["error"]["code"] == -32603
    assert "string contains NUL" in resp["error"]["message"]
    # A NUL in a method name is just an unknown method; in the id it is echoed.
    assert (await answer('{"method":"echo\\u0000","id":1}'))["error"]["code"] == -32601
    assert (await answer('{"method":"noparams","id":"x\\u0000"}'))["id"] == "x\x00"


async def test_a_result_that_is_not_json_is_an_internal_error() -> None:
    table = RpcTable()

    @table.method("nan", states=BOTH)
    def nan(ctx: Ctx) -> float:
        return float("nan")

    ctx = Ctx()
    reg = Registry()
    reg.add_table(table, ctx, "framework")
    resp = await answer('{"method":"nan","id":3}', Dispatcher(ctx, reg))
    assert resp == {"jsonrpc": "2.0", "id": 3,
                    "error": {"code": -32603, "message": "Internal error"}}


@pytest.mark.parametrize("raw_id", ["1E5", "1.50", "-0.0", "2e-3", "1.0"])
async def test_fractional_ids_are_echoed_as_written(raw_id: str) -> None:
    out = await make()[0].handle_raw(f'{{"method":"noparams","id":{raw_id}}}'.encode())
    assert out == f'{{"jsonrpc":"2.0","id":{raw_id},"result":true}}\n'.encode()


async def test_a_handler_that_returns_at_once_is_answered_without_waiting() -> None:
    d, _ = make()
    out = d.answer_now(b'{"jsonrpc":"2.0","method":"echo","id":1,"params":{"name":"x"}}')
    assert out == b'{"jsonrpc":"2.0","id":1,"result":{"name":"x","count":1,"flag":false}}\n'
    assert d.calls == {("echo", 0): 1}


async def test_a_handler_that_awaits_is_finished_by_the_coroutine_and_counted_once() -> None:
    d, _ = make()
    pending = d.answer_now(b'{"jsonrpc":"2.0","method":"slow","id":2}')
    assert asyncio.iscoroutine(pending)
    assert d.calls == {}  # not answered yet
    assert await pending == b'{"jsonrpc":"2.0","id":2,"result":"slow"}\n'
    assert d.calls == {("slow", 0): 1}


async def test_an_error_raised_after_awaiting_is_answered_as_before() -> None:
    d, _ = make()
    resp = await answer('{"jsonrpc":"2.0","method":"slow_fail","id":3}', d)
    assert resp["error"] == {"code": -errno.ENODEV,
                             "message": "No such device: gone while waiting"}
    assert d.calls == {("slow_fail", -errno.ENODEV): 1}


async def test_the_call_is_current_only_while_it_runs() -> None:
    """Answered inline (no task of its own), the call is current inside its handler; a
    callback it scheduled runs later and is not the call (a bdev it removes then would
    be a hot-remove). A handler that awaits is the call in its own task."""
    d, _ = make()
    SEEN.clear()
    out = d.answer_now(b'{"jsonrpc":"2.0","method":"who","id":4}')
    assert out == b'{"jsonrpc":"2.0","id":4,"result":"who"}\n'
    await asyncio.sleep(0)
    assert SEEN == [None]
    task = asyncio.get_running_loop().create_task(
        d.handle_raw(b'{"jsonrpc":"2.0","method":"slow_who","id":5}'))
    assert await task == b'{"jsonrpc":"2.0","id":5,"result":"slow_who"}\n'
    assert audit.current_method() is None
