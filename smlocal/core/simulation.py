"""Scripted jobs: what a job's simulated algorithm does, and the CreateTrainingJob faults asked for.

A job is scripted by tags on it (`smlocal:outcome`, `smlocal:training-seconds`, `smlocal:log`,
`smlocal:create-error`) or by the first rule of `serve --simulate-rules FILE` that matches it (by job-name
glob, image glob and tags); a tag overrides the rule's field of the same name. `script_for` gives the
`Script`; `check_tags` is CreateTrainingJob's validation of the tags (a bad value is a ValidationException
naming the tag and the forms it takes). runner.simulated_backend plays the script (`serve --backend
simulated`); the SageMaker provider answers `create_error` on any backend.

Tag values are limited by the API to `[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*`, 256 characters (botocore's
sagemaker model, TagValue): no newline, so the lines of `smlocal:log` are separated by `LOG_SEPARATOR`
(" // ", made of characters the pattern allows and rare in a log line). A rules file has no such limit:
its `log` is a list of lines (or one string, its lines separated by newlines).

The rules file (JSON or YAML, the same shape):

    {"rules": [{"match": {"name": "etl-*", "image": "*/xgboost:*", "tags": {"team": "x"}},
                "outcome": "Failed:OOM", "training-seconds": 5, "log": ["epoch 1 loss=0.5"],
                "create-error": "ThrottlingException:2"}]}

A rule without `match` (or with an empty one) matches every job.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from smlocal.core.errors import ApiError
from smlocal.core.store import Store, TagRow

PREFIX = "smlocal:"
OUTCOME_TAG = "smlocal:outcome"
SECONDS_TAG = "smlocal:training-seconds"
LOG_TAG = "smlocal:log"
CREATE_ERROR_TAG = "smlocal:create-error"
TAGS = (OUTCOME_TAG, SECONDS_TAG, LOG_TAG, CREATE_ERROR_TAG)
# A rule's fields: the tags' names without the prefix.
OUTCOME, SECONDS, LOG, CREATE_ERROR = (tag[len(PREFIX):] for tag in TAGS)
FIELDS = (OUTCOME, SECONDS, LOG, CREATE_ERROR)

COMPLETED = "Completed"
FAILED = "Failed"
MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"
INTERRUPTED = "Interrupted"
OUTCOMES = (COMPLETED, FAILED, MAX_RUNTIME_EXCEEDED, INTERRUPTED)
OUTCOME_FORMS = "Completed, Failed:<reason>, MaxRuntimeExceeded or Interrupted"

CREATE_ERRORS = ("ResourceLimitExceeded", "CapacityError", "ThrottlingException", "InternalFailure")
CREATE_ERROR_FORMS = " | ".join(CREATE_ERRORS) + ", optionally followed by :<count> (e.g. ThrottlingException:2)"

LOG_SEPARATOR = " // "
DEFAULT_TRAINING_SECONDS = 0.5
# The longest Training a script may ask for: 28 days, SageMaker's largest MaxRuntimeInSeconds (API reference,
# StoppingCondition); it also keeps the value a finite float.
MAX_TRAINING_SECONDS = 28 * 24 * 3600.0
DEFAULT_FAILURE_REASON = "the simulated algorithm failed"
# A few epochs of a plausible classifier, so MetricDefinitions such as `loss=([0-9.]+)` find values.
DEFAULT_LOG = tuple(
    f"epoch {epoch}/5 - loss={loss:.4f} - val_loss={val:.4f} - accuracy={acc:.4f}"
    for epoch, (loss, val, acc) in enumerate(
        ((0.6931, 0.6874, 0.5312), (0.5127, 0.5302, 0.7418), (0.3984, 0.4251, 0.8207),
         (0.3216, 0.3693, 0.8645), (0.2759, 0.3418, 0.8873)), start=1))


@dataclass(frozen=True)
class CreateError:
    """CreateTrainingJob answers this AWS error `count` times, then succeeds (None: every time)."""

    code: str
    count: int | None = None


@dataclass(frozen=True)
class Script:
    """What a job's simulated algorithm does, and the fault its CreateTrainingJob meets."""

    outcome: str = COMPLETED  # one of OUTCOMES
    failure_reason: str | None = None  # with Failed: what the algorithm writes to /opt/ml/output/failure
    training_seconds: float = DEFAULT_TRAINING_SECONDS
    log: tuple[str, ...] = DEFAULT_LOG
    create_error: CreateError | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"outcome": self.outcome, "failure_reason": self.failure_reason,
                                "training_seconds": self.training_seconds, "log": list(self.log)}
        if self.create_error is not None:
            data["create_error"] = {"code": self.create_error.code, "count": self.create_error.count}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Script:
        error = data.get("create_error")
        return cls(outcome=data["outcome"], failure_reason=data.get("failure_reason"),
                   training_seconds=float(data["training_seconds"]), log=tuple(data["log"]),
                   create_error=CreateError(error["code"], error.get("count")) if error else None)


