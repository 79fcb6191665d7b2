"""An OPA server for the tests: OPA's Policy and Data API over OPA's own Go evaluator.

No OPA binary can be installed on these machines, so this serves, over real HTTP on
127.0.0.1, the part of OPA's REST API that Veil uses, with OPA's status codes and error bodies,
and compiles and evaluates with OPA's ``v1/rego`` package itself (PyPI
``opa-golib-python-bindings``, import ``opa_bindings``): the ``opa`` engine's tests run against
real OPA semantics, not against the embedded engine.

    GET /health[?bundles]                         200 {} (500 while a bundle is not activated)
    GET /v1/policies · GET|PUT|DELETE /v1/policies/{id}
    GET|POST|PUT|PATCH|DELETE /v1/data/{path}     POST evaluates with {"input": ...}
    POST /v1/query                                an ad-hoc query: {"query", "input"}

It can stand for a server started with a bundle (policies it owns and its roots, which the
Policy and Data API may not write), go down (connections reset) and come back, be restarted (it
loses every policy and document it was given, as OPA does) and closed. Each served request is
recorded for assertions.

Without the bindings, ``require_opa_bindings`` skips the test with a one-line reason, and
fails it under CI (``CI=true``), where ``.ci/run`` installs them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

OPA_BINDINGS_MISSING = (
    "OPA's evaluator is not installed: pip install --ignore-requires-python "
    "opa-golib-python-bindings"
)
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MISSING = object()


class QuietHandler(WSGIRequestHandler):
    """One request per connection (a single-threaded server must not wait on a kept-alive
    one), and no access log."""

    protocol_version = "HTTP/1.0"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class OpaHttpError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass
class Bundle:
    """What a bundle would hold: policy modules by id, and the roots it owns."""

    modules: dict[str, str]
    roots: tuple[str, ...] = ("veil/privacy",)
    activated: bool = True


@dataclass
class OpaState:
    policies: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    generation: int = 0


def bundle_from(directory: Path, roots: Iterable[str] = ("veil/privacy",)) -> Bundle:
    """A bundle of every non-test ``.rego`` file under ``directory``, as ``opa build`` makes."""
    modules = {
        f"bundle/{p.relative_to(directory).as_posix()}": p.read_text("utf-8")
        for p in sorted(directory.rglob("*.rego"))
        if not p.name.endswith("_test.rego")
    }
    return Bundle(modules, tuple(roots))


def require_opa_bindings() -> Any:
    """The ``opa_bindings`` module; skip the test without it (fail under ``CI=true``)."""
    try:
        import opa_bindings
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(OPA_BINDINGS_MISSING + " (required in CI)", pytrace=False)
        pytest.skip(OPA_BINDINGS_MISSING)
    return opa_bindings


def segments(path: str) -> list[str]:
    return [s for s in path.strip("/").split("/") if s]


def rego_ref(parts: list[str]) -> str:
    ref = "data"
    for part in parts:
        ref += f".{part}" if IDENTIFIER.match(part) else f"[{json.dumps(part)}]"
    return ref


def package_path(text: str) -> list[str]:
    match = re.search(r"^\s*package\s+([A-Za-z0-9_.]+)", text, re.MULTILINE)
    return match.group(1).split(".") if match else []


def overlaps(path: list[str], root: list[str]) -> bool:
    """OPA's isPathOwned: one path is a prefix of the other."""
    return all(a == b for a, b in zip(path, root, strict=False))


