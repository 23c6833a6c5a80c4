"""Image sources: every way an image can be unusable raises its own specific error."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chimp_worker.config import load_settings
from chimp_worker.errors import (
    ConfigError,
    ImageCorruptError,
    ImageError,
    ImageFetchError,
    ImageMissingError,
    ImageOutsideRootsError,
    ImageTimeoutError,
    ImageTooLargeError,
    ImageTruncatedError,
    ImageUnsupportedError,
)
from chimp_worker.images import (
    FilesystemSource,
    HttpSource,
    ImageOptions,
    decode_image,
    make_image_source,
)
from chimp_worker.mock_imager.http_server import ImageServer, ServerFaults
from chimp_worker.mock_imager.synthetic import encode_jpeg, render_micrograph

MAX_PIXELS = 40_000_000
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grey_jpeg() -> bytes:
    pixels, _ = render_micrograph("vmxi", 3, "crystals", size=(253, 203))
    return encode_jpeg(pixels)


@pytest.fixture(scope="module")
def colour_jpeg() -> bytes:
    pixels, _ = render_micrograph("xchem", 3, "crystals", size=(245, 205))
    return encode_jpeg(pixels)


@pytest.fixture
def image_root(tmp_path: Path, grey_jpeg: bytes) -> Path:
    root = tmp_path / "images"
    (root / "visit" / "imaging" / "7" / "9").mkdir(parents=True)
    (root / "visit" / "imaging" / "7" / "9" / "101.jpg").write_bytes(grey_jpeg)
    return root


def image_path(root: Path) -> str:
    return str(root / "visit" / "imaging" / "7" / "9" / "101.jpg")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; no real pixel data behind it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# --- decoding ----------------------------------------------------------------------------------


def test_a_greyscale_jpeg_is_replicated_to_three_equal_channels(grey_jpeg: bytes) -> None:
    decoded = decode_image(grey_jpeg, "grey.jpg", MAX_PIXELS)
    assert decoded.pixels.shape == (203, 253, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.was_greyscale
    assert np.array_equal(decoded.pixels[:, :, 0], decoded.pixels[:, :, 2])
    original = np.asarray(Image.open(io.BytesIO(grey_jpeg)))
    assert np.array_equal(decoded.pixels[:, :, 1], original)


def test_a_colour_jpeg_decodes_to_rgb_close_to_what_was_encoded() -> None:
    pixels, _ = render_micrograph("xchem", 3, "crystals", size=(245, 205))
    decoded = decode_image(encode_jpeg(pixels, quality=95), "colour.jpg", MAX_PIXELS)
    assert not decoded.was_greyscale
    assert decoded.pixels.shape == pixels.shape
    assert np.abs(decoded.pixels.astype(int) - pixels).mean() < 4.0  # JPEG loss and noise
    channel_means = decoded.pixels.reshape(-1, 3).mean(axis=0)
    assert channel_means == pytest.approx(pixels.reshape(-1, 3).mean(axis=0), abs=0.5)


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits() -> None:
    ramp = (np.arange(64, dtype=np.uint16)[None, :] * 1024).repeat(8, axis=0)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), "ramp.png", MAX_PIXELS)
    assert decoded.was_greyscale
    assert decoded.pixels[0, 0, 0] == 0
    assert decoded.pixels[0, 63, 0] == round(63 * 1024 / 65535 * 255)


def test_an_empty_file_is_corrupt() -> None:
    with pytest.raises(ImageCorruptError, match="empty file"):
        decode_image(b"", "empty.jpg", MAX_PIXELS)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.99])
def test_a_jpeg_cut_short_is_truncated(grey_jpeg: bytes, fraction: float) -> None:
    with pytest.raises(ImageTruncatedError) as caught:
        decode_image(grey_jpeg[: int(len(grey_jpeg) * fraction)], "cut.jpg", MAX_PIXELS)
    assert caught.value.reason == "image_truncated"


def test_a_jpeg_with_garbage_after_its_header_is_corrupt(grey_jpeg: bytes) -> None:
    noise = np.random.default_rng(0).integers(0, 256, len(grey_jpeg) - 64).astype(np.uint8)
    with pytest.raises(ImageCorruptError) as caught:
        decode_image(grey_jpeg[:64] + noise.tobytes(), "noise.jpg", MAX_PIXELS)
    assert caught.value.reason == "image_corrupt"


def test_a_jpeg_with_a_broken_data_stream_is_corrupt(colour_jpeg: bytes) -> None:
    damaged = bytearray(colour_jpeg)
    rng = np.random.default_rng(0)
    for position in rng.integers(700, len(damaged) - 10, 50):
        damaged[position] = int(rng.integers(256))
    with pytest.raises(ImageCorruptError, match="cannot decode"):
        decode_image(bytes(damaged), "damaged.jpg", MAX_PIXELS)


def test_text_is_not_an_image() -> None:
    with pytest.raises(ImageUnsupportedError, match="not a recognised image format"):
        decode_image(b"<html>Internal error</html>\n", "page.html", MAX_PIXELS)


def test_a_gif_is_an_unsupported_format() -> None:
    buffer = io.BytesIO()
    Image.new("P", (16, 16)).save(buffer, format="GIF")
    with pytest.raises(ImageUnsupportedError, match="GIF images are not supported"):
        decode_image(buffer.getvalue(), "plate.gif", MAX_PIXELS)


def test_more_pixels_than_the_limit_is_too_large_before_decoding(grey_jpeg: bytes) -> None:
    with pytest.raises(ImageTooLargeError, match=r"253 x 203 = 51359 pixels exceeds"):
        decode_image(grey_jpeg, "big.jpg", max_pixels=50_000)


def test_a_decompression_bomb_is_too_large_even_under_a_generous_limit() -> None:
    bomb = png_header_only(10_000, 10_000)  # 100 Mpx claimed in a 60-byte file
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(bomb, "bomb.png", max_pixels=10**9)


# --- filesystem --------------------------------------------------------------------------------


def test_the_filesystem_source_reads_an_image_under_its_root(image_root: Path) -> None:
    source = FilesystemSource([image_root])
    decoded = source.fetch(image_path(image_root), 101)
    assert decoded.pixels.shape == (203, 253, 3)
    assert decoded.source == image_path(image_root)
    assert decoded.fetch_ms > 0
    assert decoded.decode_ms > 0


def test_a_path_prefix_map_rewrites_facility_paths_on_whole_components(image_root: Path) -> None:
    source = FilesystemSource([image_root], path_map={"/dls/i02-2/data": str(image_root)})
    decoded = source.fetch("/dls/i02-2/data/visit/imaging/7/9/101.jpg")
    assert decoded.width == 253
    with pytest.raises(ImageOutsideRootsError, match="outside the image roots"):
        source.fetch("/dls/i02-2/database/visit/imaging/7/9/101.jpg")


def test_a_missing_file_is_missing(image_root: Path) -> None:
    with pytest.raises(ImageMissingError, match="no such file"):
        FilesystemSource([image_root]).fetch(str(image_root / "visit" / "nope.jpg"))


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # the socket file outlives the socket


def make_device(path: Path) -> Path:
    return Path("/dev/null")  # under the source's roots too (mknod would need root)


def make_loop(path: Path) -> None:
    partner = path.with_name("partner.jpg")
    path.symlink_to(partner)
    partner.symlink_to(path)


def make_self_loop(path: Path) -> None:
    path.symlink_to(path)


def make_directory(path: Path) -> None:
    path.mkdir()


def make_file_parent(path: Path) -> Path:
    path.write_bytes(b"a file, not a directory")
    return path / "101.jpg"


# what sits at the image's path -> the failure's reason and words of its message
NOT_AN_IMAGE_FILE: dict[str, tuple[Callable[[Path], Path | None], str, str]] = {
    "fifo": (make_fifo, "image_not_a_file", "FIFO"),
    "socket": (make_socket, "image_not_a_file", "socket"),
    "character_device": (make_device, "image_not_a_file", "character device"),
    "directory": (make_directory, "image_not_a_file", "directory"),
    "symlink_loop": (make_loop, "image_symlink_loop", "symbolic links"),
    "symlink_to_itself": (make_self_loop, "image_symlink_loop", "symbolic links"),
    "file_as_a_directory": (make_file_parent, "image_missing", "not a directory"),
}


@pytest.mark.parametrize("kind", sorted(NOT_AN_IMAGE_FILE))
def test_anything_but_a_regular_file_is_that_images_failure_and_is_never_opened(
    image_root: Path, kind: str
) -> None:
    make, reason, words = NOT_AN_IMAGE_FILE[kind]
    path = image_root / "visit" / "odd.jpg"
    made = make(path)
    target = made or path
    fetch = threading.Thread(target=lambda: None)
    caught: list[BaseException] = []

    def attempt() -> None:
        try:
            FilesystemSource([image_root, Path("/dev")]).fetch(str(target))
        except BaseException as exc:  # surfaced below
            caught.append(exc)

    fetch = threading.Thread(target=attempt, daemon=True)  # a FIFO open() would never return
    fetch.start()
    fetch.join(10)
    assert not fetch.is_alive(), f"fetching a {kind} blocked"
    [error] = caught
    assert isinstance(error, ImageError), f"{type(error).__name__}: {error}"
    assert error.reason == reason
    assert words in str(error)


def test_a_path_component_longer_than_the_filesystem_allows_is_that_images_failure(
    image_root: Path,
) -> None:
    too_long = image_root / "visit" / ("\u00e9" * 130 + ".jpg")  # 264 bytes: over NAME_MAX
    with pytest.raises(ImageError) as caught:
        FilesystemSource([image_root]).fetch(str(too_long))
    assert caught.value.reason == "image_path_too_long"


def test_an_unreadable_file_is_permission_denied(image_root: Path) -> None:
    """Run as an unprivileged user (root reads any file): chmod 000 then fetch."""
    shared = Path(tempfile.mkdtemp(prefix="chimp-perm-"))
    try:
        shared.chmod(0o755)
        image = shared / "101.jpg"
        image.write_bytes(Path(image_path(image_root)).read_bytes())
        image.chmod(0o000)
        script = (
            "from chimp_worker.images import FilesystemSource\n"
            "try:\n"
            f"    FilesystemSource([{str(shared)!r}]).fetch({str(image)!r})\n"
            "except Exception as error:\n"
            "    print(type(error).__name__, error.reason)\n"
        )
        command = [sys.executable, "-c", script]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert done.stdout.strip() == "ImagePermissionError image_permission_denied", done.stderr
    finally:
        shutil.rmtree(shared)


def test_dot_dot_cannot_leave_the_roots(image_root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    escaping = str(image_root / "visit" / ".." / ".." / "secret.jpg")
    with pytest.raises(ImageOutsideRootsError) as caught:
        FilesystemSource([image_root]).fetch(escaping)
    assert caught.value.reason == "image_outside_roots"


def test_a_symlink_cannot_lead_outside_the_roots(
    image_root: Path, tmp_path: Path, grey_jpeg: bytes
) -> None:
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(grey_jpeg)
    link = image_root / "visit" / "link.jpg"
    link.symlink_to(outside)
    with pytest.raises(ImageOutsideRootsError, match=r"elsewhere\.jpg"):
        FilesystemSource([image_root]).fetch(str(link))


def test_a_relative_path_is_refused(image_root: Path) -> None:
    with pytest.raises(ImageOutsideRootsError, match="not an absolute path"):
        FilesystemSource([image_root]).fetch("visit/imaging/7/9/101.jpg")


def test_a_file_over_the_byte_limit_is_too_large(image_root: Path) -> None:
    with pytest.raises(ImageTooLargeError, match="exceeds the limit of 2048"):
        FilesystemSource([image_root], max_bytes=2048).fetch(image_path(image_root))


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"", ImageCorruptError), (b"GIF89a not really", ImageUnsupportedError)],
)
def test_bad_files_on_disk_raise_the_decoders_errors(
    image_root: Path, content: bytes, error: type[Exception]
) -> None:
    bad = image_root / "visit" / "bad.jpg"
    bad.write_bytes(content)
    with pytest.raises(error):
        FilesystemSource([image_root]).fetch(str(bad))


def test_a_filesystem_source_without_roots_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"image_roots \[CHIMP_IMAGE_ROOTS\]"):
        FilesystemSource([])


def test_settings_choose_the_source(image_root: Path) -> None:
    from_disk = make_image_source(
        ImageOptions.from_settings(load_settings(image_roots=[image_root]))
    )
    assert isinstance(from_disk, FilesystemSource)
    over_http = make_image_source(
        ImageOptions.from_settings(
            load_settings(image_url_template="https://images.example/{imageFullPath}")
        )
    )
    assert isinstance(over_http, HttpSource)
    assert over_http.host == "images.example"


# --- HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def serve(image_root: Path) -> Iterator[Callable[..., ImageServer]]:
    servers: list[ImageServer] = []

    def start(faults: ServerFaults | None = None) -> ImageServer:
        server = ImageServer(image_root, faults=faults).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def http_source(server: ImageServer, **options: object) -> HttpSource:
    defaults: dict[str, object] = {"timeout_s": 2.0, "retries": 2, "sleep": lambda _s: None}
    return HttpSource(server.url_template, **{**defaults, **options})  # type: ignore[arg-type]


def test_http_fetch_gives_the_same_pixels_as_the_filesystem(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    server = serve()
    over_http = http_source(server).fetch(image_path(image_root), 101)
    from_disk = FilesystemSource([image_root]).fetch(image_path(image_root), 101)
    assert np.array_equal(over_http.pixels, from_disk.pixels)
    assert over_http.source == f"{server.base_url}{image_path(image_root)}"
    assert server.count(image_path(image_root)) == 1


def test_http_404_is_missing_and_not_retried(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    path = image_path(image_root)
    server = serve(ServerFaults(by_path={path: "404"}))
    with pytest.raises(ImageMissingError, match="HTTP 404"):
        http_source(server).fetch(path)
    assert server.count(path) == 1


def test_a_slow_server_times_out_after_retrying(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    path = image_path(image_root)
    server = serve(ServerFaults(everywhere="slow", slow_s=0.6))
    with pytest.raises(ImageTimeoutError, match="timed out") as caught:
        http_source(server, timeout_s=0.15, retries=1).fetch(path)
    assert caught.value.reason == "image_timeout"
    assert server.count(path) == 2


def test_transient_503s_are_retried_with_backoff_until_the_image_comes(
    image_root: Path, serve
) -> None:
    path = image_path(image_root)
    waits: list[float] = []
    server = serve(ServerFaults(by_path={path: "flaky"}, flaky_failures=2))
    decoded = http_source(server, retries=3, sleep=waits.append, backoff_s=0.1).fetch(path)
    assert decoded.width == 253
    assert server.count(path) == 3
    assert len(waits) == 2
    assert all(0 <= wait <= 10.0 for wait in waits)


def test_a_server_that_keeps_failing_is_a_fetch_error_after_the_retries(
    image_root: Path, serve
) -> None:
    path = image_path(image_root)
    server = serve(ServerFaults(everywhere="503"))
    with pytest.raises(ImageFetchError, match="HTTP 503"):
        http_source(server, retries=2).fetch(path)
    assert server.count(path) == 3


def test_a_transfer_cut_off_midway_is_truncated_after_the_retries(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    path = image_path(image_root)
    server = serve(ServerFaults(everywhere="cut"))
    with pytest.raises(ImageTruncatedError, match="transfer broke off"):
        http_source(server, retries=1).fetch(path)
    assert server.count(path) == 2


def test_a_truncated_file_served_whole_is_truncated_and_not_refetched(
    image_root: Path, serve
) -> None:
    path = image_path(image_root)
    server = serve(ServerFaults(everywhere="truncated"))
    with pytest.raises(ImageTruncatedError, match="data ends early"):
        http_source(server).fetch(path)
    assert server.count(path) == 1


def test_a_corrupt_file_over_http_is_corrupt(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    server = serve(ServerFaults(everywhere="corrupt"))
    with pytest.raises(ImageCorruptError):
        http_source(server).fetch(image_path(image_root))


def test_a_body_over_the_byte_limit_is_too_large(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    server = serve()
    with pytest.raises(ImageTooLargeError, match="exceeds the limit of 2048"):
        http_source(server, max_bytes=2048).fetch(image_path(image_root))


def test_an_image_over_the_pixel_limit_is_too_large(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    server = serve()
    with pytest.raises(ImageTooLargeError, match="pixels exceeds"):
        http_source(server, max_pixels=10_000).fetch(image_path(image_root))


def test_a_redirect_to_another_host_is_refused(
    image_root: Path, serve: Callable[..., ImageServer]
) -> None:
    path = image_path(image_root)
    server = serve(ServerFaults(everywhere="redirect", redirect_host="localhost"))
    with pytest.raises(ImageOutsideRootsError, match="not on the configured image host"):
        http_source(server).fetch(path)
    assert server.count(path) == 1


def test_paths_cannot_climb_or_change_the_host() -> None:
    source = HttpSource("http://images.example/store/{imageFullPath}")
    with pytest.raises(ImageOutsideRootsError, match=r"'\.\.' is not allowed"):
        source.url_for("/data/../../etc/passwd")
    url = source.url_for("/data/a@evil.example:80/x y.jpg")
    assert url == "http://images.example/store/data/a%40evil.example%3A80/x%20y.jpg"


def test_the_image_id_template_needs_the_id() -> None:
    source = HttpSource("http://images.example/image/{blSampleImageId}.jpg")
    assert source.url_for("/a/b.jpg", 42) == "http://images.example/image/42.jpg"
    with pytest.raises(ImageFetchError, match="needs blSampleImageId"):
        source.url_for("/a/b.jpg")


def test_an_unreachable_server_is_a_fetch_error(image_root: Path) -> None:
    source = HttpSource(
        "http://127.0.0.1:9/{imageFullPath}", timeout_s=1.0, retries=1, sleep=lambda _s: None
    )
    with pytest.raises(ImageFetchError, match="connection failed"):
        source.fetch(image_path(image_root))
