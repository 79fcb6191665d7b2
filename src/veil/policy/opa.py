"""The ``opa`` engine: a real Open Policy Agent server, reached with opa-python-client.

Veil loads its policy files into OPA (Policy API) and keeps ``data.veil`` there current
(Data API), then asks ``data.veil.privacy.decision`` once per upstream answer. In
bundle mode (``policy.opa_bundle``) the policies come from OPA's own configuration (a bundle,
or files given to ``opa run``) and Veil only checks that they answer; it still writes the
state admins manage to ``data.veil`` (the bundle must leave those paths to it: roots such as
``["veil/privacy"]``, never ``"veil"`` or the whole tree).

Two invariants keep a decision from ever being made on policies without their data:
data is always written before policies, and every answer first checks that OPA still holds
the current data version (one small GET): an OPA that comes back with its policies, from a
bundle or from files given to ``opa run``, but without Veil's data is noticed at once. An
undefined decision means OPA lost Veil's state: Veil loads data and policies again and asks
once more.

Several Veil processes share one OPA, and another one's write can land between this one's
check and its query. So each query (``POST /v1/query``, one snapshot of OPA's store) returns,
beside the decision or ``actor_windows``, the state version OPA evaluated it on: an answer
from any other version than the one it is held for is never used (nor cached): Veil writes
its state again and asks once more, else fails closed. A process writes its state only if
OPA does not hold a newer version already (best effort: OPA has no compare-and-set).

Any failure (unreachable, slow past ``policy.timeout_s``, an error answer, an undefined or
malformed decision) raises PolicyError, which Veil reads as "every row private, no reveal".
A hot reload changes OPA's modules one by one and puts the previous set back if OPA refuses
one.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from opa_client import OpaClient
from opa_client.errors import (
    DeletePolicyError,
    PatchDataError,
    PolicyNotFoundError,
    RegoParseError,
    TypeException,
)

from veil.errors import PolicyError
from veil.policy import (
    DECISION,
    EMPTY_INPUT,
    DataLoader,
    Decision,
    Evaluation,
    PolicyModule,
    load_modules,
)
from veil.policy.embedded import new_engine, refers_to_raw
from veil.policy.plan import RowPlan, plan

log = logging.getLogger("veil.policy.opa")

DECISION_PATH = "veil/privacy/decision"
DATA_ROOT = "veil"
VERSION_KEY = "state_version"  # beside the state in data.veil: which state version OPA holds
POLICY_ID_PREFIX = "veil/"  # Veil's modules in OPA are "veil/<path under the policy dir>"
MAX_PUSHES = 5
# ``POST /v1/query``: the rule's value and the state version it was evaluated on, from one
# snapshot of OPA's store (``%s``: the rule's reference, e.g. data.veil.privacy.decision).
ANSWER_QUERY = f"result := %s; version := data.{DATA_ROOT}.{VERSION_KEY}"

# Evaluated by the readiness check and after (re)loading: no rows, no reveal.
PROBE_INPUT = orjson.dumps(EMPTY_INPUT)

# What the client library raises besides requests' own exceptions.
CLIENT_ERRORS = (
    requests.RequestException,
    ValueError,
    DeletePolicyError,
    PatchDataError,
    PolicyNotFoundError,
    RegoParseError,
    TypeException,
)


class PolicyRejected(PolicyError):
    """OPA refuses a policy module (it does not parse or compile there)."""


class Undefined:
    """OPA answered, but the decision is undefined (``{}`` without ``result``)."""


UNDEFINED = Undefined()
Answer = tuple[Any, int | None]  # a rule's value, and the state version OPA evaluated it on


class VeilOpaClient(OpaClient):  # type: ignore[misc]
    """opa-python-client, plus a decision query whose input is already encoded JSON.

    ``OpaClient.query_rule`` takes a dict and encodes it with the standard library; Veil's
    input is encoded once with orjson, so it is posted as it is, over the client's session.
    """

    def post_query(self, body: bytes) -> requests.Response:
        """``POST /v1/query`` (an ad-hoc query with ``{"query", "input"}``)."""
        response: requests.Response = self._session.post(
            f"{self.root_url}/query",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        )
        return response

    def policy_ids(self) -> list[str]:
        """The ids of the modules OPA holds (``GET /v1/policies``; the library's own list asks
        ``/v1/policies/``, which OPA 1.x routes to the policy with the empty id)."""
        response = self._session.get(f"{self.root_url}/policies", timeout=self.timeout)
        response.raise_for_status()
        listed = response.json().get("result") or []
        return [p["id"] for p in listed if isinstance(p, dict) and isinstance(p.get("id"), str)]


def client_for(opa_url: str, timeout_s: float) -> VeilOpaClient:
    """A client for ``policy.opa_url``; no retries inside the client: Veil decides."""
    parts = urlsplit(opa_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"policy.opa_url: {opa_url!r} is not an http(s) URL")
    if parts.path not in ("", "/") or parts.query:
        raise PolicyError(
            f"policy.opa_url: {opa_url!r} has a path; give OPA's root URL "
            "(scheme, host and port), e.g. http://127.0.0.1:8181"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return VeilOpaClient(
        host=host, port=port, ssl=parts.scheme == "https", timeout=timeout_s, retries=0
    )


def policy_id(directory: Path, module: PolicyModule) -> str:
    try:
        return POLICY_ID_PREFIX + module.path.relative_to(directory).as_posix()
    except ValueError:
        return POLICY_ID_PREFIX + module.path.name


_COMMENT = re.compile(r"#[^\n]*")
_DEFINED = re.compile(r"^(?:default\s+)?([A-Za-z_][A-Za-z0-9_]*)", re.M)
_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_KEYWORDS = frozenset({"package", "import", "else", "default"})


def load_order(modules: Sequence[PolicyModule]) -> list[PolicyModule]:
    """The modules in an order in which OPA can compile them one by one: a file that uses a
    rule defined in another file comes after it (names read from the text, comments aside;
    files in a cycle keep their order). Only an order: ``_put_policies`` puts a refused file
    again after the others."""
    texts = [_COMMENT.sub("", module.text) for module in modules]
    defines = [set(_DEFINED.findall(text)) - _KEYWORDS for text in texts]
    defined_in: dict[str, set[int]] = {}
    for n, names in enumerate(defines):
        for name in names:
            defined_in.setdefault(name, set()).add(n)
    # A rule this file defines itself (private_rows, in several files) needs no other file.
    needs = [
        {
            other
            for name in set(_NAME.findall(text)) - defines[n]
            for other in defined_in.get(name, ())
        }
        for n, text in enumerate(texts)
    ]
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(modules):
        ready = [n for n in range(len(modules)) if n not in placed and needs[n] <= placed]
        if not ready:  # a cycle: the first file left goes next
            ready = [min(set(range(len(modules))) - placed)]
        order.append(ready[0])
        placed.add(ready[0])
    return [modules[n] for n in order]


class OpaEngine:
    """Evaluates the decision in an OPA server, keeping Veil's policies and data.veil there."""

    name = "opa"

    def __init__(
        self,
        directory: Path,
        opa_url: str,
        timeout_s: float = 2.0,
        bundle: bool = False,
        modules: Sequence[PolicyModule] | None = None,
    ) -> None:
        self.directory = directory
        self.opa_url = opa_url
        self.timeout_s = timeout_s
        self.bundle = bundle
        self._client = client_for(opa_url, timeout_s)
        if bundle:
            # The bundle can change under Veil at any time: always send each row's raw JSON,
            # so a rule about raw never sees it missing.
            self._modules: list[PolicyModule] = []
            self._needs_raw = True
        else:
            # Parsed here too, so a broken policy stops start-up as it does with `embedded`.
            loaded = load_modules(directory) if modules is None else modules
            self._modules = [m for m in loaded if not m.is_test]
            self._needs_raw = refers_to_raw(new_engine(self._modules))
        self._plan = None if bundle else _opa_plan(self._modules)
        self._policy_serial = 0  # moves on with each reload
        self._raw_epoch = 0  # moves on each time a policy that reads raw starts being loaded
        self._lock = threading.RLock()
        self._load: DataLoader | None = None
        self._synced_version = -1  # the data version OPA holds for sure; -1: unknown
        self._policies_loaded = False
        self._generation = 0  # counts reloads, so concurrent failures reload once

    # ---- the Engine protocol ---------------------------------------------------------

    @property
    def needs_raw(self) -> bool:
        """Whether the policy OPA now serves reads raw rows (what ``begin`` would pin now)."""
        return self._needs_raw

    def sync(self, version: int, load: DataLoader) -> None:
        """Make OPA hold ``data.veil`` at ``version``. OPA's copy is asked for every time: an
        OPA that restarted with its policies (mounted, or from a bundle) but without Veil's
        data would otherwise decide on no state at all and hide nothing."""
        self._load = load
        try:
            held = self._held_version()
        except PolicyError:
            self._synced_version = -1
            raise
        if held == version and (self.bundle or self._policies_loaded):
            self._synced_version = version
            return
        with self._lock:
            if held is None:
                # OPA holds no state of Veil's: it restarted, and lost the policies too unless
                # they are mounted. Answers may not ask OPA at all (actors' windows cached), so
                # load them now rather than on an undefined decision.
                self._policies_loaded = False
            try:
                self._push_data(load)
                if not self.bundle and not self._policies_loaded:
                    self._load_policies()
            except PolicyError:
                self._synced_version = -1
                raise

    def evaluate(self, input_json: bytes) -> Any:
        return self.begin().evaluate(DECISION, input_json)

    def begin(self, previous: Evaluation | None = None) -> _OpaEvaluation:
        """Hold OPA's policy set and data version for one answer. OPA cannot evaluate with a
        previous policy: a hold whose input was built without raw rows fails closed if a
        policy reading raw rows was being loaded meanwhile (``previous``: an earlier hold of
        the same answer, whose input that is)."""
        # the epoch first: ``reload`` sets needs_raw before it moves the epoch on, so a hold
        # that saw needs_raw False has an epoch a later raw-reading policy moves past
        epoch = self._raw_epoch
        needs_raw = self._needs_raw
        if previous is not None:
            if not isinstance(previous, _OpaEvaluation) or previous._owner is not self:
                raise PolicyError("an evaluation can only be continued by the engine that began it")
            epoch, needs_raw = previous._raw_epoch, previous.needs_raw
        return _OpaEvaluation(self, epoch, needs_raw)

    def _evaluate(self, input_json: bytes, path: str = DECISION_PATH) -> Answer:
        """The value at ``path`` and the state version OPA evaluated it on."""
        if self._synced_version < 0:
            raise PolicyError("OPA does not hold Veil's current data.veil (see the log)")
        generation = self._generation
        result = self._post_decision(input_json, path)
        if result is UNDEFINED:
            log.warning(
                "data.veil.privacy.decision is undefined in OPA at %s; loading Veil's "
                "%s again and retrying once",
                self.opa_url,
                "data" if self.bundle else "data and policies",
            )
            self._reload(generation)
            result = self._post_decision(input_json, path)
            if isinstance(result, Undefined):
                raise PolicyError(self._undefined_detail())
        assert not isinstance(result, Undefined)
        return result

    def _write_again(self, expected: int) -> None:
        """OPA answered from another state version than ``expected`` (another process's write
        landed meanwhile): write this process's state again."""
        with self._lock:
            if self._synced_version != expected:
                return  # another thread wrote meanwhile
            if self._load is None:
                raise PolicyError("no data is known yet to write to OPA")
            try:
                self._push_data(self._load)
            except PolicyError:
                self._synced_version = -1
                raise

    def reload(self, modules: Sequence[PolicyModule]) -> None:
        """Load a new policy set into OPA; on PolicyError the previous set is put back.

        OPA's Policy API changes one module per request: a set that changes several files is
        applied file by file (a window of milliseconds), modules first added or replaced, then
        the removed ones deleted.
        """
        if self.bundle:
            raise PolicyError(
                "policy.opa_bundle is on: OPA takes Veil's policies from its "
                "bundle; publish a new bundle instead of reloading Veil"
            )
        policy = [m for m in modules if not m.is_test]
        if not policy:
            raise PolicyError(f"policy directory {self.directory} holds no policy (.rego) file")
        needs_raw = refers_to_raw(new_engine(policy))
        with self._lock:
            self._policy_serial += 1
            previous_plan, self._plan = self._plan, None  # until the new set is in
            previous, previous_raw = self._modules, self._needs_raw
            if needs_raw and not previous_raw:
                self._needs_raw = True  # inputs carry raw rows before OPA may need them
                self._raw_epoch += 1  # after: see ``begin``
            self._modules = policy
            try:
                self._load_policies()
                if Decision.read(_value(self._post_decision(PROBE_INPUT)), 0).failed:
                    raise PolicyError(
                        f"{DECISION_PATH} gives no well-formed decision with the new policy"
                    )
            except PolicyError as exc:
                self._modules = previous
                try:
                    self._load_policies()
                    self._needs_raw = previous_raw
                    self._plan = previous_plan
                except PolicyError as restore:
                    log.error(
                        "the previous policy could not be put back into OPA: %s", restore.detail
                    )
                raise PolicyError(f"OPA did not take the new policy: {exc.detail}") from exc
            self._needs_raw = needs_raw
            self._plan = _opa_plan(policy)

    def ready(self) -> bool:
        """OPA is healthy and answers the decision with Veil's current data loaded.

        A readiness probe also repairs: OPA that lost Veil's state gets it back here, even
        when no query comes.
        """
        if not self._client.check_health(query={"bundles": True} if self.bundle else None):
            return False
        try:
            stale = self._synced_version < 0 or self._held_version() != self._synced_version
            if stale:
                if self._load is None:
                    return False
                self._reload(self._generation)
            generation = self._generation
            result = self._post_decision(PROBE_INPUT)
            if result is UNDEFINED and self._load is not None:
                self._reload(generation)
                result = self._post_decision(PROBE_INPUT)
        except PolicyError as exc:
            log.warning("OPA engine not ready: %s", exc.detail)
            return False
        return not Decision.read(_value(result), 0).failed

    def close(self) -> None:
        self._client.close_connection()

    # ---- talking to OPA --------------------------------------------------------------

    def _post_decision(self, input_json: bytes, path: str = DECISION_PATH) -> Answer | Undefined:
        """The value at ``path`` (the decision) and the state version OPA evaluated it on, or
        UNDEFINED (either is undefined); PolicyError when OPA does not answer well."""
        query = ANSWER_QUERY % ("data." + path.replace("/", "."))
        body = b'{"query":' + orjson.dumps(query) + b',"input":' + input_json + b"}"
        try:
            response = self._client.post_query(body)
        except requests.Timeout as exc:
            raise PolicyError(
                f"OPA at {self.opa_url} did not answer within {self.timeout_s:g} s"
            ) from exc
        except requests.RequestException as exc:
            raise PolicyError(
                f"OPA at {self.opa_url} is unreachable: {type(exc).__name__}"
            ) from exc
        if response.status_code != 200:
            raise PolicyError(
                f"OPA answered {response.status_code} to the decision query: {_message(response)}"
            )
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise PolicyError(
                "OPA answered the decision query with a body that is not JSON"
            ) from exc
        if not isinstance(document, dict):
            raise PolicyError("OPA answered the decision query with a body that is not an object")
        bindings = document.get("result", [])
        if not isinstance(bindings, list):
            raise PolicyError("OPA answered the decision query with a result that is not a list")
        if not bindings:
            return UNDEFINED
        first = bindings[0]
        if not isinstance(first, dict) or "result" not in first:
            raise PolicyError("OPA answered the decision query without the rule's value")
        version = first.get("version")
        return first["result"], version if type(version) is int else None

    def _held_version(self) -> int | None:
        """The state version in OPA's data.veil, or None when OPA holds none."""
        try:
            body = self._client.get_data(f"{DATA_ROOT}/{VERSION_KEY}")
        except PolicyNotFoundError:
            return None
        except CLIENT_ERRORS as exc:
            raise _translate(exc, self.opa_url, "reading data.veil") from exc
        value = body.get("result")
        return value if type(value) is int else None

    def _reload(self, generation: int) -> None:
        """After OPA lost Veil's state: data first, then policies; once for many callers."""
        with self._lock:
            if generation != self._generation:
                return  # another thread reloaded since this one's failed query
            self._generation += 1
            self._policies_loaded = False
            if self._load is None:
                raise PolicyError("OPA lost Veil's state and no data is known yet to load")
            try:
                self._push_data(self._load)
                if not self.bundle:
                    self._load_policies()
            except PolicyError:
                self._synced_version = -1
                raise

    def _push_data(self, load: DataLoader) -> None:
        """Write data.veil, again until the state read after a write is the one written.

        Several Veil processes share one OPA: a process that read the state just before a
        change can write it just after another wrote the change. Reading the state again after
        each write, and writing again when it moved on, leaves OPA with the newest state.
        """
        version, data = load()
        for _ in range(MAX_PUSHES):
            held = self._held_version()
            if held is not None and held > version:
                # Another process wrote a newer state: never put an older one over it.
                latest, latest_data = load()
                if latest > version:
                    version, data = latest, latest_data
                    continue
                log.warning(
                    "OPA at %s holds state version %d, newer than the store's %d: "
                    "writing the store's",
                    self.opa_url,
                    held,
                    version,
                )
            self._write_data(version, data)
            latest, latest_data = load()
            if latest == version:
                break
            version, data = latest, latest_data
        self._synced_version = version
        log.info("data.veil (state version %d) written to OPA at %s", version, self.opa_url)

    def _write_data(self, version: int, data: dict[str, Any]) -> None:
        """One atomic JSON Patch of data.veil's keys; it leaves data.veil.privacy alone."""
        ops = [{"op": "add", "path": f"/{key}", "value": value} for key, value in data.items()]
        ops.append({"op": "add", "path": f"/{VERSION_KEY}", "value": version})
        try:
            try:
                self._client.patch_data(DATA_ROOT, ops)
            except PatchDataError as exc:
                if exc.expression != "resource_not_found":
                    raise
                # A fresh OPA has no data.veil yet: writing one key creates it.
                self._client.update_or_create_data({}, f"{DATA_ROOT}/{next(iter(data), 'groups')}")
                self._client.patch_data(DATA_ROOT, ops)
        except CLIENT_ERRORS as exc:
            raise _translate(exc, self.opa_url, "writing data.veil") from exc

    def _load_policies(self) -> None:
        """PUT every policy file; drop Veil's modules whose file is gone."""
        modules = [(policy_id(self.directory, m), m) for m in load_order(self._modules)]
        try:
            held = [i for i in self._client.policy_ids() if i.startswith(POLICY_ID_PREFIX)]
        except CLIENT_ERRORS as exc:
            raise _translate(exc, self.opa_url, "listing policies") from exc
        stale = sorted(set(held) - {module_id for module_id, _ in modules})
        try:
            self._put_policies(modules)
        except PolicyRejected:
            if not stale:
                raise
            # A rule that moved between files conflicts with its stale copy: drop those first.
            self._delete_policies(stale)
            stale = []
            self._put_policies(modules)
        self._delete_policies(stale)
        self._policies_loaded = True
        log.info(
            "%d policy module(s) from %s loaded into OPA at %s",
            len(modules),
            self.directory,
            self.opa_url,
        )

    def _put_policies(self, modules: Iterable[tuple[str, PolicyModule]]) -> None:
        """PUT every module. OPA compiles each one with the modules it already holds, so a
        file that uses a rule of a file it does not hold yet is refused: such files are put
        again after the others, for as long as each round loads at least one."""
        pending = list(modules)
        while pending:
            refused: list[tuple[str, PolicyModule, RegoParseError]] = []
            for module_id, module in pending:
                try:
                    self._client.update_policy_from_string(
                        module.text, module_id, rego_compat=False
                    )
                except RegoParseError as exc:
                    refused.append((module_id, module, exc))
                except CLIENT_ERRORS as exc:
                    raise _translate(exc, self.opa_url, f"loading policy {module_id}") from exc
            if len(refused) == len(pending):
                _, first, reason = refused[0]
                raise PolicyRejected(
                    f"OPA at {self.opa_url} rejects policy {first.path}: {reason}"
                ) from reason
            pending = [(module_id, module) for module_id, module, _ in refused]

    def _delete_policies(self, module_ids: Iterable[str]) -> None:
        for module_id in module_ids:
            try:
                self._client.delete_policy(module_id)
            except CLIENT_ERRORS as exc:
                raise _translate(exc, self.opa_url, f"removing stale policy {module_id}") from exc
            log.info("removed stale policy module %s from OPA", module_id)

    def _undefined_detail(self) -> str:
        if self.bundle:
            return (
                f"data.veil.privacy.decision is undefined in OPA at {self.opa_url}: is the "
                "bundle with Veil's policies activated?"
            )
        return (
            f"data.veil.privacy.decision is still undefined in OPA at {self.opa_url} "
            "after loading Veil's policies and data again"
        )


