"""Image paths from the database or an event never lead outside the configured roots, and HTTP
fetches never leave the configured URL template's host.

The outside file is a perfectly good JPEG: had any path reached it, that image would have a
result instead of an ``image_outside_roots`` failure.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.plates import plate_settings, small_plate
from sqlalchemy import update

from chimp_worker.config import load_settings
from chimp_worker.errors import (
    ConfigError,
    EventError,
    ImageMissingError,
    ImageOutsideRootsError,
)
from chimp_worker.events import decode_event
from chimp_worker.images import HttpSource, ImageOptions, make_image_source
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.mock_imager.http_server import ImageServer
from chimp_worker.pipeline import Pipeline
from chimp_worker.wiring import make_pipeline


@pytest.fixture
def escape_world(
    ispyb_sqlite_url: str, tmp_path: Path
) -> Iterator[tuple[Pipeline, int, dict[int, str]]]:
    """A plate whose BLSampleImage rows point out of the image root in every way we know."""
    root = tmp_path / "images"
    plate = small_plate(ispyb_sqlite_url, root, wells=5)
    images = plate.latest.images
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    shutil.copy(images[-1].imageFullPath, secret)  # a valid image: reading it would "work"
    sibling = tmp_path / "images-sibling"  # shares the root's name as a string prefix
    sibling.mkdir()
    shutil.copy(secret, sibling / "secret.jpg")
    (root / "link-to-secret.jpg").symlink_to(secret)
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    paths = {
        "dot_dot": f"{root}/../outside/secret.jpg",
        "symlinked_file": f"{root}/link-to-secret.jpg",
        "symlinked_dir": f"{root}/linked-dir/secret.jpg",
        "absolute_elsewhere": str(secret),
        "sibling_prefix": f"{root}-sibling/secret.jpg",
        "relative": "outside/secret.jpg",
        "mapped_dot_dot": "/dls/../outside/secret.jpg",  # through the prefix map
        "nul_byte": f"{root}/a\x00/../../outside/secret.jpg",
        "root_itself": "/",
    }
    reasons = {"nul_byte": "image_missing"}
    engine = make_engine(ispyb_sqlite_url)
    factory = make_session_factory(engine)
    expected: dict[int, str] = {}
    with factory.begin() as session:
        for image, (kind, path) in zip(images, paths.items(), strict=False):
            session.execute(
                update(t.BLSampleImage)
                .where(t.BLSampleImage.blSampleImageId == image.blSampleImageId)
                .values(imageFullPath=path)
            )
            expected[image.blSampleImageId] = reasons.get(kind, "image_outside_roots")
    engine.dispose()
    settings = plate_settings(ispyb_sqlite_url, root, image_path_map={"/dls": str(root)})
    pipeline = make_pipeline(settings)
    yield pipeline, plate.latest.containerInspectionId, expected
    pipeline.close()


def test_database_paths_out_of_the_roots_are_refused_and_the_rest_of_the_plate_goes_on(
    escape_world: tuple[Pipeline, int, dict[int, str]],
) -> None:
    pipeline, inspection_id, expected = escape_world
    outcome = pipeline.process(inspection_id)
    assert outcome.failed == expected
    assert len(outcome.written) == 1, "only the one image left in place was analysed"
    assert outcome.completed_inspection


@pytest.mark.parametrize("event_type", ["inspection.completed", "work.item"])
def test_events_cannot_carry_a_path(event_type: str) -> None:
    body = {
        "type": event_type,
        "version": 1,
        "containerInspectionId": 1,
        "blSampleImageIds": [1],
        "imageFullPath": "/etc/passwd",
    }
    with pytest.raises(EventError) as error:
        decode_event(json.dumps(body).encode())
    assert error.value.reason == "event_unknown_field"


@pytest.fixture
def decoy() -> Iterator[socket.socket]:
    """A listener on another loopback address that no fetch may ever connect to."""
    listener = socket.create_server(("127.0.0.2", 0))
    listener.setblocking(False)
    yield listener
    listener.close()


def connections_to(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[ImageServer]:
    with ImageServer(tmp_path) as server:
        yield server


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("http://127.0.0.1:{port}{{imageFullPath}}", "@127.0.0.2:{decoy}/secret.jpg"),
        ("http://127.0.0.1:{port}{{imageFullPath}}", ".example.org/secret.jpg"),
        ("http://127.0.0.1:{port}{{imageFullPath}}", "0/secret.jpg"),
        ("http://127.0.0.1:{port}/img/{{imageFullPath}}", "/data/../../secret.jpg"),
    ],
)
def test_an_image_path_cannot_move_an_http_fetch_to_another_host(
    template: str, path: str, image_server: ImageServer, decoy: socket.socket
) -> None:
    source = HttpSource(template.format(port=image_server.port), retries=0, timeout_s=2)
    with pytest.raises(ImageOutsideRootsError):
        source.fetch(path.format(decoy=decoy.getsockname()[1]), 1)
    assert connections_to(decoy) == 0
    assert sum(image_server.requests.values()) == 0, "refused before any request"


def test_a_path_that_looks_like_a_url_stays_a_path_on_the_configured_host(
    image_server: ImageServer, decoy: socket.socket
) -> None:
    source = HttpSource(
        f"http://127.0.0.1:{image_server.port}/img/{{imageFullPath}}", retries=0, timeout_s=2
    )
    escape = f"//127.0.0.2:{decoy.getsockname()[1]}/http://127.0.0.2/secret.jpg"
    assert source.url_for(escape).startswith(f"http://127.0.0.1:{image_server.port}/img/")
    with pytest.raises(ImageMissingError):  # asked of the configured server, which has no such
        source.fetch(escape)
    assert connections_to(decoy) == 0


def test_a_template_with_the_path_in_the_host_is_refused_at_start_up() -> None:
    settings = load_settings(image_url_template="http://{imageFullPath}/x.jpg")
    with pytest.raises(ConfigError, match="host must come before any placeholder"):
        make_image_source(ImageOptions.from_settings(settings))
