"""``chimp-worker analyse``: run the configured CHiMP models on image files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.commands.options import detector_paths_option

if TYPE_CHECKING:
    from chimp_worker.models.files import FileAnalysis

_PATH = click.Path(dir_okay=False, path_type=Path)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--classifier", type=_PATH, help="Classifier checkpoint (else classifier_path).")
@detector_paths_option("A detector of each KIND (else detector_paths), e.g. xchem=xchem.pt.")
@click.option("--vmxi-detector", type=_PATH, help="Same as --detector vmxi=PATH.")
@click.option("--xchem-detector", type=_PATH, help="Same as --detector xchem=PATH.")
@click.option("--json", "json_path", type=_PATH, help="Write every result in full (masks as RLE).")
@click.option(
    "--overlay",
    "overlay_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write IMAGE-NAME.overlay.png per image: masks, boxes, targets, dispense point.",
)
@pass_app
def analyse(
    app: AppContext,
    images: tuple[Path, ...],
    classifier: Path | None,
    detector_paths: dict[str, Path],
    vmxi_detector: Path | None,
    xchem_detector: Path | None,
    json_path: Path | None,
    overlay_dir: Path | None,
) -> None:
    """Run the CHiMP models on IMAGE files and print what they found.

    Prints one row per image: class probabilities, crystals found, and the dispense point
    (XChem detector). Model files come from the options or from the settings
    (CHIMP_CLASSIFIER_PATH, CHIMP_DETECTOR_PATHS or CHIMP_VMXI_DETECTOR_PATH,
    CHIMP_XCHEM_DETECTOR_PATH). Exit
    status 1 when any image could not be analysed; the others are still reported.

    \b
    Example:
      chimp-worker analyse --classifier classifier.pt --detector xchem=xchem.pt \\
          drop-A01.jpg drop-A02.jpg --json results.json --overlay overlays/
    """
    from chimp_worker.config import detector_path_overrides

    overrides: dict[str, Any] = {"analyser": "chimp"}
    if classifier is not None:
        overrides["classifier_path"] = classifier
    given = dict(detector_paths)
    for name, value in (("vmxi", vmxi_detector), ("xchem", xchem_detector)):
        if value is not None:
            given[name] = value
    if given:
        overrides.update(detector_path_overrides(app.settings(), given))
    settings = app.settings(**overrides)

    from chimp_worker.errors import ChimpError
    from chimp_worker.models.files import analyse_files
    from chimp_worker.overlay import write_overlay
    from chimp_worker.wiring import make_chimp_analyser

    analyser = make_chimp_analyser(settings)
    outcomes = []
    for outcome in analyse_files(
        list(images),
        analyser,
        max_pixels=settings.image_max_pixels,
        batch_size=settings.batch_size,
    ):
        outcomes.append(outcome)
        if overlay_dir is not None and outcome.analysis is not None and outcome.image is not None:
            write_overlay(
                overlay_dir / f"{outcome.path.stem}.overlay.png",
                outcome.image.pixels,
                outcome.analysis,
            )
    _print_table(outcomes)
    if json_path is not None:
        document = {
            "models": [
                {"role": ref.role, "name": ref.name, "sha256": ref.sha256}
                for ref in analyser.models
            ],
            "images": [_outcome_as_dict(o) for o in outcomes],
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=1) + "\n")
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise ChimpError(f"{len(failed)} of {len(outcomes)} images could not be analysed")


def _outcome_as_dict(outcome: FileAnalysis) -> dict[str, Any]:
    """One file in ``--json``: its analysis, or its error's reason and message."""
    from chimp_worker.models.files import analysis_as_dict

    error = outcome.error
    if error is not None:
        return {"path": str(outcome.path), "error": {"reason": error.reason, "message": str(error)}}
    assert outcome.analysis is not None  # a file is either analysed or failed
    return {"path": str(outcome.path), **analysis_as_dict(outcome.analysis)}


def _print_table(outcomes: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from chimp_worker.analysis import CLASS_NAMES, DispenseStatus, ispyb_class

    schemas = sorted({o.analysis.schema_name for o in outcomes if o.analysis is not None})
    table = Table(title=f"CHiMP analysis, schema {', '.join(schemas) or '-'}")
    table.add_column("image", overflow="fold")
    for name in CLASS_NAMES:
        table.add_column(f"P({ispyb_class(name)})", justify="right")
    table.add_column("top")
    table.add_column("crystals", justify="right")
    table.add_column("dispense (x, y)")
    for outcome in outcomes:
        if outcome.error is not None:
            row = ["-"] * len(CLASS_NAMES) + ["-", "-", f"[red]{outcome.error.reason}[/red]"]
            table.add_row(outcome.path.name, *row)
            continue
        analysis = outcome.analysis
        probabilities = analysis.probabilities or {}
        cells = [f"{probabilities[n]:.3f}" if n in probabilities else "-" for n in CLASS_NAMES]
        dispense = analysis.dispense
        if dispense is None:
            where = "-"
        elif dispense.status is DispenseStatus.OK:
            where = f"({dispense.x}, {dispense.y}) of {dispense.drops_seen} drop(s)"
        else:
            where = f"{dispense.status.value} ({dispense.drops_seen} drop(s))"
        detected = any(ref.role.endswith("detector") for ref in analysis.models)
        crystals = str(len(analysis.crystal_targets)) if detected else "-"
        top = ispyb_class(analysis.top_class) or "-"
        table.add_row(outcome.path.name, *cells, top, crystals, where)
    Console(width=160).print(table)
    for outcome in outcomes:
        if outcome.error is not None:
            click.echo(f"{outcome.path}: {outcome.error.reason}: {outcome.error}", err=True)
