"""The ``veil`` command line: serve, demo, policy, governance, and management for scripts."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veil import __version__
from veil.errors import VeilError


def _config(args: argparse.Namespace, require_secrets: bool = True) -> Any:
    from veil import config

    path = args.config or os.environ.get("VEIL_CONFIG")
    if not path:
        raise VeilError("give --config FILE or set VEIL_CONFIG")
    return config.load(path, require_secrets=require_secrets)


def _storage(args: argparse.Namespace, cfg: Any = None) -> Any:
    """The configured storage; commands that only touch it need no identity secret."""
    from veil.storage import open_storage

    cfg = cfg if cfg is not None else _config(args, require_secrets=False)
    return open_storage(
        cfg.storage.url, cfg.storage.timeout_s, cfg.identity.bootstrap_admins, cfg.governance
    )


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def cmd_serve(args: argparse.Namespace) -> int:
    from veil.server import serve

    path = args.config or os.environ.get("VEIL_CONFIG")
    if not path:
        raise VeilError("give --config FILE or set VEIL_CONFIG")
    serve(path, args.host, args.port)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from veil import tokens
    from veil.errors import Conflict

    cfg = _config(args)
    if args.sub is None:
        if not (args.admin and cfg.identity.bootstrap_admins):
            raise VeilError("give --sub PRINCIPAL (with --admin alone: a bootstrap admin)")
        principal = cfg.identity.bootstrap_admins[0]
    else:
        principal = tokens.checked_principal(args.sub)
    token = tokens.mint(cfg, principal, args.ttl)
    if args.admin and principal not in cfg.identity.bootstrap_admins:
        storage = _storage(args, cfg)
        try:
            storage.add_admin(principal, _actor(args))
            print(f"veil: {principal} added to the admin registry (audited)", file=sys.stderr)
        except Conflict:
            pass  # already an admin
        finally:
            storage.close()
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from veil.demo import run_demo

    return run_demo(
        host=args.host,
        port=args.port,
        store_port=args.store_port,
        data_dir=args.data_dir,
        policy_dir=args.policy_dir,
        seed=args.seed,
        rate_per_minute=args.rate,
    )


def cmd_policy(args: argparse.Namespace) -> int:
    from veil.policytools import commands

    directory = Path(args.dir) if args.dir else _policy_dir(args)
    if args.policy_command == "test":
        return commands.cmd_test(
            directory,
            pattern=args.run,
            coverage=args.coverage,
            threshold=args.threshold,
            opa_coverage=args.opa_coverage,
        )
    if args.policy_command == "eval":
        return commands.cmd_eval(
            directory, Path(args.input), Path(args.data) if args.data else None, as_json=args.json
        )
    return commands.cmd_check(directory)


def _policy_dir(args: argparse.Namespace) -> Path:
    if args.config or os.environ.get("VEIL_CONFIG"):
        directory: Path = _config(args).policy.dir
        return directory
    from veil.config import PolicyConfig

    return PolicyConfig().dir  # policy.dir's default


def cmd_governance(args: argparse.Namespace) -> int:
    from veil import governance

    if args.governance_command == "keygen":
        return _keygen(Path(args.out))
    if args.file:
        verdict = _verify_offline(Path(args.file), args.public_key, args.witness)
        out = verdict.as_dict()
        if not args.public_key:
            out["signatures"] = "not checked: give --public-key"
        _print(out)
        return 0 if verdict.ok else 1
    if args.public_key or args.witness:
        raise VeilError(
            "--public-key and --witness go with --file (offline verification); "
            "a live verify uses the configuration's governance section"
        )
    storage = _storage(args)
    try:
        if args.governance_command == "verify":
            verdict = storage.verify_log()
            _print(verdict.as_dict())
            return 0 if verdict.ok else 1
        lines = (governance.canonical(record).decode() + "\n" for record in storage.iter_log())
        if args.output in (None, "-"):
            sys.stdout.writelines(lines)
        else:
            with open(args.output, "w", encoding="utf-8") as out:
                out.writelines(lines)
        return 0
    finally:
        storage.close()


def _keygen(out: Path) -> int:
    from veil.governance import signing

    try:
        kid = signing.generate(out)
    except OSError as exc:
        raise VeilError(f"cannot write the key: {exc}") from exc
    _print({"private_key": str(out), "public_key": f"{out}.pub", "key_id": kid})
    return 0


def _verify_offline(
    path: Path, public_keys: Sequence[str] | None, witness: Sequence[str] | None
) -> Any:
    """A verdict for an export file, from nothing but the given files; never a traceback."""
    from veil import governance
    from veil.governance import signing

    def unreadable(problem: str, reason: str) -> governance.Verdict:
        return governance.Verdict(False, 0, None, problem, reason)

    if witness and not public_keys:
        return unreadable(
            "no_public_key",
            "--witness needs --public-key: checkpoints are "
            "only evidence when their signatures are checked",
        )
    try:
        keyring = signing.Keyring.from_files(Path(k) for k in public_keys) if public_keys else None
    except signing.KeyFileError as exc:
        return unreadable("unreadable_key", str(exc))
    checkpoints: list[Any] | None = None
    if witness:
        checkpoints = []
        for name in witness:
            try:
                checkpoints += governance.read_checkpoints(Path(name))
            except (OSError, ValueError) as exc:
                return unreadable("unreadable_witness", f"{name}: {exc}")
    try:
        with Path(path).open("rb"):
            pass
    except OSError as exc:
        return unreadable("unreadable_file", f"{path}: {exc.strerror or exc}")
    try:
        return governance.verify(
            governance.read_jsonl(path), keyring=keyring, checkpoints=checkpoints
        )
    except (OSError, ValueError) as exc:  # read errors mid-file, undecodable bytes
        return unreadable("unreadable_file", f"{path}: {exc}")


def _actor(args: argparse.Namespace) -> str:
    from veil.identity import normalize_principal

    return normalize_principal(args.actor or f"cli:{getpass.getuser()}")


def cmd_manage(args: argparse.Namespace) -> int:
    storage = _storage(args)
    try:
        return _manage(args, storage)
    finally:
        storage.close()  # writes the witness checkpoint of what was appended


def _manage(args: argparse.Namespace, storage: Any) -> int:
    from veil.identity import normalize_principal

    actor = _actor(args)
    kind, action = args.command, args.action
    if kind == "groups":
        if action == "list":
            _print(storage.list_groups())
        elif action == "put":
            # one principal a line, taken as written (never trimmed: docs/rules.md, "Principal")
            members = (
                [m for m in Path(args.members_file).read_text("utf-8").splitlines() if m]
                if args.members_file
                else list(args.members)
            )
            _print(storage.put_group(args.id, args.name or args.id, members, actor)[1])
        else:
            storage.delete_group(args.id, actor)
    elif kind == "privacy-groups":
        if action == "list":
            _print(storage.list_privacy_groups())
        elif action == "add":
            _print(storage.add_privacy_group(args.group, actor))
        else:
            storage.remove_privacy_group(args.group, actor)
    else:
        principal = normalize_principal(args.principal) if action != "list" else ""
        lister, adder, remover = {
            "admins": (storage.list_admins, storage.add_admin, storage.remove_admin),
            "private-viewers": (storage.list_viewers, storage.grant_viewer, storage.revoke_viewer),
        }[kind]
        if action == "list":
            _print(lister())
        elif action == "add":
            adder(principal, actor)
        else:
            remover(principal, actor)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="veil",
        description=(
            "Veil: a policy-as-code privacy sidecar for activity logs. It hides private "
            "activities from every answer and audits every reveal."
        ),
    )
    top.add_argument("--version", action="version", version=f"veil {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="configuration file (default: $VEIL_CONFIG)")
        return p

    serve = with_config(sub.add_parser("serve", help="run Veil under gunicorn"))
    serve.add_argument("--host", help="bind address (overrides server.host)")
    serve.add_argument("--port", type=int, help="port (overrides server.port)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo",
        help="run a demo activity store with Veil and its admin "
        "console (demo sign-in) in front of it",
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument(
        "--port", type=int, default=8080, help="Veil's port (default 8080; 0: any free port)"
    )
    demo.add_argument(
        "--store-port",
        type=int,
        default=9000,
        help="the demo store's port (default 9000; 0: any free port)",
    )
    demo.add_argument(
        "--data-dir",
        help="where the demo keeps its SQLite file (default: a new temporary directory)",
    )
    demo.add_argument(
        "--policy-dir",
        help="policy directory (default: ./policies when it "
        "holds .rego files, else the policies/ of the source checkout Veil runs "
        "from; a plain `pip install` carries no policies, so give --policy-dir "
        "or run where policies/ is)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=7,
        help="seed of the synthetic organisation and activities (default 7)",
    )
    demo.add_argument(
        "--rate",
        type=float,
        default=60.0,
        help="activities a minute in business hours (default 60)",
    )
    demo.set_defaults(func=cmd_demo)

    token = with_config(
        sub.add_parser(
            "token",
            help="print a signed development token (HS256 set-ups)",
            description="Print an HS256 JWT that the configured Veil accepts, signed with the "
            "secret in the environment variable named by identity.jwt.hs256_secret_env. Claims: "
            "iss and aud from identity.jwt, sub and the first of identity.principal_claims set to "
            "the principal, iat, and exp (required by Veil). Tokens carry no roles: --admin makes "
            "the principal an admin in Veil's admin registry (audited) unless it is a bootstrap "
            "admin. Use tokens from your identity provider in production.",
        )
    )
    token.add_argument(
        "--sub",
        metavar="PRINCIPAL",
        help="the caller's UPN or e-mail (with --admin alone: the first identity.bootstrap_admins)",
    )
    token.add_argument(
        "--admin",
        action="store_true",
        help="make sure the principal is an admin (adds it to the registry)",
    )
    token.add_argument(
        "--ttl",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="lifetime in seconds (default 3600, at most 30 days)",
    )
    token.add_argument(
        "--actor", help="who the governance log names for --admin (default cli:$USER)"
    )
    token.set_defaults(func=cmd_token)

    policy = sub.add_parser(
        "policy",
        help="check, test and explain Rego policies",
        description="Tools for policy authors; see policies/README.md.",
    )
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    dir_help = "policy directory (default: policy.dir of --config/$VEIL_CONFIG, else ./policies)"
    ptest = with_config(
        psub.add_parser(
            "test",
            help="run the Rego unit tests (test_* rules of *_test.rego files)",
            description="Run every test_* rule of every *_test.rego file with the embedded "
            "engine: one PASS/FAIL line per test and a summary. Exits 1 when a test fails or a "
            "file does not parse.",
        )
    )
    ptest.add_argument("dir", nargs="?", help=dir_help)
    ptest.add_argument(
        "--run", metavar="REGEX", help="only tests whose data.<package>.<rule> matches this regex"
    )
    ptest.add_argument(
        "--coverage",
        action="store_true",
        help="print line coverage of each policy file (tests excluded)",
    )
    ptest.add_argument(
        "--threshold",
        type=float,
        metavar="PERCENT",
        help="exit 1 when total coverage is below PERCENT (implies --coverage)",
    )
    ptest.add_argument(
        "--opa-coverage",
        action="store_true",
        help="also run the tests on OPA's own evaluator and print OPA's line "
        "coverage (needs: pip install --ignore-requires-python "
        "opa-golib-python-bindings); exit 1 when a test fails there",
    )
    pcheck = with_config(
        psub.add_parser(
            "check",
            help="parse, compile and check entry points and built-ins",
            description="Parse every file as Rego v1, refuse v0 syntax and built-ins that OPA or "
            "the embedded engine lacks (or leaves undefined, such as http.send), require "
            "data.veil.privacy.decision and private_rows, and evaluate every rule once. When "
            "OPA's evaluator is installed (opa-golib-python-bindings), the set is also compiled "
            "and evaluated by it. Problems are printed as file:line:col: message.",
        )
    )
    pcheck.add_argument("dir", nargs="?", help=dir_help)
    peval = with_config(
        psub.add_parser(
            "eval",
            help="evaluate the decision for a sample input and explain hidden rows",
            description="Evaluate data.veil.privacy.decision for an input shaped like the one "
            "Veil sends (missing fields get defaults) and print, for each private row, the "
            "private_rows rule(s) that made it private.",
        )
    )
    peval.add_argument("dir", nargs="?", help=dir_help)
    peval.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="JSON input: {caller, request, reveal_session_id, session, now_ns, "
        "rows: [{index, id, actor, actor_type, ts_ns, raw}]}",
    )
    peval.add_argument(
        "--data",
        metavar="FILE",
        help="JSON data.veil document: {groups, privacy_groups, admins, viewers, "
        "managed_domains} (default: empty)",
    )
    peval.add_argument("--json", action="store_true", help="print the result as JSON")
    policy.set_defaults(func=cmd_policy)

    gov = sub.add_parser(
        "governance",
        help="verify, export or sign the governance log",
        description="Verify the governance log live (from the storage of "
        "--config) or offline (an export file, the public keys and the "
        "witness's checkpoints), export it, or make a signing key.",
    )
    gsub = gov.add_subparsers(dest="governance_command", required=True, metavar="ACTION")
    gverify = with_config(
        gsub.add_parser(
            "verify",
            help="verify the hash chain, its signatures and the witness",
            description="Report the first record whose content, order or presence changed, "
            "with a reason. Live: the storage, keys and witness of --config. Offline: --file "
            "with --public-key (repeat it for rotated keys) and --witness. Exits 0 when the log "
            "verifies, 1 when it does not.",
        )
    )
    gverify.add_argument("--file", help="verify an exported JSON Lines file instead")
    gverify.add_argument(
        "--public-key",
        action="append",
        metavar="FILE.pub",
        help="with --file: a PEM public key whose signatures are accepted "
        "(repeatable); without it signatures are not checked",
    )
    gverify.add_argument(
        "--witness",
        action="append",
        metavar="CHECKPOINTS.jsonl",
        help="with --file and --public-key: a witness file of signed "
        "checkpoints (repeatable), to find cut-off records",
    )
    gexport = with_config(gsub.add_parser("export", help="export as JSON Lines, with signatures"))
    gexport.add_argument("--output", "-o", help="file to write (default: standard output)")
    gexport.set_defaults(file=None, public_key=None, witness=None)
    gkeygen = gsub.add_parser(
        "keygen",
        help="make an Ed25519 signing key (FILE, mode 0600) and FILE.pub",
        description="Write a new Ed25519 private key to FILE (PEM, mode 0600) and its public "
        "key to FILE.pub; refuses to overwrite. Set governance.signing_key_file to FILE; give "
        "FILE.pub to verifiers. To rotate, make a new key, point signing_key_file at it and "
        "add the old FILE.pub to governance.keys.",
    )
    gkeygen.add_argument("--out", required=True, metavar="FILE", help="private key file")
    gkeygen.set_defaults(file=None, public_key=None, witness=None)
    gov.set_defaults(func=cmd_governance)

    def manage(
        name: str, help_: str, build: Callable[[argparse._SubParsersAction[Any]], None]
    ) -> None:
        p = sub.add_parser(name, help=help_)
        actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
        build(actions)
        p.set_defaults(func=cmd_manage)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_config(p)
        p.add_argument("--actor", help="who the governance log names (default cli:$USER)")
        return p

    def groups(a: argparse._SubParsersAction[Any]) -> None:
        common(
            a.add_parser("list", help="list groups with where each came from (source: api or scim)")
        )
        put = common(a.add_parser("put", help="import or replace a group"))
        put.add_argument("id")
        put.add_argument("members", nargs="*", help="member UPNs")
        put.add_argument("--name", help="display name (default: the id)")
        put.add_argument("--members-file", help="a file with one UPN per line")
        common(a.add_parser("delete", help="delete a group")).add_argument("id")

    def privacy(a: argparse._SubParsersAction[Any]) -> None:
        common(a.add_parser("list", help="list privacy groups"))
        common(a.add_parser("add", help="make a group private from now on")).add_argument("group")
        common(a.add_parser("remove", help="end a group's privacy")).add_argument("group")

    def principals(a: argparse._SubParsersAction[Any]) -> None:
        common(a.add_parser("list", help="list"))
        common(a.add_parser("add", help="add")).add_argument("principal")
        common(a.add_parser("remove", help="remove")).add_argument("principal")

    manage("groups", "manage imported groups", groups)
    manage("privacy-groups", "manage privacy groups", privacy)
    manage("admins", "manage the admin registry", principals)
    manage("private-viewers", "grant or revoke the view-private permission", principals)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except VeilError as exc:
        print(f"veil: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
