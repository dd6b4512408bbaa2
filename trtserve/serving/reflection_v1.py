"""Server reflection as ``grpc.reflection.v1.ServerReflection`` beside ``v1alpha`` (grpcio-reflection has only v1alpha).

Newer clients (grpcurl 1.9+, Postman, grpcui, Go's and Java's reflection clients) ask for v1 first. The two protos
are the same messages under another package name, so their wire bytes are identical: the v1 method is served by
grpcio-reflection's own servicer through the v1alpha message classes, and v1's file descriptor (v1alpha's, renamed)
is added to the default pool so that reflection can describe itself under both names.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_package = proto.package  # grpc.reflection.v1alpha
    proto.name, proto.package = _FILE, "grpc.reflection.v1"
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old_package, proto.package)
            method.output_type = method.output_type.replace(old_package, proto.package)
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(old_package, proto.package)
    pool.Add(proto)


def enable_server_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serve reflection v1alpha and v1 on ``server`` for ``service_names`` (both reflection services are added)."""
    names = (*service_names, reflection.SERVICE_NAME, SERVICE_NAME)
    names = tuple(dict.fromkeys(names))
    _register_v1_descriptor()
    reflection.enable_server_reflection(names, server)
    servicer: Any = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          {"ServerReflectionInfo": handler}),))
