"""Expanding stored files and zip/tar archives into DICOM candidates, in memory (real DICOM files)."""

import io
import stat
import tarfile
import zipfile

import pytest

from dicom_files import TEST_FILES
from radlake.dicom.header import parse_header
from radlake.dicom.sources import (
    MAX_MESSAGE_CHARS,
    Failure,
    archive_kind,
    iter_members,
    local_path,
    read_bytes,
    unsafe_member_name,
)
from radlake.vocabulary import QuarantineStage

MR = (TEST_FILES / "MR_small.dcm").read_bytes()
CT = (TEST_FILES / "CT_small.dcm").read_bytes()
LIMIT = 1 << 20


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar(mode: str = "w:gz", *, links: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        folder = tarfile.TarInfo("s")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        for name, data in (("s/IM1", MR), ("s/IM2", CT)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if links:
            symlink = tarfile.TarInfo("s/link")
            symlink.type, symlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(symlink)
            hardlink = tarfile.TarInfo("s/hard")
            hardlink.type, hardlink.linkname = tarfile.LNKTYPE, "s/IM1"
            tf.addfile(hardlink)
            escape = tarfile.TarInfo("../evil.dcm")
            escape.size = len(MR)
            tf.addfile(escape, io.BytesIO(MR))
    return buffer.getvalue()


def test_plain_file_is_one_item_read_from_a_path_or_a_file_uri(tmp_path):
    [given] = iter_members("/a/b/IM1", MR, max_member_bytes=LIMIT)
    assert given.member is None and given.data == MR and given.error is None
    path = tmp_path / "IM 1.dcm"
    path.write_bytes(MR)
    for location in (str(path), path.as_uri()):
        [item] = iter_members(location, max_member_bytes=LIMIT)
        assert item.data == MR and item.error is None


def test_unreadable_file_is_a_source_failure(tmp_path):
    [item] = iter_members(str(tmp_path / "missing.dcm"), max_member_bytes=LIMIT)
    assert item.data is None and item.member is None
    assert item.error.stage is QuarantineStage.SOURCE and item.error.error_class == "FileNotFoundError"


def test_zip_escaping_absolute_and_link_members_are_flagged_not_read():
    data = _zip(
        {"../evil.dcm": MR, "/abs.dcm": MR, "C:/win.dcm": MR, "a\\..\\..\\x.dcm": MR, "ok/a.dcm": MR, "ok/": b""}
    )
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a") as zf:
        link = zipfile.ZipInfo("ok/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    items = {i.member: i for i in iter_members("x.ZIP", buffer.getvalue(), max_member_bytes=LIMIT)}
    assert items["ok/a.dcm"].data == MR and items["ok/a.dcm"].error is None
    assert "ok/" not in items  # folders are skipped
    for bad in ("../evil.dcm", "/abs.dcm", "C:/win.dcm", "a\\..\\..\\x.dcm"):
        assert items[bad].data is None
        assert items[bad].error.stage is QuarantineStage.SOURCE and items[bad].error.error_class == "UnsafeMemberName"
    assert items["ok/link"].error.error_class == "LinkMember" and items["ok/link"].data is None


def test_member_over_the_limit_is_refused_and_the_rest_read():
    items = list(iter_members("x.zip", _zip({"big.dcm": CT, "small.dcm": MR}), max_member_bytes=len(MR)))
    assert [(i.member, i.error.error_class if i.error else None) for i in items] == [
        ("big.dcm", "TooLarge"),
        ("small.dcm", None),
    ]
    assert items[0].data is None and str(len(CT)) in items[0].error.message


@pytest.mark.parametrize(
    ("name", "mode"), [("a.tar.gz", "w:gz"), ("a.tgz", "w:gz"), ("a.tar", "w"), ("a.tar.xz", "w:xz")]
)
def test_tar_members_are_read_and_links_and_escapes_flagged(name, mode):
    items = {i.member: i for i in iter_members(name, _tar(mode, links=True), max_member_bytes=LIMIT)}
    assert items["s/IM1"].data == MR and items["s/IM2"].data == CT
    assert "s" not in items
    assert items["s/link"].error.error_class == "LinkMember"
    assert items["s/hard"].error.error_class == "LinkMember"
    assert items["../evil.dcm"].error.error_class == "UnsafeMemberName" and items["../evil.dcm"].data is None


def test_corrupt_archives_are_one_failure_for_the_file():
    for name, data in (
        ("broken.zip", b"PK\x03\x04 not really"),
        ("empty.zip", b""),
        ("noise.tar.gz", bytes(range(256)) * 8),
        ("text.tar", b"hello\n" * 200),
    ):
        [item] = iter_members(name, data, max_member_bytes=LIMIT)
        assert item.member is None and item.data is None
        assert item.error.stage is QuarantineStage.SOURCE, name


def test_truncated_tar_gz_yields_the_members_before_the_damage_then_a_failure():
    data = _tar("w:gz")
    items = list(iter_members("a.tar.gz", data[: len(data) * 3 // 4], max_member_bytes=LIMIT))
    assert items[0].member == "s/IM1" and items[0].data == MR
    assert items[-1].error is not None and items[-1].error.stage is QuarantineStage.SOURCE
    assert all(i.data is None for i in items[1:])


def test_a_dicomdir_member_is_yielded_and_recognised_as_a_directory():
    dicomdir = (TEST_FILES / "dicomdirtests" / "DICOMDIR").read_bytes()
    items = {
        i.member: i for i in iter_members("study.zip", _zip({"DICOMDIR": dicomdir, "IM1": MR}), max_member_bytes=LIMIT)
    }
    assert parse_header(items["DICOMDIR"].data, deid=None).is_dicomdir
    assert not parse_header(items["IM1"].data, deid=None).is_dicomdir


def test_other_uris_go_through_fsspec():
    import fsspec

    with fsspec.open("memory://radlake-test/MR_small.dcm", "wb") as handle:
        handle.write(MR)
    assert read_bytes("memory://radlake-test/MR_small.dcm") == MR
    [item] = iter_members("memory://radlake-test/MR_small.dcm", max_member_bytes=LIMIT)
    assert item.data == MR
    [missing] = iter_members("memory://radlake-test/none.dcm", max_member_bytes=LIMIT)
    assert missing.error.stage is QuarantineStage.SOURCE


def test_paths_names_and_kinds():
    assert local_path("file:/tmp/a%20b.dcm") == "/tmp/a b.dcm"
    assert local_path("file:///tmp/x.dcm") == "/tmp/x.dcm"
    assert local_path("/Volumes/main/x/a.dcm") == "/Volumes/main/x/a.dcm"
    assert local_path("C:/data/a.dcm") == "C:/data/a.dcm"
    assert local_path("s3://bucket/a.dcm") is None
    assert local_path("dbfs:/no/such/mount/a.dcm") is None  # no FUSE mount here: fsspec's dbfs
    assert unsafe_member_name("a/./b/../c.dcm") is None
    assert unsafe_member_name("a/../../c.dcm") and unsafe_member_name("/etc/x") and unsafe_member_name("D:x")
    assert [archive_kind(p) for p in ("a.zip", "b.TAR.GZ", "c.tgz", "d.tar", "IM1", "e.gz")] == [
        "zip",
        "tar",
        "tar",
        "tar",
        None,
        None,
    ]


def test_failure_values():
    failure = Failure.from_exception("header", ValueError("x" * 5000))
    assert failure.stage is QuarantineStage.HEADER and failure.error_class == "ValueError"
    assert len(failure.message) == MAX_MESSAGE_CHARS
    assert Failure(QuarantineStage.PIXELS, "TooLarge", "m") == Failure("pixels", "TooLarge", "m")
    with pytest.raises(ValueError):
        Failure("nowhere", "X", "m")
    assert Failure.from_exception(QuarantineStage.SOURCE, KeyError()).message == "KeyError()"
