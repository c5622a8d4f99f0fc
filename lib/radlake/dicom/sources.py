"""Reading stored files and expanding ``.zip`` / ``.tar`` files into DICOM candidates, in memory.

Nothing is unpacked to disk. A member whose name would escape its folder (``../``, an
absolute path, a drive letter), a link member, or a member larger than the limit is
reported as a :class:`Failure` and never read. Failures are values, not exceptions, so
that one bad file never stops a job: every function here that takes stored bytes
returns or yields failures instead of raising.

This module also holds the failure vocabulary shared by the per-file DICOM layer
(:class:`~radlake.vocabulary.QuarantineStage`, :class:`Failure`), used by :mod:`radlake.dicom.header` and
:mod:`radlake.dicom.pixels`.

Example
-------
>>> import io, zipfile
>>> buf = io.BytesIO()
>>> with zipfile.ZipFile(buf, "w") as zf:
...     zf.writestr("study/IM1", b"not really DICOM")
...     zf.writestr("../evil.dcm", b"x")
>>> [(i.member, i.error.error_class if i.error else None)
...  for i in iter_members("a.zip", buf.getvalue(), max_member_bytes=1 << 20)]
[('study/IM1', None), ('../evil.dcm', 'UnsafeMemberName')]

"""

from __future__ import annotations

import io
import os
import posixpath
import re
import stat
import tarfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from radlake.vocabulary import QuarantineStage

#: Suffixes read as zip archives (lower-case comparison).
ZIP_SUFFIXES = (".zip",)
#: Suffixes read as tar archives, compressed or not (lower-case comparison).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: Failure messages are cut to this many characters.
MAX_MESSAGE_CHARS = 1000

_DRIVE = re.compile(r"^[A-Za-z]:")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class Failure:
    """Why a file, member, instance or frame was not ingested.

    Parameters
    ----------
    stage: QuarantineStage | str
        Where it failed; a string is converted to :class:`~radlake.vocabulary.QuarantineStage`.
    error_class: str
        A short class name: the exception's class (``InvalidDicomError``) or one of
        radlake's own (``TooLarge``, ``UnsafeMemberName``, ``LinkMember``, ...).
    message: str
        Human-readable detail, cut to :data:`MAX_MESSAGE_CHARS` characters.
    """

    stage: QuarantineStage
    error_class: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", QuarantineStage(self.stage))
        object.__setattr__(self, "message", str(self.message)[:MAX_MESSAGE_CHARS])

    @classmethod
    def from_exception(cls, stage: QuarantineStage | str, exc: BaseException) -> Failure:
        """A failure naming the exception's class and its (truncated) message.

        >>> Failure.from_exception("header", ValueError("bad")).error_class
        'ValueError'
        """
        return cls(QuarantineStage(stage), type(exc).__name__, str(exc) or repr(exc))


@dataclass(frozen=True)
class SourceItem:
    """One DICOM candidate of a stored file, or why it could not be read.

    ``member`` is None for a plain file (and for a failure of a whole archive),
    else the member's name inside the zip/tar file. Exactly one of ``data`` and
    ``error`` is set.
    """

    member: str | None
    data: bytes | None
    error: Failure | None = None


def local_path(path: str) -> str | None:
    """The local file system path of ``path``, or None if it must be opened through fsspec.

    Plain paths and ``file:`` URIs are local. On Databricks, ``dbfs:/Volumes/...`` and
    ``dbfs:/...`` map to their FUSE mounts ``/Volumes/...`` and ``/dbfs/...`` when those
    exist on this machine (the executors of a Databricks cluster), so that no token is needed.

    >>> local_path("file:/tmp/a%20b.dcm")
    '/tmp/a b.dcm'
    >>> local_path("s3://bucket/a.dcm") is None
    True
    """
    match = _SCHEME.match(path)
    if match is None or len(match.group(1)) == 1:  # no scheme, or a Windows drive letter
        return path
    scheme = match.group(1).lower()
    if scheme == "file":
        return urllib.parse.unquote(urllib.parse.urlparse(path).path)
    if scheme == "dbfs":
        rest = urllib.parse.urlparse(path).path
        fuse = rest if rest.startswith("/Volumes/") else "/dbfs" + rest
        if os.path.exists(fuse):
            return fuse
    return None


def read_bytes(path: str) -> bytes:
    """All bytes of a stored file.

    Local paths and ``file:`` URIs are read with :func:`open`; any other URI
    (``s3://``, ``abfss://``, ``gs://``, ...) through :func:`fsspec.open`.

    Raises
    ------
    OSError
        If the file cannot be read (missing, no permission, network error).
    """
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as handle:
            return handle.read()
    import fsspec  # only for object stores: local reads do not need it

    with fsspec.open(path, "rb") as handle:
        return handle.read()


