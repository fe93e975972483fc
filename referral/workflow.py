"""The referral state machine (FHIR R4 Task status, task.html#statemachine), as data.

Who may make each move is part of the rule: the placer (the hospital that sent the
referral) or the owner (the hospital asked to take it). Moves not in the table are refused
with the moves that are allowed; a move by the wrong party is forbidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from alliance.errors import Conflict, Forbidden

OPEN_STATES = ("draft", "requested", "received", "accepted", "in-progress", "on-hold")
FINAL_STATES = ("rejected", "completed", "failed", "cancelled")
#: A referral sent and not ended (a worklist's default; records can still be added to it).
SENT_OPEN = tuple(state for state in OPEN_STATES if state != "draft")
#: States in which the owner has not decided yet: these can be overdue.
AWAITING_DECISION = ("requested", "received")


@dataclass(frozen=True)
class Move:
    source: str
    target: str
    #: placer, owner, or either
    party: str
    #: What the move needs: consent (naming the target), reason (statusReason), output (a
    #: document in Task.output).
    needs: frozenset[str] = frozenset()


MOVES: tuple[Move, ...] = (
    Move("draft", "requested", "placer", frozenset({"consent"})),
    Move("requested", "received", "owner"),
    Move("received", "accepted", "owner"),
    Move("received", "rejected", "owner", frozenset({"reason"})),
    Move("accepted", "in-progress", "owner"),
    Move("in-progress", "completed", "owner", frozenset({"output"})),
    Move("in-progress", "failed", "owner", frozenset({"reason"})),
    *(
        Move(state, "cancelled", "placer", frozenset({"reason"}))
        for state in ("draft", "requested", "received", "accepted", "in-progress", "on-hold")
    ),
    *(
        Move(state, "on-hold", "either")
        for state in ("requested", "received", "accepted", "in-progress")
    ),
)


def moves_from(state: str, held_from: str | None = None) -> list[Move]:
    """Every move allowed from `state` (from on-hold: back to where it was, or cancelled)."""
    found = [m for m in MOVES if m.source == state]
    if state == "on-hold" and held_from:
        found.append(Move("on-hold", held_from, "either"))
    return found


def check_move(source: str, target: str, party: str | None, held_from: str | None) -> Move:
    """The move from `source` to `target` for `party`, or the error that refuses it.

    An illegal move is a conflict with the current state (409) naming the allowed moves; a
    legal move by the wrong party is forbidden (403).
    """
    allowed = moves_from(source, held_from)
    move = next((m for m in allowed if m.target == target), None)
    if move is None:
        names = ", ".join(f"{m.target} (by the {m.party})" for m in allowed) or "none"
        raise Conflict(
            f"a referral cannot move from {source} to {target}; from {source} it may move to: "
            f"{names}",
            rule="referral-move",
        )
    if move.party != "either" and move.party != party:
        raise Forbidden(
            f"only the {move.party} hospital may move a referral to {target}",
            rule="referral-move-party",
        )
    return move
