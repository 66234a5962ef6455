#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace collector for the load benchmark: accepts
every TraceService/Export call, counts the bytes, answers an empty
ExportTraceServiceResponse (zero bytes on the wire). Needs grpcio:
    python3 -m venv v && v/bin/pip install grpcio && v/bin/python otlp-sink.py 127.0.0.1:4317
It prints the calls and bytes received when stopped (SIGINT/SIGTERM)."""
import signal
import sys
import threading
from concurrent import futures

import grpc

calls = 0
received = 0
lock = threading.Lock()


def export(request, _context):
    global calls, received
    with lock:
        calls += 1
        received += len(request)
    return b""


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4317"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    server.start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(1)
    print(f"otlp-sink: {calls} export calls, {received} bytes", flush=True)


if __name__ == "__main__":
    main()
