"""Veil's configuration: one YAML file, validated once at start-up into frozen dataclasses.

The JSON Schema shipped beside this module (``config.schema.json``) is the one source of
defaults: its ``default`` keywords fill the keys a file leaves out, and the dataclasses'
defaults are read from it too (``default``). The README's table is checked against it.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from veil import schema_errors
from veil.errors import ConfigError
from veil.governance.signing import KeyFileError, Keyring, Signer, load_public


def schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, shipped in the package."""
    text = resources.files("veil").joinpath("config.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _defaults() -> MappingProxyType[str, Any]:
    """Every default the schema gives, by dotted key path (``server.port``)."""
    found: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if "default" in sub:
                found[prefix + name] = sub["default"]
            walk(sub, f"{prefix}{name}.")

    walk(schema(), "")
    return MappingProxyType(found)


def default(key: str) -> Any:
    """The schema's default for a dotted key path; a list comes back as a tuple."""
    value = copy.deepcopy(_defaults()[key])
    return tuple(value) if isinstance(value, list) else value


def with_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a (valid) document with the schema's default in every absent key that has
    one, sections included, so that their keys are filled in too."""

    def fill(node: dict[str, Any], value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        filled = dict(value)
        for name, sub in node.get("properties", {}).items():
            if name not in filled and "default" in sub:
                filled[name] = copy.deepcopy(sub["default"])
            if name in filled:
                filled[name] = fill(sub, filled[name])
        return filled

    filled: dict[str, Any] = fill(schema(), document)
    return filled


@dataclass(frozen=True)
class FieldPointers:
    id: str = default("upstream.fields.id")
    actor: str = default("upstream.fields.actor")
    actor_type: str = default("upstream.fields.actor_type")
    timestamp: str = default("upstream.fields.timestamp")


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    routes: tuple[str, ...]
    rows: str = default("upstream.rows")
    keep: tuple[str, ...] = default("upstream.keep")  # envelope members beside the rows
    fields: FieldPointers = field(default_factory=FieldPointers)
    application_values: tuple[str, ...] = default("upstream.application_values")
    forward_headers: tuple[str, ...] = default("upstream.forward_headers")
    timeout_s: float = default("upstream.timeout_s")
    max_body_bytes: int = default("upstream.max_body_bytes")
    pool_size: int = default("upstream.pool_size")


@dataclass(frozen=True)
class JwtConfig:
    issuer: str | None = None
    audience: str | None = None
    hs256_secret: str | None = None
    jwks: dict[str, Any] | None = None
    leeway_s: float = default("identity.jwt.leeway_s")


@dataclass(frozen=True)
class OidcConfig:
    """The identity provider the console signs in with (authorization code flow + PKCE)."""

    issuer: str
    client_id: str
    redirect_url: str
    client_secret: str | None = None
    scopes: tuple[str, ...] = default("identity.oidc.scopes")


@dataclass(frozen=True)
class IdentityConfig:
    mode: str = default("identity.mode")
    jwt: JwtConfig = field(default_factory=JwtConfig)
    principal_claims: tuple[str, ...] = default("identity.principal_claims")
    header: str = default("identity.header")
    secret_header: str = default("identity.secret_header")
    shared_secret: str | None = None
    bootstrap_admins: tuple[str, ...] = default("identity.bootstrap_admins")
    oidc: OidcConfig | None = None


@dataclass(frozen=True)
class PolicyConfig:
    engine: str = default("policy.engine")
    dir: Path = Path(default("policy.dir"))
    opa_url: str = default("policy.opa_url")
    opa_bundle: bool = default("policy.opa_bundle")
    timeout_s: float = default("policy.timeout_s")
    watch_s: float = default("policy.watch_s")  # poll the policy directory; 0: off
    reload_on_sighup: bool = default("policy.reload_on_sighup")


@dataclass(frozen=True)
class ServerConfig:
    host: str = default("server.host")
    port: int = default("server.port")
    workers: int = default("server.workers")
    threads: int = default("server.threads")
    max_body_bytes: int = default("server.max_body_bytes")  # larger bodies: 413, unread


@dataclass(frozen=True)
class StorageConfig:
    url: str = default("storage.url")
    timeout_s: float = default("storage.timeout_s")


@dataclass(frozen=True)
class RevealConfig:
    session_ttl_s: int = default("reveal.session_ttl_s")
    require_justification: bool = default("reveal.require_justification")


@dataclass(frozen=True)
class GovernanceConfig:
    """The governance log's keys (files, never the database) and its witness."""

    signing_key_file: Path | None = None
    public_key_file: Path | None = None
    keys: tuple[Path, ...] = ()  # (the key files resolved; the schema's default is [])
    witness: str | None = None  # a JSON Lines file path, or an https:// endpoint
    checkpoint_s: float = default("governance.checkpoint_s")
    signer: Signer | None = None  # loaded from signing_key_file
    keyring: Keyring = field(default_factory=Keyring)  # every public key verify accepts


@dataclass(frozen=True)
class ConsoleColumn:
    label: str
    pointer: str


@dataclass(frozen=True)
class ConsoleActivities:
    """How the console's Activity log asks the store, through Veil, for a page of activities."""

    route: str | None = None  # None: the first of upstream.routes
    user_param: str = default("console.activities.user_param")
    since_param: str = default("console.activities.since_param")
    until_param: str = default("console.activities.until_param")
    limit_param: str = default("console.activities.limit_param")
    cursor_param: str = default("console.activities.cursor_param")
    next: str = default("console.activities.next")  # pointer to the next page's cursor
    columns: tuple[ConsoleColumn, ...] = tuple(
        ConsoleColumn(**column) for column in default("console.activities.columns")
    )


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = default("console.enabled")
    secret_key: str | None = None
    session_ttl_s: int = default("console.session_ttl_s")
    page_size: int = default("console.page_size")
    activities: ConsoleActivities = field(default_factory=ConsoleActivities)


@dataclass(frozen=True)
class ScimConfig:
    """SCIM 2.0 provisioning under /scim/v2; off (404) while no token is configured."""

    token: str | None = None
    token_env: str | None = None
    actor: str = default("scim.actor")
    max_body_bytes: int = default("scim.max_body_bytes")

    @property
    def enabled(self) -> bool:
        return bool(self.token)


@dataclass(frozen=True)
class Config:
    upstream: UpstreamConfig
    managed_domains: tuple[str, ...] = default("organization.managed_domains")
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    reveal: RevealConfig = field(default_factory=RevealConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    scim: ScimConfig = field(default_factory=ScimConfig)


def load(
    path: str | os.PathLike[str], env: dict[str, str] | None = None, require_secrets: bool = True
) -> Config:
    """Read, validate and resolve a configuration file; raise ConfigError naming the bad key.

    ``require_secrets=False`` is for commands that never check a caller's identity (the
    management commands touch only the storage): secrets that are not set are left None.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return from_dict(
        document if document is not None else {},
        base_dir=path.parent,
        env=env,
        require_secrets=require_secrets,
    )


# HS256 keys shorter than the hash (RFC 7518, section 3.2) are refused.
MIN_HS256_SECRET_BYTES = 32


def from_dict(
    document: Any,
    base_dir: Path | None = None,
    env: dict[str, str] | None = None,
    require_secrets: bool = True,
) -> Config:
    """Validate a parsed configuration document and resolve it into a Config."""
    validate(document)
    document = with_defaults(document)
    env = dict(os.environ) if env is None else env
    base_dir = base_dir or Path.cwd()
    up = document["upstream"]
    identity = document["identity"]
    jwt_doc = identity["jwt"]
    policy = document["policy"]
    policy_dir = Path(policy["dir"])
    if not policy_dir.is_absolute():
        policy_dir = base_dir / policy_dir

    def secret(key_path: str, env_name: str | None) -> str | None:
        if env_name is None:
            return None
        value = env.get(env_name)
        if not value:
            if not require_secrets:
                return None
            raise ConfigError(f"{key_path}: environment variable {env_name} is not set or empty")
        return value

    mode = identity["mode"]
    jwks = None
    if mode == "jwt" and "jwks_file" in jwt_doc:
        jwks_path = Path(jwt_doc["jwks_file"])
        if not jwks_path.is_absolute():
            jwks_path = base_dir / jwks_path
        try:
            jwks = json.loads(jwks_path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"identity.jwt.jwks_file: cannot read a JWKS from {jwks_path}: {exc}"
            ) from exc
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ConfigError(f"identity.jwt.jwks_file: {jwks_path} has no 'keys' array")

    # Only the active mode's secrets must be present.
    hs256 = secret(
        "identity.jwt.hs256_secret_env", jwt_doc.get("hs256_secret_env") if mode == "jwt" else None
    )
    if hs256 is not None and len(hs256.encode()) < MIN_HS256_SECRET_BYTES:
        raise ConfigError(
            f"identity.jwt.hs256_secret_env: the secret in {jwt_doc['hs256_secret_env']} is "
            f"{len(hs256.encode())} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} "
            "(RFC 7518, 3.2). Make one with: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    if mode == "jwt":
        if (
            hs256 is None
            and jwks is None
            and (require_secrets or "hs256_secret_env" not in jwt_doc)
        ):
            raise ConfigError("identity.jwt: set hs256_secret_env or jwks_file to verify tokens")
        for key in ("issuer", "audience"):
            if key not in jwt_doc:
                raise ConfigError(f"identity.jwt.{key}: required key is missing in jwt mode")
    shared = secret("identity.secret_env", identity.get("secret_env") if mode == "header" else None)
    if mode == "header" and shared is None and require_secrets:
        raise ConfigError("identity.secret_env: header mode needs a shared gateway secret")

    oidc = None
    if "oidc" in identity:
        oidc_doc = identity["oidc"]
        oidc = OidcConfig(
            issuer=oidc_doc["issuer"].rstrip("/"),
            client_id=oidc_doc["client_id"],
            redirect_url=oidc_doc["redirect_url"],
            client_secret=secret(
                "identity.oidc.client_secret_env", oidc_doc.get("client_secret_env")
            ),
            scopes=tuple(oidc_doc["scopes"]),
        )
        if "openid" not in oidc.scopes:
            raise ConfigError("identity.oidc.scopes: must include 'openid'")
    console = _console(document["console"], secret)
    if console.activities.route is not None and console.activities.route not in up["routes"]:
        raise ConfigError(
            f"console.activities.route: {console.activities.route} is not one of "
            "upstream.routes; the console asks the store only through Veil"
        )

    scim = document["scim"]
    scim_token_env = scim.get("token_env")
    return Config(
        upstream=UpstreamConfig(
            url=_store_url(up["url"]),
            routes=tuple(up["routes"]),
            rows=up["rows"],
            keep=_keep(up["rows"], up["keep"]),
            fields=FieldPointers(**up["fields"]),
            application_values=tuple(up["application_values"]),
            forward_headers=tuple(up["forward_headers"]),
            timeout_s=float(up["timeout_s"]),
            max_body_bytes=up["max_body_bytes"],
            pool_size=up["pool_size"],
        ),
        managed_domains=tuple(d.lower() for d in document["organization"]["managed_domains"]),
        identity=IdentityConfig(
            mode=mode,
            jwt=JwtConfig(
                issuer=jwt_doc.get("issuer"),
                audience=jwt_doc.get("audience"),
                hs256_secret=hs256,
                jwks=jwks,
                leeway_s=float(jwt_doc["leeway_s"]),
            ),
            principal_claims=tuple(identity["principal_claims"]),
            header=identity["header"],
            secret_header=identity["secret_header"],
            shared_secret=shared,
            bootstrap_admins=_bootstrap_admins(identity["bootstrap_admins"]),
            oidc=oidc,
        ),
        policy=PolicyConfig(
            engine=policy["engine"],
            dir=policy_dir,
            opa_url=policy["opa_url"].rstrip("/"),
            opa_bundle=policy["opa_bundle"],
            timeout_s=float(policy["timeout_s"]),
            watch_s=float(policy["watch_s"]),
            reload_on_sighup=policy["reload_on_sighup"],
        ),
        server=ServerConfig(**document["server"]),
        storage=StorageConfig(
            url=_resolve_sqlite_url(document["storage"]["url"], base_dir),
            timeout_s=float(document["storage"]["timeout_s"]),
        ),
        reveal=RevealConfig(**document["reveal"]),
        governance=governance_config(document["governance"], base_dir),
        console=console,
        # An unset or empty variable leaves the endpoint off (404), as no scim section does.
        scim=ScimConfig(
            token=env.get(scim_token_env) or None if scim_token_env else None,
            token_env=scim_token_env,
            actor=scim["actor"],
            max_body_bytes=scim["max_body_bytes"],
        ),
    )


def _bootstrap_admins(values: list[str]) -> tuple[str, ...]:
    """The configured admins as principals (docs/rules.md, "Principal"); a bad one stops
    start-up."""
    from veil import principal

    admins = []
    for index, value in enumerate(values):
        normalized = principal.key(value)
        if normalized is None:
            raise ConfigError(
                f"identity.bootstrap_admins.{index}: {value!r} is not a valid "
                f"principal: {principal.problem(value)}"
            )
        admins.append(normalized)
    return tuple(admins)


def _console(doc: dict[str, Any], secret: Any) -> ConsoleConfig:
    """The console section; an enabled console needs the key that signs its cookies."""
    enabled = bool(doc["enabled"])
    key = secret("console.secret_key_env", doc.get("secret_key_env") if enabled else None)
    if enabled and key is None:
        raise ConfigError(
            "console.secret_key_env: an enabled console needs the name of an "
            "environment variable holding the key that signs its cookies"
        )
    if key is not None and len(key) < 32:
        raise ConfigError(
            "console.secret_key_env: the cookie signing key must be at least 32 characters"
        )
    activities = dict(doc["activities"])
    activities["columns"] = tuple(ConsoleColumn(**c) for c in activities["columns"])
    return ConsoleConfig(
        enabled=enabled,
        secret_key=key,
        session_ttl_s=doc["session_ttl_s"],
        page_size=doc["page_size"],
        activities=ConsoleActivities(**activities),
    )


def governance_config(doc: dict[str, Any], base_dir: Path) -> GovernanceConfig:
    """Resolve the key files (relative to the config file) and load the keys."""

    def path(value: str) -> Path:
        found = Path(value)
        return found if found.is_absolute() else base_dir / found

    signing = path(doc["signing_key_file"]) if "signing_key_file" in doc else None
    public = path(doc["public_key_file"]) if "public_key_file" in doc else None
    keys = tuple(path(k) for k in doc["keys"])
    signer = None
    publics = []
    try:
        if signing is not None:
            signer = Signer.from_file(signing)
            publics.append(signer.public)
    except KeyFileError as exc:
        raise ConfigError(f"governance.signing_key_file: {exc}") from exc
    for key_path, name in (
        (public, "governance.public_key_file"),
        *((k, f"governance.keys.{i}") for i, k in enumerate(keys)),
    ):
        if key_path is None:
            continue
        try:
            publics.append(load_public(key_path))
        except KeyFileError as exc:
            raise ConfigError(f"{name}: {exc}") from exc
    witness = doc.get("witness")
    if witness is not None and not publics:
        raise ConfigError(
            "governance.witness: checkpoints are signed; set "
            "governance.signing_key_file (veil governance keygen), or "
            "public_key_file for a configuration that only verifies"
        )
    if witness is not None and not witness.startswith("https://"):
        witness = str(path(witness))
    return GovernanceConfig(
        signing_key_file=signing,
        public_key_file=public,
        keys=keys,
        witness=witness,
        checkpoint_s=float(doc["checkpoint_s"]),
        signer=signer,
        keyring=Keyring.of(publics),
    )


def validate(document: Any) -> None:
    """Raise ConfigError naming the path of the first bad key."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    found = schema_errors.locate(errors[0])
    if found.kind == "unknown":
        raise ConfigError(f"{found.dotted('')}: unknown key")
    if found.kind == "missing":
        raise ConfigError(f"{found.dotted('')}: required key is missing")
    raise ConfigError(f"{found.dotted('(top level)')}: {found.error.message}")


def _store_url(url: str) -> str:
    """``upstream.url`` without a trailing slash; ConfigError naming it when its host or port
    cannot be used (the schema checks only the scheme)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"upstream.url: {url!r} is not a usable URL ({exc})") from exc
    if not parts.hostname or port == 0:
        raise ConfigError(f"upstream.url: {url!r} names no host and port to connect to")
    return url.rstrip("/")


def _keep(rows: str, keep: list[str]) -> tuple[str, ...]:
    """``upstream.keep``, checked against the rows pointer: no member holds another."""

    def tokens(pointer: str) -> tuple[str, ...]:
        return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:])

    def overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        return a[: len(b)] == b or b[: len(a)] == a

    rows_tokens = tokens(rows)
    for number, pointer in enumerate(keep):
        if overlap(tokens(pointer), rows_tokens):
            raise ConfigError(
                f"upstream.keep.{number}: {pointer!r} overlaps the rows array "
                f"{rows!r}; keep names members beside the rows, never around "
                "or inside them"
            )
        for other in keep[:number]:
            if overlap(tokens(pointer), tokens(other)):
                raise ConfigError(f"upstream.keep.{number}: {pointer!r} overlaps {other!r}")
    return tuple(keep)


def _resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path (three slashes) relative to the config file's directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str((base_dir / url[len(prefix) :]).resolve())
    return url