class FakeOpa:
    """The OPA REST API on 127.0.0.1 in a thread (one request at a time, like a small OPA)."""

    def __init__(self, bundle: Bundle | None = None) -> None:
        self.opa = require_opa_bindings()
        self.bundle = bundle
        self.state = OpaState()
        self.requests: list[tuple[str, str]] = []
        self.decision_delay_s = 0.0
        self.down = False
        self._lock = threading.Lock()
        self._compiled: tuple[int, Any] | None = None  # (generation, OPA engine)
        self._activate_bundle()
        self._server = self._listen()
        self.port = self._server.server_port
        threading.Thread(target=self._serve, daemon=True, name=f"fake-opa-{self.port}").start()

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Answer again (after ``stop``), with whatever state was kept."""
        self.down = False

    def stop(self) -> None:
        """Go down: every connection is reset, as when nothing serves the port.

        The port stays reserved (binding it again could race another socket on the machine).
        """
        self.down = True

    def restart(self) -> None:
        """Come back empty: every policy and document is forgotten, as an OPA process does."""
        self.reset()
        self.down = False

    def forget_data(self) -> None:
        """Lose every data document but keep the policies (an OPA started with the policies
        mounted, e.g. ``opa run --server policies/``, after a restart)."""
        with self._lock:
            self.state = OpaState(
                policies=dict(self.state.policies), generation=self.state.generation + 1
            )

    def reset(self) -> None:
        with self._lock:
            self.state = OpaState(generation=self.state.generation + 1)
            self.requests = []
            self.decision_delay_s = 0.0
        self._activate_bundle()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _listen(self) -> BaseWSGIServer:
        server = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=False, request_handler=QuietHandler
        )
        fake = self

        def verify_request(request: Any, client_address: Any) -> bool:
            if fake.down:  # reset the connection instead of answering
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            return True

        server.verify_request = verify_request  # type: ignore[method-assign]  # per instance
        return server

    def _serve(self) -> None:
        self._server.serve_forever()

    def _activate_bundle(self) -> None:
        if self.bundle is not None and self.bundle.activated:
            with self._lock:
                self.state.policies.update(self.bundle.modules)
                self.state.generation += 1

    # ---- what tests look at -------------------------------------------------------------

    def policy_ids(self) -> list[str]:
        with self._lock:
            return sorted(self.state.policies)

    def document(self, path: str = "") -> Any:
        """A base document (what was written through the Data API), or None."""
        with self._lock:
            node: Any = self.state.data
            for part in segments(path):
                if not isinstance(node, dict) or part not in node:
                    return None
                node = node[part]
            return json.loads(json.dumps(node))

    def calls(self, method: str, prefix: str = "") -> int:
        return sum(1 for m, p in self.requests if m == method and p.startswith(prefix))

    # ---- the HTTP API -------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append((request.method, request.path))
        try:
            response = self._route(request)
        except OpaHttpError as exc:
            body = {"code": exc.code, "message": exc.message, **exc.extra}
            response = Response(
                json.dumps(body) + "\n", status=exc.status, content_type="application/json"
            )
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/health" and method == "GET":
            if "bundles" in request.args and self.bundle is not None and not self.bundle.activated:
                return _json({"error": "one or more bundles are not activated"}, 500)
            return _json({})
        if path == "/v1/policies" and method == "GET":
            with self._lock:
                listed = [
                    {"id": i, "raw": raw, "ast": {}}
                    for i, raw in sorted(self.state.policies.items())
                ]
            return _json({"result": listed})
        if path.startswith("/v1/policies/"):
            module_id = path[len("/v1/policies/") :]
            if method == "GET":
                return self._policy_get(module_id)
            if method == "PUT":
                return self._policy_put(module_id, request.get_data(as_text=True))
            if method == "DELETE":
                return self._policy_delete(module_id)
        if path == "/v1/query" and method == "POST":
            return self._query_post(request.get_data())
        if path == "/v1/data" or path.startswith("/v1/data/"):
            parts = segments(path[len("/v1/data") :])
            if method == "GET":
                return self._evaluate(parts, MISSING, warn=False)
            if method == "POST":
                return self._data_post(parts, request.get_data())
            if method == "PUT":
                return self._data_put(
                    parts, _body(request), request.headers.get("If-None-Match") == "*"
                )
            if method == "PATCH":
                return self._data_patch(parts, _body(request))
            if method == "DELETE":
                return self._data_delete(parts)
        return Response(status=405 if path.startswith("/v1/") else 404)

    def _policy_get(self, module_id: str) -> Response:
        with self._lock:
            raw = self.state.policies.get(module_id)
        if raw is None:
            raise OpaHttpError(
                404, "resource_not_found", f'storage_not_found_error: policy id "{module_id}"'
            )
        return _json({"result": {"id": module_id, "raw": raw, "ast": {}}})

    def _policy_put(self, module_id: str, text: str) -> Response:
        with self._lock:
            self._check_module_scope(module_id, text)
            modules = {**self.state.policies, module_id: text}
            errors = _compile_errors(modules)
            if errors:
                raise OpaHttpError(
                    400,
                    "invalid_parameter",
                    "error(s) occurred while compiling module(s)",
                    errors=errors,
                )
            if self.state.policies.get(module_id) != text:
                self.state.policies[module_id] = text
                self.state.generation += 1
        return _json({})

    def _policy_delete(self, module_id: str) -> Response:
        with self._lock:
            if module_id not in self.state.policies:
                raise OpaHttpError(
                    404, "resource_not_found", f'storage_not_found_error: policy id "{module_id}"'
                )
            self._check_module_scope(module_id, self.state.policies[module_id])
            del self.state.policies[module_id]
            self.state.generation += 1
        return _json({})

    def _check_module_scope(self, module_id: str, text: str) -> None:
        if self.bundle is None:
            return
        if module_id in self.bundle.modules:
            raise OpaHttpError(
                400, "invalid_parameter", f'path {module_id} is owned by bundle "bundle"'
            )
        self._check_scope(package_path(text))

    def _check_scope(self, path: list[str]) -> None:
        if self.bundle is None:
            return
        for root in self.bundle.roots:
            if root == "" or overlaps(path, segments(root)):
                raise OpaHttpError(
                    400, "invalid_parameter", f'path {"/".join(path)} is owned by bundle "bundle"'
                )

    def _data_post(self, parts: list[str], raw: bytes) -> Response:
        try:
            request = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise OpaHttpError(
                400, "invalid_parameter", f"body contains malformed input document: {exc}"
            ) from exc
        if self.decision_delay_s:
            time.sleep(self.decision_delay_s)
        return self._evaluate(
            parts,
            request.get("input", MISSING) if isinstance(request, dict) else MISSING,
            warn=True,
        )

    def _query_post(self, raw: bytes) -> Response:
        """An ad-hoc query, ``{"query", "input"}``: ``{"result": [bindings, ...]}``, or ``{}``
        when it is undefined (OPA omits the empty result)."""
        try:
            request = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise OpaHttpError(
                400, "invalid_parameter", f"body contains malformed input document: {exc}"
            ) from exc
        if not isinstance(request, dict) or not isinstance(request.get("query"), str):
            raise OpaHttpError(400, "invalid_parameter", "missing required 'query' value")
        if self.decision_delay_s:
            time.sleep(self.decision_delay_s)
        bindings = self._query(request["query"], request.get("input"))
        return _json({"result": bindings} if bindings else {})

    def _query(self, query: str, input_document: Any) -> Any:
        """OPA's evaluator on one query; its errors as OPA's server answers them."""
        try:
            return self._engine().eval_query(query, input_document)
        except self.opa.OpaError as exc:
            raise OpaHttpError(
                500,
                "internal_error",
                "error(s) occurred while evaluating query",
                errors=_opa_errors(exc, "eval_error"),
            ) from exc

    def _evaluate(self, parts: list[str], input_document: Any, warn: bool) -> Response:
        bindings = self._query(
            f"result := {rego_ref(parts)}", None if input_document is MISSING else input_document
        )
        body: dict[str, Any] = {}
        if bindings:
            body["result"] = bindings[0]["result"]
        if input_document is MISSING and warn:
            body["warning"] = {
                "code": "api_usage_warning",
                "message": "'input' key missing from the request",
            }
        return _json(body)

    def _engine(self) -> Any:
        """OPA's evaluator with the current policies and data (rebuilt when they change; the
        input is given per query, so nothing stays behind)."""
        with self._lock:
            generation = self.state.generation
            if self._compiled is None or self._compiled[0] != generation:
                engine = self.opa.OpaEngine()
                for module_id, text in sorted(self.state.policies.items()):
                    engine.add_policy(module_id, text)
                engine.add_data(json.loads(json.dumps(self.state.data)))
                self._compiled = (generation, engine)
            return self._compiled[1]

    def _data_put(self, parts: list[str], value: Any, if_none_match: bool) -> Response:
        with self._lock:
            self._check_path(parts)
            if not parts:
                if not isinstance(value, dict):
                    raise OpaHttpError(400, "invalid_parameter", "root document must be an object")
                self.state.data = value
            else:
                parent = self.state.data
                for part in parts[:-1]:
                    child = parent.setdefault(part, {})
                    if not isinstance(child, dict):
                        raise OpaHttpError(
                            404,
                            "resource_not_found",
                            f"storage_not_found_error: /{'/'.join(parts)}: document missing",
                        )
                    parent = child
                if if_none_match and parts[-1] in parent:
                    return Response(status=304)
                parent[parts[-1]] = value
            self.state.generation += 1
        return Response(status=204)

    def _check_path(self, parts: list[str]) -> None:
        if parts:
            self._check_scope(parts)
        elif self.bundle is not None:
            raise OpaHttpError(
                400,
                "invalid_parameter",
                "can't write to document root with bundle roots configured",
            )

    def _data_patch(self, parts: list[str], ops: Any) -> Response:
        if not isinstance(ops, list):
            raise OpaHttpError(400, "invalid_parameter", "patch body must be an array")
        with self._lock:
            data = json.loads(json.dumps(self.state.data))  # all or nothing
            for op in ops:
                target = parts + segments(op.get("path", ""))
                self._check_path(target)
                if op.get("op") not in ("add", "remove", "replace"):
                    raise OpaHttpError(
                        400, "invalid_parameter", f"bad patch operation: {op.get('op')}"
                    )
                parent: Any = data
                for part in target[:-1]:
                    if not isinstance(parent, dict) or part not in parent:
                        raise OpaHttpError(
                            404,
                            "resource_not_found",
                            f"storage_not_found_error: /{'/'.join(target)}: document missing",
                        )
                    parent = parent[part]
                if not isinstance(parent, dict):
                    raise OpaHttpError(
                        404, "resource_not_found", f"storage_not_found_error: /{'/'.join(target)}"
                    )
                key = target[-1]
                if op["op"] in ("remove", "replace") and key not in parent:
                    raise OpaHttpError(
                        404,
                        "resource_not_found",
                        f"storage_not_found_error: /{'/'.join(target)}: document missing",
                    )
                if op["op"] == "remove":
                    del parent[key]
                else:
                    parent[key] = op.get("value")
            self.state.data = data
            self.state.generation += 1
        return Response(status=204)

    def _data_delete(self, parts: list[str]) -> Response:
        with self._lock:
            self._check_path(parts)
            parent: Any = self.state.data
            for part in parts[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if not parts or not isinstance(parent, dict) or parts[-1] not in parent:
                raise OpaHttpError(
                    404,
                    "resource_not_found",
                    f"storage_not_found_error: /{'/'.join(parts)}: document missing",
                )
            del parent[parts[-1]]
            self.state.generation += 1
        return Response(status=204)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body) + "\n", status=status, content_type="application/json")


def _body(request: Request) -> Any:
    try:
        return json.loads(request.get_data() or b"null")
    except ValueError as exc:
        raise OpaHttpError(400, "invalid_parameter", str(exc)) from exc


def _compile_errors(modules: dict[str, str]) -> list[dict[str, Any]]:
    """What OPA's compiler says about these modules together (parse, then compile)."""
    opa = require_opa_bindings()
    engine = opa.OpaEngine()
    try:
        for module_id, text in sorted(modules.items()):
            engine.add_policy(module_id, text)
        engine.eval_query("true")  # activating the modules compiles them all
    except opa.OpaError as exc:
        return _opa_errors(exc, "rego_compile_error")
    finally:
        engine.close()
    return []


_OPA_ERROR = re.compile(
    r"^(?P<file>[^\s:][^:]*):(?P<row>\d+): (?P<code>rego_[a-z_]+): "
    r"(?P<message>.*)$"
)


def _opa_errors(exc: Any, default_code: str) -> list[dict[str, Any]]:
    """OPA's error list from an ``OpaError`` ("N errors occurred:" then ``file:row: code:
    message`` lines), as the REST API lists them."""
    errors = []
    for line in str(exc.message).splitlines():
        found = _OPA_ERROR.match(line.split("occurred: ", 1)[-1].strip())
        if found:
            errors.append(
                {
                    "code": found.group("code"),
                    "message": found.group("message"),
                    "location": {
                        "file": found.group("file"),
                        "row": int(found.group("row")),
                        "col": 1,
                    },
                }
            )
    return errors or [{"code": default_code, "message": str(exc.message)}]
