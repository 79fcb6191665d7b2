"""The demo's walk-through: HTTP calls that are printed as ``curl`` commands and that the tests
run exactly as printed (same method, path, headers and body), so the printed commands work.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from veil.filtering import REVEAL_HEADER

_VARIABLE = re.compile(r"\$([A-Z_]+)")


@dataclass(frozen=True)
class Step:
    """One call of the walk-through. ``path`` and ``body`` may name shell variables ($START)."""

    note: str
    method: str
    base: str  # the variable holding the server's URL: "VEIL" or "STORE"
    path: str
    token: str | None = None  # the variable holding the bearer token
    body: dict[str, Any] | None = None
    reveal: bool = False  # send the reveal session header with $SESSION
    capture: tuple[str, str] | None = None  # (variable, member of the JSON answer)
    expect: int = 200
    before: str | None = None  # what to do before this step (e.g. wait a minute)


def steps(admin: str, group: str = "hr") -> list[Step]:
    """The walk-through, in order."""
    hr_since = f"/api/activities?department={group}&since=$START&limit=5"
    return [
        Step(
            "The store, queried directly: no identity, nothing hidden.",
            "GET",
            "STORE",
            "/api/activities?limit=3",
        ),
        Step(
            "The same query through Veil, as the admin: same answer, same shape.",
            "GET",
            "VEIL",
            "/api/activities?limit=3",
            token="ADMIN_TOKEN",
        ),
        Step(
            "As a plain user, with the store's own filters passed through.",
            "GET",
            "VEIL",
            "/api/activities?activity=FileDownloaded&limit=3",
            token="USER_TOKEN",
        ),
        Step(
            f"Make the group '{group}' private from now on; keep the moment it starts.",
            "POST",
            "VEIL",
            "/veil/v1/privacy-groups",
            token="ADMIN_TOKEN",
            body={"group": group},
            capture=("START", "start"),
            expect=201,
        ),
        Step(
            f"The store keeps logging {group}'s new activities...",
            "GET",
            "STORE",
            hr_since,
            before=f"Wait a minute or two for {group} to be active, then:",
        ),
        Step(
            "...but through Veil they are gone, for every caller, admins included (R1, R3).",
            "GET",
            "VEIL",
            hr_since,
            token="ADMIN_TOKEN",
        ),
        Step(
            f"{group}'s activities from before it was made private stay visible (forward only).",
            "GET",
            "VEIL",
            f"/api/activities?department={group}&until=$START&limit=3",
            token="ADMIN_TOKEN",
        ),
        Step(
            "A plain user cannot opt in to see private activities.",
            "POST",
            "VEIL",
            "/veil/v1/reveal-sessions",
            token="USER_TOKEN",
            body={"acknowledge_audit": True, "justification": "curious"},
            expect=403,
        ),
        Step(
            f"Another admin grants the view-private permission to {admin} (only admins can "
            "hold it, and nobody grants it to themselves).",
            "POST",
            "VEIL",
            "/veil/v1/private-viewers",
            token="APPROVER_TOKEN",
            body={"principal": admin},
            expect=201,
        ),
        Step(
            "Open a reveal session: acknowledge that it is audited and say why.",
            "POST",
            "VEIL",
            "/veil/v1/reveal-sessions",
            token="ADMIN_TOKEN",
            body={
                "acknowledge_audit": True,
                "justification": "Investigating ticket SEC-1042 (data exfiltration alert)",
            },
            capture=("SESSION", "id"),
            expect=201,
        ),
        Step(
            f"Query with the session: {group}'s private activities come back, and the reveal "
            "is written to the governance log before they leave Veil (R4, R7).",
            "GET",
            "VEIL",
            hr_since,
            token="ADMIN_TOKEN",
            reveal=True,
        ),
        Step(
            "Read the governance log: who revealed what, when, and why.",
            "GET",
            "VEIL",
            "/veil/v1/governance-log?action=activities_revealed",
            token="ADMIN_TOKEN",
        ),
        Step(
            "Verify the governance log's hash chain (R10).",
            "GET",
            "VEIL",
            "/veil/v1/governance-log/verify",
            token="ADMIN_TOKEN",
        ),
        Step(
            "End the reveal session.",
            "DELETE",
            "VEIL",
            "/veil/v1/reveal-sessions/$SESSION",
            token="ADMIN_TOKEN",
            expect=204,
        ),
    ]


def curl(step: Step) -> str:
    """The step as a shell command (POSIX sh, needs curl and python3)."""
    words = ["curl", "-s"]
    if step.method != "GET":
        words += ["-X", step.method]
    words.append(f'"${step.base}{step.path}"')
    if step.token:
        words += ["-H", f'"Authorization: Bearer ${step.token}"']
    if step.reveal:
        words += ["-H", f'"{REVEAL_HEADER}: $SESSION"']
    if step.body is not None:
        words += [
            "-H",
            "'Content-Type: application/json'",
            "-d",
            shlex.quote(json.dumps(step.body)),
        ]
    command = " ".join(words)
    if step.capture is not None:
        variable, member = step.capture
        reader = f'import json,sys; print(json.load(sys.stdin)["{member}"])'
        return f"{variable}=$({command} | python3 -c '{reader}') && echo \"{variable}=${variable}\""
    if step.expect == 204:
        return command + " -o /dev/null -w '%{http_code}\\n'"
    return command + " | python3 -m json.tool"


def script(walk: list[Step]) -> str:
    """The numbered walk-through, ready to paste."""
    lines: list[str] = []
    for number, step in enumerate(walk, 1):
        if step.before:
            lines.append(f"# {step.before}")
        lines.append(f"# {number}. {step.note}")
        lines.append(curl(step))
        lines.append("")
    return "\n".join(lines)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Substitute ``$NAME`` as the shell would; an unknown name is an error, not an empty
    string."""
    return _VARIABLE.sub(lambda m: variables[m.group(1)], text)


def run(step: Step, variables: dict[str, str], http: requests.Session) -> requests.Response:
    """Make the step's call as the printed command does; record a captured value in
    ``variables``."""
    headers = {}
    if step.token:
        headers["Authorization"] = f"Bearer {variables[step.token]}"
    if step.reveal:
        headers[REVEAL_HEADER] = variables["SESSION"]
    data = None
    if step.body is not None:
        headers["Content-Type"] = "application/json"
        data = expand(json.dumps(step.body), variables).encode()
    url = variables[step.base] + expand(step.path, variables)
    response = http.request(step.method, url, headers=headers, data=data, timeout=30)
    if step.capture is not None and response.status_code == step.expect:
        variable, member = step.capture
        variables[variable] = str(response.json()[member])
    return response
