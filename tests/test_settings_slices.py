"""Each component takes a frozen slice of ``Settings``, built once with ``from_settings``: the
slice carries the settings' values, cannot be changed, and keeps passwords out of its repr."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chimp_worker.analysis import AnalysisOptions, TargetRule
from chimp_worker.broker import BrokerOptions
from chimp_worker.config import Settings
from chimp_worker.handling import HandlingOptions
from chimp_worker.images import ImageOptions
from chimp_worker.ispyb.database import DatabaseOptions

SETTINGS = Settings(
    database_url="mysql+mysqldb://chimp:dbsecret@db.example/ispyb",
    database_connect_args={"ssl": {"ca": "/etc/ca.pem"}, "passwd": "connsecret"},
    amqp_url="amqps://chimp:mqsecret@mq.example:5671/%2Fzocalo",
    amqp_heartbeat_s=17,
    amqp_tls_ca_file=Path("/etc/ca.pem"),
    events_queue="e.events",
    work_queue="e.work",
    results_exchange="e.results",
    results_routing_key="e.ready",
    results_queue="",
    queue_arguments="policy",
    delivery_limit=7,
    images_per_work_item=3,
    inspection_visibility_retries=2,
    database_retry_attempts=9,
    database_outage_hold_s=12.0,
    publish_timeout_s=4.0,
    retry_initial_wait_s=0.1,
    retry_max_wait_s=2.0,
    image_roots=[Path("/dls")],
    image_path_map={"/dls": "/mnt/dls"},
    image_url_template="https://user:imgsecret@images.example/{imageFullPath}",
    image_timeout_s=5.0,
    image_fetch_retries=1,
    image_max_bytes=4096,
    image_max_pixels=2048,
    score_threshold=0.7,
    dispense_margin_px=3.0,
    target_rule="original",
    batch_size=2,
)


def test_the_broker_slice_carries_connection_and_topology() -> None:
    broker = BrokerOptions.from_settings(SETTINGS)
    assert broker.amqp_url == SETTINGS.amqp_url
    assert (broker.heartbeat_s, broker.tls_ca_file) == (17, Path("/etc/ca.pem"))
    assert (broker.events_queue, broker.work_queue) == ("e.events", "e.work")
    assert (broker.results_exchange, broker.results_routing_key) == ("e.results", "e.ready")
    assert (broker.results_queue, broker.queue_arguments, broker.delivery_limit) == (
        "",
        "policy",
        7,
    )


def test_the_handling_slice_names_each_field_as_its_setting() -> None:
    handling = HandlingOptions.from_settings(SETTINGS)
    for field in dataclasses.fields(HandlingOptions):
        assert getattr(handling, field.name) == getattr(SETTINGS, field.name), field.name


def test_the_image_and_database_slices() -> None:
    images = ImageOptions.from_settings(SETTINGS)
    assert (images.roots, dict(images.path_map)) == ((Path("/dls"),), {"/dls": "/mnt/dls"})
    assert images.url_template == SETTINGS.image_url_template
    assert (images.timeout_s, images.fetch_retries) == (5.0, 1)
    assert (images.max_bytes, images.max_pixels) == (4096, 2048)
    database = DatabaseOptions.from_settings(SETTINGS)
    assert database.url == SETTINGS.database_url
    assert dict(database.connect_args) == SETTINGS.database_connect_args


def test_the_analysis_slice() -> None:
    analysis = AnalysisOptions.from_settings(SETTINGS)
    assert (analysis.score_threshold, analysis.dispense_margin_px) == (0.7, 3.0)
    assert (analysis.target_rule, analysis.batch_size) == (TargetRule.ORIGINAL, 2)


def test_slices_are_frozen_and_keep_passwords_out_of_their_repr() -> None:
    slices = [
        BrokerOptions.from_settings(SETTINGS),
        HandlingOptions.from_settings(SETTINGS),
        ImageOptions.from_settings(SETTINGS),
        DatabaseOptions.from_settings(SETTINGS),
        AnalysisOptions.from_settings(SETTINGS),
    ]
    for options in slices:
        first = dataclasses.fields(options)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(options, first, None)
        shown = repr(options)
        for secret in ("dbsecret", "connsecret", "mqsecret", "imgsecret"):
            assert secret not in shown, f"{type(options).__name__} shows {secret}"
    images = ImageOptions.from_settings(SETTINGS)
    with pytest.raises(TypeError):
        images.path_map["/x"] = "/y"  # type: ignore[index]  # read-only on purpose
