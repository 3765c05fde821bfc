"""``--sweep NAME``: find a sweep definition and read it through the script's own flags.

A sweep file is a JSON object whose keys are flag names (``"n_trials": 3``) plus two keys
of the file only: ``description``, and ``comparisons`` (the paired comparisons its report
shows, ``[treatment, baseline]`` pairs; :func:`sweep_comparisons`). Each flag key becomes
argv tokens (``--n_trials 3``) and is parsed by a copy of the command line's actions, so
nargs, types and choices are declared once, in the parser.
The copy reads each token as JSON, which keeps the file's types strict: ``"3"`` is a
string, not an int, and a list is only accepted by a flag that takes several values.
Errors name the file and the key.

A name resolves as a path first, then among the packaged sweeps (the installed copy,
then the checkout's ``sweeps/``; see :mod:`domainbed.lib.resources`).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Callable, NoReturn

from domainbed.lib import resources

FILE_ONLY_KEYS = frozenset({"description", "comparisons"})
_NOT_FILE_KEYS = frozenset({"sweep", "help"})


def resolve_sweep_path(name: str) -> Path:
    """``name`` as a path, else the packaged ``sweeps/<name>`` or ``sweeps/<name>.json``."""
    if Path(name).is_file():
        return Path(name)
    stem = name[len("sweeps/"):] if name.startswith("sweeps/") else name  # as README's commands spell it
    for candidate in (stem, f"{stem}.json"):
        try:
            return resources.path(f"sweeps/{candidate}")
        except (FileNotFoundError, ValueError):
            continue  # not this spelling (ValueError: not a plain file name, e.g. "a/b")
    places = ", ".join(str(root / "sweeps") for root in resources.roots())
    bundled = ", ".join(Path(n).stem for n in resources.names("sweeps") if n.endswith(".json")) or "none"
    raise ValueError(f"sweep file {name!r} not found here or in {places}; bundled sweeps: {bundled}")


class _FileParser(argparse.ArgumentParser):
    """A parser that raises instead of printing usage and exiting: the caller names file and key."""

    def error(self, message: str) -> NoReturn:
        raise argparse.ArgumentError(None, message)


def _from_json(action: argparse.Action) -> Callable[[str], Any]:
    """The action's type, reading a JSON token: JSON types must match (an int may be a float)."""
    declared = action.type or str

    def convert(token: str) -> Any:
        value = json.loads(token)  # the token is json.dumps of the file's value, see _tokens
        if not isinstance(declared, type):  # a converter of ours (a JSON object): it reads text
            return declared(value if isinstance(value, str) else token)
        if declared is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, declared):
            raise argparse.ArgumentTypeError(f"must be of type {declared.__name__}, got {value!r}")
        if action.choices is not None and value not in action.choices:
            # Said here rather than by argparse, whose message quotes the JSON token.
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        return value

    convert.__name__ = getattr(declared, "__name__", "value")  # argparse names it in "invalid X value"
    return convert


def file_parser(parser: argparse.ArgumentParser) -> _FileParser:
    """The optional flags of ``parser`` (but ``--sweep``), each reading JSON tokens."""
    result = _FileParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for action in parser._actions:
        if action.option_strings and action.dest not in _NOT_FILE_KEYS:
            twin = copy.copy(action)  # a copy: the command line keeps its plain types
            if twin.nargs != 0:  # all but store_true flags
                twin.type = _from_json(action)
                twin.default = None  # argparse would pass a text default through the JSON type
            result._add_action(twin)
    return result


def _tokens(action: argparse.Action, value: Any, where: str) -> list[str]:
    """``value`` as argv tokens for ``action``: each value JSON-encoded (never read as a flag)."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # a store_true flag
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return [flag] if value else []
    takes_list = action.nargs in ("+", "*")
    if takes_list != isinstance(value, list):
        raise ValueError(f"{where} must be {'a list' if takes_list else 'a single value, not a list'}, got {value!r}")
    return [flag, *map(json.dumps, value if takes_list else [value])]


def _check_comparisons(value: Any, algorithms: Any, where: str) -> list[tuple[str, str]]:
    """``value`` as (treatment, baseline) pairs, each name among the sweep's ``algorithms``."""
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in value):
        raise ValueError(f'{where} must be a list of [treatment, baseline] name pairs, e.g. [["ERM_FTLP", "ERM"]]')
    if isinstance(algorithms, list):
        missing = sorted({n for p in value for n in p} - set(algorithms))
        if missing:
            raise ValueError(f"{where} names {', '.join(missing)}, which the sweep does not run; "
                             f"add them to 'algorithms' or drop those pairs")
    return [(t, b) for t, b in value]


def sweep_comparisons(name: str | Path) -> list[tuple[str, str]]:
    """The ``comparisons`` a sweep file declares for its report, in its order ([] when none)."""
    path = resolve_sweep_path(str(name))
    data = json.loads(path.read_text())
    return _check_comparisons(data.get("comparisons", []), data.get("algorithms"), f"sweep file {path}: 'comparisons'")


def load_sweep_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a sweep file into ``{flag dest: value}`` through ``parser``'s flags, key by key."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"sweep file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"sweep file {path} must hold a JSON object of flag names to values")
    reader = file_parser(parser)
    actions = {a.dest: a for a in reader._actions}
    valid = sorted(set(actions) | FILE_ONLY_KEYS)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    if "comparisons" in data:
        _check_comparisons(data["comparisons"], data.get("algorithms"), f"sweep file {path}: 'comparisons'")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in FILE_ONLY_KEYS:
            continue
        where = f"sweep file {path}: {key!r}"
        try:
            values[key] = getattr(reader.parse_args(_tokens(actions[key], value, where)), key)
        except argparse.ArgumentError as error:
            raise ValueError(f"{where} {error.message}") from None
    return values
