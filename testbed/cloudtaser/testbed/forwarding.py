"""The local node's stand-in for kube-proxy: TCP forwarding from service addresses to loopback.

Why: the stack's API server, OpenBao and registry listen on 127.0.0.1 only, and a pod's
127.0.0.1 is its own. Without kube-proxy (it would program the shared machine's netfilter),
the node gives the stack's bridge the ClusterIPs of the few Services that stand for host
processes (``kubernetes`` 10.96.0.1:443, ``openbao`` ...), pods route the service range to
the bridge, and this process accepts on those addresses and splices each connection to the
loopback listener behind it. TLS passes through untouched (the certificates name the
service addresses). Nothing listens outside this machine: the addresses exist only on the
stack's bridge.

    python -m cloudtaser.testbed.forwarding LISTEN_IP:PORT=TARGET_IP:PORT ...
"""

from __future__ import annotations

import asyncio
import signal
import sys

BUFFER = 64 * 1024


def parse_rule(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """``10.96.0.1:443=127.0.0.1:16443`` -> ((listen host, port), (target host, port))."""
    listen, sep, target = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected LISTEN_IP:PORT=TARGET_IP:PORT")

    def address(part: str) -> tuple[str, int]:
        host, colon, port = part.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: {part!r} is not IP:PORT")
        return host, int(port)

    return address(listen), address(target)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _splice(
    target: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()  # the pod sees a reset, as with a Service without endpoints
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        up_writer.close()
        writer.close()


async def serve(rules: list[tuple[tuple[str, int], tuple[str, int]]]) -> None:
    servers = []
    for listen, target in rules:

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, _target: tuple[str, int] = target
        ) -> None:
            await _splice(_target, r, w)

        servers.append(await asyncio.start_server(handle, *listen, reuse_address=True))
        print(f"forwarding {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        rules = [parse_rule(a) for a in args]
    except ValueError as e:
        print(f"cloudtaser-forwarding: {e}", file=sys.stderr)
        return 2
    if not rules:
        print(
            "usage: python -m cloudtaser.testbed.forwarding LISTEN_IP:PORT=TARGET_IP:PORT ...",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve(rules))
    except OSError as e:
        print(f"cloudtaser-forwarding: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
