"""Counters that lose no increment: a state-based PN-counter per key (a CRDT).

Plain writes resolve by last-writer-wins (:mod:`mesh.core.mutation`); two INCRs
run at the same time on two nodes would then keep only one increment.  A
counter's mutations instead carry its whole *state*, and two states of the
same counter *merge*.  The state is the ``value`` of a counter's mutation (a
msgpack array where a plain mutation has bin or nil)::

    [base_hlc: uint, base_origin: str, base_kind: 0|1, base_value: int,
     [[slot: str, ops: uint, net: int], ...]]

The *base* is the write the counter grew from: the version (hlc, origin) of
the SET (or EXPIRE, PERSIST: see below) whose base-10 int64 value it starts
at (``base_kind`` 0, ``base_value`` that int), of the tombstone (a DEL, an
expiry) it started after (kind 1, value 0), or ``(0, "", 0, 0)`` for a key
this node never saw written.
Each origin (``"<node id>/<incarnation>"``) that increments the counter owns
one *slot*: how many INCRBYs it ran there (``ops``) and their sum (``net``);
slots are sorted by name.  A node that lost its history starts with a new
incarnation, hence a new slot: it never reuses a slot it forgot.  The
counter's value is ``base_value + sum(net)``.  Its deadline is its base's:
every INCRBY carries it on unchanged, and an EXPIRE or PERSIST of a counter
*rebases* it (a new base: that write's version and the counter's value then,
no slots), so one base has one deadline on every node.

Merging two states with the same base keeps, per slot, the one with more ops
(only the slot's owner writes it, one op after the other): commutative,
associative and idempotent, so any order of delivery, duplicates included,
converges to the exact sum.  A counter that expires leaves a tombstone at its
base's version, where the live counter ranked, so that expiring changes no
order between writes.  Between different bases and against plain writes a
total order decides: a counter ranks as its base's (hlc, origin) (then its
kind: a counter started after a tombstone ranks above one grown from the
value that tombstone replaced) and wins a tie with the plain write or
tombstone of that version (it is built on it); a plain write or tombstone
ranks as its own version.  So a SET or DEL newer than a counter's base
replaces it, increments that had not seen the SET/DEL included, and an INCR
after a SET/DEL starts a new counter on it.  docs/counters.md has the
user-facing rules.

The store holds a counter as a :class:`CounterValue`: the bytes of its
decimal value (what GET returns, as Redis does) carrying the state.
"""

from __future__ import annotations

from typing import Any

from mesh.core.errors import ProtocolError

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: the most slots a counter state may carry (each origin incarnation that incremented it)
MAX_SLOTS = 4096
#: the base of a counter on a key never written (or whose tombstone was collected)
NO_BASE = (0, "", 0, 0)
E_NOT_INTEGER = 12  # the wire error code (mesh.core.wire re-exports it)

State = tuple  # (base_hlc, base_origin, base_kind, base_value, slots)
_SLOTS = 4  # where the slots are in a state


class CounterValue(bytes):
    """A counter as the store holds it: its value in ASCII decimal (what GET
    returns) with ``state`` (the record form above) and ``top``, the (hlc,
    origin) of the newest write merged in (GETMETA's time; an eviction's
    tombstone takes it)."""

    state: State
    top: tuple[int, str]


def slot_origins(state: State) -> list[str]:
    """The origins that incremented the counter of ``state`` (its slots' names)."""
    return [slot[0] for slot in state[_SLOTS]]


def held(state: State, top: tuple[int, str]) -> CounterValue:
    """The store's form of ``state``, last written at ``top``."""
    value = CounterValue(b"%d" % total(state))
    value.state, value.top = state, top
    return value


def total(state: State) -> int:
    """The counter's value: its base value plus every slot's net."""
    return state[3] + sum(slot[2] for slot in state[_SLOTS])


def is_state(v: Any) -> bool:
    """Whether ``v`` (as msgpack decodes it: tuples or lists) is a well-formed state."""
    if type(v) not in (tuple, list) or len(v) != 5:
        return False
    hlc, origin, kind, base, slots = v
    if not (
        type(hlc) is int
        and 0 <= hlc <= INT64_MAX
        and type(origin) is str
        and kind in (0, 1)
        and type(kind) is int
        and type(base) is int
        and INT64_MIN <= base <= INT64_MAX
        and type(slots) in (tuple, list)
        and len(slots) <= MAX_SLOTS
    ):
        return False
    names = []
    for slot in slots:
        if type(slot) not in (tuple, list) or len(slot) != 3:
            return False
        name, ops, net = slot
        if not (
            type(name) is str
            and type(ops) is int
            and 1 <= ops <= INT64_MAX
            and type(net) is int
            and INT64_MIN <= net <= INT64_MAX
        ):
            return False
        names.append(name)
    return names == sorted(set(names))


def canonical(v: Any) -> State:
    """A valid state (lists or tuples) as nested tuples."""
    return (*v[:_SLOTS], tuple(tuple(slot) for slot in v[_SLOTS]))


