"""SCIM Users and Groups on the wire (scim2-models) and as Veil keeps them (``Directory``).

Requests are read with scim2-models' models and PATCH engine under a policy that accepts what
Microsoft Entra ID and Okta send (capitalised ops, ``remove`` with a ``value``, Okta's ``id`` in
a path-less ``replace``). Group membership is the exception: member operations are turned into
``MemberChange`` steps that storage applies on user ids, so a one-member PATCH costs the same
in a group of five as in one of fifty thousand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from scim2_models import (
    Context,
    EnterpriseUser,
    Group,
    InvalidFilterException,
    InvalidPathException,
    InvalidSyntaxException,
    InvalidValueException,
    Meta,
    NoTargetException,
    PatchOp,
    ResponseParameters,
    SCIMException,
    ScimFilter,
    ScimPolicy,
    User,
)
from scim2_models.path import CompareOperator, Comparison

from veil import principal as principal_rules
from veil.storage.directory import (
    GroupState,
    MemberChange,
    StoredGroup,
    StoredUser,
    UserState,
    etag,
)

UserModel = User[EnterpriseUser]
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

# What real identity providers send, read as they mean it (see scim2-models' ScimPolicy).
POLICY = ScimPolicy(
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)

FILTERABLE = {
    "User": ("id", "userName", "displayName", "externalId"),
    "Group": ("id", "displayName", "externalId"),
}
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# Attributes Veil computes, never stores from a request.
_SERVER_SIDE = ("id", "meta", "groups", "members", "password")


def principal(value: str, attribute: str) -> str:
    """A principal as Veil compares it; whitespace or control characters are refused."""
    key = principal_rules.key(value) if value and not _UNSAFE.search(value) else None
    if key is None:
        raise InvalidValueException(
            detail=f"{attribute} {value!r} is not a principal: it is empty or holds "
            "whitespace or control characters"
        )
    return key  # NFC and case folding (docs/rules.md, "Principal"), as everywhere else


def validation_error(exc: ValidationError) -> SCIMException:
    """The first error of a pydantic validation as the SCIM exception it stands for."""
    from scim2_models import Error

    error = Error.from_validation_error(exc.errors()[0])
    found = SCIMException.from_error(error)
    return found


def read(model: Any, payload: Any, ctx: Context) -> Any:
    if not isinstance(payload, Mapping):
        raise InvalidSyntaxException(detail="the request body must be a JSON object")
    try:
        return model.model_validate(payload, scim_ctx=ctx, scim_policy=POLICY)
    except ValidationError as exc:
        raise validation_error(exc) from None


def response_parameters(args: Mapping[str, Any], model: Any) -> ResponseParameters[Any]:
    raw = {
        key: args[name]
        for key, name in (
            ("attributes", "attributes"),
            ("excludedAttributes", "excludedAttributes"),
        )
        if args.get(name)
    }
    try:
        return ResponseParameters[model].model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None


def eq_filter(text: str | None, resource: str, model: Any) -> tuple[str, str] | None:
    """``(attribute, value)`` of an ``eq`` filter on a filterable attribute, or None."""
    if not text:
        return None
    try:
        node = ScimFilter[model](text).ast
    except (ValueError, SCIMException, ValidationError) as exc:
        raise InvalidFilterException(detail=f"filter {text!r} is not valid: {exc}") from None
    allowed = FILTERABLE[resource]
    if (
        isinstance(node, Comparison)
        and node.op == CompareOperator.eq
        and node.attr_path.sub_attr is None
        and isinstance(node.value, str)
    ):
        for name in allowed:
            if node.attr_path.attr.lower() == name.lower():
                value = principal(node.value, name) if name == "userName" else node.value
                return name, value
    raise InvalidFilterException(
        detail=f"filter {text!r} is not supported: use 'ATTRIBUTE eq \"value\"' with one of "
        f"{', '.join(allowed)}"
    )


# ---- users --------------------------------------------------------------------------------


def user_state(user: Any) -> UserState:
    """What Veil keeps of a validated User: the resource, and its principals."""
    user_name = principal(user.user_name or "", "userName")
    principals = {user_name}
    for email in user.emails or []:
        if email.value:
            principals.add(principal(email.value, "emails.value"))
    resource = user.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    for name in _SERVER_SIDE:
        resource.pop(name, None)
    return UserState(
        resource=resource,
        user_name=user_name,
        display_name=user.display_name,
        external_id=user.external_id,
        active=user.active is not False,
        principals=frozenset(principals),
    )


def user_model(stored: StoredUser, base_url: str) -> Any:
    doc = dict(stored.resource)
    doc["id"] = stored.id
    if stored.groups:
        doc["groups"] = [
            {"value": gid, "display": name, "$ref": f"{base_url}/Groups/{gid}", "type": "direct"}
            for gid, name in stored.groups
        ]
    model = UserModel.model_validate(doc, scim_policy=POLICY)
    model.meta = _meta(
        "User",
        f"{base_url}/Users/{stored.id}",
        stored.created_ns,
        stored.modified_ns,
        stored.version,
    )
    return model


def user_document(
    stored: StoredUser, base_url: str, params: ResponseParameters[Any] | None = None
) -> dict[str, Any]:
    dumped: dict[str, Any] = user_model(stored, base_url).model_dump(
        scim_ctx=Context.RESOURCE_QUERY_RESPONSE, response_parameters=params
    )
    return dumped


def patch_user(stored: StoredUser, body: Any, base_url: str) -> UserState:
    ops = _patch_operations(body)
    for op in ops:  # Okta renames with {"op": "replace", "value": {"id": ..., ...}}
        _drop_own_id(op, stored.id)
        # Entra ID sends the enterprise manager as a bare id: {"value": id} is meant
        if str(op.get("path") or "").lower().endswith(":manager") and isinstance(
            op.get("value"), str
        ):
            op["value"] = {"value": op["value"]}
    patch = read(
        PatchOp[UserModel],
        {"schemas": [PATCH_SCHEMA], "Operations": ops},
        Context.RESOURCE_PATCH_REQUEST,
    )
    user = user_model(stored, base_url)
    try:
        patch.patch(user, scim_policy=POLICY)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return user_state(user)


# ---- groups -------------------------------------------------------------------------------


def group_state(group: Any) -> GroupState:
    if not group.display_name:
        raise InvalidValueException(detail="displayName is required")
    resource = group.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    for name in _SERVER_SIDE:
        resource.pop(name, None)
    return GroupState(
        resource=resource, display_name=group.display_name, external_id=group.external_id
    )


def member_ids(group: Any) -> tuple[list[str], dict[str, str]]:
    """The user ids a Group names as its members, and their ``display`` (no nested groups)."""
    ids = []
    displays = {}
    for member in group.members or []:
        if member.type is not None and str(member.type).lower() == "group":
            raise InvalidValueException(detail="nested groups are not supported: members are Users")
        if not member.value:
            raise InvalidValueException(detail="each member needs a 'value' (a user id)")
        ids.append(member.value)
        if member.display:
            displays[member.value] = member.display
    return ids, displays


def group_document(
    stored: StoredGroup, base_url: str, params: ResponseParameters[Any] | None = None
) -> dict[str, Any]:
    doc = dict(stored.resource)
    doc["id"] = stored.id
    model = Group.model_validate(doc, scim_policy=POLICY)
    model.meta = _meta(
        "Group",
        f"{base_url}/Groups/{stored.id}",
        stored.created_ns,
        stored.modified_ns,
        stored.version,
    )
    dumped: dict[str, Any] = model.model_dump(
        scim_ctx=Context.RESOURCE_QUERY_RESPONSE, response_parameters=params
    )
    # Members are written out directly: a model per member would cost seconds in a large group.
    if stored.members and members_wanted(params):
        dumped["members"] = [
            {"value": uid, "display": name, "$ref": f"{base_url}/Users/{uid}", "type": "User"}
            for uid, name in stored.members
        ]
    return dumped


def members_wanted(params: ResponseParameters[Any] | None) -> bool:
    if params is None:
        return True
    if params.attributes:
        return any(
            str(p).split(".")[0].split("[")[0].lower().endswith("members")
            for p in params.attributes
        )
    if params.excluded_attributes:
        return not any(str(p).lower().endswith("members") for p in params.excluded_attributes)
    return True


def patch_group(stored: StoredGroup, body: Any) -> tuple[GroupState, MemberChange]:
    """The group's new attributes, and its member steps, from a PATCH body."""
    ops = _patch_operations(body)
    for op in ops:
        _drop_own_id(op, stored.id)
    # Validate the whole request first: an unknown op or path refuses all of it.
    read(
        PatchOp[Group],
        {"schemas": [PATCH_SCHEMA], "Operations": ops},
        Context.RESOURCE_PATCH_REQUEST,
    )
    change = MemberChange()
    attribute_ops: list[dict[str, Any]] = []
    for op in ops:
        kind = str(op.get("op", "")).lower()
        path = op.get("path")
        value = op.get("value")
        if path is None or str(path).strip() == "":
            if not isinstance(value, Mapping):
                raise InvalidValueException(detail=f"a {kind} without a path needs an object value")
            rest = {k: v for k, v in value.items() if k.lower() != "members"}
            members = [v for k, v in value.items() if k.lower() == "members"]
            for listed in members:
                _member_step(change, kind, *_values(listed), None)
            if rest:
                attribute_ops.append({**op, "value": rest})
            continue
        parsed = read_path(str(path))
        if parsed[0].lower() == "members":
            ids, displays = _values(value) if value is not None else (None, {})
            _member_step(change, kind, ids, displays, parsed[1])
        else:
            attribute_ops.append(op)
    doc = dict(stored.resource)
    doc["id"] = stored.id
    group = Group.model_validate(doc, scim_policy=POLICY)
    if attribute_ops:
        patch = read(
            PatchOp[Group],
            {"schemas": [PATCH_SCHEMA], "Operations": attribute_ops},
            Context.RESOURCE_PATCH_REQUEST,
        )
        try:
            patch.patch(group, scim_policy=POLICY)
        except ValidationError as exc:
            raise validation_error(exc) from None
    return group_state(group), change


