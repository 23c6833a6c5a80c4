"""Which rule and thresholds the worker calls hits with, and the file that holds them.

The thresholds file is JSON, written by ``chimp-worker evaluate hits --choose`` after choosing
thresholds on a validation split, and read by the worker at start-up
(``CHIMP_HIT_THRESHOLDS_FILE``). Each analyser has its own entry, because the weight-free
baseline's pseudo-probabilities and scores are not on CHiMP's scale::

    {
      "version": 1,
      "analysers": {
        "chimp": {"classifier_threshold": 0.45, "detector_score": 0.7, ...},
        "baseline": {"classifier_threshold": 0.5, ...}
      },
      "chosen": {"chimp": {"validation": "val.csv", "images": 60, "f1": {...}}}
    }

An analyser without an entry uses the defaults of ``HitThresholds``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chimp_worker.errors import ConfigError
from chimp_worker.hits.rules import HIT_RULES, HitRule, HitThresholds

FILE_VERSION = 1


@dataclass(frozen=True)
class HitPolicy:
    """The rule in force and the thresholds of each analyser (defaults for the others)."""

    rule: HitRule = "combined"
    thresholds: Mapping[str, HitThresholds] = field(default_factory=dict)
    source: str | None = None  # the file the thresholds came from, for logs and docs

    def __post_init__(self) -> None:
        if self.rule not in HIT_RULES:
            raise ValueError(f"unknown hit rule {self.rule!r}; expected {', '.join(HIT_RULES)}")

    def for_analyser(self, analyser: str | None) -> HitThresholds:
        return self.thresholds.get(analyser or "", HitThresholds())

    def describe(self, analyser: str | None) -> str:
        """One line naming the rule and its thresholds (stored beside every verdict)."""
        values = self.for_analyser(analyser).as_dict()
        return f"{self.rule} " + " ".join(f"{k}={v}" for k, v in values.items())


def read_thresholds_file(path: Path) -> dict[str, Any]:
    """The file's JSON object; ``ConfigError`` naming the file for anything wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"hit_thresholds_file: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"hit_thresholds_file: {path} cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"hit_thresholds_file: {path} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
        raise ConfigError(
            f'hit_thresholds_file: {path} must be a JSON object with "version": {FILE_VERSION}'
            " (written by chimp-worker evaluate hits --choose)"
        )
    analysers = data.get("analysers")
    if not isinstance(analysers, dict):
        raise ConfigError(f'hit_thresholds_file: {path} has no "analysers" object')
    return data


def load_policy(rule: HitRule = "combined", thresholds_file: Path | None = None) -> HitPolicy:
    """The policy from settings: the rule, and the thresholds file when one is configured."""
    if thresholds_file is None:
        return HitPolicy(rule)
    data = read_thresholds_file(thresholds_file)
    thresholds: dict[str, HitThresholds] = {}
    for analyser, values in data["analysers"].items():
        if not isinstance(values, dict):
            raise ConfigError(
                f"hit_thresholds_file: {thresholds_file}: analysers.{analyser} must be an object"
            )
        try:
            thresholds[analyser] = HitThresholds.from_mapping(
                values, where=f"{thresholds_file}: analysers.{analyser}"
            )
        except ValueError as error:
            raise ConfigError(f"hit_thresholds_file: {error}") from None
    return HitPolicy(rule, thresholds, str(thresholds_file))


def write_thresholds(
    path: Path,
    analyser: str,
    thresholds: HitThresholds,
    provenance: Mapping[str, Any],
) -> Path:
    """Set one analyser's thresholds in the file (created if absent, others kept), atomically."""
    path = Path(path)
    data: dict[str, Any] = {"version": FILE_VERSION, "analysers": {}, "chosen": {}}
    if path.exists():
        data = read_thresholds_file(path)
        data.setdefault("chosen", {})
    data["analysers"][analyser] = thresholds.as_dict()
    data["chosen"][analyser] = dict(provenance)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    Path(partial).replace(path)
    return path