class RulesError(ValueError):
    """The rules file cannot be used; the message says where and why."""


# ---- parsing the fields (tags and rules alike) ------------------------------------------------------


def parse_outcome(value: str) -> tuple[str, str | None]:
    """(outcome, failure reason) of `Completed`, `Failed:<reason>` (bare `Failed`: a default reason),
    `MaxRuntimeExceeded` or `Interrupted`; ValueError otherwise."""
    text = value.strip()
    head, colon, reason = text.partition(":")
    if head == FAILED:
        return FAILED, reason.strip() or DEFAULT_FAILURE_REASON
    if not colon and text in OUTCOMES:
        return text, None
    raise ValueError(f"expected {OUTCOME_FORMS}")


def parse_seconds(value: str | float | int) -> float:
    """A number of seconds, 0 to 28 days; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds (e.g. 0.5 or 30)") from None
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TRAINING_SECONDS:
        raise ValueError(f"expected a number of seconds from 0 to {MAX_TRAINING_SECONDS:.0f}")
    return seconds


def parse_log_tag(value: str) -> tuple[str, ...]:
    """The lines of an `smlocal:log` value, separated by LOG_SEPARATOR."""
    return tuple(line.strip() for line in value.split(LOG_SEPARATOR)) if value.strip() else ()


def parse_create_error(value: str) -> CreateError:
    """`Code` (every time) or `Code:N` (N times, then success); ValueError otherwise."""
    code, colon, count = value.strip().partition(":")
    if code not in CREATE_ERRORS:
        raise ValueError(f"expected {CREATE_ERROR_FORMS}")
    if not colon:
        return CreateError(code, None)
    if not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"the count after {code}: must be a whole number of at least 1")
    return CreateError(code, int(count))


def _invalid_tag(key: str, value: str, why: str) -> ApiError:
    return ApiError("ValidationException", f"Invalid value '{value}' for tag {key}: {why}.")


def check_tags(tags: Mapping[str, str], *, spot: bool | None = None) -> None:
    """CreateTrainingJob's check of the smlocal:* tags: a bad value, or an smlocal:* key smlocal does not
    know (a typo would otherwise be ignored), is a ValidationException. With `spot` False, `Interrupted`
    is refused too: only managed spot capacity is reclaimed."""
    for key, value in tags.items():
        if not key.startswith(PREFIX):
            continue
        if key not in TAGS:
            raise ApiError("ValidationException", f"Unknown smlocal tag {key}: the tags smlocal reads are "
                           f"{', '.join(TAGS)}.")
        try:
            if key == OUTCOME_TAG:
                outcome, _ = parse_outcome(value)
                if outcome == INTERRUPTED and spot is False:
                    raise ValueError("Interrupted applies to managed spot training jobs only "
                                     "(EnableManagedSpotTraining)")
            elif key == SECONDS_TAG:
                parse_seconds(value)
            elif key == LOG_TAG:
                parse_log_tag(value)
            else:
                parse_create_error(value)
        except ValueError as e:
            raise _invalid_tag(key, value, str(e)) from None


# ---- rules -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule of the file: what it matches (None / empty: anything) and the fields it gives.

    `fields` has the tags' forms (keys without the `smlocal:` prefix), except `log`: its lines joined by
    newlines."""

    name: str | None = None  # a glob on TrainingJobName
    image: str | None = None  # a glob on the TrainingImage
    tags: dict[str, str] = field(default_factory=dict)  # every one present, its value matching (a glob)
    fields: dict[str, str] = field(default_factory=dict)

    def matches(self, name: str, image: str | None, tags: Mapping[str, str]) -> bool:
        if self.name is not None and not fnmatch.fnmatchcase(name, self.name):
            return False
        if self.image is not None and not fnmatch.fnmatchcase(image or "", self.image):
            return False
        return all(key in tags and fnmatch.fnmatchcase(tags[key], pattern) for key, pattern in self.tags.items())


