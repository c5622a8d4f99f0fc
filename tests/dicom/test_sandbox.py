"""The decoding sandbox: real crashes, hangs and memory blow-ups in a child process become errors of one call."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from radlake.dicom.sandbox import ChildCrashed, ChildTimeout, Sandbox, TargetRaised

TEST_FILES = Path(get_testdata_file("MR_small.dcm")).parent
HERE = __name__  # the child imports this module by name: pytest puts its folder on sys.path


# Targets, run in the child.
def bare_plugin(path: str, plugin: str) -> int:
    """Decode with one plugin as pydicom would, with none of radlake's guards."""
    from pydicom.pixels import iter_pixels

    return sum(1 for _ in iter_pixels(pydicom.dcmread(path), decoding_plugin=plugin))


def count_then_segfault(n: int):
    yield from range(n)
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def sleep_s(seconds: float) -> str:
    time.sleep(seconds)
    return "awake"


def allocate(n_bytes: int) -> int:
    return len(bytearray(n_bytes))


def pid() -> int:
    return os.getpid()


@pytest.fixture
def hostile_j2k(tmp_path) -> Path:
    """A JPEG 2000 file with one byte changed on which GDCM aborts (found by fuzzing; see test_pixels)."""
    data = bytearray((TEST_FILES / "693_J2KI.dcm").read_bytes())
    data[2076] = 83
    path = tmp_path / "693_J2KI_hostile.dcm"
    path.write_bytes(bytes(data))
    return path


def test_a_native_abort_is_an_error_of_the_call_and_the_next_call_gets_a_fresh_child(hostile_j2k):
    box = Sandbox(f"{HERE}:bare_plugin", timeout_s=120)
    try:
        assert list(box.call(str(TEST_FILES / "693_J2KI.dcm"), "gdcm")) == [1]  # the intact file decodes
        first = box.pid
        with pytest.raises(ChildCrashed, match="SIGABRT") as raised:
            list(box.call(str(hostile_j2k), "gdcm"))
        assert raised.value.error_class == "DecoderCrashed"
        assert box.pid is None
        assert list(box.call(str(TEST_FILES / "693_J2KI.dcm"), "pylibjpeg")) == [1]
        assert box.pid not in (None, first)
    finally:
        box.close()


def test_items_sent_before_a_segfault_arrive_then_the_crash_is_named():
    box = Sandbox(f"{HERE}:count_then_segfault", timeout_s=60)
    got = []
    with pytest.raises(ChildCrashed, match="SIGSEGV"):
        for item in box.call(3):
            got.append(item)
    assert got == [0, 1, 2]
    box.close()


def test_a_hang_is_killed_after_the_timeout():
    box = Sandbox(f"{HERE}:sleep_s", timeout_s=1.0)
    child = None
    try:
        assert list(box.call(0.0)) == ["awake"]
        child = box.pid
        started = time.monotonic()
        with pytest.raises(ChildTimeout, match="1 s") as raised:
            list(box.call(600.0))
        assert time.monotonic() - started < 30
        assert raised.value.error_class == "DecoderTimeout"
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # killed and reaped
        assert list(box.call(0.0)) == ["awake"]
    finally:
        box.close()


def test_an_allocation_past_the_headroom_is_a_memory_error_and_the_child_lives_on():
    box = Sandbox(f"{HERE}:allocate", timeout_s=60, memory_headroom_bytes=256 << 20)
    try:
        assert list(box.call(64 << 20)) == [64 << 20]
        child = box.pid
        with pytest.raises(TargetRaised) as raised:
            list(box.call(1 << 30))  # fine without the limit on any machine that runs these tests
        assert raised.value.error_class == "MemoryError"
        assert box.pid == child
        assert list(box.call(1 << 20)) == [1 << 20]
    finally:
        box.close()


def test_a_target_that_raises_keeps_its_class_and_message():
    box = Sandbox("radlake.dicom.pixels:frame_values", timeout_s=60)
    try:
        with pytest.raises(TargetRaised, match="must be one of") as raised:
            list(box.call(b"\0\0", "float64", 1, 1))
        assert raised.value.error_class == "ValueError"
    finally:
        box.close()


def test_a_call_abandoned_halfway_kills_the_child_and_the_next_call_works():
    box = Sandbox(f"{HERE}:count_then_segfault", timeout_s=60)
    calls = box.call(10**6)
    assert next(calls) == 0
    child = box.pid
    calls.close()
    assert box.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    box.close()


def test_start_up_is_not_counted_in_the_timeout(tmp_path, monkeypatch):
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(3)\n\ndef one():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    box = Sandbox("slow_to_import:one", timeout_s=1.0)
    try:
        assert list(box.call()) == [1]
    finally:
        box.close()


def test_a_bad_target_is_refused_or_fails_the_call_clearly():
    with pytest.raises(ValueError, match="module:function"):
        Sandbox("no_colon", timeout_s=5)
    box = Sandbox("radlake.no_such_module:f", timeout_s=60)
    try:
        with pytest.raises(TargetRaised, match="radlake.no_such_module") as raised:
            list(box.call())
        assert raised.value.error_class == "ModuleNotFoundError"
    finally:
        box.close()


_PARENT = """
from radlake.dicom.sandbox import Sandbox
box = Sandbox("test_sandbox:sleep_s", timeout_s=600)
list(box.call(0.0))
print(box.pid, flush=True)
list(box.call(600.0))  # killed while its child sleeps
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for an init that does not reap counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_the_child_dies_with_its_parent():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.5)  # the parent is inside its second call
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(child):
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived its parent")
    finally:
        parent.kill()
