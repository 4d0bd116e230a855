#!/usr/bin/env python3
"""A tiny grpcurl: calls a gRPC method knowing nothing but what server reflection says.

    grpc_reflect.py ADDR --list [--reflection v1|v1alpha]
    grpc_reflect.py ADDR SERVICE/METHOD [JSON_REQUEST] [--reflection v1|v1alpha]
                    [--max N] [--timeout SECONDS]

No .proto file and no generated code of the server's API is used: the service, method and
message descriptors all come from the server's reflection service (grpc.reflection.v1 or
grpc.reflection.v1alpha), the message classes are built from them at run time, and
responses are printed as proto3 JSON with the proto's own (snake_case) field names and
with zero values included. Unary responses are printed as one JSON line; a server stream
is printed as one JSON line per message (`--max N` stops after N of them). 64-bit
integers are strings, as the proto3 JSON mapping (and grpcurl) has them.

Any failure exits non-zero with a message on stderr: 2 for usage errors, 1 otherwise.
"""

import argparse
import json
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"grpc_reflect: missing Python package ({e}); "
        "install tests/py/requirements.txt (pip install -r tests/py/requirements.txt)\n"
    )
    sys.exit(2)


class Failure(Exception):
    """A failure reported to the user as one line on stderr."""


V1ALPHA_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def _v1_messages():
    """The grpc.reflection.v1 request and response classes.

    grpcio-reflection ships the v1alpha client only. grpc.reflection.v1 is the same
    protocol (v1 was v1alpha promoted unchanged), so its descriptors are derived from the
    shipped v1alpha ones by renaming the package, and built into a private pool. The
    messages sent are then genuinely `grpc.reflection.v1.*` messages, on the v1 method.
    """
    try:  # Should a later grpcio-reflection ship v1, use it.
        from grpc_reflection.v1 import reflection_pb2 as v1_pb2  # type: ignore

        return v1_pb2.ServerReflectionRequest, v1_pb2.ServerReflectionResponse
    except ImportError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = "grpc.reflection.v1alpha", "grpc.reflection.v1"
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = new
    file.options.Clear()

    def rename(messages):
        for m in messages:
            for f in m.field:
                if f.type_name.startswith(f".{old}."):
                    f.type_name = f".{new}." + f.type_name[len(old) + 2 :]
            rename(m.nested_type)

    rename(file.message_type)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old}.", f".{new}.")
            method.output_type = method.output_type.replace(f".{old}.", f".{new}.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{new}.ServerReflectionRequest")
    )
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{new}.ServerReflectionResponse")
    )
    return request, response


class _V1Stub:
    """A stub for grpc.reflection.v1.ServerReflection that takes the database's requests."""

    def __init__(self, channel, timeout):
        request_cls, response_cls = _v1_messages()
        self._request_cls = request_cls
        self._call = channel.stream_stream(
            V1_METHOD,
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        self._timeout = timeout

    def ServerReflectionInfo(self, requests):  # noqa: N802 - the gRPC method's name
        # The database builds v1alpha requests; re-encode each as the v1 message.
        converted = (self._request_cls.FromString(r.SerializeToString()) for r in requests)
        return self._call(converted, timeout=self._timeout)


class _V1alphaStub:
    def __init__(self, channel, timeout):
        self._call = channel.stream_stream(
            V1ALPHA_METHOD,
            request_serializer=v1alpha_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=v1alpha_pb2.ServerReflectionResponse.FromString,
        )
        self._timeout = timeout

    def ServerReflectionInfo(self, requests):  # noqa: N802
        return self._call(requests, timeout=self._timeout)


class ReflectionDatabase(ProtoReflectionDescriptorDatabase):
    """grpcio-reflection's descriptor database, talking reflection v1 or v1alpha.

    Two adjustments to the shipped (v1alpha-only) class, which relies on the private
    `_stub` and `_do_one_request` of the pinned grpcio-reflection:
    - the stub: same protocol either way, only the method path and message package
      differ; our stubs also put a deadline on every reflection request;
    - a symbol or file the server does not know may come back as an ErrorResponse (as
      the shipped class expects) or as the call's NOT_FOUND status (as tonic-reflection
      answers); both mean KeyError to a DescriptorDatabase.
    """

    def __init__(self, channel, version, timeout):
        super().__init__(channel)
        self._stub = (_V1Stub if version == "v1" else _V1alphaStub)(channel, timeout)

    def _do_one_request(self, request, key):
        try:
            return super()._do_one_request(request, key)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise KeyError(key) from None
            raise


def rpc_error(what, e):
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    name = code.name if code is not None else "UNKNOWN"
    return Failure(f"{what}: {name}: {details}")


def list_services(db):
    try:
        return list(db.get_services())
    except grpc.RpcError as e:
        raise rpc_error("reflection list_services", e) from None


def find_method(db, pool, full_method):
    service_name, sep, method_name = full_method.rpartition("/")
    if not sep:
        service_name, sep, method_name = full_method.rpartition(".")
    if not sep or not service_name or not method_name:
        raise Failure(f"method `{full_method}` is not SERVICE/METHOD (e.g. pkg.Service/Method)")
    service_name = service_name.lstrip("/")
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        services = list_services(db)
        raise Failure(
            f"service `{service_name}` is not served (reflection lists: {', '.join(services)})"
        ) from None
    except grpc.RpcError as e:
        raise rpc_error(f"reflection lookup of `{service_name}`", e) from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(m.name for m in service.methods)
        raise Failure(f"service `{service_name}` has no method `{method_name}` (it has: {known})")
    return service, method


def to_json(message, pool):
    return json.dumps(
        json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
            descriptor_pool=pool,
        ),
        separators=(",", ":"),
        sort_keys=False,
    )