class Rules:
    """The rules of a `--simulate-rules` file, in order: the first that matches a job wins."""

    def __init__(self, rules: list[Rule], source: str = "") -> None:
        self.rules = list(rules)
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> Rules:
        """Read a JSON or YAML rules file (YAML by a .yaml/.yml name, else by content); RulesError when it
        cannot be read or a rule is malformed."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise RulesError(f"{path}: cannot read it: {e.strerror or e}") from None
        return cls.parse(text, str(path), yaml_first=path.suffix.lower() in (".yaml", ".yml"))

    @classmethod
    def parse(cls, text: str, source: str = "<rules>", *, yaml_first: bool = False) -> Rules:
        data = _load_document(text, source, yaml_first)
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
            raise RulesError(f"{source}: expected an object with a list `rules`")
        unknown = set(data) - {"rules"}
        if unknown:
            raise RulesError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (expected `rules`)")
        return cls([_rule(item, f"{source}: rules[{i}]") for i, item in enumerate(data["rules"])], source)

    def match(self, name: str, image: str | None, tags: Mapping[str, str]) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(name, image, tags)), None)


def _load_document(text: str, source: str, yaml_first: bool) -> Any:
    json_error = None
    if not yaml_first:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            json_error = e
    import yaml  # PyYAML; JSON is YAML too, so a .yaml file may hold either

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        if json_error is not None and text.lstrip().startswith(("{", "[")):
            raise RulesError(f"{source}: not valid JSON: {json_error}") from None
        raise RulesError(f"{source}: not valid YAML (nor JSON): {e}") from None


def _rule(item: Any, where: str) -> Rule:
    if not isinstance(item, dict):
        raise RulesError(f"{where}: expected an object")
    unknown = set(item) - {"match", *FIELDS}
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                         f"(expected match, {', '.join(FIELDS)})")
    match = item.get("match") or {}
    if not isinstance(match, dict) or set(match) - {"name", "image", "tags"}:
        raise RulesError(f"{where}.match: expected an object with name, image and/or tags")
    for key in ("name", "image"):
        if match.get(key) is not None and not isinstance(match[key], str):
            raise RulesError(f"{where}.match.{key}: expected a glob (a string)")
    tags = match.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str | int | float) for v in tags.values()):
        raise RulesError(f"{where}.match.tags: expected an object of tag key -> value (a glob)")
    fields: dict[str, str] = {}
    for key in FIELDS:
        if key not in item:
            continue
        value = item[key]
        try:
            if key == LOG:
                fields[key] = _rule_log(value)
            elif key == SECONDS:
                fields[key] = repr(parse_seconds(value))
            elif not isinstance(value, str):
                raise ValueError("expected a string")
            elif key == OUTCOME:
                parse_outcome(value)
                fields[key] = value
            else:
                parse_create_error(value)
                fields[key] = value
        except ValueError as e:
            raise RulesError(f"{where}.{key}: invalid value {value!r}: {e}") from None
    return Rule(match.get("name"), match.get("image"), {str(k): str(v) for k, v in tags.items()}, fields)


def _rule_log(value: Any) -> str:
    if isinstance(value, str):
        return value.rstrip("\n")
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        if any("\n" in line for line in value):
            raise ValueError("a line of the list holds a newline")
        return "\n".join(value)
    raise ValueError("expected a list of lines (or one string of lines)")


# ---- the script of a job --------------------------------------------------------------------------------


def script_for(name: str, image: str | None, tags: Mapping[str, str], rules: Rules | None) -> Script:
    """The job's script: the defaults, then the first matching rule's fields, then its own smlocal:* tags.

    Tags are checked at CreateTrainingJob (`check_tags`); one that is bad anyway (added later by AddTags) is
    ValueError here."""
    script = Script()
    rule = rules.match(name, image, tags) if rules is not None else None
    if rule is not None:
        script = _apply(script, rule.fields, tag_form=False)
    mine = {key[len(PREFIX):]: value for key, value in tags.items() if key in TAGS}
    return _apply(script, mine, tag_form=True)


def _apply(script: Script, fields: Mapping[str, str], *, tag_form: bool) -> Script:
    changes: dict[str, Any] = {}
    for key, value in fields.items():
        try:
            if key == OUTCOME:
                changes["outcome"], changes["failure_reason"] = parse_outcome(value)
            elif key == SECONDS:
                changes["training_seconds"] = parse_seconds(value)
            elif key == LOG:
                changes["log"] = parse_log_tag(value) if tag_form else tuple(value.split("\n"))
            elif key == CREATE_ERROR:
                changes["create_error"] = parse_create_error(value)
        except ValueError as e:
            raise ValueError(f"{PREFIX + key if tag_form else key}={value!r}: {e}") from None
    return replace(script, **changes)


def job_tags(store: Store, arn: str) -> dict[str, str]:
    """A job's tags, key -> value, as the store has them now."""
    with store.read() as s:
        return {row.key: row.value for row in s.scalars(select(TagRow).where(TagRow.resource_arn == arn))}
