"""An independent gRPC client for vstreamd: Python grpcio with stubs generated from proto/.

Run by tests/serve_python.rs against the real daemon. It generates the vstream.v1 stubs
with grpc_tools.protoc into a temporary folder, checks the standard health service,
asks one question (reading the token stream to its end), asks about a stream that does
not exist and about one whose id is 100 KB long, and prints one JSON object on stdout for the Rust test to compare with its
own client's answer.

Usage: vstream_client.py --addr HOST:PORT --stream ID --question TEXT
                         [--max-new-tokens N] [--proto-root DIR]
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc


def generate_stubs(proto_root: str, out: str):
    """Compiles vstream/v1/vstream.proto into `out` and imports the two modules."""
    rel = os.path.join("vstream", "v1", "vstream.proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            rel,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed on {rel} with code {rc}")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("vstream.v1.vstream_pb2")
    pb2_grpc = importlib.import_module("vstream.v1.vstream_pb2_grpc")
    return pb2, pb2_grpc


def health(channel) -> dict:
    stub = health_pb2_grpc.HealthStub(channel)
    out = {}
    for service in ["", "vstream.v1.VideoStreams"]:
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        out[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    return out


def ask(stub, pb2, stream: str, question: str, max_new_tokens: int) -> dict:
    req = pb2.AskRequest(
        stream=stream,
        question=question,
        options=pb2.AskOptions(max_new_tokens=max_new_tokens),
    )
    tokens, answer = [], None
    for event in stub.Ask(req, timeout=120):
        kind = event.WhichOneof("event")
        if kind == "token":
            tokens.append({"id": event.token.id, "text": event.token.text})
        elif kind == "answer":
            answer = event.answer
    if answer is None:
        raise SystemExit("the answer stream ended without an answer event")
    return {
        "tokens": tokens,
        "text": answer.text,
        "finish": pb2.FinishReason.Name(answer.finish),
        "citations": [
            {
                "seq": c.seq,
                "stream_seconds": c.at.stream_seconds,
                "source": pb2.BlockSource.Name(c.source),
            }
            for c in answer.citations
        ],
    }


def unknown_stream_code(stub, pb2) -> str:
    try:
        for _ in stub.Ask(pb2.AskRequest(stream="no-such-stream", question="hello ?"), timeout=30):
            pass
    except grpc.RpcError as e:
        return e.code().name
    return "OK"


def huge_id(stub, pb2) -> dict:
    """GetStream with a 100 KB id: grpc-core reads the status only if its message is
    short (the daemon never echoes unbounded input)."""
    try:
        stub.GetStream(pb2.GetStreamRequest(id="x" * 100_000), timeout=30)
    except grpc.RpcError as e:
        return {"code": e.code().name, "message_bytes": len((e.details() or "").encode())}
    return {"code": "OK", "message_bytes": 0}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--max-new-tokens", type=int, default=6)
    p.add_argument("--proto-root", default=os.path.join(here, "..", "..", "proto"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as out:
        pb2, pb2_grpc = generate_stubs(os.path.abspath(args.proto_root), out)
        with grpc.insecure_channel(args.addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = pb2_grpc.VideoStreamsStub(channel)
            listed = stub.ListStreams(pb2.ListStreamsRequest(), timeout=10)
            result = {
                "grpcio": grpc.__version__,
                "health": health(channel),
                "streams": sorted(s.spec.id for s in listed.streams),
                "ask": ask(stub, pb2, args.stream, args.question, args.max_new_tokens),
                "unknown_stream": unknown_stream_code(stub, pb2),
                "huge_id": huge_id(stub, pb2),
            }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