def read_path(text: str) -> tuple[str, str | None]:
    """``(attribute, member id selected by a filter or None)`` of a Group PATCH path."""
    from scim2_models import Path

    try:
        path = Path[Group](text)
        parts = path.parts
        selector = path.value_filter
    except (ValueError, SCIMException, ValidationError) as exc:
        raise InvalidPathException(detail=f"path {text!r} is not valid: {exc}") from None
    if not parts:
        raise InvalidPathException(detail=f"path {text!r} names no attribute")
    if parts[0].lower() != "members":
        return parts[0], None
    if len(parts) > 1:
        raise InvalidPathException(
            detail=f"path {text!r}: members are added and removed whole, by their value"
        )
    if selector is None:
        return "members", None
    if (
        isinstance(selector, Comparison)
        and selector.op == CompareOperator.eq
        and selector.attr_path.attr.lower() == "value"
        and isinstance(selector.value, str)
    ):
        return "members", selector.value
    raise InvalidFilterException(
        detail=f'path {text!r}: select a member with members[value eq "<user id>"]'
    )


def _member_step(
    change: MemberChange,
    kind: str,
    ids: list[str] | None,
    displays: dict[str, str],
    selected: str | None,
) -> None:
    if selected is not None:
        if kind != "remove":
            raise NoTargetException(
                detail="a member selected by a filter can only be removed; "
                "add members with path 'members' and a value"
            )
        change.remove([selected])
    elif kind == "add":
        change.add(ids or [], displays)
    elif kind == "replace":
        change.replace(ids or [], displays)
    elif ids is None:  # remove with path "members" and no value: every member
        change.replace([])
    else:  # Entra: remove with a value naming the members to remove
        change.remove(ids)


