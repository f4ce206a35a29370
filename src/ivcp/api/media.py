"""Turn a client's video URL into a local file, without letting the server become a way into its machine.

Local paths and ``file://`` URLs are read only inside ``allowed_local_media_path`` (after resolving symlinks and
``..``); ``http(s)://`` only from hosts in ``allowed_media_domains`` (a host that resolves to a loopback, private or
link-local address only when it is listed as such), never following a redirect to another host, capped in size and
time. A refusal says why without saying whether the file exists.
"""

import asyncio
import base64
import binascii
import ipaddress
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import httpx


MAX_REDIRECTS = 3
VIDEO_SUFFIXES = {"mp4": ".mp4", "webm": ".webm", "x-matroska": ".mkv", "quicktime": ".mov", "x-msvideo": ".avi"}


class MediaError(ValueError):
    r"""A video input the server will not or cannot use; ``status`` is the HTTP status of the refusal."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def describe_url(url: str) -> str:
    r"""The input as an error message may show it (a data: URL without its payload)."""
    return url.split(",", 1)[0] + ",..." if url.startswith("data:") else url


@dataclass
class MediaPolicy:
    allowed_local_media_path: str | None
    allowed_media_domains: list[str] | None
    max_video_bytes: int
    fetch_timeout: float
    temp_dir: str

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

    def decode_data_url(self, url: str) -> str:
        header, _, payload = url.partition(",")
        media_type = header[len("data:") :].split(";")[0]
        if not media_type.startswith("video/") or not header.endswith(";base64"):
            raise MediaError("a data: URL must be `data:video/<type>;base64,<data>`.", 415)

        if len(payload) * 3 // 4 > self.max_video_bytes:
            raise self._too_large()

        try:
            content = base64.b64decode(payload, validate=True)
        except binascii.Error as err:
            raise MediaError(f"the data: URL is not valid base64 ({err}).") from err

        return self.write_temp(content, VIDEO_SUFFIXES.get(media_type.split("/", 1)[1], ".mp4"))

    async def check_host(self, url: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        listed = {domain.lower().strip("[]") for domain in self.allowed_media_domains or []}
        if host not in listed:
            raise MediaError(f"host {host!r} is not in `allowed_media_domains`.", 403)

        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
            addresses = {info[4][0] for info in infos}
        except OSError as err:
            raise MediaError(f"host {host!r} cannot be resolved ({err}).") from err

        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global and address not in listed and not (ip.is_loopback and host == "localhost"):
                raise MediaError(f"host {host!r} resolves to a non-public address that is not listed as such.", 403)

    async def fetch(self, url: str, client: httpx.AsyncClient) -> str:
        r"""Download ``url`` into a temporary file, following redirects only on the same host."""
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

                    suffix = os.path.splitext(urlsplit(url).path)[1] or ".mp4"
                    return self.write_temp(bytes(content), suffix)
            except httpx.TimeoutException as err:
                raise MediaError(
                    f"fetching it took longer than api_fetch_timeout ({self.fetch_timeout} s).", 408
                ) from err
            except httpx.HTTPError as err:
                raise MediaError(f"fetching it failed ({type(err).__name__}: {err}).") from err

        raise MediaError(f"more than {MAX_REDIRECTS} redirects.")

    async def to_file(self, url: str, client: httpx.AsyncClient) -> tuple[str, bool]:
        r"""(a local path, whether it is a temporary file the caller must delete)."""
        scheme = urlsplit(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
        if scheme == "data":
            return self.decode_data_url(url), True

        if scheme in ("http", "https"):
            return await self.fetch(url, client), True

        if scheme == "file":
            return self.resolve_local(unquote(urlsplit(url).path)), False

        if scheme:
            raise MediaError(
                f"unsupported URL scheme {scheme!r}: use a path, file://, data:video/...;base64, or http(s)://."
            )

        return self.resolve_local(url), False
