"""Fetch and fully decode a plate micrograph, from the filesystem or over HTTP.

An image is only handed on once every pixel is decoded: Pillow opens lazily, so a truncated
JPEG opens fine and fails later. Each way an image can be unusable raises its
own :mod:`chimp_worker.errors` class, whose ``reason`` ends up in the worker's failure rows:
missing, corrupt, truncated, too large, unsupported format, timed out, outside the allowed
roots, not a regular file (FIFO, socket, device, directory), a symbolic-link loop, a path too
long, permission denied, fetch failed. Only regular files are ever opened, and without
blocking: a FIFO at an image's path must not hang the worker. Greyscale (VMXi) images are
replicated to three channels.
"""

from __future__ import annotations

import errno
import io
import os
import queue
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlsplit

import numpy as np
import requests
import tenacity
from PIL import Image, UnidentifiedImageError

from chimp_worker.analysis import DecodedImage
from chimp_worker.errors import (
    ConfigError,
    ImageCorruptError,
    ImageError,
    ImageFetchError,
    ImageMissingError,
    ImageNotAFileError,
    ImageOutsideRootsError,
    ImagePathTooLongError,
    ImagePermissionError,
    ImageSymlinkLoopError,
    ImageTimeoutError,
    ImageTooLargeError,
    ImageTruncatedError,
    ImageUnsupportedError,
)
from chimp_worker.log import get_logger

if TYPE_CHECKING:
    from chimp_worker.config import Settings

log = get_logger(__name__)

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "BMP"})
# Leading bytes of formats we would decode: data starting so but unreadable is corrupt, not
# merely "not an image".
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM")
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 256 * 1024


class ImageSource(Protocol):
    """Where the worker gets images: by ISPyB's ``imageFullPath`` (and the image id)."""

    def fetch(self, image_full_path: str, blsample_image_id: int | None = None) -> DecodedImage:
        """The decoded image; raises a specific ``ImageError`` when it cannot be used."""
        ...


@dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """Where images come from and the limits on them: the image slice of ``Settings``. The
    URL template may hold a password: it is kept out of ``repr``."""

    roots: tuple[Path, ...]
    path_map: Mapping[str, str]
    url_template: str | None = field(repr=False)
    timeout_s: float
    fetch_retries: int
    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageOptions:
        return cls(
            roots=tuple(settings.image_roots),
            path_map=MappingProxyType(dict(settings.image_path_map)),
            url_template=settings.image_url_template,
            timeout_s=settings.image_timeout_s,
            fetch_retries=settings.image_fetch_retries,
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
        )


def make_image_source(options: ImageOptions) -> ImageSource:
    """HTTP when ``url_template`` is set, otherwise the filesystem under ``roots``."""
    if options.url_template:
        return HttpSource(
            options.url_template,
            timeout_s=options.timeout_s,
            retries=options.fetch_retries,
            max_bytes=options.max_bytes,
            max_pixels=options.max_pixels,
        )
    return FilesystemSource(
        options.roots,
        path_map=options.path_map,
        max_bytes=options.max_bytes,
        max_pixels=options.max_pixels,
    )


# --- decoding ----------------------------------------------------------------------------------


