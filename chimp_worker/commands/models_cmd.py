"""``chimp-worker models``: inspect and check model files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.detector_kinds import DETECTOR_KINDS


@click.group()
def models() -> None:
    """Inspect and check CHiMP model files."""


@models.command("info")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["classifier", *DETECTOR_KINDS]),
    help="Refuse any file that is not this kind of model.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_app
def info(app: AppContext, files: tuple[Path, ...], kind: str | None, as_json: bool) -> None:
    """Show each model file's architecture, classes, input size and sha256.

    Every file is loaded into its architecture first, so a file listed here is one the worker
    can run. Without FILES, the configured model files are checked, each as its kind. A file
    of the wrong kind, a truncated file or one with the wrong number of classes is refused
    with one line saying why (exit status 1).

    \b
    Example:
      chimp-worker models info classifier.pt vmxi-detector.pt
      chimp-worker models info --kind xchem xchem-detector.pt
    """
    from chimp_worker.detector_kinds import configured_model_files
    from chimp_worker.errors import ChimpError, ModelFileError
    from chimp_worker.models.info import describe_model_file

    settings = app.settings()
    wanted: list[tuple[Path, str | None]] = [(path, kind) for path in files]
    if not files:
        wanted = [(f.path, f.kind) for f in configured_model_files(settings)]
        if not wanted:
            raise ChimpError(
                "no model files given and none configured (CHIMP_CLASSIFIER_PATH, "
                "CHIMP_DETECTOR_PATHS, CHIMP_VMXI_DETECTOR_PATH, CHIMP_XCHEM_DETECTOR_PATH)",
                reason="no_model_files",
            )
    described = []
    refused = []
    for path, expected in wanted:
        try:
            details = describe_model_file(
                path,
                expected,
                classifier_input_size=settings.classifier_input_size,
            )
        except ModelFileError as exc:
            refused.append(exc)
            click.echo(f"chimp-worker: {exc.reason}: {exc}", err=True)
            continue
        described.append(details)
        if not as_json:
            click.echo(_text(details))
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in described], indent=2))
    if refused:
        raise ModelFileError(f"{len(refused)} of {len(wanted)} model files refused")


def _text(details: object) -> str:
    from chimp_worker.models.info import ModelFileInfo

    assert isinstance(details, ModelFileInfo)
    return "\n".join(
        [
            f"{details.path}",
            f"  role:          {details.role}",
            f"  architecture:  {details.architecture}",
            f"  classes:       {', '.join(details.classes)}",
            f"  input size:    {details.input_size}",
            f"  layout:        {details.layout}",
            f"  parameters:    {details.parameters:,}",
            f"  file size:     {details.size_bytes:,} bytes",
            f"  sha256:        {details.sha256}",
        ]
    )
