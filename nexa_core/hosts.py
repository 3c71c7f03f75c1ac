"""The hosts of a multi-node run, all pure: host names and addresses, DeepSpeed's hostfile and its
``--include/--exclude`` filters. The formats follow the launcher's own parsers
(``deepspeed.launcher.runner._parse_hostfile`` / ``parse_inclusion_exclusion``);
tests/test_scaling.py checks them with those parsers. ``launch.RunSpec`` validates its hosts here,
and ``scaling`` builds the multi-node launch on top of both (no module imports one that imports it
back)."""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nexa_core.errors import ConfigError, raise_if

HOSTFILE = "hostfile"
MAX_SLOTS = 64
# RFC 1123: labels of letters, digits and '-', 1-63 characters, not starting or ending with '-'.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\S+)$")
HOST_RULE = "an RFC 1123 host name (letters, digits, '-' and '.', no leading '-') or an IPv4 address"


def host_problem(name: object, field: str) -> str | None:
    """None when ``name`` is a usable host name or IPv4 address, else a message naming ``field``.
    IPv6 is refused: hostfile filters and pdsh use ':' to separate a host from its slots."""
    text = str(name) if isinstance(name, str) else ""
    if text:
        try:
            ipaddress.IPv4Address(text)
            return None
        except ValueError:
            pass
        labels = text.split(".")
        numeric = re.fullmatch(r"[0-9.]+", text) is not None  # 300.1.2.3 is a bad address, not a name
        if len(text) <= 253 and not numeric and all(_LABEL.match(label) for label in labels):
            return None
    return f"{field}: {name!r} is not {HOST_RULE}"


def address_problem(value: object, field: str) -> str | None:
    """Like ``host_problem`` but IPv6 is fine (a master address is never split on ':')."""
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
            return None
        except ValueError:
            pass
    problem = host_problem(value, field)
    return problem and problem.replace("or an IPv4 address", "or an IP address")


@dataclass(frozen=True)
class Host:
    """One machine of a multi-node run: its name or address and its slots (GPUs, or ranks on a CPU)."""

    name: str
    slots: int = 1

    def __post_init__(self) -> None:
        problems = [p for p in (host_problem(self.name, "hosts (--host)"),) if p]
        if (
            not isinstance(self.slots, int)
            or isinstance(self.slots, bool)
            or not 1 <= self.slots <= MAX_SLOTS
        ):
            problems.append(
                f"hosts (--host): slots for {self.name!r} must be a whole number from 1 to {MAX_SLOTS}, "
                f"got {self.slots!r}"
            )
        raise_if(problems)


def parse_hosts(text: str) -> list[Host]:
    """Hosts from hostfile-style lines (``name slots=N``; ``name`` alone means one slot). Blank
    lines and ``#`` comments are skipped; every bad line is reported at once."""
    hosts, problems = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOST_LINE.match(line)
        name, slots_text = (match.group(1), match.group(2)) if match else (line, "1")
        if not match and len(line.split()) != 1:
            problems.append(f"hosts (--host): line {number} {raw.strip()!r} is not 'name slots=N'")
            continue
        slots: Any = int(slots_text) if slots_text.isdigit() else slots_text
        try:
            hosts.append(Host(name, slots))
        except ConfigError as exc:
            problems += [f"{p} (line {number})" for p in exc.problems]
    raise_if(problems)
    return hosts


def hosts_problems(hosts: list[Host]) -> list[str]:
    names = [h.name for h in hosts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return [f"hosts (--host): {', '.join(dupes)} listed more than once"] if dupes else []


def hostfile_text(hosts: list[Host]) -> str:
    """DeepSpeed's (MPI-style) hostfile: one ``host slots=N`` line per machine."""
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)


def _parse_filter(text: str, field: str) -> tuple[dict[str, list[int]], list[str]]:
    """``NODE_SPEC[@NODE_SPEC ...]`` with ``NODE_SPEC = NAME[:SLOT[,SLOT ...]]`` (DeepSpeed's
    --include/--exclude grammar) as {host: slots}; an empty slot list means the whole host."""
    out: dict[str, list[int]] = {}
    problems = []
    for spec in text.split("@"):
        name, _, slots = spec.partition(":")
        problem = host_problem(name, field) if name != "localhost" else None
        if problem:
            problems.append(problem)
            continue
        parsed = [int(s) for s in slots.split(",") if s.strip().isdigit()] if slots else []
        if slots and len(parsed) != len(slots.split(",")):
            problems.append(f"{field}: slots in {spec!r} must be whole numbers, as in host:0,1")
            continue
        out.setdefault(name, [])
        out[name] = sorted(set(out[name] + parsed))
    return out, problems


def active_resources(
    hosts: list[Host], include: str = "", exclude: str = ""
) -> tuple[OrderedDict[str, list[int]], list[str]]:
    """The slots each host contributes after --include/--exclude, in hostfile order, and the problems
    (the same rules DeepSpeed's ``parse_resource_filter`` enforces, as messages naming the field)."""
    pool = OrderedDict((h.name, list(range(h.slots))) for h in hosts)
    if include and exclude:
        return pool, ["include (--include) / exclude (--exclude): give one or the other, not both"]
    field, text = ("include (--include)", include) if include else ("exclude (--exclude)", exclude)
    if not text:
        return pool, []
    wanted, problems = _parse_filter(text, field)
    for name, slots in wanted.items():
        if name not in pool:
            problems.append(f"{field}: host {name!r} is not in hosts ({', '.join(pool) or 'none given'})")
        elif [s for s in slots if s not in pool[name]]:
            problems.append(f"{field}: {name} has slots 0 to {len(pool[name]) - 1}, got {slots}")
    if problems:
        return pool, problems
    if include:
        kept = OrderedDict((n, wanted[n] or pool[n]) for n in pool if n in wanted)
    else:
        kept = OrderedDict(
            (n, [s for s in pool[n] if n not in wanted or (wanted[n] and s not in wanted[n])]) for n in pool
        )
    return OrderedDict((n, s) for n, s in kept.items() if s), []
