"""The ``dkimbot`` command line (SPEC §7). Thin: parse arguments, open the bot, call jobs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING

from bot.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from bot.app import actions
    from bot.core.rows import CaseRow
    from bot.flows.runtime import Bot

log = logging.getLogger("dkimbot")


CASE_HELP = "a case reference, e.g. DKIM-0007"
DOMAIN_HELP = "a domain name, e.g. hotel-sakura.jp (IDN allowed)"
JSON_HELP = "print JSON instead of text (for scripts)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dkimbot", description="DKIM/DMARC onboarding mail bot")
    p.add_argument("--config", metavar="FILE", help="TOML config (default: the embedded default)")
    p.add_argument("--state-dir", metavar="DIR", help="override [state] dir")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object per log line (time, level, message, case), for log shippers")
    sub = p.add_subparsers(dest="command", required=True)
    _add_pass_commands(sub)  # in the order --help lists them
    _add_case_commands(sub)
    _add_operator_commands(sub)
    return p


def _add_pass_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """A pass, the daemon, and the read-only looks: status, show, check."""
    run = sub.add_parser("run", help="one pass: intake, due DNS checks, sending")
    run.add_argument("--once", action="store_true", help="run one pass and exit (for cron)")
    run.add_argument("--wait", action="store_true", help="wait for a running pass instead of exiting")
    sub.add_parser("daemon", help="run passes on a schedule until SIGTERM/SIGINT")
    st = sub.add_parser("status", help="list cases")
    st.add_argument("--json", action="store_true", help=JSON_HELP)
    sh = sub.add_parser("show", help="one case and its event log")
    sh.add_argument("case", help=CASE_HELP)
    sh.add_argument("--json", action="store_true", help=JSON_HELP)
    ck = sub.add_parser("check", help="check a domain's DNS without changing any state")
    ck.add_argument("domain", help=DOMAIN_HELP)
    ck.add_argument("--selector",
                    help="the DKIM selector to check (default: the domain's case's, else [keys] selector for today)")
    ck.add_argument("--json", action="store_true", help=JSON_HELP)


def _add_case_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Staff actions on one case, the digest, and signing from stdin."""
    for name, text in (("resend", "send the facility its record again"),
                       ("cancel", "stop a case"),
                       ("retry", "check a case now; resume an escalated case"),
                       ("confirm", "vouch for a managed-zone request by hand: publish without the admin's reply")):
        c = sub.add_parser(name, help=text)
        c.add_argument("case", help=CASE_HELP)
    dg = sub.add_parser("digest", help="send the daily staff digest now")
    dg.add_argument("--print", action="store_true", help="only print it; send nothing, record nothing")
    sub.add_parser("sign", help="sign a message from stdin with the installed key(s) of its From domain")
    pf = sub.add_parser("proof", help="send a DKIM-signed probe to the [proof] mailbox now; "
                                      "a later pass reports the receiver's verdict")
    pf.add_argument("case", help=CASE_HELP)
    rk = sub.add_parser("rekey", help="before the DKIM step: a new key "
                                      "(e.g. --bits 1024 for a host that cuts long records)")
    rk.add_argument("case", help=CASE_HELP)
    rk.add_argument("--bits", type=int, default=1024, help="RSA key size (default 1024: fits one 255-byte string)")
    nt = sub.add_parser("note", help="add a staff note to a case's event log")
    nt.add_argument("case", help=CASE_HELP)
    nt.add_argument("text", nargs="+", help="the note (the words are joined by spaces)")


