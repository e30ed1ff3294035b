"""A tuning job's ParameterRanges: parsed once, checked as SageMaker checks them, and turned into the values a trial
gets (HyperParameters are strings) or the grid a Grid search walks.

Scaling: Linear samples the range uniformly; Logarithmic uniformly in log space (the range must be above 0);
ReverseLogarithmic uniformly in log(1 - x) (continuous ranges within 0 <= x < 1 only); Auto is Linear here, the
choice SageMaker documents for ranges it has no hint about.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from smlocal.core.errors import ApiError

INTEGER, CONTINUOUS, CATEGORICAL = "Integer", "Continuous", "Categorical"
LINEAR, LOGARITHMIC, REVERSE_LOGARITHMIC, AUTO = "Linear", "Logarithmic", "ReverseLogarithmic", "Auto"
# SageMaker's limits on what one tuning job may search.
MAX_TUNED_PARAMETERS = 30
MAX_CATEGORICAL_VALUES = 30
MAX_GRID_SIZE = 10_000


@dataclass(frozen=True)
class Param:
    """One tuned hyperparameter: a numeric range with its scaling, or a list of categorical values."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    scaling: str = LINEAR
    values: tuple[str, ...] = ()

    @property
    def log(self) -> bool:
        return self.scaling == LOGARITHMIC

    @property
    def reverse_log(self) -> bool:
        return self.scaling == REVERSE_LOGARITHMIC

    def format(self, value: Any) -> str:
        """The string a trial's HyperParameters carry: integers without a point, floats as Python writes the
        shortest text that reads back the same value."""
        if self.kind == INTEGER:
            return str(int(value))
        if self.kind == CONTINUOUS:
            return repr(float(value))
        return str(value)

    def grid_values(self) -> list[str]:
        """The values Grid search takes: a categorical's values in order, or every integer of an integer range."""
        if self.kind == CATEGORICAL:
            return list(self.values)
        return [str(v) for v in range(int(self.low), int(self.high) + 1)]


def _invalid(message: str) -> ApiError:
    return ApiError("ValidationException", message)


def _number(name: str, which: str, text: str, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise _invalid(f"The {which} '{text}' of hyperparameter {name} is not {kind}.") from None
    if not math.isfinite(value):
        raise _invalid(f"The {which} '{text}' of hyperparameter {name} is not a finite number.")
    return float(value)


def _numeric(item: dict[str, Any], kind: str) -> Param:
    name = item["Name"]
    integer = kind == INTEGER
    low = _number(name, "MinValue", item["MinValue"], integer)
    high = _number(name, "MaxValue", item["MaxValue"], integer)
    scaling = item.get("ScalingType", AUTO)
    if low > high:
        raise _invalid(f"The MinValue ({item['MinValue']}) of hyperparameter {name} must be less than or equal to "
                       f"its MaxValue ({item['MaxValue']}).")
    if scaling == LOGARITHMIC and low <= 0:
        raise _invalid(f"Logarithmic scaling of hyperparameter {name} needs a range greater than 0; "
                       f"its MinValue is {item['MinValue']}.")
    if scaling == REVERSE_LOGARITHMIC:
        if integer:
            raise _invalid(f"ReverseLogarithmic scaling works only for continuous hyperparameters; {name} is an "
                           "integer hyperparameter.")
        if not (0 <= low and high < 1):
            raise _invalid(f"ReverseLogarithmic scaling of hyperparameter {name} needs a range within 0 <= x < 1; "
                           f"its range is [{item['MinValue']}, {item['MaxValue']}].")
    return Param(name, kind, low, high, LINEAR if scaling == AUTO else scaling)


def parse_ranges(ranges: dict[str, Any] | None, static: dict[str, str] | None = None) -> list[Param]:
    """The tuned hyperparameters of one training job definition, checked; ApiError as SageMaker words it."""
    ranges = ranges or {}
    if ranges.get("AutoParameters"):
        raise _invalid("smlocal does not choose ranges itself: AutoParameters (Autotune) are not supported; "
                       "give IntegerParameterRanges, ContinuousParameterRanges or CategoricalParameterRanges.")
    params = [_numeric(item, INTEGER) for item in ranges.get("IntegerParameterRanges", [])]
    params += [_numeric(item, CONTINUOUS) for item in ranges.get("ContinuousParameterRanges", [])]
    for item in ranges.get("CategoricalParameterRanges", []):
        values = tuple(item["Values"])
        if len(values) > MAX_CATEGORICAL_VALUES:
            raise _invalid(f"Hyperparameter {item['Name']} has {len(values)} categorical values; at most "
                           f"{MAX_CATEGORICAL_VALUES} are allowed.")
        if len(set(values)) != len(values):
            raise _invalid(f"The categorical values of hyperparameter {item['Name']} must be unique.")
        params.append(Param(item["Name"], CATEGORICAL, values=values))
    names = [p.name for p in params]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _invalid(f"Hyperparameter names must be unique across parameter ranges: {', '.join(duplicates)} "
                       "appears more than once.")
    both = sorted(set(names) & set(static or {}))
    if both:
        raise _invalid(f"Hyperparameters {', '.join(both)} cannot be both static (StaticHyperParameters) and tuned "
                       "(ParameterRanges).")
    if len(params) > MAX_TUNED_PARAMETERS:
        raise _invalid(f"{len(params)} hyperparameters are tuned; a tuning job can tune at most "
                       f"{MAX_TUNED_PARAMETERS}.")
    return params


def grid(params: list[Param]) -> list[dict[str, str]]:
    """Every combination Grid search runs, in order: the last parameter varies fastest."""
    names = [p.name for p in params]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(p.grid_values() for p in params))]


def grid_size(params: list[Param]) -> int:
    return math.prod(len(p.grid_values()) if p.kind == CATEGORICAL else int(p.high - p.low) + 1 for p in params)
