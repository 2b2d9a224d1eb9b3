"""Field checkers for settings sections: each returns the clean value or raises ``ConfigError``
naming ``section.field``, the expected form and the value found; and the station file's text
(``read_station_text``) and YAML (``station_yaml``)."""

from __future__ import annotations

import codecs
import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

DAY_MS = 86_400_000.0  # the longest time a station field may hold, ms: one day; a longer one is a typo (1e300 loaded)


def _fail(where: str, expected: str, found: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, found {found!r}")


def require(ok: bool, where: str, expected: str, found: Any) -> None:
    """The one field check for settings outside a YAML section (camera settings, console actions): raise
    ``ConfigError("where: expected ..., found ...")`` unless ``ok``."""
    if not ok:
        raise _fail(where, expected, found)


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML and JSON give True for 'true')."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_keys(section: str, data: Any, known: Iterable[str]) -> Mapping[str, Any]:
    """Refuse a non-mapping section or an unknown key (with a "did you mean"). A section given as on / off (``console:
    off``, YAML's false) is refused with how that section is switched (``switch_hint``)."""
    if data is None:
        return {}
    known = list(known)
    if isinstance(data, bool):
        raise ConfigError(f"{section}: expected a mapping of settings, found {data!r} "
                          f"({'on / true / yes' if data else 'off / false / no'}); {switch_hint(section, data, known)}")
    if not isinstance(data, Mapping):
        raise _fail(section, "a mapping of settings", data)
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{section}.{key}: unknown setting{did_you_mean(key, known)}; valid settings: {', '.join(sorted(known))}"
            )
    return data


def switch_hint(section: str, on: bool, known: list[str]) -> str:
    """How to turn the settings section ``section`` (a name like ``console`` or ``cameras[0].regions``, whose
    settings are ``known``) on or off, for a refusal of ``section: on`` / ``off``: write ``{enabled: ...}`` where
    the section has ``enabled``; a section with a ``url`` (mqtt) is on with one and off without; any other has
    no switch."""
    name = section.rsplit(".", 1)[-1]
    if "enabled" in known:
        return f"write {name}: {{enabled: {'true' if on else 'false'}}}"
    if "url" in known:
        return (f"{name}: has no on / off switch: it is on with {name}: {{url: ...}} and off with url: null or "
                f"{name}: left out")
    return f"{name}: has no on / off switch: write its settings under it, or leave it out for its defaults"


def with_defaults(section: str, data: Any, cls: type) -> dict[str, Any]:
    """``check_keys`` against the fields of dataclass ``cls``; a field left out takes its default there,
    so each default is written once, in the dataclass."""
    known = dataclasses.fields(cls)
    given = check_keys(section, data, [x.name for x in known])
    return {**{x.name: x.default for x in known if x.default is not dataclasses.MISSING}, **given}