def _add_operator_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The staff site, rotation, adoption, backup, the doctor, DMARC reports, the demo."""
    web = sub.add_parser("web", help="serve the staff site (see README: create an account first)")
    web.add_argument("--host", help="listen address (default [web] host, 127.0.0.1)")
    web.add_argument("--port", type=int, help="listen port (default [web] port, 8025)")
    staff = sub.add_parser("staff", help="staff site accounts")
    staff_sub = staff.add_subparsers(dest="staff_command", required=True)
    for name, text in (("add", "add an account; the password is read from stdin or asked for"),
                       ("remove", "remove an account and end its sessions"),
                       ("passwd", "set a new password (stdin or a prompt); ends its sessions")):
        sa = staff_sub.add_parser(name, help=text)
        sa.add_argument("name", help="the account name")
    staff_sub.add_parser("list", help="list the accounts").set_defaults(name=None)
    rot = sub.add_parser("rotate", help="start a key rotation: new selector, record mailed, switch once it verifies")
    rot.add_argument("domain", help=DOMAIN_HELP)
    ad = sub.add_parser("adopt", help="take in domains already signed by hand (OpenDKIM tables) "
                                      "whose records are right")
    ad.add_argument("--keytable", metavar="PATH", help="default: [signer] keytable")
    ad.add_argument("--signingtable", metavar="PATH", help="default: [signer] signingtable")
    ad.add_argument("--dry-run", action="store_true", help="only list what would be adopted")
    bk = sub.add_parser("backup", help="a consistent copy of the state (database, keys, signer files) into FILE")
    bk.add_argument("file", help="the backup file to write")
    rs = sub.add_parser("restore", help="put a backup into an empty state directory")
    rs.add_argument("file", help="a file made by dkimbot backup")
    rs.add_argument("--force", action="store_true", help="write over a state directory that is not empty")
    sub.add_parser("doctor", help="check every connection and permission against the real servers, changing nothing")
    rp = sub.add_parser("reports", help="what DMARC aggregate reports say about a domain's mail ([reports])")
    rp.add_argument("domain", help=DOMAIN_HELP)
    rp.add_argument("--days", type=int, default=30, help="the window, in days up to today (default 30)")
    rp.add_argument("--json", action="store_true", help=JSON_HELP)
    demo = sub.add_parser("demo", help="play the whole flow on the embedded default, no server needed")
    demo.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")


def _setup_logging(verbose: bool, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from bot.app.logformat import JsonFormatter, JsonStderr

        handler.setFormatter(JsonFormatter())
        sys.stderr = JsonStderr(sys.stderr)  # the handler above keeps the real stream
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # imapclient's debug log is a protocol trace holding whole mails (addresses, names):
    # never on stderr, even with --verbose.
    for private in ("imapclient", "mail.log"):
        logging.getLogger(private).setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.log_format)
    if args.command == "demo":
        from bot.app.demo import run_demo

        return run_demo(keep=args.keep)
    try:
        cfg = load_config(args.config, state_dir=args.state_dir)
    except ConfigError as exc:
        if args.command == "doctor":  # the doctor's first line: the config, with the fix
            print(f"✖ config: {exc} — fix: correct the file; every other check needs it")
        print(f"dkimbot: {exc}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, cfg)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one clear line, details at -v
        log.debug("unhandled error", exc_info=True)
        print(f"dkimbot: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _backup_restore(cfg: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from bot.app.backup import BackupError, make_backup, restore_backup

    try:
        if args.command == "backup":
            summary = make_backup(cfg, Path(args.file))
        else:
            summary = restore_backup(cfg, Path(args.file), force=args.force)
    except BackupError as exc:
        print(f"dkimbot: {exc}", file=sys.stderr)
        return 1
    for line in summary.lines:
        print(line)
    return 0


#: Commands that may make, read or install private keys: the passphrase is checked first.
_WRITING_COMMANDS = frozenset({"run", "daemon", "rotate", "rekey", "confirm", "retry", "resend", "proof", "adopt"})


def _dispatch(args: argparse.Namespace, cfg: Config) -> int:
    command: str = args.command
    # Only when there is a key to try: the key module pulls in cryptography, which an idle
    # pass of a fresh install must not pay for (benchmarks/bench_startup.py).
    if command in _WRITING_COMMANDS and any((cfg.state_dir / "keys").glob("*/*.pem")):
        from bot.adapters.keys import passphrase_problem

        # Before anything is written: a wrong [keys] passphrase would otherwise store new
        # keys under it and fail every case whose key it cannot read (issue 11).
        problem = passphrase_problem(cfg.state_dir / "keys", cfg.keys.passphrase)
        if problem:
            print(f"dkimbot: {problem}", file=sys.stderr)
            return 2
    if command in _CONFIG_COMMANDS:
        return _CONFIG_COMMANDS[command](cfg, args)
    from bot.app.jobs import Bot

    bot = Bot.open(cfg)
    try:
        if command in _BOT_COMMANDS:
            return _BOT_COMMANDS[command](bot, args)
        case = bot.store.find_case(args.case)
        if case is None:
            print(f"dkimbot: no case {args.case}", file=sys.stderr)
            return 2
        return _case_command(bot, case, args)
    finally:
        bot.close()


# -- commands on the config alone (each opens what it needs) -----------------------------------


def _sign(cfg: Config, args: argparse.Namespace) -> int:
    from bot.adapters.signer import sign_filter

    return sign_filter(cfg, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


def _doctor(cfg: Config, args: argparse.Namespace) -> int:
    from bot.app.doctor import run_doctor

    return run_doctor(cfg, sys.stdout)


def _run(cfg: Config, args: argparse.Namespace) -> int:
    """``run --once``: one pass under the pass lock (cron's command)."""
    from bot.app.jobs import PassLocked, run_locked_pass

    try:
        result = run_locked_pass(cfg, wait=args.wait)
    except PassLocked as exc:
        print(f"dkimbot: {exc}; not starting a second one", file=sys.stderr)
        return 75  # EX_TEMPFAIL: cron will simply try again
    for err in result.errors:
        print(f"dkimbot: {err}", file=sys.stderr)
    log.info("pass done: %d messages, %d checks, %d mails sent", result.messages,
             result.checks, result.mails_sent)
    return 1 if result.errors else 0


def _daemon(cfg: Config, args: argparse.Namespace) -> int:
    from bot.app.scheduler import run_daemon

    return run_daemon(cfg)


def _web(cfg: Config, args: argparse.Namespace) -> int:
    from bot.web.server import serve

    return serve(cfg, host=args.host, port=args.port)


def _staff(cfg: Config, args: argparse.Namespace) -> int:
    from bot.web.accounts import staff_command

    return staff_command(cfg, args.staff_command, args.name, sys.stdin, sys.stdout, sys.stderr)


# -- commands on an open bot -------------------------------------------------------------------


def _digest(bot: Bot, args: argparse.Namespace) -> int:
    from bot.flows.digest import digest_command

    return digest_command(bot, args.print)


def _rotate(bot: Bot, args: argparse.Namespace) -> int:
    from bot.app import actions

    return _act(lambda: actions.rotate(bot, args.domain, cli_actor()))


def _adopt(bot: Bot, args: argparse.Namespace) -> int:
    from bot.app.jobs import pass_lock
    from bot.flows.adopt import adopt_command

    with pass_lock(bot.cfg, wait=True):
        return adopt_command(bot, args.keytable, args.signingtable, args.dry_run)


def _case_command(bot: Bot, case: CaseRow, args: argparse.Namespace) -> int:
    """``show``, ``rekey``, ``note`` and the simple actions (resend, cancel, retry, confirm,
    proof) on one case."""
    from bot.app import actions

    if args.command == "show":
        from bot.app.show import show_case

        return show_case(bot.store, case, args.json)
    if args.command == "rekey":
        return _act(lambda: actions.rekey(bot, case, cli_actor(), args.bits))
    if args.command == "note":
        return _act(lambda: actions.note(bot, case, cli_actor(), " ".join(args.text)))
    return _act(lambda: actions.SIMPLE[args.command](bot, case, cli_actor()))


def _reports(bot: Bot, domain: str, days: int, as_json: bool) -> int:
    """`dkimbot reports DOMAIN`: messages and DMARC passes per source, from stored reports."""
    from bot.core.dmarcstats import percent
    from bot.flows.dmarcnotify import summary

    if days <= 0:
        print("dkimbot: --days must be more than 0", file=sys.stderr)
        return 2
    typed = domain
    domain, problem = _domain_arg(typed)
    if problem is not None:  # "bad domain" is a typo, not a domain without reports
        print(f"dkimbot: {typed!r} is not a domain name: {problem}", file=sys.stderr)
        return 2
    if not bot.cfg.reports.enabled:
        print("dkimbot: DMARC aggregate reports are not being collected: [reports] is not "
              "configured (README: \"DMARC aggregate reports\"); only reports stored earlier are shown",
              file=sys.stderr)
    result = summary(bot.store, domain, days, bot.clock().date())
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
        return 0
    print(f"{domain}: {result.messages} messages in {days} days, {result.dmarc_pass} passed DMARC "
          f"({percent(result.dmarc_pass, result.messages)})")
    for s in result.sources:
        who = "ours" if s.ours else (s.name or "other")
        advice = f"  needs: {', '.join(s.advice)}" if s.advice else ""
        print(f"  {s.ip:<39} {who:<30} {s.messages:>8} msgs {s.dmarc_pass:>8} pass  "
              f"{', '.join(s.reporters)}{advice}")
    if not result.sources:
        print("  no reports stored for this domain in the window")
    return 0


def cli_actor() -> str:
    """Who the event log says took an action from the command line: ``cli:<OS user>``,
    and through sudo ``cli:<who ran sudo> (sudo <OS user>)``, so that "root" or a shared
    service account does not hide the person (the site records the account name). The
    ``cli:`` keeps a shell user apart from a site account of the same name."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container uid)
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER", "").strip()
    return f"cli:{sudo} (sudo {user})" if sudo and sudo != user else f"cli:{user}"


def _act(action: Callable[[], actions.ActionResult]) -> int:
    """Run one shared staff action (bot/app/actions.py) and print what it did."""
    from bot.app.actions import ActionError

    try:
        result = action()
    except ActionError as exc:
        print(f"dkimbot: {exc.message}", file=sys.stderr)
        return exc.exit_code
    for line in result.lines:
        print(line)
    return 0


def _status(bot: Bot, as_json: bool) -> int:
    cases = bot.store.list_cases()
    if as_json:
        print(json.dumps([c.to_json() for c in cases], ensure_ascii=False, indent=2))
        return 0
    if not cases:
        print("no cases")
        return 0
    print(f"{'case':<10} {'state':<15} {'domain':<28} {'selector':<20} {'updated':<25} facility")
    for c in cases:
        print(f"{c.ref:<10} {c.state:<15} {(c.domain or '-'):<28} {(c.selector or '-'):<20} "
              f"{c.updated_at.isoformat():<25} {c.facility or '-'}")
    return 0


def _domain_arg(typed: str) -> tuple[str, str | None]:
    """A domain typed on the command line: lower case, no final dot, IDNA (punycode);
    with why it is not a domain name (None when it is)."""
    from bot.core.records import validate_domain

    domain = typed.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    try:
        validate_domain(domain)
    except ValueError as exc:
        return domain, str(exc)
    return domain, None


def _check(cfg: Config, args: argparse.Namespace) -> int:
    """Read-only: the store is consulted (for a case's key) but never written."""
    from bot.adapters.store import Store
    from bot.checks.dnscheck import run_check_command
    from bot.core.records import validate_selector

    # A typo ("hotel sakura.jp", "info@hotel.jp") is named as such, not sent to DNS
    # and reported back as a DNS error.
    domain, problem = _domain_arg(args.domain)
    if problem is None and args.selector is not None:
        try:
            validate_selector(args.selector)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"dkimbot: {args.domain!r} cannot be checked: {problem}", file=sys.stderr)
        return 2
    selector = args.selector
    expected = None
    db = cfg.state_dir / "dkimbot.sqlite3"
    if db.exists():
        store = Store(db)
        try:
            keys = store.domain_keys(domain)
            cases = [c for c in store.cases_for_domain(domain) if c.selector]
            if selector is None and cases:
                selector = cases[-1].selector
            for k in keys:
                if k["selector"] == selector:
                    expected = k["public_b64"]
        finally:
            store.close()
    if selector is None:
        from datetime import datetime

        from bot.core.records import render_selector

        selector = render_selector(cfg.keys.selector, datetime.now(UTC))
    from bot.adapters.dnsclient import DnsClient

    return int(run_check_command(DnsClient(cfg.dns), cfg.service, domain, selector, expected,
                                 args.json, sys.stdout))


#: Commands that need the config only; the rest open the bot (the store), and those
#: not in ``_BOT_COMMANDS`` name a case.
_CONFIG_COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "sign": _sign, "check": _check, "backup": _backup_restore, "restore": _backup_restore,
    "doctor": _doctor, "run": _run, "daemon": _daemon, "web": _web, "staff": _staff,
}
_BOT_COMMANDS: dict[str, Callable[[Bot, argparse.Namespace], int]] = {
    "status": lambda bot, args: _status(bot, args.json),
    "digest": _digest,
    "rotate": _rotate,
    "reports": lambda bot, args: _reports(bot, args.domain, args.days, args.json),
    "adopt": _adopt,
}


if __name__ == "__main__":
    raise SystemExit(main())