def archive_kind(path: str) -> str | None:
    """``"zip"``, ``"tar"`` or None (a plain file), from the name's suffix.

    >>> archive_kind("s3://b/study.TGZ"), archive_kind("IM0001")
    ('tar', None)
    """
    name = path.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def unsafe_member_name(name: str) -> str | None:
    """Why an archive member name is unsafe (it escapes its folder), or None if it is safe.

    >>> unsafe_member_name("a/../../etc/passwd")
    "member name 'a/../../etc/passwd' escapes the archive folder"
    >>> unsafe_member_name("study/./IM1") is None
    True
    """
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        return f"member name {name!r} is an absolute path"
    if ".." in posixpath.normpath(normalized).split("/"):
        return f"member name {name!r} escapes the archive folder"
    return None


def iter_members(path: str, data: bytes | None = None, *, max_member_bytes: int) -> Iterator[SourceItem]:
    """The DICOM candidates in one stored file, read in memory; never raises.

    Parameters
    ----------
    path: str
        The stored file's location; its suffix decides whether it is a zip file
        (:data:`ZIP_SUFFIXES`), a tar file (:data:`TAR_SUFFIXES`) or a plain file.
    data: bytes | None
        Its bytes, or None to read them with :func:`read_bytes`.
    max_member_bytes: int
        Archive members larger than this (uncompressed bytes) are failures and
        are not read. Plain files are not checked (their size is known before reading).

    Yields
    ------
    SourceItem
        One per plain file or regular archive member; folders are skipped. A file
        that cannot be read, or an archive whose index is corrupt, is one failure
        with ``member=None`` (stage ``source``). A tar file has no index: members
        before a corrupt point are yielded, then one failure with ``member=None``.
        A DICOMDIR is yielded like any file (see :func:`radlake.dicom.header.is_dicomdir`).
    """
    if data is None:
        try:
            data = read_bytes(path)
        except Exception as exc:  # noqa: BLE001 - any read error is this file's failure
            yield SourceItem(None, None, Failure.from_exception(QuarantineStage.SOURCE, exc))
            return
    kind = archive_kind(path)
    if kind is None:
        yield SourceItem(None, data)
    elif kind == "zip":
        yield from _zip_members(data, max_member_bytes)
    else:
        yield from _tar_members(data, max_member_bytes)


def _member_failure(name: str, error_class: str, message: str) -> SourceItem:
    return SourceItem(name, None, Failure(QuarantineStage.SOURCE, error_class, message))


def _too_large(name: str, size: int, limit: int) -> SourceItem:
    return _member_failure(name, "TooLarge", f"member {name!r} is {size} bytes, limit {limit}")


def _refusal(
    name: str, size: int, max_member_bytes: int, *, link: str | None = None, regular: bool = True
) -> SourceItem | None:
    """Why a member is not read (its name escapes, it is a link, not a file, or too large), or None."""
    reason = unsafe_member_name(name)
    if reason:
        return _member_failure(name, "UnsafeMemberName", reason)
    if link:
        return _member_failure(name, "LinkMember", f"member {name!r} is {link}; links are not followed")
    if not regular:
        return _member_failure(name, "NotAFile", f"member {name!r} is not a regular file")
    if size > max_member_bytes:
        return _too_large(name, size, max_member_bytes)
    return None


def _zip_members(data: bytes, max_member_bytes: int) -> Iterator[SourceItem]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except Exception as exc:  # noqa: BLE001 - BadZipFile, truncated central directory, ...
        yield SourceItem(None, None, Failure.from_exception(QuarantineStage.SOURCE, exc))
        return
    with archive:
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename
            link = "a symbolic link" if stat.S_ISLNK(info.external_attr >> 16) else None
            refused = _refusal(name, info.file_size, max_member_bytes, link=link)
            if refused is not None:
                yield refused
            else:
                # zipfile stops at the declared size and checks the CRC, so a member
                # cannot decompress to more than file_size bytes.
                try:
                    yield SourceItem(name, archive.read(info))
                except Exception as exc:  # noqa: BLE001 - bad CRC, encryption, truncation: this member's failure
                    yield SourceItem(name, None, Failure.from_exception(QuarantineStage.SOURCE, exc))


def _tar_members(data: bytes, max_member_bytes: int) -> Iterator[SourceItem]:
    # Streamed in one forward pass: members are read as they come, so a compressed tar
    # is decompressed once and at most one member is held in memory at a time.
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except Exception as exc:  # noqa: BLE001 - not a tar, unknown compression, truncated header
        yield SourceItem(None, None, Failure.from_exception(QuarantineStage.SOURCE, exc))
        return
    with archive:
        members = iter(archive)
        while True:
            try:
                member = next(members)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - corrupt or truncated archive from here on
                yield SourceItem(None, None, Failure.from_exception(QuarantineStage.SOURCE, exc))
                return
            if member.isdir():
                continue
            name = member.name
            link = "a link" if member.issym() or member.islnk() else None
            refused = _refusal(name, member.size, max_member_bytes, link=link, regular=member.isfile())
            if refused is not None:
                yield refused
            else:
                try:
                    handle = archive.extractfile(member)
                    content = handle.read() if handle is not None else b""
                except Exception as exc:  # noqa: BLE001 - truncated data: this member, and the rest of the stream
                    yield SourceItem(name, None, Failure.from_exception(QuarantineStage.SOURCE, exc))
                    return
                yield SourceItem(name, content)
