"""The staff site: a Starlette application over the bot's SQLite store.

Pages read through a read-only connection opened per request (WAL: a page never waits
for a pass, and a pass never waits for a page). Writes are small and few: a login, a
logout, a wrong password. Actions go through ``bot/app/actions.py``, the code the CLI
runs, and so take the pass lock like ``dkimbot resend`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.adapters.store import Store
from bot.app import actions
from bot.config import Config
from bot.flows.runtime import Bot, utcnow
from bot.web import auth, charts, dmarccharts, views
from bot.web.accounts import verify

log = logging.getLogger("dkimbot")
HERE = Path(__file__).parent
FLASH_COOKIE = "dkimbot_flash"
# No script anywhere on the site; styles and images only from the site itself.
SECURITY_HEADERS = [
    (b"content-security-policy",
     (b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
      b"frame-ancestors 'none'; base-uri 'none'")),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Pure ASGI middleware: the headers above on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


class StaffSite:
    """Routes and the little state they share (config, templates, clock)."""

    def __init__(self, cfg: Config, clock: Callable[[], datetime] = utcnow) -> None:
        self.cfg = cfg
        self.clock = clock
        self.db_path = cfg.state_dir / "dkimbot.sqlite3"
        Store(self.db_path).close()  # create or upgrade the schema once; pages then only read
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.globals.update(state_label=views.state_label, diagnosis_label=views.diagnosis_label)

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[Store]:
        store = Store(self.db_path, readonly=True)
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def writer(self) -> Iterator[Store]:
        store = Store(self.db_path)
        try:
            yield store
        finally:
            store.close()

    def session(self, request: Request) -> auth.Session | None:
        with self.reader() as store:
            return auth.find_session(store, request.cookies.get(auth.SESSION_COOKIE), self.clock())

    def keep_alive(self, session: auth.Session) -> None:
        """Slide the session's idle limit forward (a write only now and then: ``auth.new_end``)."""
        end = auth.new_end(session, self.clock(), self.cfg.web)
        if end is not None:
            with self.writer() as store:
                store.extend_session(session.token_hash, end)

    def render(self, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(**ctx), status_code=status)

    def page(self, request: Request, session: auth.Session, name: str, **ctx: Any) -> HTMLResponse:
        flash = unquote(request.cookies.get(FLASH_COOKIE, ""))[:2000]
        response = self.render(name, me=session.name, csrf=session.csrf, flash=flash, **ctx)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    def secure(self, request: Request) -> bool:
        peer = request.client.host if request.client else None
        return auth.behind_tls(peer, request.headers.get("x-forwarded-proto"), request.url.scheme, self.cfg.web)

    def address(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return auth.client_address(peer, request.headers.get("x-forwarded-for"), self.cfg.web)

    def guarded(self, handler: Callable[[Request, auth.Session], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        """Every page but the login page: no session, no page (GET goes to the login page)."""

        async def endpoint(request: Request) -> Response:
            session = await run_in_threadpool(self.session, request)
            if session is None:
                if request.method == "GET":
                    target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
                    return RedirectResponse(f"/login?next={target}", status_code=303)
                return self.render("error.html", 403, title="ログインが必要です", message="ログインしてください。")
            await run_in_threadpool(self.keep_alive, session)
            return await handler(request, session)

        return endpoint

    # -- login and logout -------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if await run_in_threadpool(self.session, request):
            return RedirectResponse("/", status_code=303)
        return self.login_page(request, "", 200)

    def login_page(self, request: Request, error: str, status: int, nxt: str | None = None) -> Response:
        token = auth.new_token()
        nxt = nxt or request.query_params.get("next", "/")
        with self.reader() as store:
            has_staff = views.staff_store_check(store)
        response = self.render("login.html", status, token=token, error=error, next=_local(nxt),
                               has_staff=has_staff)
        response.set_cookie(auth.LOGIN_COOKIE, token, httponly=True, samesite="strict",
                            secure=self.secure(request), path="/login")
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if not auth.same_token(request.cookies.get(auth.LOGIN_COOKIE, ""), _field(form, "token")):
            return self.render("error.html", 403, title="もう一度お試しください",
                               message="ログイン画面を開き直してから、もう一度ログインしてください。")
        name, password = _field(form, "name").strip()[:64], _field(form, "password")[:1024]
        outcome = await run_in_threadpool(self.check_login, name, password, self.address(request),
                                          request.cookies.get(auth.SESSION_COOKIE))
        if isinstance(outcome, int):
            message = (f"ログインの失敗が続いたため、あと{outcome}秒お待ちください。" if outcome > 0
                       else "名前またはパスワードが違います。")
            return self.login_page(request, message, 429 if outcome > 0 else 401, _field(form, "next"))
        response = RedirectResponse(_local(_field(form, "next") or "/"), status_code=303)
        response.set_cookie(auth.SESSION_COOKIE, outcome, httponly=True, samesite="strict",
                            secure=self.secure(request), path="/",
                            max_age=int(self.cfg.web.session_hours * 3600))
        response.delete_cookie(auth.LOGIN_COOKIE, path="/login")
        return response

    def check_login(self, name: str, password: str, address: str, old_token: str | None) -> str | int:
        """The new session's token, or the seconds still to wait (0: wrong name or password)."""
        now = self.clock()
        with self.writer() as store:
            wait = auth.login_wait(store, name, address, now)
            if wait.total_seconds() > 0:
                log.warning("staff site: login for %r refused, %d s of slow-down left", name, wait.total_seconds())
                return max(1, int(wait.total_seconds() + 0.999))
            if not name or not verify(store, name, password):
                auth.note_miss(store, name, address, now)
                log.warning("staff site: wrong password for %r from %s", name, address)
                return 0
            auth.note_success(store, name, address)
            if old_token:  # a session id from before the login is never kept
                store.delete_session(auth.token_hash(old_token))
            token = auth.start_session(store, name, now, self.cfg.web)
        log.info("staff site: %s logged in from %s", name, address)
        return token

    async def logout(self, request: Request, session: auth.Session) -> Response:
        form = await request.form()
        if not auth.same_token(session.csrf, _field(form, "csrf")):
            return _forbidden(self)

        def end() -> None:
            with self.writer() as store:
                store.delete_session(session.token_hash)

        await run_in_threadpool(end)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    # -- pages ------------------------------------------------------------------------------

    async def case_list(self, request: Request, session: auth.Session) -> Response:
        return await run_in_threadpool(self.case_list_page, request, session)

    def case_list_page(self, request: Request, session: auth.Session) -> Response:
        now = self.clock()
        state = request.query_params.get("state", "")
        search = request.query_params.get("q", "").strip()[:100]
        try:
            page = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            page = 1
        size = self.cfg.web.page_size
        stuck_days = self.cfg.schedule.stuck_after_days
        with self.reader() as store:
            cases, total = store.case_page(
                states=(state,) if state in views.STATE_LABELS else (), search=search,
                stuck_states=views.ACTIVE, stuck_before=views.stuck_cutoff(now, stuck_days),
                active_states=views.ACTIVE, offset=(page - 1) * size, limit=size)
            counts = store.state_counts()
        return self.page(request, session, "cases.html", rows=views.list_rows(cases, now, stuck_days),
                         total=total, page=page, pages=views.page_numbers(total, size), state=state,
                         q=search, choices=views.state_choices(counts), all_count=sum(counts.values()),
                         stuck_days=stuck_days)

    async def case_page(self, request: Request, session: auth.Session) -> Response:
        return await run_in_threadpool(self.case_detail, request, session)

    def case_detail(self, request: Request, session: auth.Session) -> Response:
        from bot.flows.compose import key_records

        with self.reader() as store:
            case = store.find_case(request.path_params["ref"])
            if case is None:
                return self.render("error.html", 404, title="案件が見つかりません",
                                   message=f"{request.path_params['ref']} という案件はありません。")
            events = store.events(case.id)
            mails = [views.mail_view(m) for m in store.mails_for_case(case.id, with_raw=True)]
            records = key_records(store, case)
        checked_at, current = views.current_findings(events)
        now = self.clock()
        return self.page(
            request, session, "case.html", case=case, now=now, state=views.state_label(case.state),
            in_state=views.duration(now - case.state_since), next_check=views.when(case.next_check_at, now),
            created=views.jst(case.created_at), events=[views.event_view(e) for e in reversed(events)],
            mails=mails, records=records, dmarc=views.dmarc_suggestion(events), checked_at=checked_at,
            current=current, available=available_actions(self.cfg, case), destructive=actions.DESTRUCTIVE)

    async def digest(self, request: Request, session: auth.Session) -> Response:
        def build() -> tuple[str, str]:
            from bot.flows.digest import render_digest

            with self.reader() as store:
                return render_digest(Bot(cfg=self.cfg, store=store, clock=self.clock))

        subject, body = await run_in_threadpool(build)
        return self.page(request, session, "digest.html", subject=subject, body=body)

    async def charts_page(self, request: Request, session: auth.Session) -> Response:
        def build() -> tuple[charts.ChartData, list[dmarccharts.FacilityRates]]:
            with self.reader() as store:
                rates = dmarccharts.gather(store, self.clock()) if self.cfg.reports.enabled else []
                return charts.gather(store, self.clock()), rates

        data, rates = await run_in_threadpool(build)
        dmarc = dmarccharts.pass_rate_svg(rates, self.clock().date()) if self.cfg.reports.enabled else None
        return self.page(request, session, "charts.html", funnel=charts.funnel_svg(data),
                         completion=charts.completion_svg(data), waiting=charts.waiting_svg(data),
                         weeks=data.weeks, steps=charts.FUNNEL_STEPS, dmarc=dmarc, dmarc_rates=rates)

    # -- actions ----------------------------------------------------------------------------

    async def action(self, request: Request, session: auth.Session) -> Response:
        form = await request.form()
        # The CSRF check comes before anything else of the form is looked at.
        if not auth.same_token(session.csrf, _field(form, "csrf")):
            log.warning("staff site: %s: action refused, no valid CSRF token", session.name)
            return _forbidden(self)
        ref = request.path_params["ref"]
        name = _field(form, "action")
        if name not in actions.CASE_ACTIONS:
            return self.render("error.html", 400, title="不明な操作", message="その操作はありません。")
        fields = {k: _field(form, k) for k in ("bits", "text")}
        if name in actions.DESTRUCTIVE and _field(form, "confirmed") != "yes":
            with self.reader() as store:
                case = store.find_case(ref)
            if case is None:
                return self.render("error.html", 404, title="案件が見つかりません", message=ref)
            return self.page(request, session, "confirm.html", case=case, action=name, fields=fields,
                             state=views.state_label(case.state))
        message = await run_in_threadpool(self.perform, ref, name, fields, session.name)
        response = RedirectResponse(f"/cases/{quote(ref)}", status_code=303)
        response.set_cookie(FLASH_COOKIE, quote(message), httponly=True, samesite="strict",
                            secure=self.secure(request), path="/")
        return response

    def perform(self, ref: str, name: str, fields: dict[str, str], who: str) -> str:
        """Run one action as the CLI would; the line(s) to show."""
        bot = Bot.open(self.cfg, clock=self.clock)
        try:
            case = bot.store.find_case(ref)
            if case is None:
                return f"{ref}: no such case"
            if name in actions.KEY_ACTIONS:
                from bot.adapters.keys import passphrase_problem

                problem = passphrase_problem(self.cfg.state_dir / "keys", self.cfg.keys.passphrase)
                if problem:  # as the CLI: a wrong passphrase must not write keys under it
                    return f"実行できませんでした: {problem}"
            try:
                if name == "rotate":
                    result = actions.rotate(bot, case.domain or "", who)
                elif name == "rekey":
                    result = actions.rekey(bot, case, who, _bits(fields.get("bits", "")))
                elif name == "note":
                    result = actions.note(bot, case, who, fields.get("text", ""))
                else:
                    result = actions.SIMPLE[name](bot, case, who)
            except actions.ActionError as exc:
                log.info("staff site: %s: %s %s refused: %s", who, name, ref, exc.message)
                return f"実行できませんでした: {exc.message}"
            log.info("staff site: %s: %s %s", who, name, ref)
            return f"「{ACTION_LABELS[name]}」を実行しました。\n" + "\n".join(result.lines)
        finally:
            bot.close()


ACTION_LABELS = {"resend": "レコードを再送", "retry": "今すぐ再確認", "cancel": "案件を取り消す",
                 "rekey": "新しい鍵を作る", "rotate": "鍵を更新", "proof": "到達テストを送信", "note": "メモを残す",
                 "confirm": "管理の確認を手動で完了"}


def available_actions(cfg: Config, case: Any) -> dict[str, str | None]:
    """action -> None when it can be done now, else why not (shown beside the button)."""
    waiting_dkim = case.state == "awaiting_dkim" or (case.state == "escalated" and case.resume_state == "awaiting_dkim")
    out: dict[str, str | None] = {a: actions.refusal(a, case) for a in ("resend", "retry", "cancel")}
    out["rekey"] = None if waiting_dkim else "DKIM確認前の案件のみ"
    out["rotate"] = None if case.state in ("awaiting_dmarc", "awaiting_final", "completed") else "署名中の案件のみ"
    out["proof"] = ("[proof] が無効です" if not cfg.proof.enabled else
                    None if case.state in ("awaiting_dmarc", "awaiting_final", "completed", "dkim_lost")
                    else "署名中の案件のみ")
    out["confirm"] = None if case.state == "awaiting_confirmation" else "管理確認待ちの案件のみ"
    return out


def _bits(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 1024


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _local(target: str) -> str:
    """Only a path on this site (never //host or a scheme): no open redirect after login."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _forbidden(site: StaffSite) -> Response:
    return site.render("error.html", 403, title="操作を受け付けませんでした",
                       message="画面を開き直してから、もう一度操作してください（確認用のトークンが無効です）。")


def create_app(cfg: Config, clock: Callable[[], datetime] = utcnow) -> ASGIApp:
    site = StaffSite(cfg, clock)
    routes = [
        Route("/login", site.login_form, methods=["GET"]),
        Route("/login", site.login, methods=["POST"]),
        Route("/logout", site.guarded(site.logout), methods=["POST"]),
        Route("/", site.guarded(site.case_list), methods=["GET"]),
        Route("/cases/{ref}", site.guarded(site.case_page), methods=["GET"]),
        Route("/cases/{ref}/action", site.guarded(site.action), methods=["POST"]),
        Route("/digest", site.guarded(site.digest), methods=["GET"]),
        Route("/charts", site.guarded(site.charts_page), methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return SecurityHeaders(Starlette(routes=routes))