def decode_image(data: bytes, source: str, max_pixels: int) -> DecodedImage:
    """Decode every pixel of ``data`` into RGB uint8 (H, W, 3).

    Raises ImageCorruptError (empty or undecodable data in an image format),
    ImageTruncatedError (data ends early), ImageUnsupportedError (not an image we read) and
    ImageTooLargeError (more than ``max_pixels``, checked before decoding).
    """
    started = time.perf_counter()
    if not data:
        raise ImageCorruptError(f"{source}: empty file (0 bytes)")
    try:
        # catch_warnings is process-wide, not per thread: a race can only leave the bomb
        # warning as an error for longer, and the explicit pixel check guards either way.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            _check_format_and_size(picture, source, max_pixels)
            picture.load()
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLargeError(f"{source}: {exc}") from None
    except UnidentifiedImageError:
        if data.startswith(_MAGIC):
            raise ImageCorruptError(f"{source}: image header is unreadable") from None
        raise ImageUnsupportedError(
            f"{source}: not a recognised image format (starts {data[:8]!r})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow says "truncated" both for data that really ends early and for garbage whose
        # segment lengths point past the end; a JPEG's marker chain tells the two apart.
        ends_early = "truncated" in str(exc).lower()
        if ends_early and data.startswith(b"\xff\xd8") and _jpeg_header_state(data) == "malformed":
            ends_early = False
        if ends_early:
            raise ImageTruncatedError(f"{source}: data ends early ({exc})") from None
        raise ImageCorruptError(f"{source}: cannot decode ({exc})") from None
    pixels, was_greyscale = _to_rgb(picture, source)
    decode_ms = (time.perf_counter() - started) * 1000
    return DecodedImage(
        pixels=pixels, source=source, was_greyscale=was_greyscale, decode_ms=decode_ms
    )


def _jpeg_header_state(data: bytes) -> str:
    """Walk a JPEG's marker segments from SOI to SOS: "complete", "ends_early" or "malformed".

    Every segment must start with 0xFF and a marker code and carry a length of at least 2;
    data that keeps to that until it runs out was cut short, data that breaks it is corrupt.
    """
    if not data.startswith(b"\xff\xd8"):
        return "malformed"
    position, size = 2, len(data)
    while True:
        if position >= size:
            return "ends_early"
        if data[position] != 0xFF:
            return "malformed"
        while position < size and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= size:
            return "ends_early"
        marker = data[position]
        position += 1
        if marker in (0x00, 0xD8, 0xD9):
            return "malformed"
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        if position + 2 > size:
            return "ends_early"
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2:
            return "malformed"
        if position + length > size:
            return "ends_early"
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return "complete"
        position += length


def _check_format_and_size(picture: Image.Image, source: str, max_pixels: int) -> None:
    if picture.format not in SUPPORTED_FORMATS:
        raise ImageUnsupportedError(
            f"{source}: {picture.format} images are not supported "
            f"(expected one of {', '.join(sorted(SUPPORTED_FORMATS))})"
        )
    width, height = picture.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{source}: {width} x {height} = {width * height} pixels exceeds the limit "
            f"of {max_pixels} (image_max_pixels)"
        )
    if getattr(picture, "n_frames", 1) > 1:
        raise ImageUnsupportedError(f"{source}: multi-frame images are not supported")


def _to_rgb(picture: Image.Image, source: str) -> tuple[np.ndarray, bool]:
    """RGB uint8 (H, W, 3); greyscale of any depth is scaled to 8 bits and replicated."""
    mode = picture.mode
    if mode == "RGB":
        return np.asarray(picture, dtype=np.uint8).copy(), False
    if mode in ("L", "1", "LA"):
        grey = np.asarray(picture.convert("L"), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), True
    if mode.startswith("I"):  # 16- or 32-bit greyscale (PNG, TIFF)
        values = np.asarray(picture).astype(np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), True
    if mode in ("RGBA", "P", "CMYK", "YCbCr", "PA", "RGBX"):
        return np.asarray(picture.convert("RGB"), dtype=np.uint8).copy(), False
    raise ImageUnsupportedError(f"{source}: pixel mode {mode} is not supported")


def _has_parent_segment(path: str) -> bool:
    return ".." in PurePosixPath(path).parts


# --- filesystem --------------------------------------------------------------------------------


