#!/usr/bin/env python3
"""Open N keep-alive connections to HOST:PORT, send one request on each (so
every connection is fully set up through the proxy), then hold them idle and
print 'READY <ok> errors=<n> ...' until stdin closes, then 'HELD <still open>'. Bounded: gives up after
--deadline seconds.

Two kinds of connection:
  default   plaintext HTTP/1.1 keep-alive
  --mesh    a mesh client: TLS with a client certificate (--cert/--key,
            server verified against --ca), ALPN h2 + strait.mesh, one
            HTTP/2 GET on stream 1. While held, each connection answers the
            server's PINGs (and SETTINGS) so keep-alive does not close it.
"""
import argparse, asyncio, resource, ssl, struct, sys, time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# HPACK, no Huffman: :method GET, :scheme http, :path / (static indexes 2, 6,
# 4), :authority "bench" (literal, name index 1, not indexed).
REQUEST_BLOCK = bytes([0x82, 0x86, 0x84, 0x01, 5]) + b"bench"


async def http1(reader, writer):
    writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


async def h2_frames(reader, writer, answered):
    """Read frames for the connection's life: answer SETTINGS and PING,
    resolve `answered` with the response status once stream 1 ends."""
    status = None
    try:
        while True:
            head = await reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = await reader.readexactly(length) if length else b""
            if kind == SETTINGS and not flags & ACK:
                writer.write(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                writer.write(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY and not answered.done():
                answered.set_exception(ConnectionError(f"GOAWAY {payload[4:8].hex()}"))
            elif stream == 1 and kind in (HEADERS, DATA):
                if kind == HEADERS and status is None:
                    # :status 200 is static index 8 (0x88).
                    status = payload[:1] == b"\x88"
                if flags & END_STREAM and not answered.done():
                    answered.set_result(bool(status))
    except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
        if not answered.done():
            answered.set_exception(ConnectionError(f"closed: {e!r}"))


async def mesh_h2(reader, writer, tasks):
    writer.write(PREFACE + frame(SETTINGS, 0, 0)
                 + frame(HEADERS, END_STREAM | END_HEADERS, 1, REQUEST_BLOCK))
    await writer.drain()
    answered = asyncio.get_running_loop().create_future()
    tasks.append(asyncio.create_task(h2_frames(reader, writer, answered)))
    return await answered


async def open_one(a, tls, sem, stats, tasks):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(
                a.host, a.port, ssl=tls, server_hostname=a.server_name if tls else None)
            ok = await (mesh_h2(reader, writer, tasks) if tls else http1(reader, writer))
            stats["ok"] += ok
            return reader, writer
        except Exception as e:  # noqa: BLE001 - report and keep going
            stats["err"] += 1
            stats["last"] = repr(e)
            return None


def mesh_context(a):
    tls = ssl.create_default_context(cafile=a.ca)
    tls.load_cert_chain(a.cert, a.key)
    tls.set_alpn_protocols(["h2", "strait.mesh"])
    return tls


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("host"); p.add_argument("port", type=int); p.add_argument("n", type=int)
    p.add_argument("--parallel", type=int, default=50)
    p.add_argument("--deadline", type=float, default=120)
    p.add_argument("--mesh", action="store_true")
    p.add_argument("--cert"); p.add_argument("--key"); p.add_argument("--ca")
    p.add_argument("--server-name", default="server.bench")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.n + 1024)), hard))
    tls = mesh_context(a) if a.mesh else None
    stats = {"ok": 0, "err": 0, "last": ""}
    sem = asyncio.Semaphore(a.parallel)
    tasks = []
    start = time.time()
    conns = await asyncio.wait_for(
        asyncio.gather(*(open_one(a, tls, sem, stats, tasks) for _ in range(a.n))), a.deadline)
    print(f"READY {stats['ok']} errors={stats['err']} {stats['last']} in {time.time()-start:.1f}s", flush=True)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), a.deadline)
    # Still open after the hold: the proxy closed none of them meanwhile.
    # (the transport keeps reading while held, so a close shows as EOF).
    held = sum(1 for c in conns if c and not c[0].at_eof())
    print(f"HELD {held}", flush=True)
    for c in conns:
        if c:
            c[1].close()
    for t in tasks:
        t.cancel()

asyncio.run(main())
