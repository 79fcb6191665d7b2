"""What the SCIM service says about itself: ServiceProviderConfig, Schemas, ResourceTypes."""

from __future__ import annotations

from typing import Any

from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    Meta,
    Patch,
    ResourceType,
    ServiceProviderConfig,
    Sort,
)

from veil.scim.resources import UserModel

MAX_RESULTS = 1000
DOCS = "https://github.com/veil/veil#group-provisioning-scim"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"


def service_provider_config(base_url: str) -> dict[str, Any]:
    config = ServiceProviderConfig(
        documentation_uri=DOCS,  # type: ignore[arg-type]
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type=AuthenticationScheme.Type.oauthbearertoken,
                name="Bearer token",
                description="A shared secret: 'Authorization: Bearer <token>', the token being the "
                "value of the environment variable named by scim.token_env",
                primary=True,
            )
        ],
        meta=Meta(
            resource_type="ServiceProviderConfig", location=f"{base_url}/ServiceProviderConfig"
        ),
    )
    dumped: dict[str, Any] = config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    return dumped


def schemas(base_url: str) -> list[dict[str, Any]]:
    found = []
    for model in (UserModel, EnterpriseUser, Group):
        schema = model.to_schema()
        schema.meta = Meta(resource_type="Schema", location=f"{base_url}/Schemas/{schema.id}")
        found.append(schema.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    return found


def resource_types(base_url: str) -> list[dict[str, Any]]:
    found = []
    for model in (UserModel, Group):
        resource_type = ResourceType.from_resource(model)
        resource_type.meta = Meta(
            resource_type="ResourceType", location=f"{base_url}/ResourceTypes/{resource_type.id}"
        )
        found.append(resource_type.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    return found


def list_response(
    resources: list[dict[str, Any]], total: int | None = None, start: int = 1
) -> dict[str, Any]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": len(resources) if total is None else total,
        "startIndex": start,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


def openapi_paths(prefix: str) -> dict[str, Any]:
    """The SCIM routes for Veil's OpenAPI document (RFC 7644 describes their bodies)."""
    error = {"$ref": "#/components/responses/ScimError"}
    security: list[dict[str, list[str]]] = [{"scimBearer": []}]

    def op(
        summary: str,
        ok: str,
        *errors: str,
        body: bool = False,
        params: tuple[str, ...] = (),
        query: bool = False,
    ) -> dict[str, Any]:
        responses: dict[str, Any] = {
            ok: {"description": "done"}
            if ok == "204"
            else {
                "description": "done",
                "content": {"application/scim+json": {"schema": {"type": "object"}}},
            }
        }
        for status in ("401", "404", *errors):
            responses[status] = error
        operation: dict[str, Any] = {
            "summary": summary,
            "tags": ["scim"],
            "security": security,
            "responses": responses,
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in params
        ]
        if query:
            parameters += [
                {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                for name, kind in (
                    ("filter", "string"),
                    ("startIndex", "integer"),
                    ("count", "integer"),
                    ("attributes", "string"),
                    ("excludedAttributes", "string"),
                )
            ]
        if parameters:
            operation["parameters"] = parameters
        if body:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/scim+json": {"schema": {"type": "object"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        return operation

    paths: dict[str, Any] = {
        f"{prefix}/ServiceProviderConfig": {
            "get": op("SCIM service provider configuration", "200")
        },
        f"{prefix}/Schemas": {"get": op("SCIM schemas", "200")},
        f"{prefix}/Schemas/{{schema_id}}": {
            "get": op("One SCIM schema", "200", params=("schema_id",))
        },
        f"{prefix}/ResourceTypes": {"get": op("SCIM resource types", "200")},
        f"{prefix}/ResourceTypes/{{type_id}}": {
            "get": op("One SCIM resource type", "200", params=("type_id",))
        },
        f"{prefix}/.search": {"post": op("Search across types: not supported", "501", body=True)},
        f"{prefix}/Bulk": {"post": op("Bulk operations: not supported", "501", body=True)},
    }
    for kind, key in (("Users", "uid"), ("Groups", "gid")):
        paths[f"{prefix}/{kind}"] = {
            "get": op(f"List {kind} (filter eq, paging)", "200", "400", query=True),
            "post": op(f"Create one of the {kind}", "201", "400", "409", "413", body=True),
        }
        paths[f"{prefix}/{kind}/.search"] = {
            "post": op(f"Search {kind} (SearchRequest)", "200", "400", body=True)
        }
        one = (key,)
        paths[f"{prefix}/{kind}/{{{key}}}"] = {
            "get": op(f"Read one of the {kind} (If-None-Match: 304)", "200", "304", params=one),
            "put": op(
                f"Replace one of the {kind} (If-Match)",
                "200",
                "400",
                "409",
                "412",
                "413",
                body=True,
                params=one,
            ),
            "patch": op(
                f"Patch one of the {kind} (If-Match)",
                "200" if kind == "Users" else "204",
                "400",
                "409",
                "412",
                "413",
                body=True,
                params=one,
            ),
            "delete": op(f"Delete one of the {kind} (If-Match)", "204", "412", params=one),
        }
    return paths
