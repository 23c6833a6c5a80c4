"""Click options that several commands share, so one option means and checks the same thing
in every command (its name, type, range and parsing); each command still says in its own help
what the option does there."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from chimp_worker.detector_kinds import DETECTOR_KINDS

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

FILE = click.Path(dir_okay=False, path_type=Path)
FOLDER = click.Path(file_okay=False, path_type=Path)
FLAVOURS = click.Choice(["vmxi", "xchem"])  # the mock imager's flavours
DETECTOR_KIND_NAMES = click.Choice(list(DETECTOR_KINDS))  # chimp_worker/detector_kinds.py

_SIZE = re.compile(r"^(\d+)x(\d+)$")
_FAULT = re.compile(r"^(\d+)=(\w+)$")


def stack(*decorators: Decorator) -> Decorator:
    """Several options as one decorator, applied so they list in the order written."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def flavour_option(
    *, default: str | None = None, help_text: str | None = None, detector: bool = False
) -> Decorator:
    """``--flavour vmxi|xchem``: which imager family, or with ``detector`` which detector kind
    (None when not given)."""
    choice = DETECTOR_KIND_NAMES if detector else FLAVOURS
    if default is None:
        return click.option("--flavour", type=choice, help=help_text)
    return click.option(
        "--flavour", type=choice, default=default, show_default=True, help=help_text
    )


def _parse_detector_paths(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for value in values:
        kind, _, path = value.partition("=")
        if kind not in DETECTOR_KINDS or not path:
            raise click.BadParameter(
                f"expected KIND=PATH with KIND one of {', '.join(DETECTOR_KINDS)}; got {value!r}"
            )
        paths[kind] = Path(path)
    return paths


def detector_paths_option(help_text: str) -> Decorator:
    """``--detector KIND=PATH`` (repeatable), passed as ``detector_paths``: {kind: file}."""
    return click.option(
        "--detector",
        "detector_paths",
        multiple=True,
        metavar="KIND=PATH",
        callback=_parse_detector_paths,
        help=help_text,
    )


def seed_option(help_text: str | None = None) -> Decorator:
    return click.option("--seed", type=int, default=0, show_default=True, help=help_text)


def image_root_option(
    help_text: str = "Relative image paths are under this folder (default: the CSV's folder).",
) -> Decorator:
    return click.option("--image-root", type=FOLDER, help=help_text)


def input_size_option(help_text: str) -> Decorator:
    """``--input-size S``: the classifier's square input, None for the setting."""
    return click.option("--input-size", type=click.IntRange(32, 2048), help=help_text)


def label_map_option(help_text: str) -> Decorator:
    return click.option("--label-map", help=help_text)


def json_output_option(help_text: str) -> Decorator:
    """``--json PATH``, passed as ``json_path``: write the command's full result there."""
    return click.option("--json", "json_path", type=FILE, help=help_text)


def plots_option(help_text: str) -> Decorator:
    return click.option("--plots", type=FOLDER, help=help_text)


def workers_option(help_text: str | None = None) -> Decorator:
    return click.option(
        "--workers", type=click.IntRange(0, 64), default=0, show_default=True, help=help_text
    )


def render_size_option(
    minimum: int, help_text: str, *, default: str | None = None, native: bool = False
) -> Decorator:
    """``--size WIDTHxHEIGHT`` parsed to ``(width, height)``; None when not given (or, with
    ``native``, when given as 'native': the imager's own size)."""

    def parse(
        _ctx: click.Context, _param: click.Parameter, value: str | None
    ) -> tuple[int, int] | None:
        if value is None or (native and value == "native"):
            return None
        match = _SIZE.match(value.lower())
        if match is None or min(int(match[1]), int(match[2])) < minimum:
            raise click.BadParameter(
                f"expected WIDTHxHEIGHT of at least {minimum}x{minimum}, e.g. 1266x1014; "
                f"got {value!r}"
            )
        return int(match[1]), int(match[2])

    if default is None:
        return click.option("--size", callback=parse, help=help_text)
    return click.option(
        "--size", callback=parse, default=default, show_default=True, help=help_text
    )


def _parse_faults(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[int, str]:
    from chimp_worker.mock_imager.faults import FILE_FAULTS

    faults: dict[int, str] = {}
    for value in values:
        match = _FAULT.match(value)
        if match is None or match[2] not in FILE_FAULTS:
            raise click.BadParameter(
                f"expected LOCATION=FAULT with FAULT one of "
                f"{', '.join(sorted(FILE_FAULTS))}; got {value!r}"
            )
        faults[int(match[1])] = match[2]
    return faults


def image_faults_option(help_text: str) -> Decorator:
    """``--fault LOCATION=FAULT`` (repeatable), passed as ``faults``: {location: fault}."""
    return click.option("--fault", "faults", multiple=True, callback=_parse_faults, help=help_text)


def schedule_option(maximum: int, help_text: str) -> Decorator:
    """``--schedule N``, passed as ``inspections``: how many inspections of the plate."""
    return click.option(
        "--schedule",
        "inspections",
        type=click.IntRange(1, maximum),
        default=1,
        show_default=True,
        help=help_text,
    )


def training_input_options(
    *, output_help: str, val_help: str, val_fraction_help: str, init_help: str
) -> Decorator:
    """What both ``train`` commands read and write; the validation file comes as ``val_path``."""
    return stack(
        click.option("--output", "-o", type=FILE, required=True, help=output_help),
        click.option("--val", "val_path", type=FILE, help=val_help),
        click.option(
            "--val-fraction",
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            default=0.2,
            show_default=True,
            help=val_fraction_help,
        ),
        click.option("--init", type=FILE, help=init_help),
    )


def optimiser_options(
    *,
    epochs: int,
    batch_size: int,
    batch_range: tuple[int, int],
    max_lr: float,
    patience: int,
    patience_help: str | None = None,
) -> Decorator:
    """The one-cycle AdamW schedule and early stopping, with each model's own defaults."""
    return stack(
        click.option("--epochs", type=click.IntRange(1, 1000), default=epochs, show_default=True),
        click.option(
            "--batch-size", type=click.IntRange(*batch_range), default=batch_size, show_default=True
        ),
        click.option(
            "--lr",
            "max_lr",
            type=float,
            default=max_lr,
            show_default=True,
            help="Peak one-cycle learning rate (AdamW).",
        ),
        click.option("--weight-decay", type=float, default=0.01, show_default=True),
        click.option(
            "--patience",
            type=click.IntRange(0, 1000),
            default=patience,
            show_default=True,
            help=patience_help,
        ),
    )


def training_run_options() -> Decorator:
    """Seed, data-loader processes and the JSON history, the same for every model."""
    return stack(
        seed_option(),
        workers_option("Data-loader processes."),
        click.option("--history", type=FILE, help="Write the run's history and metrics as JSON."),
    )