def resolve(
    old: tuple | None, tomb: tuple | None, origin: str, hlc: int, state: Any, deadline: int
) -> tuple[CounterValue, int, str, int] | None:
    """How a counter mutation changes a key: None when it changes nothing, else
    ``(value, hlc, origin, deadline)`` of the live entry to hold, whose version
    is the counter's base.  ``old`` is the live entry (or None), ``tomb`` the
    tombstone (or None), both laid out as :class:`mesh.core.store.Entry`."""
    state = canonical(state)
    base = (state[0], state[1])
    if old is not None:
        value = old[0]
        if type(value) is CounterValue:
            mine = value.state
            if state[:_SLOTS] < mine[:_SLOTS]:
                return None
            if state[:_SLOTS] == mine[:_SLOTS]:
                return _merge(value, old[3], state, (hlc, origin), deadline)
        elif base < (old[1], old[2]):
            return None
    elif tomb is not None and base < (tomb[1], tomb[2]):
        return None
    return held(state, (hlc, origin)), base[0], base[1], deadline


def _merge(
    value: CounterValue, held_deadline: int, state: State, top: tuple[int, str], deadline: int
) -> tuple[CounterValue, int, str, int] | None:
    mine = value.state
    slots = {slot[0]: slot for slot in mine[_SLOTS]}
    grew = False
    for slot in state[_SLOTS]:
        have = slots.get(slot[0])
        if have is None or slot[1] > have[1]:
            slots[slot[0]] = slot
            grew = True
    if not grew and top <= value.top and deadline <= held_deadline:
        return None
    merged = (*mine[:_SLOTS], tuple(slots[name] for name in sorted(slots)))
    # one base has one deadline; should two differ (a bug), the later one holds everywhere
    return held(merged, max(top, value.top)), mine[0], mine[1], max(deadline, held_deadline)


def eviction_version(entry: tuple) -> tuple[int, str]:
    """The version a live entry's tombstone takes when it is evicted (a local
    matter): its own, or for a counter its newest write's, so that a counter
    started on the key after it ranks above every state of the evicted one."""
    value = entry[0]
    return value.top if type(value) is CounterValue else (entry[1], entry[2])


def rebased(value: CounterValue, hlc: int, origin: str) -> State:
    """The state an EXPIRE or PERSIST at ``(hlc, origin)`` gives a counter: a new
    base, its value now, no slots (increments that had not seen it are lost)."""
    return (hlc, origin, 0, total(value.state), ())


def parse_int64(value: bytes) -> int:
    """A plain value as Redis reads an integer (``-?[1-9][0-9]*`` or ``0``, int64);
    raises ProtocolError NOT_INTEGER otherwise."""
    text = value.decode("ascii", "replace")
    digits = text[1:] if text.startswith("-") else text
    if (
        not digits
        or len(digits) > 19
        or not digits.isdigit()
        or not digits.isascii()
        or (digits[0] == "0" and text != "0")
    ):
        raise not_integer()
    number = int(text)
    if not INT64_MIN <= number <= INT64_MAX:
        raise not_integer()
    return number


def not_integer(overflow: bool = False) -> ProtocolError:
    """The error of an INCRBY on a non-integer value, or one that would overflow."""
    if overflow:
        return ProtocolError(E_NOT_INTEGER, "increment or decrement would overflow")
    return ProtocolError(E_NOT_INTEGER, "value is not an integer or out of range")


def increment(
    entry: tuple | None, tomb: tuple | None, origin: str, delta: int
) -> tuple[State, int, int]:
    """INCRBY ``delta`` at ``origin`` on a key holding ``entry`` (live, or None)
    after ``tomb`` (or None): ``(new state, new value, deadline to keep)``.
    Raises ProtocolError NOT_INTEGER for a non-integer value or an overflow."""
    if entry is None:
        state: State = (*NO_BASE, ())
        if tomb is not None:
            state = (tomb[1], tomb[2], 1, 0, ())
        deadline = 0
    elif type(entry[0]) is CounterValue:
        state, deadline = entry[0].state, entry[3]
    else:
        state, deadline = (entry[1], entry[2], 0, parse_int64(entry[0]), ()), entry[3]
    slots = list(state[_SLOTS])
    for i, slot in enumerate(slots):
        if slot[0] == origin:
            slots[i] = (origin, slot[1] + 1, slot[2] + delta)
            break
    else:
        slots.append((origin, 1, delta))
        slots.sort()
    new = (*state[:_SLOTS], tuple(slots))
    value = total(new)
    if not INT64_MIN <= value <= INT64_MAX or not all(
        INT64_MIN <= s[2] <= INT64_MAX and s[1] <= INT64_MAX for s in slots
    ):
        raise not_integer(overflow=True)
    if len(slots) > MAX_SLOTS:
        raise ProtocolError(E_NOT_INTEGER, f"counter has over {MAX_SLOTS} slots")
    return new, value, deadline