def _values(value: Any) -> tuple[list[str], dict[str, str]]:
    """Member ids (and displays) from a PATCH value: ``[{"value": id}]``, or one object."""
    items = value if isinstance(value, list) else [value]
    ids = []
    displays = {}
    for item in items:
        if (
            not isinstance(item, Mapping)
            or not isinstance(item.get("value"), str)
            or not item["value"]
        ):
            raise InvalidValueException(detail='members are given as [{"value": "<user id>"}]')
        if str(item.get("type") or "").lower() == "group":
            raise InvalidValueException(detail="nested groups are not supported: members are Users")
        ids.append(item["value"])
        if isinstance(item.get("display"), str) and item["display"]:
            displays[item["value"]] = item["display"]
    return ids, displays


# ---- shared -------------------------------------------------------------------------------


def _patch_operations(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, Mapping):
        raise InvalidSyntaxException(detail="the PATCH body must be a PatchOp object")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or PATCH_SCHEMA not in schemas:
        raise InvalidSyntaxException(detail=f"the PATCH body's schemas must hold {PATCH_SCHEMA}")
    ops = body.get("Operations")
    if ops is None:
        ops = next((v for k, v in body.items() if k.lower() == "operations"), None)
    if not isinstance(ops, list) or not ops or not all(isinstance(o, Mapping) for o in ops):
        raise InvalidValueException(detail="'Operations' must be a non-empty array of objects")
    return [dict(op) for op in ops]


def _drop_own_id(op: dict[str, Any], resource_id: str) -> None:
    value = op.get("value")
    if op.get("path") is None and isinstance(value, Mapping) and "id" in value:
        if value["id"] != resource_id:
            from scim2_models import MutabilityException

            raise MutabilityException(detail="'id' is read-only and names another resource")
        op["value"] = {k: v for k, v in value.items() if k != "id"}


def _meta(
    resource_type: str, location: str, created_ns: int, modified_ns: int, version: int
) -> Meta:
    return Meta(
        resource_type=resource_type,
        location=location,
        created=datetime.fromtimestamp(created_ns / 1e9, tz=UTC),
        last_modified=datetime.fromtimestamp(modified_ns / 1e9, tz=UTC),
        version=etag(version),
    )


def page(args: Mapping[str, Any], max_results: int) -> tuple[int, int]:
    """``(startIndex, count)``: startIndex below 1 is 1; count is clamped to [0, max]."""

    def number(name: str, default: int) -> int:
        raw = args.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise InvalidValueException(detail=f"{name} must be an integer") from None

    return max(1, number("startIndex", 1)), min(max(0, number("count", 100)), max_results)
