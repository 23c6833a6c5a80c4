"""``chimp-worker replay`` from the command line, with the real weight-free baseline analyser:
--dry-run lists exactly the inspections of the backlog; --local brings them to done once;
Ctrl-C prints the summary, exits 130, and the same command then finishes the rest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.plates import plate_settings
from helpers.replay_world import ReplayWorld, build_world
from sqlalchemy import func, select, update

from chimp_worker.analysis import AnalysisOptions
from chimp_worker.baseline import BaselineAnalyser
from chimp_worker.cli import main
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.worker_tables import ChimpImageResult, ChimpInspection, ChimpIspybRow
from chimp_worker.pipeline import Pipeline


def _world(url: str, root: Path) -> ReplayWorld:
    return build_world(
        url, root, BaselineAnalyser(AnalysisOptions.from_settings(plate_settings(url, root)))
    )


def _environment(monkeypatch: pytest.MonkeyPatch, world: ReplayWorld) -> None:
    for name, value in {
        "CHIMP_DATABASE_URL": world.url,
        "CHIMP_IMAGE_ROOTS": f'["{world.image_root.resolve()}"]',
        "CHIMP_ANALYSER": "baseline",
        "CHIMP_BASELINE_WRITES_TARGETS": "true",  # a test ISPyB: check every table
        "CHIMP_BATCH_SIZE": "2",
        "CHIMP_IMAGES_PER_WORK_ITEM": "2",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> ReplayWorld:
    """One backlog for the tests that only look (--dry-run changes nothing)."""
    from chimp_worker.ispyb.schema import create_all

    directory = tmp_path_factory.mktemp("replay-dry-run")
    url = f"sqlite:///{directory / 'ispyb.sqlite'}"
    create_all(url)
    return _world(url, directory / "images")


@pytest.fixture
def dry_world(shared_world: ReplayWorld, monkeypatch: pytest.MonkeyPatch) -> ReplayWorld:
    _environment(monkeypatch, shared_world)
    return shared_world


@pytest.fixture
def world(ispyb_world_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReplayWorld:
    """A backlog of its own, for tests that process it (SQLite and a facility's ISPyB)."""
    built = _world(ispyb_world_url, tmp_path / "images")
    _environment(monkeypatch, built)
    return built


PLAN_LINE = re.compile(r"\s*(\d+)\s+\S+\s+\S+\s+\S+ \S+" + r"\s+(\d+)" * 5)


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(["replay", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def listed(output: str) -> dict[int, tuple[int, int, int, int, int]]:
    """Inspection id -> (images, todo, unprocessed, failed, model changed) from the plan."""
    rows = {}
    for line in output.splitlines():
        match = re.match(
            r"\s*(\d+)\s+\S+\s+\S+\s+\S+ \S+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", line
        )
        if match:
            numbers = tuple(int(value) for value in match.groups())
            rows[numbers[0]] = numbers[1:]
    return rows


def test_dry_run_lists_exactly_the_backlog_and_changes_nothing(capsys, dry_world):
    world = dry_world
    _, a1, a2 = world.a
    code, out = replay(capsys, "--dry-run")
    assert code == 0
    assert listed(out) == {
        a1: (4, 1, 0, 1, 0),
        a2: (4, 4, 4, 0, 0),
        world.b: (2, 2, 0, 0, 2),
    }
    assert "image_corrupt 1" in out
    assert "backlog: 3 of 4 matching inspections need work; 7 images" in out
    assert "summary (dry-run): inspections 3, images planned 7, processed 0" in out
    with world.factory() as session:
        assert session.scalar(select(func.count()).select_from(ChimpImageResult)) == 10


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--failed-only",), "a1"),
        (("--model-changed",), "b"),
        (("--barcode", "RPL-B"), "b"),
        (("--visit", "mx1000-1"), "a1 a2"),
        (("--since", "2024-01-01 06:00", "--until", "2024-01-01 18:00"), "a1"),
    ],
)
def test_dry_run_filters(capsys, dry_world, args, expected):
    world = dry_world
    names = {"a1": world.a[1], "a2": world.a[2], "b": world.b}
    _, out = replay(capsys, "--dry-run", *args)
    assert set(listed(out)) == {names[name] for name in expected.split()}


def test_unknown_inspection_is_named_and_a_bad_visit_is_refused(capsys, dry_world):
    code, out = replay(capsys, "--dry-run", "--inspection", "999")
    assert code == 0
    assert "warning: inspection 999 is not a Completed inspection; skipped" in out
    code, out = replay(capsys, "--dry-run", "--visit", "nonsense")
    assert code == 2
    assert "--visit: expected a visit such as mx12345-6, got 'nonsense'" in out


def _state(world: ReplayWorld) -> tuple[dict[str, int], int, int, int]:
    """(images by state, auto sub-samples, crystal targets recorded, inspections done)."""
    with world.factory() as session:
        states = dict(
            session.execute(
                select(ChimpImageResult.state, func.count()).group_by(ChimpImageResult.state)
            ).all()
        )
        subsamples = session.scalar(  # the baseline's; RPL-B's older analyser keeps its own
            select(func.count())
            .select_from(t.BLSubSample)
            .join(ChimpIspybRow, ChimpIspybRow.rowId == t.BLSubSample.blSubSampleId)
            .where(t.BLSubSample.source == "auto", ChimpIspybRow.tableName == "BLSubSample")
            .where(ChimpIspybRow.analyser == "baseline")
        )
        targets = session.scalar(select(func.sum(ChimpImageResult.crystalCount)))
        done = session.scalar(
            select(func.count()).select_from(ChimpInspection).where(ChimpInspection.state == "done")
        )
    return states, subsamples, targets, done


def test_local_replay_brings_every_inspection_to_done_and_a_second_run_finds_nothing(capsys, world):
    world.repair_corrupt_image()
    code, out = replay(capsys, "--local")
    assert code == 0, out
    assert (
        "summary (local): inspections 3, images planned 7, processed 7, unchanged 0, failed 0, "
        "skipped 7, work items published 0, inspections completed 3"
    ) in out
    states, subsamples, targets, done = _state(world)
    assert (states, done) == ({"done": 14}, 4)
    assert subsamples == targets  # one auto BLSubSample per recorded target, no duplicates
    with world.factory() as session:  # another analyser's targets are never touched
        others = session.scalars(
            select(ChimpIspybRow.blSampleImageId)
            .where(ChimpIspybRow.analyser != "baseline")
            .where(ChimpIspybRow.tableName == "BLSubSample")
        ).all()
    assert sorted(others) == sorted(world.plate_b.blSampleImageIds)
    code, out = replay(capsys, "--local")
    assert "backlog: 0 of 4 matching inspections need work; 0 images" in out
    assert _state(world) == (states, subsamples, targets, done)


def test_ctrl_c_prints_the_summary_and_the_same_command_finishes_the_rest(
    capsys, world, monkeypatch
):
    world.repair_corrupt_image()
    original = Pipeline._write
    writes = []

    def interrupted_write(self, image_id, analysis):
        if len(writes) == 3:
            raise KeyboardInterrupt
        writes.append(image_id)
        return original(self, image_id, analysis)

    monkeypatch.setattr(Pipeline, "_write", interrupted_write)
    code, out = replay(capsys, "--local")
    assert code == 130
    assert "summary (local, interrupted): inspections 3, images planned 7, processed 3" in out
    assert "interrupted: run the same command again to finish the rest" in out
    # Written before the interruption: the failed image of A1 and two of A2 (9 done before).
    assert _state(world)[0] == {"done": 12}
    # RPL-B was reopened for its model change but not reached: it is not left reopened.
    with world.factory() as session:
        done = session.scalars(
            select(ChimpInspection.containerInspectionId).where(ChimpInspection.state == "done")
        ).all()
    assert sorted(done) == sorted([world.a[0], world.a[1], world.b])

    monkeypatch.setattr(Pipeline, "_write", original)
    code, out = replay(capsys, "--dry-run")
    assert "; 4 images" in out
    code, out = replay(capsys, "--local")
    assert code == 0
    assert "processed 4, unchanged 0, failed 0" in out
    assert _state(world)[0] == {"done": 14}
    assert _state(world)[3] == 4


def test_rule_changed_finds_results_of_another_target_rule_and_redoes_them(capsys, world):
    """The baseline computes by the original rule; results marked 'published' (as if a CHiMP
    worker with the other rule wrote them) are stale, listed under "rule", redone once. Plate
    B's, from an old test analyser that named no rule, are a rule change too."""
    a0 = world.a[0]
    with world.factory.begin() as session:
        session.execute(
            update(ChimpImageResult)
            .where(ChimpImageResult.containerInspectionId == a0)
            .values(targetRule="published", resultDigest="0" * 64)
        )
    code, out = replay(capsys, "--dry-run", "--rule-changed")
    assert code == 0, out
    assert listed(out) == {a0: (4, 4, 0, 0, 0), world.b: (2, 2, 0, 0, 0)}
    assert re.search(rf"^\s*{a0}\s.*\s4\s+$", out, re.MULTILINE), out  # the rule column
    assert "(0 unprocessed, 0 failed, 0 model changed, 6 rule changed)" in out
    code, out = replay(capsys, "--local", "--rule-changed")
    assert code == 0, out
    assert "images planned 6, processed 6" in out
    with world.factory() as session:
        rules = session.scalars(
            select(ChimpImageResult.targetRule).where(ChimpImageResult.containerInspectionId == a0)
        ).all()
    assert rules == ["original"] * 4
    code, out = replay(capsys, "--dry-run", "--rule-changed")
    assert "backlog: 0 of 4 matching inspections need work; 0 images" in out
