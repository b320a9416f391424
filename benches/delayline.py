#!/usr/bin/env python3
"""A TCP delay line for benches/slowlink.sh: every byte arrives DELAY_MS after it was sent, in
each direction, and nothing else changes (no rate cap, no reordering).

    delayline.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT DELAY_MS

Prints "port N" once it listens (PORT 0: the kernel picks). Each block read is stamped and
written out by a second task once its time has come, so the delay does not slow the stream
(testkit's fault proxy sleeps before forwarding each block instead: a latency of 40 ms caps it at
16 KiB per 40 ms, 3.2 Mbit/s, which is a rate cap, not a delay). Up to MAX_QUEUED bytes wait
per direction, like a router's buffer; past that the reading side waits.
"""
import asyncio
import socket
import sys
import time

BLOCK = 64 * 1024
MAX_QUEUED = 16 * 1024 * 1024


async def pump(reader, writer, delay):
    queue = asyncio.Queue()
    room = asyncio.Semaphore(MAX_QUEUED // BLOCK)

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.write_eof() if writer.can_write_eof() else writer.close()
                return
            writer.write(data)
            await writer.drain()
            room.release()

    out = asyncio.ensure_future(deliver())
    try:
        while True:
            await room.acquire()
            data = await reader.read(BLOCK)
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                break
        await out
    except (ConnectionError, OSError):
        out.cancel()
        writer.close()


async def main():
    (lhost, lport), (uhost, uport) = (a.rsplit(":", 1) for a in sys.argv[1:3])
    delay = float(sys.argv[3]) / 1000

    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection(uhost, int(uport))
        except OSError:
            cw.close()
            return
        for w in (cw, uw):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(cr, uw, delay), pump(ur, cw, delay), return_exceptions=True)
        cw.close()
        uw.close()

    server = await asyncio.start_server(handle, lhost, int(lport))
    print("port", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
