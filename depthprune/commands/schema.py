"""One typed definition per verb, from which its command line, its recipe steps and its Python API are derived.

A verb module lists its options as ``OPTIONS = [Option(...), ...]`` (or returns them from ``options()`` where a
registry supplies some). :func:`add_options` turns the list into
argparse options, the recipe runner validates step keys against it (:func:`find_option`) and ``depthprune.api``
builds the verb's Python function from it (:func:`api_namespace`, :func:`api_signature`), so a default, a choice or
a name is written once. The names are the Python names (``seq_len``); a flag is the name with dashes
(``--seq-len``); a switch whose default is True is the flag ``--no-NAME`` (``plots`` -> ``--no-plots``).

Which options the user gave explicitly (needed by ``refuse_ignored``) is known without argparse internals: every
option is added with ``default=argparse.SUPPRESS``, so after parsing only the given ones are in the namespace;
:func:`complete` records them and fills in the defaults from the schema.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import DepthpruneError

GIVEN = "_given_options"       # namespace attribute: the names the user gave explicitly
OPTIONS_OF = "_options"        # namespace attribute: the parsed verb's schema


@dataclass(frozen=True)
class Option:
    """One option of a verb.

    ``type`` is ``bool`` for a switch: default False is ``--name``, default True is ``--no-name``, default None is
    ``--name/--no-name`` (None: decided later). Options sharing ``exclusive`` exclude each other (``required``
    then means one of them is needed). ``cli=False``: a Python-only parameter; ``api=False``: command line only.
    """

    name: str
    type: Callable = str
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    group: str | None = None           # help section
    exclusive: str | None = None       # mutually exclusive group key
    required: bool = False
    positional: bool = False
    many: bool = False                 # a positional taking one or more values, an option that can repeat
    flag: str | None = None            # the long flag where it is not derived from the name
    short: str | None = None
    metavar: str | None = None
    cli: bool = True
    api: bool = True

    @property
    def long(self) -> str:
        if self.flag:
            return self.flag
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.type is bool and self.default is True else f"--{dashed}"

    @property
    def key(self) -> str:
        """The recipe key (``seq_len``; ``seq-len`` is accepted too)."""
        return self.name if self.positional else self.long[2:].replace("-", "_")

    def help_text(self) -> str:
        text = self.help
        meaningful = not any(self.default is v for v in (None, False, True)) and self.default != "" \
            and not self.positional
        if meaningful and "default" not in text.lower():
            text += f" (default: {self.default})"
        return text.replace("%", "%%")


@dataclass(frozen=True)
class Renamed:
    """An old spelling, kept only to say its new name: ``--tokens`` -> one line naming ``--token-positions``."""

    old: str        # the old name, e.g. "tokens"
    new: str        # what to write instead, e.g. "--token-positions (last/all token positions)"

    @property
    def long(self) -> str:
        return "--" + self.old.replace("_", "-")

    def message(self) -> str:
        return f"{self.long} was renamed; use {self.new}"


class _RefuseRenamed(argparse.Action):
    def __init__(self, option_strings, dest, message, **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.message)


def options_of(schema) -> list[Option]:
    return [option for option in schema if isinstance(option, Option)]


def add_options(parser: argparse.ArgumentParser, schema) -> None:
    """Add a verb's options to its parser (each with ``default=SUPPRESS``; :func:`complete` fills them in)."""
    sections, exclusive = {}, {}     # argument groups by title, mutually exclusive groups by key
    for option in schema:
        if isinstance(option, Renamed):
            parser.add_argument(option.long, action=_RefuseRenamed, message=option.message())
            continue
        if not option.cli:
            continue
        target = parser
        if option.group:
            if option.group not in sections:
                sections[option.group] = parser.add_argument_group(option.group)
            target = sections[option.group]
        if option.exclusive:
            if option.exclusive not in exclusive:
                exclusive[option.exclusive] = target.add_mutually_exclusive_group(required=option.required)
            target = exclusive[option.exclusive]
        help_text = option.help_text()
        if option.positional:
            target.add_argument(option.name, nargs="+" if option.many else None, help=help_text,
                                metavar=option.metavar)
            continue
        flags = [option.long] + ([option.short] if option.short else [])
        settings = dict(dest=option.name, default=argparse.SUPPRESS, help=help_text)
        if option.type is bool:
            settings["action"] = ("store_true" if option.default is False else "store_false"
                                  if option.default is True else argparse.BooleanOptionalAction)
        else:
            settings.update(type=option.type, choices=option.choices, metavar=option.metavar,
                            action="append" if option.many else "store")
            if option.required and not option.exclusive:
                settings["required"] = True
        target.add_argument(*flags, **settings)
    parser.set_defaults(**{OPTIONS_OF: tuple(options_of(schema))})


