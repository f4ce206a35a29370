"""What the data path of the ``action_cls`` stage needs to know, and how it reports bad examples."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class ActionDataConfig:
    num_classes: int
    label_column: str = "action_label"
    label_names: tuple[str, ...] | None = None
    multi_label: bool = False
    test_clips: int = 1  # each evaluation video becomes this many rows, one per clip (``action_test_clips``)


_ACTIVE_CONFIG: ContextVar[ActionDataConfig | None] = ContextVar("ivcp_action_data", default=None)


_EVALUATION: ContextVar[bool] = ContextVar("ivcp_action_evaluation", default=False)


def active_action_data() -> ActionDataConfig | None:
    r"""The config of the ``action_cls`` dataset being loaded, or None for every other stage."""
    return _ACTIVE_CONFIG.get()


def preprocessing_evaluation_data() -> bool:
    r"""Whether LLaMA-Factory is preprocessing the evaluation dataset (not the training one) right now."""
    return _EVALUATION.get()


@contextmanager
def evaluation_data() -> Iterator[None]:
    r"""Mark the preprocessing inside as the evaluation dataset's: its videos become clips (``test_clips``)."""
    token = _EVALUATION.set(True)
    try:
        yield
    finally:
        _EVALUATION.reset(token)


@contextmanager
def loading_action_data(config: ActionDataConfig) -> Iterator[None]:
    r"""Route LLaMA-Factory's dataset loading through the action converter and processor.

    A file that Arrow cannot read at all (typically a label column mixing class ids and class names) fails inside
    ``datasets`` with "An error occurred while generating the dataset"; it is re-raised with the causes and the fix.
    """
    from datasets.exceptions import DatasetGenerationError

    token = _ACTIVE_CONFIG.set(config)
    try:
        yield
    except DatasetGenerationError as err:
        causes, cause = [], err.__cause__ or err.__context__
        while cause is not None:
            causes.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        raise ActionDataError(
            f"The dataset could not be read: {' <- '.join(causes) or err}. If `{config.label_column}` mixes class ids "
            "and class names, use one kind in the whole file (all ids, or all names with `action_label_names`); if "
            "it mixes single classes and lists, use lists in the whole file for multi-label data "
            "(`action_problem_type: multi_label`, e.g. [3] or []) or single classes for single-label data.",
            kind="bad label",
        ) from err
    finally:
        _ACTIVE_CONFIG.reset(token)


class ActionDataError(ValueError):
    r"""A dataset example the ``action_cls`` stage cannot train on; the message names it and the fix.

    ``kind`` groups problems for ``ivcp check-data``'s report ("no <ACTION>", "video unreadable", ...).
    """

    def __init__(self, message: str, kind: str = "bad conversation") -> None:
        super().__init__(message)
        self.kind = kind


class MediaSupportError(ActionDataError):
    r"""The model or template cannot take the data's media at all: one message, not one per example."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="model or template without video support")


def describe_example(source: str, index: int) -> str:
    return f"example {index} of {source}"


def located(where: str | None, message: str) -> str:
    r"""``message`` prefixed by ``where`` (the example it belongs to), or alone when the message is about a file."""
    return f"{where}: {message}" if where else message


def _describe_media(media: list[str] | str) -> str:
    if not isinstance(media, str) and len(media) == 1:
        media = media[0]
    return f"video {media!r}" if isinstance(media, str) else f"media {media}"


def media_error(err: Exception, where: str | None, media: list[str] | str) -> ActionDataError:
    r"""``err``, raised while reading or processing ``media``, as an error that names them once and keeps its kind.

    ``where`` names the dataset example (training, ``ivcp check-data``); inference passes None, since the file is all
    there is to name. A file PyAV/PIL cannot open is "video unreadable"; anything else (a plugin or processor
    failure) is "processing failed", with the exception's type, so a bug is never passed off as a bad file.
    Exceptions whose text is empty (``StopIteration`` from a file without a video stream) still get a cause.
    """
    if isinstance(err, ActionDataError):
        return err

    import av

    from .video_reader import REENCODE_HINT, VideoReadError

    if isinstance(err, VideoReadError):  # the reader's own verdict: it names the file, the cause and the fix
        return ActionDataError(located(where, str(err)), kind=err.kind)

    if isinstance(err, StopIteration):
        message = f"{_describe_media(media)} holds no video stream: {REENCODE_HINT}."
        return ActionDataError(located(where, message), kind="video unreadable")

    cause = str(err) or type(err).__name__
    if isinstance(err, (av.FFmpegError, OSError)):  # strerror: the reason without the file name str() repeats
        message = f"{_describe_media(media)} cannot be read ({err.strerror or cause}): {REENCODE_HINT}."
        return ActionDataError(located(where, message), kind="video unreadable")

    return ActionDataError(
        located(where, f"{_describe_media(media)} could not be processed: {type(err).__name__}: {cause}"),
        kind="processing failed",
    )