class _OpaEvaluation:
    """One answer's hold on OPA: fails closed if the policy set or data version moved on."""

    def __init__(self, owner: OpaEngine, raw_epoch: int, needs_raw: bool) -> None:
        self._owner = owner
        self._raw_epoch = raw_epoch
        self.needs_raw = needs_raw
        self.plan = owner._plan
        self._version = owner._synced_version  # what OPA must answer from
        self.key: Hashable = (owner._policy_serial, self._version)

    def evaluate(self, rule: str, input_json: bytes) -> Any:
        owner = self._owner
        path = rule.removeprefix("data.").replace(".", "/")
        expected = self._version
        result, version = owner._evaluate(input_json, path)
        if version != expected:
            # Another process's write landed between the check and the query: OPA answered
            # from a state this hold is not for. Write this one's state again, ask once more.
            log.warning(
                "OPA at %s answered from data.veil version %s, not %s; writing Veil's data "
                "again and asking once more",
                owner.opa_url,
                version,
                expected,
            )
            self._check_held()
            owner._write_again(expected)
            self._check_held()
            result, version = owner._evaluate(input_json, path)
            if version != expected:
                raise PolicyError(
                    f"OPA answered from data.veil version {version}, not {expected}: "
                    "another process's write is in the way"
                )
        if not self.needs_raw and owner._raw_epoch != self._raw_epoch:
            raise PolicyError(
                "the policy was reloaded while this answer was prepared (the new "
                "one reads raw rows, which the input does not carry)"
            )
        self._check_held()
        return result

    def _check_held(self) -> None:
        owner = self._owner
        if (owner._policy_serial, owner._synced_version) != self.key:
            raise PolicyError(
                "the policy or data.veil in OPA changed while this answer was decided"
            )