def complete(namespace: argparse.Namespace) -> argparse.Namespace:
    """Record which options were given, fill in the others' defaults; ``--threads`` takes effect here.

    Parsing is the one step the command line, every recipe step and the API share, so the thread count cannot be
    forgotten by one of them (torch's thread count is process-wide: in a recipe it stays for the later steps).
    """
    schema = getattr(namespace, OPTIONS_OF, ())
    given = {option.name for option in schema if hasattr(namespace, option.name)}
    for option in schema:
        if option.name not in given:
            setattr(namespace, option.name, list(option.default) if isinstance(option.default, list)
                    else option.default)
    setattr(namespace, GIVEN, given)
    if "threads" in given:
        from ..runtime import set_threads

        set_threads(namespace.threads)
    return namespace


def parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``parser.parse_args(argv)``, completed (see :func:`complete`)."""
    return complete(parser.parse_args(argv))


def given_options(args) -> set[str]:
    """The options given explicitly on the command line, in a recipe step or to the API function."""
    return set(getattr(args, GIVEN, None) or ())


def closest(word: str, candidates) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def lookup(schema, key: str):
    """The command-line :class:`Option` (or :class:`Renamed`) a recipe key names (``seq_len``, ``seq-len``;
    ``no_plots`` or ``plots``), or None."""
    wanted = key.replace("-", "_")
    for option in schema:
        if isinstance(option, Renamed) and option.old == wanted:
            return option
        if isinstance(option, Option) and option.cli and wanted in (option.key, option.name):
            return option
    return None


def find_option(schema, key: str, where: str, hidden=()) -> Option:
    """The option a recipe key names; a renamed or unknown one is a one-line error (listing all but ``hidden``)."""
    option = lookup(schema, key)
    if isinstance(option, Renamed):
        raise DepthpruneError(f"{where}: {option.message()}")
    if option is None or option.positional:
        valid = sorted(o.key for o in options_of(schema) if o.cli and not o.positional and o.name not in hidden)
        raise DepthpruneError(f"{where}: unknown option {key!r}; valid: {', '.join(valid)}"
                              f"{closest(key.replace('-', '_'), valid)}")
    return option


# ------------------------------------------------------------------------------------------- Python API side
def api_signature(schema) -> inspect.Signature:
    """``(model, *, option=default, ...)``: positionals first, every other option keyword-only.

    An option the command line requires (``--output`` of score, say) is None here: in Python, no output folder
    means that nothing is written (the verbs that must write, heal and eval, say so).
    """
    parameters = []
    for option in sorted(options_of(schema), key=lambda o: not o.positional):   # positionals first
        if not option.api:
            continue
        if option.positional:
            parameters.append(inspect.Parameter(option.name, inspect.Parameter.POSITIONAL_OR_KEYWORD))
        else:
            parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default))
    return inspect.Signature(parameters)


def api_namespace(verb: str, schema, args: tuple, kwargs: dict) -> argparse.Namespace:
    """The namespace a verb's ``call`` takes, from Python arguments: checked like the command line checks them.

    None means "not given" (as a left-out option on the command line); values are Python objects, not text.
    """
    for key in kwargs:
        renamed = next((o for o in schema if isinstance(o, Renamed) and o.old == key), None)
        if renamed is not None:
            raise DepthpruneError(f"{verb}: {renamed.old} was renamed; use {renamed.new}")
    bound = api_signature(schema).bind(*args, **kwargs)     # a wrong or missing argument is a TypeError
    options = {option.name: option for option in options_of(schema)}
    given = {name: value for name, value in bound.arguments.items() if value is not None}
    for name, value in given.items():
        option = options[name]
        if option.choices and value not in option.choices:
            raise DepthpruneError(f"{verb}: {name}={value!r} is not one of {', '.join(map(str, option.choices))}"
                                  f"{closest(str(value), map(str, option.choices))}")
    for key in {o.exclusive for o in options.values() if o.exclusive}:
        members = [o for o in options.values() if o.exclusive == key]
        chosen = [o.name for o in members if o.name in given]
        if len(chosen) > 1:
            raise DepthpruneError(f"{verb}: give only one of {', '.join(o.name for o in members)} "
                                  f"(got {', '.join(chosen)})")
        if not chosen and any(o.required for o in members):
            raise DepthpruneError(f"{verb}: give one of {', '.join(o.name for o in members)}")
    namespace = argparse.Namespace(**given)
    setattr(namespace, OPTIONS_OF, tuple(options.values()))
    return complete(namespace)
