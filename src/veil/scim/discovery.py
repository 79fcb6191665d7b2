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
        authentication_schemes=[AuthenticationScheme(
            type=AuthenticationScheme.Type.oauthbearertoken, name="Bearer token",
            description="A shared secret: 'Authorization: Bearer <token>', the token being the "
                        "value of the environment variable named by scim.token_env",
            primary=True)],
        meta=Meta(resource_type="ServiceProviderConfig",
                  location=f"{base_url}/ServiceProviderConfig"),
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
        resource_type.meta = Meta(resource_type="ResourceType",
                                  location=f"{base_url}/ResourceTypes/{resource_type.id}")
        found.append(resource_type.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    return found


def list_response(resources: list[dict[str, Any]], total: int | None = None,
                  start: int = 1) -> dict[str, Any]:
    return {"schemas": [LIST_SCHEMA], "totalResults": len(resources) if total is None else total,
            "startIndex": start, "itemsPerPage": len(resources), "Resources": resources}