def call(channel, db, full_method, request_json, max_messages, timeout):
    pool = descriptor_pool.DescriptorPool(db)
    service, method = find_method(db, pool, full_method)
    if method.client_streaming:
        raise Failure(f"`{full_method}` is client-streaming; only unary and server-streaming calls are supported")
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    request = request_cls()
    try:
        json_format.Parse(request_json or "{}", request, descriptor_pool=pool)
    except json_format.ParseError as e:
        raise Failure(f"request is not a valid {method.input_type.full_name} in JSON: {e}") from None
    path = f"/{service.full_name}/{method.name}"
    kwargs = dict(
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    out = sys.stdout
    if not method.server_streaming:
        if timeout is None:
            timeout = 30.0
        try:
            response = channel.unary_unary(path, **kwargs)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise rpc_error(full_method, e) from None
        out.write(to_json(response, pool) + "\n")
        out.flush()
        return
    stream = channel.unary_stream(path, **kwargs)(request, timeout=timeout)
    seen = 0
    try:
        for response in stream:
            out.write(to_json(response, pool) + "\n")
            out.flush()
            seen += 1
            if max_messages is not None and seen >= max_messages:
                stream.cancel()
                break
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED and max_messages is not None and seen >= max_messages:
            return
        raise rpc_error(f"{full_method} (after {seen} messages)", e) from None


def main(argv):
    parser = argparse.ArgumentParser(
        prog="grpc_reflect.py",
        description="Call a gRPC method using only server reflection (a tiny grpcurl).",
    )
    parser.add_argument("addr", help="HOST:PORT of a plaintext (h2c) gRPC server")
    parser.add_argument("method", nargs="?", help="SERVICE/METHOD, e.g. alldocs.v1.Coordinator/GetProgress")
    parser.add_argument("request", nargs="?", default="{}", help="the request as proto3 JSON (default {})")
    parser.add_argument("--reflection", choices=["v1", "v1alpha"], default="v1")
    parser.add_argument("--list", action="store_true", help="list the services reflection reports")
    parser.add_argument("--max", type=int, default=None, metavar="N", help="stop a server stream after N messages")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="deadline of the call (default: 30 for unary calls, none for streams)",
    )
    args = parser.parse_args(argv)
    if args.list == (args.method is not None):
        parser.error("give exactly one of METHOD or --list")
    if args.max is not None and args.max < 1:
        parser.error("--max must be at least 1")
    addr = args.addr
    for scheme in ("http://", "dns:///"):
        if addr.startswith(scheme):
            addr = addr[len(scheme):]
    if addr.startswith("https://"):
        parser.error("TLS is not supported; give HOST:PORT of a plaintext server")

    reflection_timeout = 30.0
    with grpc.insecure_channel(addr) as channel:
        db = ReflectionDatabase(channel, args.reflection, reflection_timeout)
        if args.list:
            for name in list_services(db):
                print(name)
            return 0
        timeout = args.timeout
        call(channel, db, args.method, args.request, args.max, timeout)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Failure as e:
        sys.stderr.write(f"grpc_reflect: {e}\n")
        sys.exit(1)
    except grpc.RpcError as e:
        sys.stderr.write(f"grpc_reflect: {rpc_error('rpc', e)}\n")
        sys.exit(1)
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        sys.stderr.write(f"grpc_reflect: {type(e).__name__}: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
