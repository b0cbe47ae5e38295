"""The search space of a sweep: typed dimensions over *paths into* :class:`~rvc_ray.config.RunConfig`.

A dimension is written ``section.field=expression`` (``--search``) or ``section.field: expression``
(a YAML search file). Expressions::

    choice(a, b, ...)      sample one of the values
    grid(a, b, ...)        try every value (Tune grid_search; crossed with the other grid dimensions)
    uniform(a, b)          float in [a, b]
    loguniform(a, b)       float in [a, b], log-uniform (0 < a < b)
    randint(a, b)          integer in [a, b], both ends included
    <a plain value>        fixed for every trial (e.g. ``train.epochs=2``)

Values are read as YAML scalars (``8``, ``1e-4``, ``true``, ``rmvpe``). A YAML search file may also
give a list, which means ``choice``.

By default a sweep searches the global batch size over ``tune.batch_sizes`` (``choice``) and the
adversarial weight ``loss.c_adv`` over ``uniform(tune.c_adv_min, tune.c_adv_max)``; an explicit
dimension on the same path replaces the default.

Everything is checked before any trial starts: unknown paths are named, bad expressions are named,
and every candidate value is applied to the base config and re-validated as a ``RunConfig``: every
choice/grid value, *every* integer of a ``randint`` range (up to 1024 of them; the ends and the values
next to them beyond that), both ends and an interior point of a ``uniform``/``loguniform`` range (a float
range on an integer field fails there), and every combination of those. All values of a dimension that
fail are named in one line, so, for example, ``train.batch_size=randint(4,8)`` with 2 workers is refused up
front for 5 and 7, which do not divide across the workers.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from rvc_ray.config import ConfigError, RunConfig, apply_dotted_overrides

__all__ = [
    "SearchDimension",
    "SearchSpace",
    "apply_overrides",
    "build_search_space",
    "load_search_file",
    "parse_search_arg",
    "parse_search_expression",
]

SearchKind = Literal["fixed", "choice", "grid", "uniform", "loguniform", "randint"]
_EXPRESSION = re.compile(r"^\s*(choice|grid|uniform|loguniform|randint)\s*\((.*)\)\s*$", re.DOTALL)
_RANGE_KINDS = ("uniform", "loguniform", "randint")
_MAX_COMBINATIONS_CHECKED = 4096
_MAX_RANGE_VALUES_CHECKED = 1024
_INTERIOR = 0.381966  # an interior point of a continuous range that is not a round number
BATCH_SIZE_PATH = "train.batch_size"
C_ADV_PATH = "loss.c_adv"


@dataclass(frozen=True)
class SearchDimension:
    """One searched config path, e.g. ``SearchDimension("loss.c_adv", "uniform", (0.25, 2.0))``.

    ``values`` are the choice/grid values, the ``(low, high)`` bounds of a range, or the single fixed value.
    """

    path: str
    kind: SearchKind
    values: tuple[Any, ...]

    @property
    def is_discrete(self) -> bool:
        return self.kind in ("fixed", "choice", "grid")

    def candidates(self) -> tuple[Any, ...]:
        """Values that must each produce a valid config (see the module docstring)."""
        if self.kind == "randint":
            low, high = self.values
            if high - low < _MAX_RANGE_VALUES_CHECKED:
                return tuple(range(low, high + 1))
            return tuple(sorted({low, low + 1, (low + high) // 2, high - 1, high}))
        if self.kind == "uniform":
            low, high = self.values
            return (low, low + (high - low) * _INTERIOR, high)
        if self.kind == "loguniform":
            low, high = self.values
            return (low, low * (high / low) ** _INTERIOR, high)
        return self.values

    def to_tune(self) -> Any:
        """The Ray Tune domain (``tune.choice`` / ``tune.grid_search`` / ...) or the fixed value."""
        from ray import tune

        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        low, high = self.values
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        return tune.randint(low, high + 1)  # Tune's upper bound is exclusive; ours is inclusive

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.path}={self.values[0]!r}"
        return f"{self.path}={self.kind}({', '.join(repr(v) for v in self.values)})"


@dataclass(frozen=True)
class SearchSpace:
    """The validated dimensions of a sweep, in a stable order (defaults first, then the user's)."""

    dimensions: tuple[SearchDimension, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(dim.path for dim in self.dimensions)

    @property
    def searched_paths(self) -> tuple[str, ...]:
        """Paths whose value varies between trials (not ``fixed``)."""
        return tuple(dim.path for dim in self.dimensions if dim.kind != "fixed")

    @property
    def has_grid(self) -> bool:
        return any(dim.kind == "grid" for dim in self.dimensions)

    @property
    def grid_size(self) -> int:
        """Number of grid points (1 when there are no grid dimensions)."""
        return math.prod(len(dim.values) for dim in self.dimensions if dim.kind == "grid")

    def to_param_space(self) -> dict[str, Any]:
        """Flat Tune ``param_space``: ``{"loss.c_adv": tune.uniform(...), ...}``."""
        return {dim.path: dim.to_tune() for dim in self.dimensions}


# --------------------------------------------------------------------------- parsing


def _parse_scalar(text: str, context: str) -> Any:
    for number_type in (int, float):  # YAML 1.1 reads "1e-5" (no dot) as a string
        try:
            return number_type(text.strip())
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{context}: {text!r} is not a valid value: {exc}") from None
    if isinstance(value, (dict, list)) or value is None:
        raise ConfigError(f"{context}: {text.strip()!r} must be a single number, string or boolean")
    return value


def _split_arguments(body: str) -> list[str]:
    parts = [part.strip() for part in body.split(",")]
    if parts == [""]:
        return []
    return parts


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_search_expression(path: str, expression: Any) -> SearchDimension:
    """Parse one expression (``"loguniform(1e-5, 3e-4)"``, a list = choice, or a plain value) for ``path``.

    Raises:
        ConfigError: naming the path and what is wrong with the expression.
    """
    context = f"search {path}"
    if isinstance(expression, (list, tuple)):
        if not expression:
            raise ConfigError(f"{context}: an empty list has nothing to choose from")
        values = tuple(_parse_scalar(v, context) if isinstance(v, str) else v for v in expression)
        return SearchDimension(path, "choice", values)
    if isinstance(expression, Mapping):
        raise ConfigError(f"{context}: expected an expression like choice(a,b) or uniform(a,b), got a mapping")
    if not isinstance(expression, str):
        return SearchDimension(path, "fixed", (expression,))
    match = _EXPRESSION.match(expression)
    if match is None:
        if "(" in expression:
            raise ConfigError(
                f"{context}: {expression!r} is not a known expression; use choice(a,b,...), grid(a,b,...), "
                "uniform(a,b), loguniform(a,b) or randint(a,b)"
            )
        return SearchDimension(path, "fixed", (_parse_scalar(expression, context),))
    kind, body = match.group(1), match.group(2)
    values = tuple(_parse_scalar(arg, f"{context}={kind}(...)") for arg in _split_arguments(body))
    if kind in ("choice", "grid"):
        if not values:
            raise ConfigError(f"{context}: {kind}() needs at least one value")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{context}: {kind}{tuple(values)} repeats a value")
        return SearchDimension(path, kind, values)  # type: ignore[arg-type]
    if len(values) != 2:
        raise ConfigError(f"{context}: {kind}() takes exactly two bounds (low, high), got {len(values)}")
    low, high = values
    if not (_is_number(low) and _is_number(high)):
        raise ConfigError(f"{context}: {kind}({low!r}, {high!r}) needs two finite numbers")
    if low >= high:
        raise ConfigError(f"{context}: {kind}({low!r}, {high!r}) needs low < high")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{context}: loguniform({low!r}, {high!r}) needs a positive lower bound")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{context}: randint({low!r}, {high!r}) needs two integers")
    if kind != "randint":
        low, high = float(low), float(high)
    return SearchDimension(path, kind, (low, high))  # type: ignore[arg-type]


def parse_search_arg(text: str) -> SearchDimension:
    """Parse a ``--search section.field=expression`` argument."""
    if "=" not in text:
        raise ConfigError(f"--search {text!r} must look like section.field=expression, e.g. loss.c_adv=uniform(0.5,2)")
    path, expression = text.split("=", 1)
    path = path.strip()
    if not expression.strip():
        raise ConfigError(f"--search {text!r}: the expression after '=' is empty")
    check_config_path(path)
    return parse_search_expression(path, expression.strip())


def load_search_file(path: Path) -> list[SearchDimension]:
    """Read a YAML search space ``{section.field: expression}`` (nested sections are also accepted)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"search file {path}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"search file {path}: must be a mapping of config path -> expression")
    dimensions = []
    for key, expression in _flatten_search_mapping(data):
        try:
            check_config_path(key)
            dimensions.append(parse_search_expression(key, expression))
        except ConfigError as exc:
            raise ConfigError(f"search file {path}: {exc}") from None
    return dimensions


def _flatten_search_mapping(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten_search_mapping(value, f"{full}.")
        else:
            yield full, value


def check_config_path(path: str) -> None:
    """Raise a ConfigError unless ``path`` (``section.field``) names a field of :class:`RunConfig`."""
    parts = [part for part in path.split(".")]
    if len(parts) < 2 or any(not part for part in parts):
        raise ConfigError(f"search path {path!r} must name a section and a field, e.g. loss.c_adv")
    model: type[BaseModel] = RunConfig
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the config"
            raise ConfigError(
                f"search path {path!r}: {where} has no field {part!r}; known: {', '.join(sorted(fields))}"
            )
        annotation = fields[part].annotation
        is_last = depth == len(parts) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if is_last:
                raise ConfigError(f"search path {path!r} is a whole section; name one of its fields")
            model = annotation
        elif not is_last:
            raise ConfigError(f"search path {path!r}: {'.'.join(parts[: depth + 1])} is a field, not a section")


# --------------------------------------------------------------------------- applying and validating


def apply_overrides(base: RunConfig | Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
    """Return ``base`` with ``{"section.field": value}`` applied, re-validated as a RunConfig.

    Raises:
        ConfigError: naming the paths and values when the result is not a valid config.
    """
    data = base.model_dump(mode="json") if isinstance(base, RunConfig) else _deep_copy(base)
    for path in values:
        check_config_path(path)
    apply_dotted_overrides(data, values.items())  # the same walker as --set
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        given = ", ".join(f"{path}={value!r}" for path, value in values.items())
        raise ConfigError(f"search values {given} give an invalid config: {problems}") from None


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deep_copy(value) if isinstance(value, Mapping) else value for key, value in data.items()}


def default_dimensions(cfg: RunConfig) -> list[SearchDimension]:
    """The sweep every run gets: batch size over ``tune.batch_sizes``, ``c_adv`` over the tune range."""
    batch_sizes = tuple(cfg.tune.batch_sizes)
    batch = (
        SearchDimension(BATCH_SIZE_PATH, "choice", batch_sizes)
        if len(batch_sizes) > 1
        else SearchDimension(BATCH_SIZE_PATH, "fixed", batch_sizes)
    )
    low, high = cfg.tune.c_adv_min, cfg.tune.c_adv_max
    c_adv = (
        SearchDimension(C_ADV_PATH, "uniform", (low, high))
        if high > low
        else SearchDimension(C_ADV_PATH, "fixed", (low,))
    )
    return [batch, c_adv]


def build_search_space(
    cfg: RunConfig, search: Sequence[str] = (), search_file: Path | None = None
) -> SearchSpace:
    """Combine the default dimensions, the search file and the ``--search`` arguments, and validate them.

    Later sources replace earlier ones on the same path (defaults < file < ``--search``); two
    ``--search`` arguments on the same path are an error.
    """
    by_path: dict[str, SearchDimension] = {dim.path: dim for dim in default_dimensions(cfg)}
    if search_file is not None:
        for dim in load_search_file(search_file):
            by_path[dim.path] = dim
    seen: set[str] = set()
    for text in search:
        dim = parse_search_arg(text)
        if dim.path in seen:
            raise ConfigError(f"--search names {dim.path} twice")
        seen.add(dim.path)
        by_path[dim.path] = dim
    space = SearchSpace(tuple(by_path.values()))
    validate_search_space(cfg, space)
    return space


def validate_search_space(cfg: RunConfig, space: SearchSpace) -> None:
    """Apply every candidate value to ``cfg`` and re-validate; one line names a dimension's failing values.

    Each dimension's candidates are checked alone (with the other dimensions at the base config), then
    every combination of the candidates is checked together (up to 4096 combinations), so cross-field
    rules such as batch size vs. workers are caught before a trial.
    """
    for dim in space.dimensions:
        failures: list[tuple[Any, ConfigError]] = []
        for value in dim.candidates():
            try:
                apply_overrides(cfg, {dim.path: value})
            except ConfigError as exc:
                failures.append((value, exc))
        if failures:
            raise ConfigError(_describe_failures(cfg, dim, failures))
    combos = itertools.product(*(dim.candidates() for dim in space.dimensions))
    for checked, combo in enumerate(combos):
        if checked >= _MAX_COMBINATIONS_CHECKED:
            break
        apply_overrides(cfg, dict(zip(space.paths, combo, strict=True)))


def _describe_failures(cfg: RunConfig, dim: SearchDimension, failures: list[tuple[Any, ConfigError]]) -> str:
    values = ", ".join(repr(value) for value, _ in failures)
    which = f"value {values} is" if len(failures) == 1 else f"values {values} are"
    text = f"search {dim.describe()}: {which} not allowed: {failures[0][1]}"
    if dim.path == BATCH_SIZE_PATH and dim.kind in _RANGE_KINDS:
        workers = cfg.scaling.num_workers
        low, high = dim.values
        fitting = [b for b in range(math.ceil(low), math.floor(high) + 1) if b % workers == 0][:8]
        hint = f"choice({', '.join(map(str, fitting))})" if fitting else f"choice of multiples of {workers}"
        text += f"; batch sizes must be whole multiples of scaling.num_workers={workers}: search them with {hint}"
    return text