def _value(answer: Answer | Undefined) -> Any:
    """The rule's value of an answer (UNDEFINED stays UNDEFINED)."""
    return answer if isinstance(answer, Undefined) else answer[0]


def _opa_plan(modules: Sequence[PolicyModule]) -> RowPlan | None:
    """OPA serves the policy as written: Veil follows it only when it holds no rule of an
    author's in ``private_rows`` (those are evaluated with the whole decision)."""
    found = plan(modules)
    return found if found is not None and not found.custom else None


def _message(response: requests.Response) -> str:
    """OPA's error message (``{"code", "message"}``), or the start of the body."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200] or response.reason or "no body"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return f"{body.get('code', 'error')}: {body['message']}"
    return response.text[:200]


def _translate(exc: Exception, opa_url: str, doing: str) -> PolicyError:
    if isinstance(exc, requests.Timeout):
        return PolicyError(f"OPA at {opa_url} timed out {doing}")
    if isinstance(exc, requests.RequestException) and not isinstance(exc, ValueError):
        return PolicyError(f"OPA at {opa_url} is unreachable ({doing}): {type(exc).__name__}")
    detail = getattr(exc, "message", None) or str(exc)
    code = getattr(exc, "expression", None)
    hint = ""
    if isinstance(detail, str) and "owned by bundle" in detail:
        hint = (
            " (the bundle owns data.veil: give the bundle's .manifest roots that leave "
            'Veil\'s state to Veil, e.g. ["veil/privacy"])'
        )
    return PolicyError(
        f"OPA at {opa_url} failed {doing}: {f'{code}: ' if code else ''}{detail}{hint}"
    )
