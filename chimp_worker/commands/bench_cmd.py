"""``chimp-worker bench``: throughput, memory and agreement of the model configurations."""

from __future__ import annotations

import json
from pathlib import Path

import click

from chimp_worker.cli import AppContext, pass_app


@click.command()
@click.option("--images", default=8, show_default=True, help="Images per plate (per flavour).")
@click.option(
    "--flavour",
    "flavours",
    multiple=True,
    type=click.Choice(["vmxi", "xchem"]),
    help="Imager flavour(s) to measure (default: both).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("chimp-bench"),
    show_default=True,
    help="Seeded weight files (kept) and the mock plates (rebuilt each run).",
)
@click.option("--bf16", is_flag=True, help="Also measure the opt-in bf16 mode.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def bench(
    app: AppContext,
    images: int,
    flavours: tuple[str, ...],
    workdir: Path,
    bf16: bool,
    json_path: Path | None,
) -> None:
    """Measure the plain reference configuration against the defaults, on mock plates.

    Each configuration runs in its own process on the same native-size images with seeded
    weight files: model load, every stage's milliseconds, GFLOP/s against a measured fp32
    matmul rate, models-only and whole-pipeline images/s (SQLite), peak RSS, the speed-up
    and the largest difference between the configurations' outputs, then the targets with
    PASS/FAIL. Threads, batch size and classifier input size come from the settings
    (CHIMP_TORCH_THREADS, CHIMP_BATCH_SIZE, CHIMP_CLASSIFIER_INPUT_SIZE).

    \b
    Example:
      chimp-worker bench --images 8              # both flavours, about 15 min on 2 cores
      chimp-worker bench --images 4 --flavour xchem --bf16 --json bench.json
    """
    from chimp_worker.bench.report import machine_description, report_lines
    from chimp_worker.bench.run import prepare_bench, run_bench

    if images < 1:
        raise click.BadParameter("must be at least 1", param_hint="--images")
    settings = app.settings()
    setup = prepare_bench(
        workdir,
        images=images,
        flavours=flavours or ("vmxi", "xchem"),
        threads=settings.torch_threads,
        batch_size=settings.batch_size,
        classifier_input_size=settings.classifier_input_size,
        echo=lambda text: click.echo(text, err=True),
    )
    configurations = ("reference", "fast", "bf16") if bf16 else ("reference", "fast")
    runs, paired = run_bench(setup, configurations, echo=lambda text: click.echo(text, err=True))
    for line in report_lines(runs, paired, configurations, machine_description()):
        click.echo(line)
    if json_path is not None:
        document = {"runs": runs, "interleaved": paired}
        json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
