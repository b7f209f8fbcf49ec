"""Each setting declared once, on its phase's config dataclass; the CLI, the KFP component and the pipeline
derive from that declaration.

    jpeg_quality: int = setting(90, "JPEG quality of the stored images.", check=between(1, 100))

states the name, type, default, help text and range of a setting in one place (`check=one_of("grpc",
"http")` for a few names; help texts and docs end with the range):

- `with_setting_options(Config)` gives a typer command one `--jpeg-quality` option per setting (type,
  default and help from the declaration) and hands the values to the command as one `settings` dict;
- `with_setting_inputs(Config)` gives a KFP component one input per pipeline setting, with its default and
  its `Args:` line, written into the function's source (KFP ships a lightweight component's source text
  into the task, so generated inputs must exist in real source);
- pipeline/pipeline.py gives the pipeline one parameter `<phase>_<setting>` per pipeline setting, and
  pipeline/params.py checks a run's parameters by building each phase's config from them;
- `build(Config, values, **fixed)` makes the config from those values; `check_ranges(config)` applies the
  declared ranges (each config's `validate()` calls it).

`pipeline=False` keeps a setting off the component and the pipeline, `cli=False` off the command;
a string renames it there (`cli="--part-size"`, `pipeline="shard_store_uri"`). `parse` turns what a user
writes (`"160:192"`, `"1,2,4"`) into the config's value; the declared default is what a user would write.
Importable without kfp or typer: configs import this module.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import inspect
import itertools
import json
import linecache
import math
import textwrap
import typing
from collections.abc import Callable, Iterable
from typing import Any

from visionnode.components.common.errors import ConfigError

_KEY = "visionnode.setting"
_SAME = object()  # cli_default not given: the CLI's default is the declared one
PIPELINE_TYPES = (str, int, float, bool)  # what a KFP parameter can hold
_DOC_WIDTH = 110
_generated = itertools.count()


@dataclasses.dataclass(frozen=True)
class Range:
    """A setting's valid numbers (never NaN or infinite), as a test and as the words an error gives."""

    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, value: Any) -> bool:
        if value is None:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    @property
    def text(self) -> str:
        if self.high is None:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        if not (self.low_open or self.high_open):
            return f"{self.low:g}..{self.high:g}"
        return (f"{'above' if self.low_open else 'at least'} {self.low:g} and "
                f"{'below' if self.high_open else 'at most'} {self.high:g}")


def at_least(low: float) -> Range:
    return Range(low, None)


def above(low: float) -> Range:
    return Range(low, None, low_open=True)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


@dataclasses.dataclass(frozen=True)
class Choice:
    """A setting whose valid values are a few names."""

    options: tuple[str, ...]

    def __call__(self, value: Any) -> bool:
        return value is None or value in self.options

    @property
    def text(self) -> str:
        return "one of " + ", ".join(self.options)


def one_of(*options: str) -> Choice:
    return Choice(options)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared setting, as the adapters read it (`declared(Config)`)."""

    name: str
    kind: Any                       # the type a user's value has (CLI option, component input, parameter)
    default: Any                    # as a user writes it
    help: str
    pipeline: bool | str
    cli: bool | str
    cli_default: Any
    parse: Callable[[Any], Any] | None
    check: Range | Choice | None
    argument: bool

    @property
    def option(self) -> str:
        """The CLI option as a user types it (`--images-per-shard`)."""
        if isinstance(self.cli, str):
            return self.cli.split("/")[0]
        return "--" + self.name.replace("_", "-")

    def pipeline_name(self, phase: str) -> str | None:
        """The pipeline parameter that feeds this setting (None: the pipeline does not set it)."""
        if self.pipeline is False:
            return None
        return self.pipeline if isinstance(self.pipeline, str) else f"{phase}_{self.name}"

    @property
    def documented(self) -> str:
        """The help text with the valid values, as the CLI's help and the component's docs show it."""
        return f"{self.help} Must be {self.check.text}." if self.check is not None else self.help

    def value(self, raw: Any) -> Any:
        """The config's value for what a user wrote."""
        return self.parse(raw) if self.parse is not None else raw