class FilesystemSource:
    """Images read from disk, after an optional path-prefix rewrite, only below ``roots``.

    The prefix map lets a worker see the facility's paths at another mount point
    (``{"/dls": "/mnt/dls"}``); the longest matching prefix wins and only whole path
    components match. The final path is resolved (symbolic links and ``..``) before the
    roots are checked, so neither can lead outside them.
    """

    def __init__(
        self,
        roots: Iterable[Path],
        *,
        path_map: Mapping[str, str] | None = None,
        max_bytes: int = 64 * 1024 * 1024,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.roots = tuple(Path(root).resolve() for root in roots)
        if not self.roots:
            raise ConfigError(
                "invalid setting image_roots [CHIMP_IMAGE_ROOTS]: set at least one directory "
                'images may be read from, e.g. ["/dls"] (or set CHIMP_IMAGE_URL_TEMPLATE)'
            )
        self.path_map = sorted((path_map or {}).items(), key=lambda item: -len(item[0]))
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def local_path(self, image_full_path: str) -> Path:
        """Where ``image_full_path`` is on this machine; raises ImageOutsideRootsError."""
        mapped = image_full_path
        for prefix, replacement in self.path_map:
            stripped = prefix.rstrip("/")
            if mapped == stripped or mapped.startswith(stripped + "/"):
                mapped = replacement.rstrip("/") + mapped[len(stripped) :]
                break
        if "\x00" in mapped:  # Path.resolve would raise ValueError and fail the whole unit
            raise ImageMissingError(f"{image_full_path!r}: a path with a NUL byte names no file")
        path = Path(mapped)
        if not path.is_absolute():
            raise ImageOutsideRootsError(f"{image_full_path}: not an absolute path")
        try:
            resolved = path.resolve()
        except RuntimeError:  # Python < 3.13 reports a loop so; 3.13 raises ELOOP
            raise ImageSymlinkLoopError(
                f"{image_full_path}: too many levels of symbolic links (a loop)"
            ) from None
        except OSError as exc:
            raise _file_error(image_full_path, path, exc) from None
        if not any(resolved.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(root) for root in self.roots)
            raise ImageOutsideRootsError(
                f"{image_full_path}: resolves to {resolved}, outside the image roots ({roots})"
            )
        return resolved

    def fetch(self, image_full_path: str, blsample_image_id: int | None = None) -> DecodedImage:
        started = time.perf_counter()
        path = self.local_path(image_full_path)
        data = read_regular_file(path, image_full_path, self.max_bytes)
        fetch_ms = (time.perf_counter() - started) * 1000
        decoded = decode_image(data, image_full_path, self.max_pixels)
        return _with_fetch_time(decoded, fetch_ms)


# open(2) flags: never block (a FIFO without a writer), never follow a link swapped in after
# resolving, never become the controlling terminal, never leak into a child process.
_OPEN_FLAGS = (
    os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
)
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def read_regular_file(path: Path, image_full_path: str, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``.

    The type is checked before opening (a FIFO or device is never opened) and again on the
    open descriptor (the path may have changed in between); the open never blocks.
    """
    try:
        _require_regular(os.stat(path).st_mode, image_full_path)
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _file_error(image_full_path, path, exc) from None
    try:
        with os.fdopen(descriptor, "rb") as handle:
            info = os.fstat(handle.fileno())
            _require_regular(info.st_mode, image_full_path)
            if info.st_size > max_bytes:
                raise ImageTooLargeError(
                    f"{image_full_path}: {info.st_size} bytes exceeds the limit of "
                    f"{max_bytes} (image_max_bytes)"
                )
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise _file_error(image_full_path, path, exc) from None
    if len(data) > max_bytes:  # grew while we read it
        raise ImageTooLargeError(f"{image_full_path}: exceeds {max_bytes} bytes")
    return data


def _require_regular(mode: int, image_full_path: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    raise ImageNotAFileError(f"{image_full_path}: is {kind}, not an image file")


def _file_error(image_full_path: str, path: Path, exc: OSError) -> ImageError:
    """The image's own failure for an error of the filesystem, by errno."""
    code = exc.errno
    name = errno.errorcode.get(code or 0, "error")
    detail = f"{image_full_path}: {{}} ({name}, {path})"
    if code in (errno.ENOENT, errno.ENOTDIR):
        what = "no such file" if code == errno.ENOENT else "a path component is not a directory"
        return ImageMissingError(detail.format(what))
    if code == errno.ELOOP:
        return ImageSymlinkLoopError(detail.format("too many levels of symbolic links"))
    if code == errno.ENAMETOOLONG:
        return ImagePathTooLongError(detail.format("a file name or the path is too long"))
    if code in (errno.EACCES, errno.EPERM):
        return ImagePermissionError(detail.format("permission denied"))
    if code in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
        return ImageNotAFileError(detail.format("not a regular file"))
    return ImageFetchError(detail.format(f"cannot read: {exc.strerror or exc}"))


def _with_fetch_time(decoded: DecodedImage, fetch_ms: float) -> DecodedImage:
    return DecodedImage(
        pixels=decoded.pixels,
        source=decoded.source,
        was_greyscale=decoded.was_greyscale,
        fetch_ms=fetch_ms,
        decode_ms=decoded.decode_ms,
    )


# --- HTTP --------------------------------------------------------------------------------------


class _RetryableFetchError(Exception):
    """A failure worth another attempt; carries the error to raise if none is left."""

    def __init__(self, error: ImageError) -> None:
        super().__init__(str(error))
        self.error = error


class HttpSource:
    """Images fetched from the URL template's host, and only from it.

    ``{imageFullPath}`` is replaced by the path without its leading slash, URL-quoted;
    ``{blSampleImageId}`` by the image id. Connection failures, timeouts, broken transfers
    and 408/429/5xx answers are retried with jittered exponential backoff; 404 and the other
    4xx answers, oversize bodies and redirects to another host are not.
    """

    def __init__(
        self,
        url_template: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        max_bytes: int = 64 * 1024 * 1024,
        max_pixels: int = 40_000_000,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        prefix = urlsplit(url_template.split("{", 1)[0])
        if prefix.scheme not in ("http", "https") or not prefix.netloc:
            raise ConfigError(
                "invalid setting image_url_template [CHIMP_IMAGE_URL_TEMPLATE]: the scheme and "
                f"host must come before any placeholder, e.g. https://host/{{imageFullPath}}"
                f" (got {url_template!r})"
            )
        self.url_template = url_template
        self.host = prefix.netloc.lower()
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        # Idle sessions, each used by one fetch at a time: their connection pools are reused
        # whichever thread fetches next (the pipeline fetches each image on a fresh thread).
        self._idle: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()

    def url_for(self, image_full_path: str, blsample_image_id: int | None = None) -> str:
        if _has_parent_segment(image_full_path):
            raise ImageOutsideRootsError(f"{image_full_path}: '..' is not allowed in image paths")
        url = self.url_template.replace(
            "{imageFullPath}", quote(image_full_path.lstrip("/"), safe="/")
        )
        if "{blSampleImageId}" in url:
            if blsample_image_id is None:
                raise ImageFetchError(
                    f"{image_full_path}: the URL template needs blSampleImageId, none was given"
                )
            url = url.replace("{blSampleImageId}", str(int(blsample_image_id)))
        self._check_host(url, image_full_path)
        return url

    def fetch(self, image_full_path: str, blsample_image_id: int | None = None) -> DecodedImage:
        url = self.url_for(image_full_path, blsample_image_id)
        started = time.perf_counter()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_random_exponential(
                multiplier=self.backoff_s, max=self.max_backoff_s
            ),
            retry=tenacity.retry_if_exception_type(_RetryableFetchError),
            sleep=self._sleep,
            before_sleep=_log_retry(url),
            reraise=True,
        )
        session = self._take_session()
        try:
            data = retrying(self._download, session, url, image_full_path)
        except _RetryableFetchError as exc:
            raise exc.error from None
        finally:
            self._idle.put(session)  # not reached by a fetch abandoned at its deadline
        fetch_ms = (time.perf_counter() - started) * 1000
        return _with_fetch_time(decode_image(data, url, self.max_pixels), fetch_ms)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def _take_session(self) -> requests.Session:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            session = requests.Session()
            session.headers["User-Agent"] = "chimp-worker"
            return session

    def _check_host(self, url: str, image_full_path: str) -> None:
        if urlsplit(url).netloc.lower() != self.host:
            raise ImageOutsideRootsError(
                f"{image_full_path}: URL {url} is not on the configured image host {self.host}"
            )

    def _download(self, session: requests.Session, url: str, image_full_path: str) -> bytes:
        """One attempt, following at most three redirects on the same host."""
        deadline = time.monotonic() + 4 * self.timeout_s
        for _ in range(4):
            try:
                response = session.get(
                    url, timeout=self.timeout_s, stream=True, allow_redirects=False
                )
            except requests.Timeout as exc:
                raise _RetryableFetchError(ImageTimeoutError(f"{url}: timed out ({exc})")) from exc
            except requests.ConnectionError as exc:
                raise _RetryableFetchError(
                    ImageFetchError(f"{url}: connection failed ({exc})")
                ) from exc
            with response:
                if response.is_redirect:
                    url = requests.compat.urljoin(url, response.headers["Location"])
                    self._check_host(url, image_full_path)
                    continue
                self._check_status(response, url)
                return self._read_body(response, url, deadline)
        raise ImageFetchError(f"{url}: too many redirects")

    def _check_status(self, response: requests.Response, url: str) -> None:
        status = response.status_code
        if status == 200:
            return
        if status in (404, 410):
            raise ImageMissingError(f"{url}: HTTP {status} {response.reason}")
        error = ImageFetchError(f"{url}: HTTP {status} {response.reason}")
        if status in _TRANSIENT_STATUS:
            raise _RetryableFetchError(error)
        raise error

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLargeError(
                f"{url}: {declared} bytes exceeds the limit of {self.max_bytes} (image_max_bytes)"
            )
        body = bytearray()
        try:
            for chunk in response.iter_content(_CHUNK):
                body += chunk
                if len(body) > self.max_bytes:
                    raise ImageTooLargeError(f"{url}: body exceeds {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _RetryableFetchError(ImageTimeoutError(f"{url}: download too slow"))
        except requests.Timeout as exc:
            raise _RetryableFetchError(
                ImageTimeoutError(f"{url}: timed out reading ({exc})")
            ) from exc
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:
            error = ImageTruncatedError(f"{url}: transfer broke off after {len(body)} bytes")
            raise _RetryableFetchError(error) from exc
        return bytes(body)


def _log_retry(url: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = error.error.reason if isinstance(error, _RetryableFetchError) else "error"
        log.warning(
            "image fetch retry",
            url=url,
            attempt=state.attempt_number,
            reason=reason,
            detail=str(error),
            wait_s=round(state.next_action.sleep, 3) if state.next_action else None,
        )

    return before_sleep
