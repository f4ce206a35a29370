"""Settings of ``llamafactory-cli api`` for an action classifier (YAML keys and ``--flags``).

They live on IVCP's finetuning arguments because LLaMA-Factory's ``api`` command parses its YAML with the inference
dataclasses (model, data, finetuning, generating) and rejects keys none of them knows. The media keys follow vLLM's
names (``--allowed-local-media-path``, ``--allowed-media-domains``). Other stages ignore them. The limits that bound
what one client can make the server hold are listed, with their defaults, in docs/serving_security.md.
"""

from dataclasses import dataclass, field


@dataclass
class ActionServingArguments:
    allowed_local_media_path: str | None = field(
        default=None,
        metadata={
            "help": "Clients may classify local files (paths, file:// URLs) only inside this folder, symlinks and "
            "`..` resolved first. Unset: no local file is readable by a client."
        },
    )
    allowed_media_domains: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Hosts whose http(s):// videos may be fetched (a list, or comma-separated). Unset: no fetching. "
            "Loopback and private addresses only when listed as such (`127.0.0.1`, `localhost`, `10.0.0.5`)."
        },
    )
    api_max_batch_size: int = field(
        default=8,
        metadata={"help": "Concurrent videos batched into one forward pass; 1 turns dynamic batching off."},
    )
    api_max_wait_ms: float = field(
        default=5.0,
        metadata={"help": "How long a batch waits for more videos once the first has arrived."},
    )
    api_decode_workers: int = field(
        default=2,
        metadata={"help": "Workers that read, decode and batch videos, in parallel with the model."},
    )
    api_decode_processes: bool = field(
        default=True,
        metadata={
            "help": "Decode workers are processes forked from the server (they use other cores: decoding and "
            "processing hold the GIL); false: threads of the server process (also where fork is unavailable)."
        },
    )
    api_max_body_mb: float = field(
        default=64.0,
        metadata={"help": "Largest request body (base64 videos included), in MB."},
    )
    api_max_video_mb: float = field(
        default=64.0,
        metadata={"help": "Largest video a request may send or have fetched, in MB."},
    )
    api_max_video_seconds: float = field(
        default=600.0,
        metadata={"help": "Longest video accepted (from its header), in seconds."},
    )
    api_max_frame_pixels: int = field(
        default=3840 * 2160,
        metadata={
            "help": "Largest frame (width x height) accepted, 4K UHD by default; the reader refuses over 8192x4320 "
            "before decoding whatever this says."
        },
    )
    api_max_items_per_request: int = field(
        default=64,
        metadata={"help": "Most videos in one request's `input`."},
    )
    api_max_concurrent_fetches: int = field(
        default=4,
        metadata={
            "help": "http(s):// downloads in progress at once, over all requests (each holds up to "
            "api_max_video_mb in memory)."
        },
    )
    api_fetch_timeout: float = field(
        default=30.0,
        metadata={"help": "Seconds allowed for fetching one http(s):// video, in total."},
    )

    def __post_init__(self):
        if isinstance(self.allowed_media_domains, str):
            self.allowed_media_domains = [host.strip() for host in self.allowed_media_domains.split(",") if host]

        for name in (
            "api_max_batch_size",
            "api_decode_workers",
            "api_max_frame_pixels",
            "api_max_items_per_request",
            "api_max_concurrent_fetches",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {getattr(self, name)!r}.")

        for name in ("api_max_wait_ms",):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")

        for name in ("api_max_body_mb", "api_max_video_mb", "api_max_video_seconds", "api_fetch_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)!r}.")
