import io
import tarfile
import zipfile
from pathlib import Path

import pydicom

from radlake.dicom.sources import Stage, iter_members, local_path, unsafe_member_name

MR = (Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm").read_bytes()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_plain_file_is_one_item():
    [item] = iter_members("/a/b/IM1", MR, max_member_bytes=1 << 20)
    assert item.member is None and item.data == MR and item.error is None


def test_zip_escaping_and_absolute_members_are_flagged_not_read():
    data = _zip({"../evil.dcm": MR, "/abs.dcm": MR, "C:/win.dcm": MR, "ok/a.dcm": MR, "ok/": b""})
    items = {i.member: i for i in iter_members("x.zip", data, max_member_bytes=1 << 20)}
    assert items["ok/a.dcm"].data == MR
    for bad in ("../evil.dcm", "/abs.dcm", "C:/win.dcm"):
        assert items[bad].data is None
        assert items[bad].error.stage is Stage.SOURCE and items[bad].error.error_class == "UnsafeMemberName"
    assert "ok/" not in items


def test_member_over_the_limit_is_refused():
    [item] = iter_members("x.zip", _zip({"big.dcm": MR}), max_member_bytes=100)
    assert item.error.error_class == "TooLarge" and item.data is None


def test_tar_gz_members_and_links():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo("s/IM1")
        info.size = len(MR)
        tf.addfile(info, io.BytesIO(MR))
        link = tarfile.TarInfo("s/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    items = {i.member: i for i in iter_members("a.tar.gz", buffer.getvalue(), max_member_bytes=1 << 20)}
    assert items["s/IM1"].data == MR
    assert items["s/link"].error.error_class == "LinkMember"


def test_corrupt_archive_is_one_failure():
    [item] = iter_members("broken.zip", b"PK\x03\x04 not really", max_member_bytes=1 << 20)
    assert item.error is not None and item.error.stage is Stage.SOURCE


def test_paths_and_names():
    assert local_path("file:/tmp/a%20b.dcm") == "/tmp/a b.dcm"
    assert local_path("/Volumes/main/x/a.dcm") == "/Volumes/main/x/a.dcm"
    assert local_path("s3://bucket/a.dcm") is None
    assert unsafe_member_name("a/./b/../c.dcm") is None
    assert unsafe_member_name("a/../../c.dcm")
