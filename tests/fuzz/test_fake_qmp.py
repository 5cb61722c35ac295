"""A fake QMP peer that misbehaves: truncated JSON, unknown events, wrong ids, wrong
shapes, garbage. Each call ends in a result or in one QmpError (one line) and never in
another exception: the agent turns a QmpError into an answer (status ``unknown``, a
refused operation), never into stopping or killing the VM."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vmcluster.errors import QemuGone, QemuRefused, QmpError
from vmcluster.substrate.qemu.qmp import Qmp

GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10},
                                "package": "fake"}, "capabilities": []}}
EVENT = {"event": "SOMETHING_NEW", "data": {"x": [1, {"y": None}]},
         "timestamp": {"seconds": 1, "microseconds": 2}}

# What the peer writes back for the command under test, given its request (None: close).
Reply = Callable[[dict[str, Any]], list[bytes]]


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\r\n"


SCRIPTS: dict[str, tuple[Reply, type[Exception] | None, str | None]] = {
    "well-formed": (lambda r: [line({"return": {"status": "running", "running": True},
                                     "id": r.get("id")})], None, "running"),
    "unknown event first": (lambda r: [line(EVENT), line({"return": {"status": "paused",
                                                                     "running": False},
                                                            "id": r.get("id")})],
                            None, "paused"),
    "truncated JSON, then gone": (lambda r: [b'{"return": {"stat'], QemuGone, None),
    "garbage": (lambda r: [b"hello, this is not QMP\r\n"], QemuGone, None),
    "a reply for another id": (lambda r: [line({"return": {"status": "running"},
                                                "id": "nope"})], QemuGone, None),
    "a list, not an object": (lambda r: [line({"return": [1, 2], "id": r.get("id")})],
                              QmpError, None),
    "an object without status": (lambda r: [line({"return": {"running": True},
                                                  "id": r.get("id")})], QmpError, None),
    "a refusal": (lambda r: [line({"error": {"class": "GenericError", "desc": "no"},
                                   "id": r.get("id")})], QemuRefused, None),
    "neither return nor error": (lambda r: [line({"id": r.get("id"), "what": 1})],
                                 QemuGone, None),
    "silence": (lambda r: [], QemuGone, None),
}


async def _serve(path: str, reply: Reply) -> asyncio.AbstractServer:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(line(GREETING))
        await writer.drain()
        # QMP is a stream of JSON objects, not of lines: a command need not end in "\n".
        decoder, buf = json.JSONDecoder(), ""
        while True:
            buf = buf.lstrip()
            try:
                req, end = decoder.raw_decode(buf)
            except ValueError:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                buf += chunk.decode()
                continue
            buf = buf[end:]
            if req.get("execute") == "qmp_capabilities":  # negotiation: no id
                writer.write(line({"return": {}}))
            else:
                for chunk in reply(req):
                    writer.write(chunk)
                if any(not c.endswith(b"\n") for c in reply(req)):
                    await writer.drain()
                    writer.close()
                    return
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(peer, path)


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_a_misbehaving_qmp_peer_ends_in_one_clear_error(case: str) -> None:
    reply, error, status = SCRIPTS[case]

    async def run() -> str:
        with tempfile.TemporaryDirectory(prefix="vmc-fakeqmp-") as d:
            path = str(Path(d) / "qmp.sock")
            server = await _serve(path, reply)
            qmp = Qmp(f"fake-{case}", timeout_s=1.0)
            try:
                await qmp.connect(path, timeout_s=5)
                return await qmp.query_status()
            finally:
                await qmp.close()
                server.close()
                await server.wait_closed()

    if error is None:
        assert asyncio.run(run()) == status
        return
    with pytest.raises(error) as got:
        asyncio.run(run())
    text = str(got.value)
    assert text.startswith(f"fake-{case}") and "\n" not in text, text