def number(section: str, key: str, value: Any, minimum: float | None = None,
           maximum: float | None = None) -> float:
    """A finite real number (bool, NaN and YAML's ``.inf`` refused) within [minimum, maximum]."""
    where = f"{section}.{key}"
    bounds = _bounds_text(minimum, maximum)
    if isinstance(value, str) and SEXAGESIMAL.match(value):
        raise ConfigError(f"{where}: expected a number{bounds}, found {value!r}; write the value as one number in "
                          "the field's unit (a station file reads no minutes:seconds)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"a number{bounds}", value)
    if not _finite(value):
        raise ConfigError(f"{where}: expected a finite number{bounds}, found {value!r}; "
                          "write the number itself (YAML's .inf / .nan are not numbers a station can use)")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _fail(where, f"a number{bounds}", value)
    return float(value)


def integer(section: str, key: str, value: Any, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An integer (bool refused) within [minimum, maximum]."""
    where = f"{section}.{key}"
    bounds = _bounds_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"an integer{bounds}", value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _fail(where, f"an integer{bounds}", value)
    return int(value)


def boolean(section: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"{section}.{key}", "true or false", value)
    return value


def choice(section: str, key: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise _fail(f"{section}.{key}", "one of " + " | ".join(allowed), value)
    return value


def text(section: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{section}.{key}", "a non-empty string", value)
    return value


WINDOWS_DRIVE = re.compile(r"^([A-Za-z]:)(?:[\\/]|$)")   # D:\runs, D:/runs, D:
# an environment variable as a shell ($HOME, ${HOME}) or Windows (%USERPROFILE%) writes it
ENV_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|%[A-Za-z_][A-Za-z0-9_()]*%")
HOME_VARIABLES = ("$HOME", "${HOME}", "%USERPROFILE%", "%HOMEPATH%")   # the home folder: ~ in a station file


def folder_path(section: str, key: str, value: Any, posix: bool = os.name == "posix") -> str:
    """A folder a station writes into (``output``, ``record.dir``): ``text``, and on POSIX (``posix``) refused when
    written for Windows or a shell: a drive letter (``D:\\runs``), backslashes, an environment variable (``$HOME``,
    ``${HOME}``, ``%USERPROFILE%``). Taken as they are, each made a folder of that literal name in the current
    folder (``D:\\fair-edge\\runs`` one folder with backslashes in its name), with no word. The error names the
    field, the value, what is foreign in it and a forward-slash path to write instead (``~`` for the home folder)."""
    value = text(section, key, value)
    problems = foreign_path_problems(value) if posix else []
    if problems:
        raise ConfigError(f"{section}.{key}: expected a folder path as Linux reads it, found {value!r}: "
                          f"{'; '.join(problems)}. Write the folder with forward slashes, as an absolute path or under "
                          f"~ (the home folder), e.g. {key}: {posix_path_suggestion(value)}")
    return value


def foreign_path_problems(value: str) -> list[str]:
    """What in the path text ``value`` is written for Windows or a shell, each in words ([] for none): a drive
    letter, backslashes, environment variables."""
    problems = []
    drive = WINDOWS_DRIVE.match(value)
    if drive:
        problems.append(f"{drive.group(1)} is a Windows drive letter (Linux has no drives)")
    if "\\" in value:
        problems.append("\\ is a Windows separator (on Linux a backslash is part of a folder's name)")
    variables = ENV_VARIABLE.findall(value)
    if variables:
        problems.append(f"{', '.join(variables)}: environment variables are not expanded in a station file "
                        "(the folder would be named so)")
    return problems


def posix_path_suggestion(value: str) -> str:
    """The path text ``value`` rewritten as a POSIX path to suggest: the home folder's variables as ``~``, other
    variables as ``/path/to``, the drive letter dropped and backslashes as ``/`` (``D:\\runs\\line3`` ->
    ``/runs/line3``)."""
    for home in HOME_VARIABLES:
        value = value.replace(home, "~")
    value = ENV_VARIABLE.sub("/path/to", WINDOWS_DRIVE.sub("/", value)).replace("\\", "/")
    return re.sub(r"/+", "/", value)


def url_list(section: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of URL strings (a single string is accepted as a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _fail(f"{section}.{key}", "a list of URLs like 'modbus://10.0.0.5:502?coil=0'", value)
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or "://" not in item:
            raise _fail(f"{section}.{key}[{i}]", "a URL like 'modbus://10.0.0.5:502?coil=0'", item)
        out.append(item)
    return tuple(out)


def _finite(value: int | float) -> bool:
    """True for a number a float holds finitely (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _bounds_text(minimum: float | None, maximum: float | None) -> str:
    low, high = (None if x is None else f"{x:.15g}" for x in (minimum, maximum))  # 86400000.0 -> 86400000
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")   # the byte-order marks a UTF-16 text file starts with (LE, BE)


def read_station_text(path: Path) -> str:
    """The station file's text; ConfigError naming the file and the fix when it cannot be read (permissions, an I/O
    error) or decoded (a Latin-1 comment in a UTF-8 locale; a file saved as UTF-16, by PowerShell's ``>``: named as
    such, not as a binary file for its NUL bytes). The station loader and the console's threshold writer both read
    it through here."""
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        if exc.object.startswith(UTF16_BOMS):   # PowerShell 5's `>` and Out-File, Notepad's "Unicode"
            raise ConfigError(f"station file {path} was saved as UTF-16 (it starts with the UTF-16 byte-order mark "
                              f"{exc.object[:2].hex(' ').upper()}, as PowerShell's `>` writes it); expected "
                              "UTF-8 text: save it as UTF-8 (PowerShell: `Set-Content -Encoding utf8`, "
                              "or an editor's \"Save with encoding: UTF-8\")") from exc
        if b"\x00" in exc.object:   # text in any 8-bit encoding has no NUL bytes: an image, a model, an archive
            raise ConfigError(f"station file {path} is a binary file (it holds NUL bytes, e.g. an image or a model), "
                              f"not a YAML text file; give --station the station's .yaml file") from exc
        found = f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        raise ConfigError(f"station file {path}: expected {exc.encoding} text, found {found} (another encoding, "
                          f"e.g. Latin-1); save the file as {exc.encoding}") from exc
    except OSError as exc:
        raise ConfigError(f"station file {path} cannot be read ({exc.strerror or exc}); give the station's user "
                          "read access to it") from exc


# Plain numbers as YAML 1.2's core schema reads them (PyYAML's SafeLoader reads YAML 1.1: ``0420`` octal = 272,
# ``1:30`` base 60 = 90, ``2e-3`` a string). Ints: decimal, a leading zero included (``0420`` = 420, as the CLI's
# --reject-delay-ms 0420), or ``0x`` hex; floats: with a dot and/or an exponent (``2e-3``, ``1.5e3``), ``.inf``,
# ``.nan``. ``_`` between digits groups them, as YAML 1.1 allowed (``10_000``). No octal, no binary, no base 60:
# ``1:30`` stays a string, refused by the field's check naming the field.
YAML12_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+)$")
YAML12_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
                          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
YAML11_OCTAL = re.compile(r"^0[0-7]+$")   # digits YAML 1.1 (PyYAML, fair-edge before 2026-12-06) read as octal
SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")   # 1:30, YAML 1.1's base 60
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 int scalar (``YAML12_INT``, or one tagged ``!!int``): decimal whatever its leading zeros, or
    ``0x`` hex; anything else (``!!int 1:30``) is a YAML error at its line."""
    value = loader.construct_scalar(node)
    digits = value.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    try:
        number = sign * (int(digits[2:], 16) if digits[:2].lower() == "0x" else int(digits, 10))
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"expected a decimal or 0x hex integer, found {value!r}", node.start_mark) from None
    if YAML11_OCTAL.match(digits):
        log.warning("station file %s, line %d: %s is read as %d (decimal); fair-edge releases before 2026-12-06 "
                    "read it as octal %d (YAML 1.1): if the line was tuned on one of those, check the value, and "
                    "write it without the leading zero to silence this", getattr(loader, "name", "?"),
                    node.start_mark.line + 1, value, number, sign * int(digits, 8))
    return number


class StationLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (at any depth): plain YAML keeps the last
    one silently, so a second ``decision:`` block appended at the bottom of a station file wiped the threshold tuned
    in the first. Merge keys (``<<: *anchor``) still merge: a key set beside them overrides the merged one, as YAML
    says; only keys written twice in the same mapping are refused.

    Plain numbers are read as YAML 1.2 reads them (``YAML12_INT``, ``YAML12_FLOAT``): ``delay_ms: 0420`` is 420 ms,
    never octal 272; ``1:30`` is a string (refused by a number field, naming it), never base-60 90; ``2e-3`` is
    0.002. Booleans, nulls and dates are YAML 1.1's, as in ``yaml.SafeLoader``."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[Any, int] = {}   # key -> line (1-based) where this mapping first gives it
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1   # yes / true: one key
            if key in first:
                raise ConfigError(f"station file {self.name}: expected each key once in a mapping, found {key!r} "
                                  f"twice (line {first[key]} and line {line}); YAML would keep only the last one "
                                  f"and drop the first unseen: write {key_node.value} once (merge the two, or "
                                  "delete the one not meant)")
            first[key] = line
        return node


# int before float: the float form (digits, optional dot) also matches a plain int
StationLoader.add_implicit_resolver(_INT_TAG, YAML12_INT, list("-+0123456789"))
StationLoader.add_implicit_resolver(_FLOAT_TAG, YAML12_FLOAT, list("-+0123456789."))
StationLoader.add_constructor(_INT_TAG, _yaml12_int)


class StationDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` resolving plain scalars as ``StationLoader`` reads them (YAML 1.2 numbers), so a string
    that reads as a number there is written quoted: a camera named ``"1e3"`` (a plain string to YAML 1.1's dumper)
    comes back a string, not 1000.0."""

    yaml_implicit_resolvers = {first: list(resolvers)
                               for first, resolvers in StationLoader.yaml_implicit_resolvers.items()}


def dump_station_yaml(data: Any, stream: Any) -> None:
    """Write ``data`` (a station file's document) as YAML to ``stream`` (text), keys in their order, read back by
    ``station_yaml`` as the same values (``StationDumper``). Text is written as it reads: a zone named
    ``Dichtfläche`` stays so, not ``"Dichtfl\\xE4che"``, where ``stream`` encodes any character (UTF-8, the
    station file's encoding in a UTF-8 locale: ``writes_unicode``; else escaped, as a Latin-1 stream could not
    take a "–"). A list or mapping of plain values is written on one line (``polygon: [[0, 0], [100, 0]]`` as
    ``- [0, 0]`` rows, ``frame: [1280, 1024]``), not one value a line."""
    yaml.dump(data, stream, Dumper=StationDumper, sort_keys=False, allow_unicode=writes_unicode(stream),
              default_flow_style=None)


def writes_unicode(stream: Any) -> bool:
    """True when the text stream ``stream`` encodes every character: its ``encoding`` is a UTF one (UTF-8, the
    locale's as a rule), or it has none (an in-memory ``io.StringIO``)."""
    encoding = getattr(stream, "encoding", None)
    return encoding is None or codecs.lookup(encoding).name.startswith("utf")


def station_yaml(text: str, path: Path) -> Any:
    """The station file's YAML document (``text`` read from ``path`` by ``read_station_text``), loaded by
    ``StationLoader``: a key given twice is a ConfigError naming the file, the key and both lines; invalid YAML
    raises ``yaml.YAMLError`` for the caller to name. The station loader and the console's threshold writer both
    load it through here."""
    loader = StationLoader(text)
    loader.name = str(path)   # named in the duplicate-key error and in YAML's own marks
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
