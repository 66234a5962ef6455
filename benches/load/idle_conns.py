#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to HOST:PORT, send one request on
each (so every connection is fully set up through the proxy), then hold them
idle and print 'READY <ok>' until stdin closes. Bounded: gives up after
--deadline seconds."""
import argparse, asyncio, resource, sys, time

async def open_one(host, port, sem, stats):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            stats["ok"] += head.startswith(b"HTTP/1.1 200")
            return writer
        except Exception as e:  # noqa: BLE001 - report and keep going
            stats["err"] += 1
            stats["last"] = repr(e)
            return None

async def main():
    p = argparse.ArgumentParser()
    p.add_argument("host"); p.add_argument("port", type=int); p.add_argument("n", type=int)
    p.add_argument("--parallel", type=int, default=50)
    p.add_argument("--deadline", type=float, default=120)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.n + 1024)), hard))
    stats = {"ok": 0, "err": 0, "last": ""}
    sem = asyncio.Semaphore(a.parallel)
    start = time.time()
    writers = await asyncio.wait_for(
        asyncio.gather(*(open_one(a.host, a.port, sem, stats) for _ in range(a.n))), a.deadline)
    print(f"READY {stats['ok']} errors={stats['err']} {stats['last']} in {time.time()-start:.1f}s", flush=True)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), a.deadline)
    for w in writers:
        if w:
            w.close()

asyncio.run(main())
