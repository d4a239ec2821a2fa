"""One way to change a case: ``Store.transition`` (bot/adapters/store.py).

It refuses a move not in ``cases.MOVES``, changes the row only if it is still in the
state the caller decided from (compare-and-swap), and writes the event in the same
transaction. ``update_case`` refuses ``state=``; and no code outside the store writes a
case's state any other way (checked on the source). Real SQLite in a temporary directory.
"""

from __future__ import annotations

import ast
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.adapters.store import StaleCase, Store
from bot.core import cases as sm
from bot.core.cases import MOVES, TRANSITIONS, State

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "dkimbot.sqlite3")
    yield s
    s.close()


def _case(store: Store, state: State = State.AWAITING_DKIM) -> int:
    with store.transaction():
        return store.create_case(state=state, now=T0, domain="hotel.test", selector="s1",
                                 selectors=["s1"]).id


def test_a_transition_moves_the_case_and_records_the_event(store: Store) -> None:
    case_id = _case(store)
    later = T0 + timedelta(hours=1)
    moved = store.transition(case_id, State.AWAITING_DMARC, later, expected_state=State.AWAITING_DKIM,
                             event="transition", detail={"event": "dkim_proven"}, reminders_sent=0)
    assert moved.state == "awaiting_dmarc" and moved.state_since == later
    [event] = store.events(case_id)
    assert (event["kind"], event["from_state"], event["to_state"]) == ("transition", "awaiting_dkim",
                                                                       "awaiting_dmarc")
    assert event["detail"] == {"event": "dkim_proven"}


def test_a_case_moved_meanwhile_is_not_overwritten(store: Store) -> None:
    case_id = _case(store)
    store.transition(case_id, State.CANCELLED, T0, expected_state=State.AWAITING_DKIM, event="staff_cancel")
    # A pass that read the case before the cancel decides from awaiting_dkim:
    with pytest.raises(StaleCase, match="cancelled, not awaiting_dkim"):
        store.transition(case_id, State.AWAITING_DMARC, T0, expected_state=State.AWAITING_DKIM,
                         event="transition")
    assert store.get_case(case_id).state == "cancelled"
    assert [e["kind"] for e in store.events(case_id)] == ["staff_cancel"]


def test_a_move_outside_the_table_is_refused(store: Store) -> None:
    case_id = _case(store, State.NEEDS_INFO)
    with pytest.raises(ValueError, match="no move from needs_info to completed"):
        store.transition(case_id, State.COMPLETED, T0, expected_state=State.NEEDS_INFO, event="x")
    assert store.get_case(case_id).state == "needs_info"
    assert store.events(case_id) == []


def test_update_case_refuses_a_state(store: Store) -> None:
    case_id = _case(store)
    with pytest.raises(ValueError, match="use Store.transition"):
        store.update_case(case_id, T0, state=State.COMPLETED)
    assert store.get_case(case_id).state == "awaiting_dkim"


def test_a_case_starts_only_in_an_initial_state(store: Store) -> None:
    with pytest.raises(ValueError):
        store.create_case(state=State.COMPLETED, now=T0)


def test_the_event_is_in_the_same_transaction(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    case_id = _case(store)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "add_event", broken)
    with pytest.raises(OSError):
        store.transition(case_id, State.AWAITING_DMARC, T0, expected_state=State.AWAITING_DKIM,
                         event="transition")
    assert store.get_case(case_id).state == "awaiting_dkim"  # rolled back with the event


def test_every_decided_move_is_in_the_table() -> None:
    for (state, event), (nxt, _mails) in TRANSITIONS.items():
        if nxt is not sm.STAY and nxt != state:
            assert (state, nxt) in MOVES, (state, event)
            assert sm.move_allowed(state.value, nxt.value)
    assert not sm.move_allowed("cancelled", "awaiting_dkim")
    assert not sm.move_allowed("nonsense", "completed")


# ------------------------------------------------------------- nobody else writes a state


def state_writes(tree: ast.AST, *, subscripts: bool = True) -> list[int]:
    """Lines that write a case's state other than through ``Store.transition``:
    ``update_case(..., state=...)``, ``<dict>.update(state=...)``, ``x["state"] = ...``
    and an ``UPDATE cases`` SQL string."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr in ("update_case", "update")):
            if any(k.arg == "state" for k in node.keywords):
                lines.append(node.lineno)
            if any(isinstance(a, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "state"
                                                     for k in a.keys) for a in node.args):
                lines.append(node.lineno)
        elif subscripts and isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "state"
                for t in node.targets):
            lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                "update cases" in node.value.lower():
            lines.append(node.lineno)
    return lines


# Where cases are handled: the ``x["state"] = ...`` form is only a case write there (the
# config loader's ``keys["state"]`` is its [state] section, not a case).
CASE_HANDLERS = ("flows", "app", "web")


def test_no_code_outside_the_store_writes_a_state() -> None:
    found = {}
    for path in sorted((ROOT / "bot").rglob("*.py")):
        if path == ROOT / "bot" / "adapters" / "store.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = state_writes(tree, subscripts=path.parent.name in CASE_HANDLERS)
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert found == {}


@pytest.mark.parametrize("source", [
    "store.update_case(1, now, state='completed')",
    "fields.update(state=State.ESCALATED, state_since=now)",
    "fields['state'] = 'cancelled'",
    "fields.update({'state': 'x'})",
    "db.execute('UPDATE cases SET state=? WHERE id=?', ('x', 1))",
])
def test_a_state_write_elsewhere_is_caught(source: str) -> None:
    assert state_writes(ast.parse(source)) == [1]
