"""Command-line pieces read from the criterion registry when a parser is built.

``score``, ``prune`` and ``sweep`` take their choices, help and criterion options (``--token-positions``,
``--sleb-n``, and
any a registered criterion declares) from here, so a criterion registered before the parser is built — a plug-in
included — appears on the command line and in recipes with no edit to the verbs.
"""

from __future__ import annotations

from .common import refuse_ignored


def criteria_epilog(scored_only: bool = False) -> str:
    """``criteria:`` followed by one line per registered criterion and its description (``--help``'s epilog)."""
    from ..scoring import CRITERIA

    entries = [e for e in CRITERIA if e.scored or not scored_only]
    width = max(len(e.name) for e in entries)
    return "criteria:\n" + "\n".join(f"  {e.name.ljust(width)}  {e.description}" for e in entries)


def names_help(scored_only: bool = False) -> str:
    """``angular, bi, ...``: the registered criteria, for an option's help."""
    from ..scoring import CRITERIA, scored_names

    return ", ".join(scored_names() if scored_only else CRITERIA.names())


def keep_edges_help(what: str) -> str:
    """``--keep-edges`` help naming the criteria whose default keeps the edges."""
    from ..scoring import CRITERIA

    keeping = [e.name for e in CRITERIA if e.keeps_edges]
    return f"{what} (default: on for {', '.join(keeping) or 'none'})"


def criterion_schema(with_count: bool = True) -> list:
    """Every registered criterion's options (``--token-positions``, ``--sleb-n``, ...) as schema options.

    Args:
        with_count: also the options a verb sets from its own ``--n`` (SLEB's ``--sleb-n``): ``score`` has them,
            ``prune`` does not.
    """
    from ..scoring import CRITERIA
    from ..scoring.base import criterion_options
    from .schema import Option

    counts = {e.count_option for e in CRITERIA if e.count_option}
    return [Option(option.name, option.type, option.default, help=option.help, choices=option.choices)
            for option in criterion_options().values() if with_count or option.name not in counts]


def criterion_option_values(args) -> dict:
    """The criterion options on a parsed command line, by name."""
    from ..scoring.base import criterion_options

    return {name: getattr(args, name) for name in criterion_options() if hasattr(args, name)}


def refuse_options_of_other_criteria(args, chosen: list[str], reason: str) -> None:
    """Refuse criterion options that no chosen criterion takes (``--token-positions`` without angular).

    Args:
        reason: how to say it, with ``{owners}`` for the criteria that take the option, e.g. "without the {owners}
            metric".
    """
    from ..scoring.base import criterion_options, owners_of

    for name in criterion_options():
        owners = owners_of(name)
        if hasattr(args, name) and not set(owners) & set(chosen):
            refuse_ignored(args, (name,), reason.format(owners=" or ".join(owners)))
