"""The demo: a mock plate through the daemon's pipeline, rows checked against ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from chimp_worker.analysis import BASELINE_SCHEMA
from chimp_worker.cli import cli
from chimp_worker.config import load_settings
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb import worker_tables as w
from chimp_worker.ispyb.database import make_engine
from chimp_worker.mock_imager.demo import DemoOptions, DemoResult, run_demo

# The baseline works on a 640-pixel copy, so images of that size lose nothing and cost little.
SIZE = (640, 512)


def demo(tmp_path: Path, **options: object) -> DemoResult:
    values: dict[str, object] = {"output_dir": tmp_path, "wells": 3, "image_size": SIZE}
    values.update(options)
    return run_demo(load_settings(), DemoOptions(**values))  # type: ignore[arg-type]


def assert_matches_truth(result: DemoResult, *, targets_too: bool = True) -> None:
    """Every good image: a drop found inside the true drop, a dispense point inside it and
    off every crystal, and crystal targets on (or near the centroids of) true crystals."""
    done = [check for check in result.checks if check.result.state == "done"]
    assert done
    for check in done:
        assert check.drop_found, check.image.imageFullPath
        assert check.dispense_in_drop, check.image.imageFullPath
        assert not check.dispense_on_crystal, check.image.imageFullPath
    if not targets_too:
        return
    targets = sum(len(check.result.targets) for check in done)
    on_crystals = sum(check.targets_on_crystals for check in done)
    crystals = sum(len(check.image.truth.crystals) for check in done)
    assert crystals > 0
    assert on_crystals >= 0.75 * targets
    assert sum(check.crystals_found for check in done) >= 0.5 * crystals


def rows(database_url: str) -> dict[str, int]:
    with make_engine(database_url).connect() as connection:

        def count(table: object, *where: object) -> int:
            query = select(func.count()).select_from(table)  # type: ignore[arg-type]
            return int(connection.scalar(query.where(*where)) or 0)

        return {
            "scores": count(t.BLSampleImageHasAutoScoreClass),
            "chimp_scores": count(
                t.BLSampleImageHasAutoScoreClass,
                t.BLSampleImageHasAutoScoreClass.blSampleImageAutoScoreClassId.between(5, 8),
            ),
            "auto_subsamples": count(t.BLSubSample, t.BLSubSample.source == "auto"),
            "dispensing": count(t.BLSamplePosition),
            "images": count(t.BLSampleImage),
        }


def test_a_plate_through_the_filesystem_source_matches_its_ground_truth(tmp_path: Path) -> None:
    result = demo(tmp_path, seed=4)

    assert result.analyser == "baseline"
    assert result.schema_name == BASELINE_SCHEMA
    assert result.plate.barcode == "DEMO-0001"
    (outcome,) = result.outcomes
    assert outcome.completed_inspection
    assert outcome.failed == {}
    assert len(outcome.written) == 6
    assert_matches_truth(result)
    counted = rows(result.database_url)
    targets = sum(len(check.result.targets) for check in result.checks)
    assert counted == {
        "scores": 6 * 4,  # four BASELINE_CV classes per image
        "chimp_scores": 0,  # never under CHIMP
        "auto_subsamples": targets,
        "dispensing": 6,
        "images": 6,
    }
    assert result.report_html is not None
    assert result.report_html.read_text(encoding="utf-8").count("DEMO-0001") >= 1
    assert result.report_png is not None
    assert result.report_png.stat().st_size > 1000


def test_the_same_plate_over_http_gives_the_same_rows(tmp_path: Path) -> None:
    from_disk = demo(tmp_path / "disk", seed=4, report=False)
    over_http = demo(tmp_path / "http", seed=4, report=False, over_http=True)

    assert over_http.image_url_template is not None
    assert over_http.image_url_template.startswith("http://127.0.0.1:")
    assert_matches_truth(over_http)

    def stored(result: DemoResult) -> list[tuple[object, ...]]:
        return [
            (
                c.image.location,
                c.result.state,
                dict(c.result.probabilities),
                [(x.x, x.y) for x in c.result.targets],
                (c.result.dispenseX, c.result.dispenseY),
            )
            for c in result.checks
        ]

    assert stored(over_http) == stored(from_disk)


def test_a_plate_with_bad_images_completes_with_them_marked_failed(tmp_path: Path) -> None:
    faults = {1: "missing", 2: "truncated", 3: "corrupt", 4: "empty", 5: "not_image"}
    result = demo(tmp_path, wells=4, faults=faults, report=False)

    (outcome,) = result.outcomes
    assert outcome.completed_inspection
    by_location = {check.image.location: check for check in result.checks}
    assert {loc: by_location[loc].result.failureReason for loc in faults} == {
        1: "image_missing",
        2: "image_truncated",
        3: "image_corrupt",
        4: "image_corrupt",
        5: "image_unsupported",
    }
    assert all(check.failure_as_expected for check in result.checks)
    assert sorted(outcome.failed.values()) == sorted(
        ["image_missing", "image_truncated", "image_corrupt", "image_corrupt", "image_unsupported"]
    )
    assert len(outcome.written) == 3
    assert_matches_truth(result, targets_too=False)  # drops 6-8 hold no crystal
    with make_engine(result.database_url).connect() as connection:
        failed = connection.scalar(
            select(func.count())
            .select_from(w.ChimpImageResult)
            .where(w.ChimpImageResult.state == "failed")
        )
        assert failed == 5


def test_the_demo_command_prints_the_overview_and_where_things_are(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["demo", "--out", str(tmp_path), "--wells", "1", "--size", "640x512", "--seed", "4"]
    first = runner.invoke(cli, [*args, "--fault", "2=truncated"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    out = first.output
    assert "analyser baseline" in out
    assert "plate DEMO-0001 (CrystalQuickX, vmxi): 2 drops" in out
    assert "failed: image_truncated" in out
    assert "drop found inside the true drop   1/1" in out
    assert "1 image_truncated (1/1 injected faults as expected)" in out
    assert str(tmp_path.resolve() / "chimp-demo.sqlite") in out
    assert "plate-DEMO-0001.html" in out
    second = runner.invoke(cli, [*args, "--no-report"], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert "plate DEMO-0002" in second.output


@pytest.mark.slow
def test_with_model_files_configured_the_demo_runs_chimp(tmp_path: Path) -> None:
    from chimp_worker.models.seeded import make_classifier_file

    classifier = make_classifier_file(tmp_path / "classifier.pytorch", seed=0)
    settings = load_settings(classifier_path=classifier, torch_threads=1, classifier_input_size=64)
    result = run_demo(
        settings,
        DemoOptions(output_dir=tmp_path / "demo", wells=1, image_size=SIZE, report=False),
    )
    assert result.analyser == "chimp"
    assert result.schema_name == "CHIMP"
    assert rows(result.database_url)["chimp_scores"] == 2 * 4


def test_a_schedule_shows_hits_appearing_over_time_against_the_truth(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["demo", "--out", str(tmp_path), "--wells", "3", "--size", "253x203"]
    result = runner.invoke(cli, [*args, "--schedule", "4", "--no-report"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "hits over time" in out
    # A2.2 first shows a crystal at the third inspection and is first called a hit there;
    # A1.1 is precipitate the baseline calls a crystal from the start
    assert (
        "first hits at the truth's first crystal 2/2 drops with crystals (0 early, 0 late, "
        "0 missed); 1 of 4 drops without crystals called a hit"
    ) in " ".join(out.split())
    assert "new hits at inspection 1: 2 (A1.1, A3.1)" in out
    assert "new hits at inspection 2: 0 (none)" in out
    assert "new hits at inspection 3: 1 (A2.2)" in out
    assert "hits --barcode DEMO-0001" in out
    hits = runner.invoke(
        cli,
        [
            "--database-url",
            f"sqlite:///{tmp_path.resolve() / 'chimp-demo.sqlite'}",
            "hits",
            "--barcode",
            "DEMO-0001",
            "--new",
            "--since",
            "2000-01-01",
            "--format",
            "csv",
        ],
        catch_exceptions=False,
    )
    assert hits.exit_code == 0, hits.output
    lines = hits.output.splitlines()
    assert len(lines) == 4  # header + three drops first hit within the schedule
