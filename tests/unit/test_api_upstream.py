"""Our generated protos against upstream Istio's, field by field, and on the wire.

The table (tests/unit/upstream_istio_api.py) is written from istio/ztunnel's proto/ at commit
62d826530e5ce85764e309170205b293efcbc80b (workload.proto, authorization.proto, zds.proto,
citadel.proto). Every message, field number, name, type, label, oneof, map and enum value of our
four packages must equal it. Then every message round-trips between our generated classes and
classes built from the table alone (``descriptor_pb2``, in a pool of their own, no shared .proto),
in both directions.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    empty_pb2,
    json_format,
    message_factory,
    struct_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.v1.auth import ca_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.api.istio.workload.zds import zds_pb2
from tests.unit.upstream_istio_api import ENUMS, FILES, MESSAGES, RESERVED

OURS = {
    "workload.proto": workload_pb2.DESCRIPTOR,
    "authorization.proto": authorization_pb2.DESCRIPTOR,
    "zds.proto": zds_pb2.DESCRIPTOR,
    "citadel.proto": ca_pb2.DESCRIPTOR,
}
_TYPES: dict[int, str] = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def _all_messages(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _all_messages(nested)


def _ours(full_name: str) -> Descriptor:
    return descriptor_pool.Default().FindMessageTypeByName(full_name)


def _row(field: FieldDescriptor) -> tuple[int, str, str, str, str]:
    kind = _TYPES[field.type]
    if field.message_type is not None:
        kind = field.message_type.full_name
    elif field.enum_type is not None:
        kind = field.enum_type.full_name
    synthetic = field.containing_oneof is not None and field.containing_oneof.name == f"_{field.name}"
    label = "proto3_optional" if synthetic else ("repeated" if field.is_repeated else "optional")
    oneof = "" if synthetic or field.containing_oneof is None else field.containing_oneof.name
    return (field.number, field.name, kind, label, oneof)


@pytest.mark.parametrize("file", sorted(FILES))
def test_each_file_defines_upstreams_messages(file: str) -> None:
    ours = [d.full_name for top in OURS[file].message_types_by_name.values() for d in _all_messages(top)]
    assert sorted(ours) == sorted(FILES[file])


@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_fields_equal_upstreams(message: str) -> None:
    ours = sorted(_row(f) for f in _ours(message).fields)
    assert ours == sorted(MESSAGES[message])


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values_equal_upstreams(enum: str) -> None:
    ours: EnumDescriptor = descriptor_pool.Default().FindEnumTypeByName(enum)
    assert [(v.name, v.number) for v in ours.values] == ENUMS[enum]


@pytest.mark.parametrize("message", sorted(RESERVED))
def test_reserved_numbers_and_names_equal_upstreams(message: str) -> None:
    proto = descriptor_pb2.DescriptorProto()
    _ours(message).CopyToProto(proto)
    names, numbers = RESERVED[message]
    assert tuple(proto.reserved_name) == names
    assert tuple(r.start for r in proto.reserved_range) == numbers


# --- an independent pool built from the table alone ---

_WELL_KNOWN = (any_pb2, empty_pb2, struct_pb2, wrappers_pb2)


def _independent_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in _WELL_KNOWN:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    pending = sorted({name.rsplit(".", 1)[0] for name in [*MESSAGES, *ENUMS] if _is_top_level(name)})
    added: set[str] = set()
    while pending:  # a package after the packages it uses
        package = next(p for p in pending if set(_dependencies(p)) <= added)
        pool.Add(_file_for(package))
        added.add(package)
        pending.remove(package)
    return pool


def _is_top_level(name: str) -> bool:
    """Top-level names are those whose parent is not itself a message."""
    return name.rsplit(".", 1)[0] not in MESSAGES


def _file_for(package: str) -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name=f"upstream/{package}.proto", package=package, syntax="proto3"
    )
    file.dependency.extend(m.DESCRIPTOR.name for m in _WELL_KNOWN)
    file.dependency.extend(f"upstream/{p}.proto" for p in _dependencies(package))
    for name in sorted(MESSAGES):
        if name.rsplit(".", 1)[0] == package:
            file.message_type.append(_message(name))
    for name in sorted(ENUMS):
        if name.rsplit(".", 1)[0] == package:
            file.enum_type.append(_enum(name))
    return file


def _dependencies(package: str) -> list[str]:
    used = {
        kind.rsplit(".", 1)[0]
        for name, rows in MESSAGES.items()
        if name.startswith(package + ".")
        for _, _, kind, _, _ in rows
        if kind.startswith("istio.")
    }
    return sorted(p for p in used if p != package and not any(p.startswith(m) for m in MESSAGES))


def _message(name: str) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto(name=name.rsplit(".", 1)[1])
    oneofs: list[str] = []
    for number, field_name, kind, label, declared_oneof in MESSAGES[name]:
        field = proto.field.add(name=field_name, number=number, json_name=_json_name(field_name))
        fdp = descriptor_pb2.FieldDescriptorProto
        field.label = fdp.LABEL_REPEATED if label == "repeated" else fdp.LABEL_OPTIONAL
        if kind in ENUMS:
            field.type, field.type_name = fdp.TYPE_ENUM, f".{kind}"
        elif "." in kind:
            field.type, field.type_name = fdp.TYPE_MESSAGE, f".{kind}"
        else:
            field.type = descriptor_pb2.FieldDescriptorProto.Type.Value(f"TYPE_{kind.upper()}")
        oneof = declared_oneof
        if label == "proto3_optional":
            field.proto3_optional = True
            oneof = f"_{field_name}"
        if oneof:
            if oneof not in oneofs:
                oneofs.append(oneof)
                proto.oneof_decl.add(name=oneof)
            field.oneof_index = oneofs.index(oneof)
    for nested in sorted(MESSAGES):
        if nested.rsplit(".", 1)[0] == name:
            child = _message(nested)
            child.options.map_entry = nested.endswith("Entry")
            proto.nested_type.append(child)
    for enum in sorted(ENUMS):
        if enum.rsplit(".", 1)[0] == name:
            proto.enum_type.append(_enum(enum))
    return proto


def _enum(name: str) -> descriptor_pb2.EnumDescriptorProto:
    proto = descriptor_pb2.EnumDescriptorProto(name=name.rsplit(".", 1)[1])
    for value_name, number in ENUMS[name]:
        proto.value.add(name=value_name, number=number)
    return proto


def _json_name(field_name: str) -> str:
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


INDEPENDENT = _independent_pool()


def _upstream_class(full_name: str) -> type[Message]:
    return message_factory.GetMessageClass(INDEPENDENT.FindMessageTypeByName(full_name))


def _fill(message: Message, depth: int = 0, variant: int = 0) -> Message:
    """Sets every field of ``message`` (one member per oneof, chosen by ``variant``) to a
    distinct non-default value, recursing into messages a few levels deep."""
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        oneof = field.containing_oneof
        chosen = (
            oneof is None
            or field.name == oneof.name[1:]
            or oneof.fields[variant % len(oneof.fields)] is field
        )
        if not chosen:
            continue
        _set(message, field, depth, variant)  # type: ignore[arg-type]  # upb's FieldDescriptor
    return message


def _set(message: Message, field: FieldDescriptor, depth: int, variant: int) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = field.message_type.fields
        entry_value = getattr(message, field.name)
        key = _scalar(key_field)
        if value_field.message_type is not None:
            if depth < 3:
                _fill(entry_value[key], depth + 1, variant)
        else:
            entry_value[key] = _scalar(value_field)
        return
    repeated = field.is_repeated
    if field.message_type is not None:
        if depth >= 3:
            return
        target = getattr(message, field.name).add() if repeated else getattr(message, field.name)
        if field.message_type.full_name == "google.protobuf.Any":
            target.Pack(wrappers_pb2.UInt32Value(value=7))
        elif field.message_type.full_name == "google.protobuf.Struct":
            target.fields["ImpersonatedIdentity"].string_value = "spiffe://cluster.local/ns/a/sa/b"
        elif field.message_type.full_name == "google.protobuf.Empty":
            target.SetInParent()
        else:
            _fill(target, depth + 1, variant)
            target.SetInParent()
        return
    value = _scalar(field)
    if repeated:
        getattr(message, field.name).extend([value, value])
    else:
        setattr(message, field.name, value)


def _scalar(field: FieldDescriptor) -> object:
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{field.number}"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes([10, 0, 0, field.number])
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    return field.number + 1000


def _cases() -> list[tuple[str, int]]:
    cases: list[tuple[str, int]] = []
    for name in sorted(MESSAGES):
        if name.endswith("Entry"):
            continue
        widest = max((len(o.fields) for o in _ours(name).oneofs), default=1)
        cases.extend((name, variant) for variant in range(widest))
    return cases


@pytest.mark.parametrize(("message", "variant"), _cases())
def test_ours_decode_as_upstreams_and_back(message: str, variant: int) -> None:
    ours = _fill(message_factory.GetMessageClass(_ours(message))(), variant=variant)
    upstream = _upstream_class(message).FromString(ours.SerializeToString())
    assert json_format.MessageToDict(upstream) == json_format.MessageToDict(ours)
    assert not _has_unknown_fields(upstream)
    back = message_factory.GetMessageClass(_ours(message)).FromString(upstream.SerializeToString())
    assert back == ours


@pytest.mark.parametrize(("message", "variant"), _cases())
def test_upstreams_decode_as_ours(message: str, variant: int) -> None:
    upstream = _fill(_upstream_class(message)(), variant=variant)
    ours = message_factory.GetMessageClass(_ours(message)).FromString(upstream.SerializeToString())
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(upstream)
    assert not _has_unknown_fields(ours)


def _has_unknown_fields(message: Message) -> bool:
    if len(UnknownFieldSet(message)):
        return True
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        if any(_has_unknown_fields(item) for item in items):
            return True
    return False


def test_todays_clause_number_is_upstreams() -> None:
    """The defect this file was written for: Clause.matches was field 1 here, 2 upstream."""
    assert _ours("istio.security.Clause").fields_by_name["matches"].number == 2