def setting(default: Any, help: str, *, pipeline: bool | str = True, cli: bool | str = True,
            cli_default: Any = _SAME, parse: Callable[[Any], Any] | None = None,
            check: Range | Choice | None = None,
            argument: bool = False) -> Any:
    """A dataclass field that is a user's setting; see the module doc. The field's default is
    `parse(default)`; a list or dict default is copied for every instance."""
    metadata = {_KEY: {"default": default, "help": " ".join(help.split()), "pipeline": pipeline, "cli": cli,
                       "cli_default": default if cli_default is _SAME else cli_default, "parse": parse,
                       "check": check, "argument": argument}}
    value = parse(default) if parse is not None else default
    if isinstance(value, (list, dict, set)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, value), metadata=metadata)
    return dataclasses.field(default=value, metadata=metadata)


def declared(config: type) -> dict[str, Setting]:
    """The settings of a config dataclass, in field order."""
    hints = typing.get_type_hints(config)
    found = {}
    for field in dataclasses.fields(config):
        if _KEY not in field.metadata:
            continue
        spec = dict(field.metadata[_KEY])
        kind = type(spec["default"]) if spec["parse"] is not None else hints[field.name]
        found[field.name] = Setting(name=field.name, kind=kind, **spec)
    return found


def build(config: type, values: dict[str, Any], **fixed: Any) -> Any:
    """`config(...)` from the setting values a user gave (as written: `parse` applies) and the `fixed`
    fields the adapter knows (paths, artifacts). Names in `values` that are not settings of `config` are
    ignored, so one dict can feed several configs (a component's `dict(locals())` holds its artifacts too);
    a name in `fixed` wins over the same name in `values`."""
    settings = declared(config)
    given = {name: settings[name].value(value) for name, value in values.items()
             if name in settings and name not in fixed}
    return config(**given, **fixed)


def check_ranges(obj: Any) -> None:
    """ConfigError for the first setting outside its declared range, naming the option and the range."""
    for name, spec in declared(type(obj)).items():
        value = getattr(obj, name)
        if spec.check is not None and not spec.check(value):
            choice = isinstance(spec.check, Choice)
            problem = f"{value!r} is not known" if choice else f"{value} is out of range"
            raise ConfigError(f"{spec.option} {problem}",
                              f"use {spec.check.text}; default {spec.default}")


# ------------------------------------------------------------------------------------------------- CLI
def with_setting_options(*configs: type, skip: Iterable[str] = ()) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a typer command `def cmd(<its own parameters>, settings: dict)`: typer sees the command's
    own parameters plus one option per setting of `configs` (less `skip`), and the command gets the
    settings' values as one dict. Every decorated command gets a signature of its own."""

    def decorate(fn: Callable[..., Any]) -> Any:
        import typer

        skipped = set(skip)
        settings: dict[str, Setting] = {}
        for config in configs:
            settings.update({name: spec for name, spec in declared(config).items()
                             if spec.cli is not False and name not in skipped and name not in settings})
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name != "settings"]
        clash = sorted(set(settings) & {p.name for p in own})
        if clash:
            raise TypeError(f"{fn.__name__} declares settings by hand: {clash}")
        generated = []
        for spec in settings.values():
            decls = (spec.cli,) if isinstance(spec.cli, str) else ()
            # the values are checked with the config (check_ranges), so a wrong one is a one-line error
            info = (typer.Argument(help=spec.documented) if spec.argument
                    else typer.Option(*decls, help=spec.documented))
            generated.append(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY,
                                               default=copy.deepcopy(spec.cli_default),
                                               annotation=typing.Annotated[spec.kind, info]))
        required = [p for p in own if p.default is inspect.Parameter.empty]
        optional = [p for p in own if p.default is not inspect.Parameter.empty]
        parameters = [*required, *generated, *optional]
        names = tuple(settings)

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return fn(**kwargs, settings=values)

        command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore
        command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        return command

    return decorate


