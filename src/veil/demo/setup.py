"""The compose file's one-shot set-up: import the demo store's groups into Veil, print tokens.

``python -m veil.demo.setup --config /etc/veil/veil.yaml --veil http://veil:8080
--store http://store:9000`` waits until Veil answers, imports the store's departments as
groups through Veil's API (as the first bootstrap admin), and prints ready-to-paste
``export`` lines with the addresses the host reaches and tokens for an admin and a plain user
(``docker compose logs setup`` shows them again).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import requests

from veil import config as config_module
from veil import tokens
from veil.demo.runner import PLAIN_USER, import_groups
from veil.errors import VeilError

TOKEN_TTL_S = 7 * 86400


def wait_until_up(url: str, timeout_s: float) -> None:
    """Wait for ``url/healthz`` to answer 200; raise VeilError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with requests.Session() as http:
        http.trust_env = False
        while True:
            try:
                if http.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise VeilError(f"Veil did not answer at {url}/healthz within {timeout_s:g} s")
            time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m veil.demo.setup", description=__doc__)
    parser.add_argument(
        "--config",
        default=os.environ.get("VEIL_CONFIG"),
        help="Veil's configuration (default: $VEIL_CONFIG)",
    )
    parser.add_argument("--veil", required=True, help="Veil's URL from here")
    parser.add_argument("--store", required=True, help="the demo store's URL from here")
    parser.add_argument("--public-veil", help="Veil's URL from the host (default: --veil)")
    parser.add_argument("--public-store", help="the store's URL from the host (default: --store)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for Veil (default 120)"
    )
    args = parser.parse_args(argv)
    try:
        if not args.config:
            raise VeilError("give --config FILE or set VEIL_CONFIG")
        cfg = config_module.load(args.config)
        if not cfg.identity.bootstrap_admins:
            raise VeilError(
                "identity.bootstrap_admins is empty: the set-up imports groups as "
                "the first bootstrap admin"
            )
        admin = cfg.identity.bootstrap_admins[0]
        admin_token = tokens.mint(cfg, admin, TOKEN_TTL_S)
        user_token = tokens.mint(cfg, PLAIN_USER, TOKEN_TTL_S)
        wait_until_up(args.veil, args.timeout)
        groups = import_groups(args.store, args.veil, admin_token)
    except VeilError as exc:
        print(f"veil setup: {exc.detail}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{g['id']} ({len(g['members'])})" for g in groups)
    print(
        "\n".join(
            [
                f"Veil is ready; groups imported from the demo store: {sizes}",
                f"Tokens for admin {admin} and plain user {PLAIN_USER}, valid 7 days. Paste:",
                "",
                f"export VEIL={args.public_veil or args.veil} "
                f"STORE={args.public_store or args.store}",
                f"export ADMIN_TOKEN={admin_token}",
                f"export USER_TOKEN={user_token}",
                "",
                'curl -s "$VEIL/api/activities?limit=3" -H "Authorization: Bearer $ADMIN_TOKEN"',
                "# then the README's walk-through (make the group 'hr' private, reveal, verify).",
            ]
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
