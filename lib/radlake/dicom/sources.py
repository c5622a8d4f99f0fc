"""Reading stored files and expanding ``.zip`` / ``.tar`` files into DICOM candidates, in memory.

Nothing is unpacked to disk. A member whose name would escape its folder (``../``, an
absolute path, a drive letter), a link member, or a member larger than the limit is
reported as a :class:`Failure` and never read. Failures are values, not exceptions, so
that one bad file never stops a job.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

#: Suffixes read as archives of DICOM files (lower-case comparison).
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_MESSAGE = 1000


class Stage(str, Enum):
    """Where ingestion of a file or instance failed (the ``stage`` column of ``quarantine``)."""

    SOURCE = "source"
    """The stored file or archive member could not be read."""
    HEADER = "header"
    """The bytes are not a DICOM instance, or its header cannot be parsed."""
    PIXELS = "pixels"
    """The pixel data cannot be decoded (or would be too large)."""
    CONFLICT = "conflict"
    """The SOPInstanceUID is already stored with other content."""


@dataclass(frozen=True)
class Failure:
    """Why a file, member, instance or frame was not ingested."""

    stage: Stage
    error_class: str
    message: str

    @classmethod
    def from_exception(cls, stage: Stage | str, exc: BaseException) -> Failure:
        """A failure naming the exception's class and its (truncated) message."""
        message = str(exc) or repr(exc)
        return cls(Stage(stage), type(exc).__name__, message[:_MAX_MESSAGE])


@dataclass(frozen=True)
class SourceItem:
    """One DICOM candidate: a plain file (``member`` is None) or an archive member, or its failure."""

    member: str | None
    data: bytes | None
    error: Failure | None = None


def local_path(path: str) -> str | None:
    """The local file system path of ``path`` (a plain path or ``file:`` URI), else None."""
    if path.startswith("file:"):
        parsed = urllib.parse.urlparse(path)
        return urllib.parse.unquote(parsed.path)
    if "://" in path or re.match(r"^[a-z][a-z0-9+.-]*:/", path):
        return None
    return path


def read_bytes(path: str) -> bytes:
    """All bytes of a stored file: local paths and ``file:`` URIs directly, other URIs through fsspec."""
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as handle:
            return handle.read()
    import fsspec  # only for object stores (s3://, abfss://, dbfs:/ ...)

    with fsspec.open(path, "rb") as handle:
        return handle.read()


def archive_kind(path: str) -> str | None:
    """``"zip"``, ``"tar"`` or None (a plain file), from the name's suffix."""
    name = path.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def unsafe_member_name(name: str) -> str | None:
    """Why a member name is unsafe (escapes its folder), or None if it is safe.

    >>> unsafe_member_name("a/../../etc/passwd")
    "member name 'a/../../etc/passwd' escapes the archive folder"
    >>> unsafe_member_name("study/IM1") is None
    True
    """
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        return f"member name {name!r} is an absolute path"
    if ".." in posixpath.normpath(normalized).split("/"):
        return f"member name {name!r} escapes the archive folder"
    return None


def iter_members(path: str, data: bytes, *, max_member_bytes: int) -> Iterator[SourceItem]:
    """The DICOM candidates in one stored file.

    Parameters
    ----------
    path
        The stored file's location (its suffix decides whether it is an archive).
    data
        Its bytes.
    max_member_bytes
        Archive members larger than this are failures, not read.

    Yields
    ------
    SourceItem
        One per plain file or regular archive member (folders are skipped).
    """
    kind = archive_kind(path)
    if kind is None:
        yield SourceItem(None, data)
    elif kind == "zip":
        yield from _zip_members(data, max_member_bytes)
    else:
        yield from _tar_members(data, max_member_bytes)


def _member_failure(name: str, cls: str, message: str) -> SourceItem:
    return SourceItem(name, None, Failure(Stage.SOURCE, cls, message[:_MAX_MESSAGE]))


def _zip_members(data: bytes, max_member_bytes: int) -> Iterator[SourceItem]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        yield SourceItem(None, None, Failure.from_exception(Stage.SOURCE, exc))
        return
    with archive:
        for info in infos:
            if info.is_dir():
                continue
            reason = unsafe_member_name(info.filename)
            if reason:
                yield _member_failure(info.filename, "UnsafeMemberName", reason)
            elif info.file_size > max_member_bytes:
                yield _member_failure(
                    info.filename, "TooLarge", f"member is {info.file_size} bytes, limit {max_member_bytes}"
                )
            else:
                try:
                    yield SourceItem(info.filename, archive.read(info))
                except Exception as exc:  # noqa: BLE001 - bad CRC, encryption, truncation: this member's failure
                    yield SourceItem(info.filename, None, Failure.from_exception(Stage.SOURCE, exc))


def _tar_members(data: bytes, max_member_bytes: int) -> Iterator[SourceItem]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        yield SourceItem(None, None, Failure.from_exception(Stage.SOURCE, exc))
        return
    with archive:
        for member in members:
            if member.isdir():
                continue
            reason = unsafe_member_name(member.name)
            if reason:
                yield _member_failure(member.name, "UnsafeMemberName", reason)
            elif member.issym() or member.islnk():
                yield _member_failure(
                    member.name, "LinkMember", f"member {member.name!r} is a link; links are not followed"
                )
            elif not member.isfile():
                yield _member_failure(member.name, "NotAFile", f"member {member.name!r} is not a regular file")
            elif member.size > max_member_bytes:
                yield _member_failure(
                    member.name, "TooLarge", f"member is {member.size} bytes, limit {max_member_bytes}"
                )
            else:
                try:
                    handle = archive.extractfile(member)
                    yield SourceItem(member.name, handle.read() if handle else b"")
                except Exception as exc:  # noqa: BLE001
                    yield SourceItem(member.name, None, Failure.from_exception(Stage.SOURCE, exc))
