"""Veil's configuration: one YAML file, validated once at start-up into frozen dataclasses."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from veil.errors import ConfigError
from veil.governance.signing import KeyFileError, Keyring, Signer, load_public


@dataclass(frozen=True)
class FieldPointers:
    id: str = "/id"
    actor: str = "/user"
    actor_type: str = "/actorType"
    timestamp: str = "/timestamp"


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    routes: tuple[str, ...]
    rows: str = "/data"
    keep: tuple[str, ...] = ()  # envelope members returned beside the rows (JSON pointers)
    fields: FieldPointers = field(default_factory=FieldPointers)
    application_values: tuple[str, ...] = ("application",)
    forward_headers: tuple[str, ...] = ("Authorization",)
    timeout_s: float = 10.0
    max_body_bytes: int = 64 * 1024 * 1024
    pool_size: int = 32


@dataclass(frozen=True)
class JwtConfig:
    issuer: str | None = None
    audience: str | None = None
    hs256_secret: str | None = None
    jwks: dict[str, Any] | None = None
    leeway_s: float = 30.0


@dataclass(frozen=True)
class OidcConfig:
    """The identity provider the console signs in with (authorization code flow + PKCE)."""

    issuer: str
    client_id: str
    redirect_url: str
    client_secret: str | None = None
    scopes: tuple[str, ...] = ("openid", "profile", "email")


@dataclass(frozen=True)
class IdentityConfig:
    mode: str = "jwt"
    jwt: JwtConfig = field(default_factory=JwtConfig)
    principal_claims: tuple[str, ...] = ("upn", "preferred_username", "email")
    header: str = "X-Forwarded-User"
    secret_header: str = "X-Veil-Gateway-Secret"
    shared_secret: str | None = None
    bootstrap_admins: tuple[str, ...] = ()
    oidc: OidcConfig | None = None


@dataclass(frozen=True)
class PolicyConfig:
    engine: str = "embedded"
    dir: Path = Path("policies")
    opa_url: str = "http://127.0.0.1:8181"
    opa_bundle: bool = False
    timeout_s: float = 2.0
    watch_s: float = 0.0  # poll the policy directory this often for a hot reload; 0: off
    reload_on_sighup: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    threads: int = 8
    max_body_bytes: int = 1024 * 1024  # request bodies above this get 413 before being read


@dataclass(frozen=True)
class StorageConfig:
    url: str = "sqlite:///veil.db"
    timeout_s: float = 5.0


@dataclass(frozen=True)
class RevealConfig:
    session_ttl_s: int = 900
    require_justification: bool = True


@dataclass(frozen=True)
class GovernanceConfig:
    """The governance log's keys (files, never the database) and its witness."""

    signing_key_file: Path | None = None
    public_key_file: Path | None = None
    keys: tuple[Path, ...] = ()
    witness: str | None = None  # a JSON Lines file path, or an https:// endpoint
    checkpoint_s: float = 10.0
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
    user_param: str = "user"
    since_param: str = "since"
    until_param: str = "until"
    limit_param: str = "limit"
    cursor_param: str = "cursor"
    next: str = "/next"  # JSON pointer to the next page's cursor in the answer
    columns: tuple[ConsoleColumn, ...] = (ConsoleColumn("Activity", "/activity"),)


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = False
    secret_key: str | None = None
    session_ttl_s: int = 8 * 3600
    page_size: int = 50
    activities: ConsoleActivities = field(default_factory=ConsoleActivities)


@dataclass(frozen=True)
class ScimConfig:
    """SCIM 2.0 provisioning under /scim/v2; off (404) while no token is configured."""

    token: str | None = None
    token_env: str | None = None
    actor: str = "scim:provisioning"
    max_body_bytes: int = 16 * 1024 * 1024

    @property
    def enabled(self) -> bool:
        return bool(self.token)


