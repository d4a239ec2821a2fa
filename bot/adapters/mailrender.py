"""Mail templates: ``templates/<kind>.txt`` rendered with jinja2 into (subject, body).

A template file holds the subject on its first line (``Subject: …``), a blank line, then
the body. The templates ship inside the package (``bot.templates``, mapped from the
checkout's top-level ``templates/`` at build time); staff edit copies in ``[service]
templates_dir``, and any file not there falls back to the shipped one, so an override
directory holds only the edited few.

Apart from ``mailout`` (building and sending messages) because every pass makes a
renderer (``runtime.Bot``) and an idle pass sends nothing: this module imports neither
jinja2 (at the first render) nor smtplib, ssl and the ``email`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TemplateError(Exception):
    """A template is missing or broken; the message names the file."""


def show_domain(domain: str | None) -> str:
    """A domain as a clerk recognises it: an IDN gets its Japanese form first, with the
    ASCII (xn--) form that some DNS panels want beside it."""
    if not domain:
        return ""
    if "xn--" not in domain:
        return domain
    try:
        unicode = domain.encode("ascii").decode("idna")
    except UnicodeError:
        return domain
    return f"{unicode}（{domain}）"


# A source checkout (editable install, PYTHONPATH) reads its own templates/, so an edit
# there shows at once; an installed wheel has no pyproject.toml beside the package and
# reads the package data instead. The marker file keeps a stray top-level "templates"
# directory that some other distribution dropped into site-packages from being used.
_CHECKOUT = Path(__file__).resolve().parents[2]


def shipped_templates_dir() -> Path:
    """Where the templates this dkimbot came with are: the checkout's ``templates/`` or
    the installed package data ``bot/templates`` (found with importlib.resources)."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "templates").is_dir():
        return _CHECKOUT / "templates"
    from importlib.resources import files

    # "bot" is a regular package, so files() gives a real Path for it (bot.templates is a
    # data directory without __init__.py: files() on it would give a MultiplexedPath).
    root = files("bot")
    if not isinstance(root, Path):  # pip never installs zipped; say so rather than guess
        raise TemplateError(f"the shipped mail templates are not on a file system: {root}")
    shipped = root / "templates"
    if not (shipped / "_footer.txt").is_file():
        raise TemplateError(f"the shipped mail templates are missing from {shipped}")
    return shipped


def show_domain_ja(domain: str | None) -> str:
    """A domain in its Japanese form only (subjects: short; the body adds the xn-- form)."""
    if not domain or "xn--" not in domain:
        return domain or ""
    try:
        return domain.encode("ascii").decode("idna")
    except UnicodeError:
        return domain


class MailRenderer:
    """Renders ``<kind>.txt``: from ``override`` (staff's edited copies) when the file is
    there, else the shipped one. Includes (``_footer.txt``…) follow the same rule."""

    def __init__(self, override: Path | None = None) -> None:
        self.override = override
        self._env: Any = None

    @property
    def env(self) -> Any:
        """The jinja2 environment, made at the first render: every pass builds a Bot (and
        so a renderer), but an idle cron pass renders nothing and should not import jinja2."""
        if self._env is None:
            import jinja2

            dirs = [str(shipped_templates_dir())]
            if self.override is not None:
                dirs.insert(0, str(self.override))
            self._env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(dirs),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=True,
                trim_blocks=True,
                lstrip_blocks=True,
                autoescape=False,
            )
            self._env.filters["show_domain"] = show_domain
            self._env.filters["ja_domain"] = show_domain_ja
        return self._env

    def render(self, kind: str, context: dict[str, Any]) -> tuple[str, str]:
        import jinja2

        name = f"{kind}.txt"
        try:
            text = self.env.get_template(name).render(**context)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"mail template not found: {name}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"mail template {name} failed: {exc}") from None
        head, _, body = text.partition("\n\n")
        if not head.startswith("Subject:"):
            raise TemplateError(f"mail template {name} must start with 'Subject: '")
        subject = " ".join(head[len("Subject:"):].split())
        return subject, body.strip("\n") + "\n"
