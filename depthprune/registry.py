"""One registry class for every family of methods: criteria, compensation, healing.

A method is one module that defines its config dataclass and its entry, and registers the entry at import time
(peft's ``register_peft_method`` shape). What a family's entry carries is the family's own dataclass; the registry
only needs each entry to have a ``name``. Lookups fail loudly: an unknown name lists the valid ones and suggests
the closest (lm-eval's "Did you mean").
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from .errors import DepthpruneError

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Named entries of one family, in registration order.

    Args:
        kind: what one entry is, for messages ("criterion", "compensation method", "healing method").
        option: the option users name an entry with, for messages ("--metrics", "--compensate").
    """

    def __init__(self, kind: str, option: str):
        self.kind = kind
        self.option = option
        self._entries: dict[str, Entry] = {}

    def register(self, entry: Entry) -> Entry:
        """Add ``entry`` (it must have a ``name``); registering a name twice is a programming error."""
        name = getattr(entry, "name")
        if name in self._entries:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests that register a throw-away method)."""
        self._entries.pop(name, None)

    def get(self, name: str, option: str | None = None, valid=None) -> Entry:
        """The entry called ``name``; an unknown name is one line naming the valid ones and the closest.

        Args:
            option: the option the name was given to, for the message (default: the registry's own).
            valid: the names that option accepts, when it takes only some entries (default: all).
        """
        names = list(self._entries) if valid is None else [n for n in self._entries if n in set(valid)]
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DepthpruneError(f"unknown {self.kind} {name!r} for {option or self.option}; valid: "
                                  f"{', '.join(names)}{hint}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