# ------------------------------------------------------------------------------------------------- KFP
def component_settings(*configs: type, skip: Iterable[str] = ()) -> dict[str, Setting]:
    """The settings a component takes as inputs: those the pipeline sets."""
    found: dict[str, Setting] = {}
    for config in configs:
        found.update({name: spec for name, spec in declared(config).items()
                      if spec.pipeline is not False and name not in set(skip) and name not in found})
    for spec in found.values():
        if spec.kind not in PIPELINE_TYPES:
            raise TypeError(f"setting {spec.name}: a pipeline parameter cannot be a {spec.kind}")
    return found


def with_setting_inputs(*configs: type, skip: Iterable[str] = ()) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a KFP component function (below its `@phase_component`): each pipeline setting of `configs`
    becomes an input `name: type = default` after the function's own, with its help text as its line in
    the docstring's `Args:`. The inputs are spliced into the function's source text, which is compiled and
    registered with linecache, because KFP ships that text (inspect.getsource) into the task. The body
    reads them with `settings = dict(locals())` and `build(Config, settings, ...)`."""

    def decorate(fn: Callable[..., Any]) -> Any:
        settings = component_settings(*configs, skip=skip)
        source = textwrap.dedent(inspect.getsource(fn))
        text = splice_inputs(source, fn.__name__, settings.values())
        filename = f"<{fn.__module__}.{fn.__name__} with declared settings #{next(_generated)}>"
        lines = text.splitlines(keepends=True)
        linecache.cache[filename] = (len(text), None, lines, filename)
        namespace: dict[str, Any] = {}
        exec(compile(text, filename, "exec", dont_inherit=True), fn.__globals__, namespace)
        return namespace[fn.__name__]

    return decorate


def splice_inputs(source: str, name: str, settings: Iterable[Setting]) -> str:
    """`source` (one function, decorators allowed) from its `def` on, with an input and an `Args:` line per
    setting."""
    settings = list(settings)
    tree = ast.parse(source)
    func = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)
    lines = source.splitlines(keepends=True)
    # the docstring first (it is below the signature, so the signature's positions stay valid)
    doc = func.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value,
                                                                                             str)):
        raise TypeError(f"{name} needs a docstring with an Args: section")
    args_at = next((i for i in range(doc.lineno - 1, doc.end_lineno) if lines[i].strip() == "Args:"), None)
    if args_at is None:
        raise TypeError(f"{name}'s docstring has no Args: section")
    indent = len(lines[args_at]) - len(lines[args_at].lstrip())
    end = args_at + 1
    while end < doc.end_lineno - 1 and lines[end].strip() and (
            len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    entry = " " * (indent + 4)
    described = {line.split(":")[0].strip() for line in lines[args_at + 1:end]
                 if not line.startswith(entry + " ")}
    copies = sorted(described & {spec.name for spec in settings})
    if copies:
        raise TypeError(f"{name}'s docstring describes declared settings by hand: {copies}")
    doc_lines = [textwrap.fill(f"{spec.name}: {spec.documented}", _DOC_WIDTH, initial_indent=entry,
                               subsequent_indent=entry + "    ") + "\n" for spec in settings]
    lines[end:end] = doc_lines
    # then the inputs, after the function's last parameter
    nodes = [*func.args.args, *func.args.kwonlyargs, *func.args.defaults, *func.args.kw_defaults]
    last = max((node for node in nodes if node is not None), key=lambda n: (n.end_lineno, n.end_col_offset))
    row = last.end_lineno - 1
    inputs = "".join(f",\n    {spec.name}: {spec.kind.__name__} = {_literal(spec.default)}"
                     for spec in settings)
    raw = lines[row].encode()  # ast's columns count UTF-8 bytes
    lines[row] = (raw[:last.end_col_offset] + inputs.encode() + raw[last.end_col_offset:]).decode()
    return "".join(lines[func.lineno - 1:])


def _literal(value: Any) -> str:
    """A default as this project writes it in source: strings in double quotes."""
    return json.dumps(value) if isinstance(value, str) else repr(value)
