"""Turn a client's video URL into a local file, without letting the server become a way into its machine.

Local paths and ``file://`` URLs are read only inside ``allowed_local_media_path`` (after resolving symlinks and
``..``); ``http(s)://`` only from hosts in ``allowed_media_domains`` (a host that resolves to a loopback, private or
link-local address only when it is listed as such), never following a redirect to another host, capped in size,
time and in downloads at once. A refusal says why without saying whether the file exists. A malformed URL is the
client's error (400), never the server's. A temporary file's name never comes from the URL: it gets a known video
suffix or none (the reader picks the demuxer from the content and opens video containers only).
"""

import asyncio
import base64
import binascii
import ipaddress
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

import httpx


MAX_REDIRECTS = 3
VIDEO_SUFFIXES = {"mp4": ".mp4", "webm": ".webm", "x-matroska": ".mkv", "quicktime": ".mov", "x-msvideo": ".avi"}
KNOWN_SUFFIXES = {".mp4", ".m4v", ".mov", ".3gp", ".mkv", ".webm", ".avi", ".ts", ".flv", ".mpg", ".mpeg", ".wmv"}
TEMP_PREFIX = "ivcp-api-"
B64_PIECE = 2**20  # characters of base64 decoded per call (a multiple of 4)
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class MediaError(ValueError):
    r"""A video input the server will not or cannot use; ``status`` is the HTTP status of the refusal."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def describe_url(url: str) -> str:
    r"""The input as an error message may show it (a data: URL without its payload)."""
    return url.split(",", 1)[0] + ",..." if url.startswith("data:") else url


def _suffix(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return suffix if suffix in KNOWN_SUFFIXES else ""


def _split(url: str) -> "tuple[str, str, int | None, str]":
    r"""(scheme, host, port, path) of ``url``, or a 400 naming what is malformed (never Python's own exception)."""
    if CONTROL_CHARACTER.search(url):
        raise MediaError("the URL holds a control character (tab, newline, ...): percent-encode it.")

    try:
        parts = urlsplit(url)
        return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port, parts.path
    except ValueError as err:  # an unclosed [IPv6] host, a port out of range or not a number
        raise MediaError(f"not a valid URL ({err}).") from err


def make_temp_dir() -> str:
    r"""This server's folder for downloads, after removing those of servers that were killed before cleaning up."""
    parent = tempfile.gettempdir()
    for name in os.listdir(parent):
        pid = name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if name.startswith(TEMP_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass
class MediaPolicy:
    allowed_local_media_path: str | None
    allowed_media_domains: list[str] | None
    max_video_bytes: int
    fetch_timeout: float
    temp_dir: str
    max_fetches: int = 4
    _fetch_slots: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._fetch_slots = asyncio.Semaphore(self.max_fetches)

    def _too_large(self) -> MediaError:
        return MediaError(f"the video is larger than api_max_video_mb ({self.max_video_bytes / 2**20:g} MB).", 413)

    def resolve_local(self, location: str) -> str:
        r"""The real path of a local file inside ``allowed_local_media_path``, else a 403 that reveals nothing."""
        if not self.allowed_local_media_path:
            raise MediaError(
                "local files are not readable by clients: start the server with `allowed_local_media_path`.", 403
            )

        root = os.path.realpath(self.allowed_local_media_path)
        try:
            path = os.path.realpath(os.path.join(root, location))  # an absolute location replaces root
        except ValueError as err:  # e.g. an embedded NUL byte
            raise MediaError(f"not a valid path ({err}).") from err
        if os.path.commonpath([root, path]) != root:
            raise MediaError("the path is outside `allowed_local_media_path`.", 403)

        if not os.path.isfile(path):
            raise MediaError("no such file in `allowed_local_media_path`.", 404)

        if os.path.getsize(path) > self.max_video_bytes:
            raise self._too_large()

        return path

    def write_temp(self, content: bytes, suffix: str) -> str:
        handle, path = tempfile.mkstemp(suffix=suffix, dir=self.temp_dir)
        with os.fdopen(handle, "wb") as f:
            f.write(content)
        return path

    def _decode_data_url(self, url: str) -> str:
        header, _, payload = url.partition(",")
        media_type = header[len("data:") :].split(";")[0]
        if not media_type.startswith("video/") or not header.endswith(";base64"):
            raise MediaError("a data: URL must be `data:video/<type>;base64,<data>`.", 415)

        if len(payload) * 3 // 4 > self.max_video_bytes:
            raise self._too_large()

        try:  # in pieces: each call holds the GIL, and the event loop waits for it between them
            content = b"".join(
                base64.b64decode(payload[i : i + B64_PIECE], validate=True) for i in range(0, len(payload), B64_PIECE)
            )
        except binascii.Error as err:
            raise MediaError(f"the data: URL is not valid base64 ({err}).") from err

        return self.write_temp(content, VIDEO_SUFFIXES.get(media_type.split("/", 1)[1], ""))

    async def check_host(self, url: str) -> None:
        _, host, port, _ = _split(url)
        listed = {domain.lower().strip("[]") for domain in self.allowed_media_domains or []}
        if host not in listed:
            raise MediaError(f"host {host!r} is not in `allowed_media_domains`.", 403)

        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
            addresses = {info[4][0] for info in infos}
        except OSError as err:
            raise MediaError(f"host {host!r} cannot be resolved ({err}).") from err

        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global and address not in listed and not (ip.is_loopback and host == "localhost"):
                raise MediaError(f"host {host!r} resolves to a non-public address that is not listed as such.", 403)

    async def fetch(self, url: str, client: httpx.AsyncClient) -> str:
        r"""Download ``url`` into a temporary file, following redirects only on the same host."""
        async with self._fetch_slots:  # each download holds up to max_video_bytes in memory
            return await self._fetch(url, client)

    async def _fetch(self, url: str, client: httpx.AsyncClient) -> str:
        deadline = time.monotonic() + self.fetch_timeout
        origin = urlsplit(url)[:2]
        for _ in range(MAX_REDIRECTS + 1):
            await self.check_host(url)
            try:
                async with client.stream("GET", url, timeout=max(deadline - time.monotonic(), 0.001)) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if urlsplit(target)[:2] != origin:
                            raise MediaError("the server redirected to another host; not followed.", 403)
                        url = target
                        continue

                    if response.status_code != 200:
                        raise MediaError(f"fetching it answered HTTP {response.status_code}.", 400)

                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self.max_video_bytes:
                        raise self._too_large()

                    content = bytearray()
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > self.max_video_bytes:
                            raise self._too_large()
                        if time.monotonic() > deadline:
                            raise httpx.TimeoutException("fetch deadline")

                    return await asyncio.to_thread(self.write_temp, bytes(content), _suffix(_split(url)[3]))
            except httpx.TimeoutException as err:
                raise MediaError(
                    f"fetching it took longer than api_fetch_timeout ({self.fetch_timeout} s).", 408
                ) from err
            except (httpx.HTTPError, httpx.InvalidURL) as err:
                raise MediaError(f"fetching it failed ({type(err).__name__}: {err}).") from err

        raise MediaError(f"more than {MAX_REDIRECTS} redirects.")

    async def to_file(self, url: str, client: httpx.AsyncClient) -> tuple[str, bool]:
        r"""(a local path, whether it is a temporary file the caller must delete)."""
        if url[:5].lower() == "data:":  # base64 of up to api_max_video_mb: decoded and written off the event loop
            return await asyncio.to_thread(self._decode_data_url, url), True

        scheme = _split(url)[0] if "://" in url else ""
        if scheme in ("http", "https"):
            if " " in url:
                raise MediaError("the URL holds a space: percent-encode it (%20).")
            return await self.fetch(url, client), True

        if scheme == "file":
            return self.resolve_local(unquote(_split(url)[3])), False

        if scheme:
            raise MediaError(
                f"unsupported URL scheme {scheme!r}: use a path, file://, data:video/...;base64, or http(s)://."
            )

        return self.resolve_local(url), False