@dataclass(frozen=True)
class Config:
    upstream: UpstreamConfig
    managed_domains: tuple[str, ...] = ()
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    reveal: RevealConfig = field(default_factory=RevealConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    scim: ScimConfig = field(default_factory=ScimConfig)


def schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, shipped in the package."""
    text = resources.files("veil").joinpath("config.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None,
         require_secrets: bool = True) -> Config:
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
    return from_dict(document if document is not None else {}, base_dir=path.parent, env=env,
                     require_secrets=require_secrets)


# HS256 keys shorter than the hash (RFC 7518, section 3.2) are refused.
MIN_HS256_SECRET_BYTES = 32


def from_dict(
    document: Any, base_dir: Path | None = None, env: dict[str, str] | None = None,
    require_secrets: bool = True,
) -> Config:
    """Validate a parsed configuration document and resolve it into a Config."""
    validate(document)
    env = dict(os.environ) if env is None else env
    base_dir = base_dir or Path.cwd()
    up = document["upstream"]
    identity = document.get("identity", {})
    jwt_doc = identity.get("jwt", {})
    policy = document.get("policy", {})
    policy_dir = Path(policy.get("dir", "policies"))
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

    mode = identity.get("mode", "jwt")
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
    hs256 = secret("identity.jwt.hs256_secret_env",
                   jwt_doc.get("hs256_secret_env") if mode == "jwt" else None)
    if hs256 is not None and len(hs256.encode()) < MIN_HS256_SECRET_BYTES:
        raise ConfigError(
            f"identity.jwt.hs256_secret_env: the secret in {jwt_doc['hs256_secret_env']} is "
            f"{len(hs256.encode())} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} "
            "(RFC 7518, 3.2). Make one with: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'")
    if mode == "jwt":
        if hs256 is None and jwks is None and (require_secrets
                                               or "hs256_secret_env" not in jwt_doc):
            raise ConfigError("identity.jwt: set hs256_secret_env or jwks_file to verify tokens")
        for key in ("issuer", "audience"):
            if key not in jwt_doc:
                raise ConfigError(f"identity.jwt.{key}: required key is missing in jwt mode")
    shared = secret("identity.secret_env",
                    identity.get("secret_env") if mode == "header" else None)
    if mode == "header" and shared is None and require_secrets:
        raise ConfigError("identity.secret_env: header mode needs a shared gateway secret")

    oidc = None
    if "oidc" in identity:
        oidc_doc = identity["oidc"]
        oidc = OidcConfig(
            issuer=oidc_doc["issuer"].rstrip("/"),
            client_id=oidc_doc["client_id"],
            redirect_url=oidc_doc["redirect_url"],
            client_secret=secret("identity.oidc.client_secret_env",
                                 oidc_doc.get("client_secret_env")),
            scopes=tuple(oidc_doc.get("scopes", ["openid", "profile", "email"])),
        )
        if "openid" not in oidc.scopes:
            raise ConfigError("identity.oidc.scopes: must include 'openid'")
    console = _console(document.get("console", {}), secret)
    if console.activities.route is not None and console.activities.route not in up["routes"]:
        raise ConfigError(f"console.activities.route: {console.activities.route} is not one of "
                          "upstream.routes; the console asks the store only through Veil")

    fields = up.get("fields", {})
    scim = document.get("scim", {})
    scim_token_env = scim.get("token_env")
    return Config(
        upstream=UpstreamConfig(
            url=up["url"].rstrip("/"),
            routes=tuple(up["routes"]),
            rows=up.get("rows", "/data"),
            keep=_keep(up.get("rows", "/data"), up.get("keep", [])),
            fields=FieldPointers(**fields),
            application_values=tuple(up.get("application_values", ["application"])),
            forward_headers=tuple(up.get("forward_headers", ["Authorization"])),
            timeout_s=float(up.get("timeout_s", 10)),
            max_body_bytes=up.get("max_body_bytes", 64 * 1024 * 1024),
            pool_size=up.get("pool_size", 32),
        ),
        managed_domains=tuple(
            d.lower() for d in document.get("organization", {}).get("managed_domains", [])
        ),
        identity=IdentityConfig(
            mode=mode,
            jwt=JwtConfig(
                issuer=jwt_doc.get("issuer"),
                audience=jwt_doc.get("audience"),
                hs256_secret=hs256,
                jwks=jwks,
                leeway_s=float(jwt_doc.get("leeway_s", 30)),
            ),
            principal_claims=tuple(
                identity.get("principal_claims", ["upn", "preferred_username", "email"])
            ),
            header=identity.get("header", "X-Forwarded-User"),
            secret_header=identity.get("secret_header", "X-Veil-Gateway-Secret"),
            shared_secret=shared,
            bootstrap_admins=_bootstrap_admins(identity.get("bootstrap_admins", [])),
            oidc=oidc,
        ),
        policy=PolicyConfig(
            engine=policy.get("engine", "embedded"),
            dir=policy_dir,
            opa_url=policy.get("opa_url", "http://127.0.0.1:8181").rstrip("/"),
            opa_bundle=policy.get("opa_bundle", False),
            timeout_s=float(policy.get("timeout_s", 2)),
            watch_s=float(policy.get("watch_s", 0)),
            reload_on_sighup=policy.get("reload_on_sighup", False),
        ),
        server=ServerConfig(**document.get("server", {})),
        storage=StorageConfig(
            url=_resolve_sqlite_url(document.get("storage", {}).get("url", "sqlite:///veil.db"),
                                    base_dir),
            timeout_s=float(document.get("storage", {}).get("timeout_s", 5)),
        ),
        reveal=RevealConfig(**document.get("reveal", {})),
        governance=governance_config(document.get("governance", {}), base_dir),
        console=console,
        # An unset or empty variable leaves the endpoint off (404), as no scim section does.
        scim=ScimConfig(
            token=env.get(scim_token_env) or None if scim_token_env else None,
            token_env=scim_token_env,
            actor=scim.get("actor", "scim:provisioning"),
            max_body_bytes=scim.get("max_body_bytes", 16 * 1024 * 1024),
        ),
    )


def _bootstrap_admins(values: list[str]) -> tuple[str, ...]:
    """The configured admins as principals (SPEC "Principal"); a bad one stops start-up."""
    from veil import principal

    admins = []
    for index, value in enumerate(values):
        normalized = principal.key(value)
        if normalized is None:
            raise ConfigError(f"identity.bootstrap_admins.{index}: {value!r} is not a valid "
                              f"principal: {principal.problem(value)}")
        admins.append(normalized)
    return tuple(admins)


def _console(doc: dict[str, Any], secret: Any) -> ConsoleConfig:
    """The console section; an enabled console needs the key that signs its cookies."""
    enabled = bool(doc.get("enabled", False))
    key = secret("console.secret_key_env", doc.get("secret_key_env") if enabled else None)
    if enabled and key is None:
        raise ConfigError("console.secret_key_env: an enabled console needs the name of an "
                          "environment variable holding the key that signs its cookies")
    if key is not None and len(key) < 32:
        raise ConfigError("console.secret_key_env: the cookie signing key must be at least "
                          "32 characters")
    activities = dict(doc.get("activities", {}))
    if "columns" in activities:
        activities["columns"] = tuple(ConsoleColumn(**c) for c in activities["columns"])
    return ConsoleConfig(enabled=enabled, secret_key=key,
                         session_ttl_s=doc.get("session_ttl_s", 8 * 3600),
                         page_size=doc.get("page_size", 50),
                         activities=ConsoleActivities(**activities))



def governance_config(doc: dict[str, Any], base_dir: Path) -> GovernanceConfig:
    """Resolve the key files (relative to the config file) and load the keys."""

    def path(value: str) -> Path:
        found = Path(value)
        return found if found.is_absolute() else base_dir / found

    signing = path(doc["signing_key_file"]) if "signing_key_file" in doc else None
    public = path(doc["public_key_file"]) if "public_key_file" in doc else None
    keys = tuple(path(k) for k in doc.get("keys", []))
    signer = None
    publics = []
    try:
        if signing is not None:
            signer = Signer.from_file(signing)
            publics.append(signer.public)
    except KeyFileError as exc:
        raise ConfigError(f"governance.signing_key_file: {exc}") from exc
    for key_path, name in ((public, "governance.public_key_file"),
                           *((k, f"governance.keys.{i}") for i, k in enumerate(keys))):
        if key_path is None:
            continue
        try:
            publics.append(load_public(key_path))
        except KeyFileError as exc:
            raise ConfigError(f"{name}: {exc}") from exc
    witness = doc.get("witness")
    if witness is not None and not publics:
        raise ConfigError("governance.witness: checkpoints are signed; set "
                          "governance.signing_key_file (veil governance keygen), or "
                          "public_key_file for a configuration that only verifies")
    if witness is not None and not witness.startswith("https://"):
        witness = str(path(witness))
    return GovernanceConfig(signing_key_file=signing, public_key_file=public, keys=keys,
                            witness=witness, checkpoint_s=float(doc.get("checkpoint_s", 10)),
                            signer=signer, keyring=Keyring.of(publics))


def validate(document: Any) -> None:
    """Raise ConfigError naming the path of the first bad key."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    error = errors[0]
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unexpected = sorted(k for k in error.instance if k not in allowed)
        parts.append(unexpected[0])
        raise ConfigError(f"{'.'.join(parts)}: unknown key")
    if error.validator == "required":
        missing = error.message.split("'")[1]
        parts.append(missing)
        raise ConfigError(f"{'.'.join(parts)}: required key is missing")
    where = ".".join(parts) or "(top level)"
    raise ConfigError(f"{where}: {error.message}")


def _keep(rows: str, keep: list[str]) -> tuple[str, ...]:
    """``upstream.keep``, checked against the rows pointer: no member holds another."""

    def tokens(pointer: str) -> tuple[str, ...]:
        return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:])

    def overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        return a[:len(b)] == b or b[:len(a)] == a

    rows_tokens = tokens(rows)
    for number, pointer in enumerate(keep):
        if overlap(tokens(pointer), rows_tokens):
            raise ConfigError(f"upstream.keep.{number}: {pointer!r} overlaps the rows array "
                              f"{rows!r}; keep names members beside the rows, never around "
                              "or inside them")
        for other in keep[:number]:
            if overlap(tokens(pointer), tokens(other)):
                raise ConfigError(f"upstream.keep.{number}: {pointer!r} overlaps {other!r}")
    return tuple(keep)


def _resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path (three slashes) relative to the config file's directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str((base_dir / url[len(prefix):]).resolve())
    return url
