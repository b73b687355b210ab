#!/usr/bin/python3
"""The smallest auth_http endpoint nginx's mail proxy needs, for tests/bench/run.

    auth_http.py LISTEN_PORT SERVER_PORT [--max-seconds S]

Answers every request on 127.0.0.1:LISTEN_PORT with "Auth-Status: OK" and
Auth-Server 127.0.0.1, Auth-Port SERVER_PORT: every mail session goes to one backend (the
benchmark's smtp-sink). nginx opens one HTTP/1.0 connection per mail session and reads the
answer's headers only. Runs until SIGTERM or --max-seconds; a request that does not arrive
whole within 10 s is dropped.
"""

import argparse
import asyncio
import signal

MAX_REQUEST = 16384


async def serve(listen_port, server_port, max_seconds):
    answer = ("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
              "Auth-Port: %d\r\n\r\n" % server_port).encode()

    async def handle(reader, writer):
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            writer.write(answer)
            await asyncio.wait_for(writer.drain(), 10.0)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=4096,
                                        limit=MAX_REQUEST)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        try:
            await asyncio.wait_for(stop.wait(), max_seconds)
        except asyncio.TimeoutError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("listen_port", type=int)
    ap.add_argument("server_port", type=int)
    ap.add_argument("--max-seconds", type=float, default=4 * 3600.0,
                    help="exit after this long even without SIGTERM")
    args = ap.parse_args()
    asyncio.run(serve(args.listen_port, args.server_port, args.max_seconds))


if __name__ == "__main__":
    main()
