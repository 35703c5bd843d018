"""The server's transport sends a response's head with its body in one write."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from modelport.server.protocol import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """What a socket transport was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def write(self, data: bytes) -> None:
        self.calls.append(bytes(data))

    def close(self) -> None:
        self.calls.append("close")

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def wrapped() -> tuple[HeadWithBody, Recorder]:
    sink = Recorder()
    return HeadWithBody(cast(asyncio.Transport, sink)), sink


async def test_a_head_and_its_body_go_out_in_one_write() -> None:
    transport, sink = wrapped()
    transport.write(HEAD)
    transport.write(b"ok")
    assert sink.calls == [HEAD + b"ok"]
    transport.write(HEAD)  # the next response on the connection: the same
    transport.write(b"no")
    assert sink.calls == [HEAD + b"ok", HEAD + b"no"]


async def test_a_head_whose_body_comes_later_goes_out_at_the_end_of_the_turn() -> None:
    transport, sink = wrapped()
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert sink.calls == []
    await asyncio.sleep(0)  # one turn of the loop
    assert sink.calls == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    transport.write(b"2\r\nok\r\n")  # a streamed chunk is not held back
    assert sink.calls[-1] == b"2\r\nok\r\n"


async def test_closing_sends_a_held_head_first() -> None:
    transport, sink = wrapped()
    transport.write(HEAD)
    transport.close()
    await asyncio.sleep(0)
    assert sink.calls == [HEAD, "close"]


async def test_other_writes_and_the_rest_of_the_transport_pass_through() -> None:
    transport, sink = wrapped()
    full = HEAD + b"ok"  # a whole answer in one write (admission's 503s)
    transport.write(full)
    assert sink.calls == [full]
    assert transport.get_extra_info("peername") == "info peername"
