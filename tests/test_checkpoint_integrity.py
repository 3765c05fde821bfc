"""Storage faults, one process at a time: damaged files, verified saves, the folder lock,
SIGTERM phases and the TensorBoard trim (issue 14). End-to-end runs are in test_robustness.py."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from domainbed.training.atomic_files import StorageError, save_verified
from domainbed.training.faults import FAULT_ENV, InjectedFault, damage_file, fault_point, reset_faults
from domainbed.training.integrity import (
    DamagedFile,
    UnsafeFile,
    content_digest,
    load_newest_intact,
    load_verified,
    verify_archive,
)
from domainbed.training.preemption import Preempted, PreemptionGuard
from domainbed.training.run_lock import LOCK_FILE, FolderBusy, folder_lock
from domainbed.training.tensorboard_log import trim_event_files


def small_state(seed: int = 0, n: int = 300) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"step": seed, "w": torch.randn(n, generator=g), "b": {"x": torch.arange(7)}, "name": "ckpt"}


def same_state(a, b) -> bool:
    return a["step"] == b["step"] and torch.equal(a["w"], b["w"]) and torch.equal(a["b"]["x"], b["b"]["x"]) \
        and a["name"] == b["name"]


@pytest.fixture(autouse=True)
def no_faults(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    reset_faults()
    yield
    reset_faults()


# ----------------------------------------------------------------------------- detection


def positions(data: bytes, n_random: int, seed: int) -> list[int]:
    """Every byte of the zip metadata (local headers, central directory, end record: the
    bytes no member CRC covers) and a seeded sample of the rest."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = z.infolist()
        central = z.start_dir
    meta = set(range(central, len(data)))
    for m in members:  # a local header: 30 bytes, the name, and the extra field (<= 64 bytes of padding)
        meta.update(range(m.header_offset, m.header_offset + 30 + len(m.filename) + 64))
    rest = [i for i in range(len(data)) if i not in meta]
    return sorted(meta | set(random.Random(seed).sample(rest, min(n_random, len(rest)))))


def test_every_truncation_is_detected(tmp_path):
    """A copy cut short (partial copy, full quota) is damaged, never loaded."""
    good = tmp_path / "good.pt"
    save_verified(small_state(), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    tried = positions(data, 50, seed=1)
    for n in tried:
        cut.write_bytes(data[:n])
        with pytest.raises(DamagedFile):
            verify_archive(cut)
    verify_archive(good)
    assert len(tried) > 400


@pytest.mark.slow
def test_a_flipped_byte_is_detected_or_changes_nothing(tmp_path):
    """Bit rot: byte positions of a file inverted in turn. Either it is reported damaged,
    or (alignment padding, unused header fields) the file still loads to the same state."""
    good = tmp_path / "good.pt"
    state = small_state()
    save_verified(state, good)
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    detected = harmless = 0
    tried = positions(data, 50, seed=2)
    for i in tried:
        bad.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
        try:
            loaded = load_verified(bad)
        except DamagedFile:
            detected += 1
            continue
        assert same_state(loaded, state), f"byte {i} of {len(data)} changed the state undetected"
        harmless += 1
    assert detected + harmless == len(tried) > 400
    assert detected > harmless, (detected, harmless)


def _central_entry(data: bytes, suffix: str) -> int:
    """Offset of the central-directory entry of the member whose name ends with ``suffix``."""
    import io
    import struct
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        pos, names = z.start_dir, [m.filename for m in z.infolist()]
    for name in names:
        if name.endswith(suffix):
            return pos
        n_name, n_extra, n_comment = struct.unpack("<HHH", data[pos + 28:pos + 34])
        pos += 46 + n_name + n_extra + n_comment
    raise AssertionError(suffix)


def test_a_member_flagged_as_directory_is_damaged(tmp_path):
    """No CRC covers a member's attribute bytes; with its directory bit set, PyTorch's reader
    returns the tensor from memory it never filled, without an error."""
    path = tmp_path / "good.pt"
    save_verified(small_state(), path)
    data = bytearray(path.read_bytes())
    data[_central_entry(bytes(data), "data/0") + 38] ^= 0xFF  # low byte of the external attributes
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFile, match="data/0 is marked as a directory"):
        load_verified(path)


def test_a_consistent_archive_with_other_content_fails_the_digest(tmp_path):
    """An archive whose CRCs all match but that is not what was saved (a tensor rewritten with
    its CRC updated, as a stale or mixed-up copy would be): the digest saved inside catches it."""
    import zipfile

    path, forged = tmp_path / "good.pt", tmp_path / "forged.pt"
    save_verified(small_state(), path)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w", zipfile.ZIP_STORED) as dst:
        for member in src.infolist():
            data = src.read(member)
            if member.filename.endswith("data/0"):
                data = bytes([data[0] ^ 1]) + data[1:]  # one bit of the first float
            dst.writestr(member.filename, data)
    verify_archive(forged)
    assert not torch.equal(torch.load(forged, weights_only=True)["w"], small_state()["w"])
    with pytest.raises(DamagedFile, match="does not match the sha256 saved in it"):
        load_verified(forged)


def test_content_digest_sees_values_types_and_structure():
    base = {"a": torch.zeros(4, dtype=torch.int32), "b": [1, [2.0, "x"]], "c": None}
    variants = [
        {"a": torch.zeros(4, dtype=torch.float32), "b": [1, [2.0, "x"]], "c": None},  # same bytes, other dtype
        {"a": torch.zeros(2, 2, dtype=torch.int32), "b": [1, [2.0, "x"]], "c": None},  # other shape
        {"a": torch.zeros(4, dtype=torch.int32), "b": [[1, 2.0], "x"], "c": None},  # other nesting
        {"a": torch.zeros(4, dtype=torch.int32), "b": [1, [2.0000000000000004, "x"]], "c": None},  # 1 ulp
        {"a": torch.zeros(4, dtype=torch.int32), "b": [True, [2.0, "x"]], "c": None},  # 1 vs True
        {"b": [1, [2.0, "x"]], "a": torch.zeros(4, dtype=torch.int32), "c": None},  # key order
    ]
    digests = {content_digest(v) for v in variants} | {content_digest(base)}
    assert len(digests) == len(variants) + 1
    assert content_digest(base) == content_digest({"a": torch.zeros(4, dtype=torch.int32), "b": [1, [2.0, "x"]],
                                                   "c": None})


def test_damaged_and_unsafe_files_get_different_messages(tmp_path):
    damaged = tmp_path / "checkpoint.pt"
    torch.save(small_state(), damaged)
    damage_file(damaged, "truncate")
    with pytest.raises(DamagedFile) as exc:
        load_verified(damaged)
    text = str(exc.value)
    assert "is damaged" in text and "truncated" in text and "pickle" not in text

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "pwned"),))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x": Payload()}, unsafe)
    with pytest.raises(UnsafeFile) as exc:
        load_verified(unsafe)
    assert "unrestricted pickle" in str(exc.value) and "is damaged" not in str(exc.value)
    legacy = tmp_path / "legacy.pt"  # PyTorch's pre-zip format has no CRCs: still refused if it needs pickle
    torch.save({"x": Payload()}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFile):
        load_verified(legacy)
    assert not (tmp_path / "pwned").exists()
    torch.save(small_state(), legacy, _use_new_zipfile_serialization=False)
    assert same_state(load_verified(legacy), small_state())
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(DamagedFile, match="0 bytes"):
        load_verified(empty)


# ----------------------------------------------------------------------------- verified saves


def test_save_verified_writes_again_after_a_damaged_write(tmp_path, monkeypatch, capsys):
    path = tmp_path / "checkpoint.pt"
    monkeypatch.setenv(FAULT_ENV, "written/checkpoint.pt:1:flip")
    save_verified(small_state(1), path)
    assert "was damaged on the storage right after it was written" in capsys.readouterr().err
    assert same_state(load_verified(path), small_state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_save_verified_keeps_the_previous_file_until_the_new_one_is_verified(tmp_path, monkeypatch):
    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_verified(small_state(1), path, previous)
    assert not previous.exists()
    save_verified(small_state(2), path, previous)
    assert same_state(load_verified(path), small_state(2)) and same_state(load_verified(previous), small_state(1))
    # Both tries of the next save come back damaged: nothing is replaced or rotated.
    monkeypatch.setenv(FAULT_ENV, "written/checkpoint.pt:1:truncate,written/checkpoint.pt:2:flip")
    with pytest.raises(StorageError, match="could not be written intact.*the previous file is kept"):
        save_verified(small_state(3), path, previous)
    assert same_state(load_verified(path), small_state(2)) and same_state(load_verified(previous), small_state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_save_verified_rotation_killed_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_verified(small_state(1), path, previous)
    monkeypatch.setenv(FAULT_ENV, "rotated/checkpoint.pt:1:raise")
    with pytest.raises(InjectedFault):
        save_verified(small_state(2), path, previous)
    # checkpoint.pt is gone for a moment; the previous copy is the intact newest one.
    assert not path.exists() and not list(tmp_path.glob(".*.tmp"))
    state, used = load_newest_intact([path, previous])
    assert used == previous and same_state(state, small_state(1))


def test_load_newest_intact_falls_back_and_says_what_was_kept(tmp_path, capsys):
    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_verified(small_state(1, 5000), path, previous)
    save_verified(small_state(2, 5000), path, previous)
    damage_file(path, "flip")  # 4 KiB in the middle of a 20 KB tensor
    state, used = load_newest_intact([path, previous])
    err = capsys.readouterr().err
    assert used == previous and same_state(state, small_state(1, 5000))
    assert "checkpoint.pt is damaged (Bad CRC-32" in err and "kept as checkpoint.pt.damaged" in err
    assert "using the previous checkpoint, checkpoint.prev.pt, instead of the damaged checkpoint.pt" in err
    assert (tmp_path / "checkpoint.pt.damaged").exists() and not path.exists()
    damage_file(previous, "truncate")
    assert load_newest_intact([path, previous]) == (None, None)
    assert "no intact checkpoint is left (checkpoint.prev.pt damaged); starting again from step 0" in \
        capsys.readouterr().err


def test_an_unsafe_newest_file_is_refused_not_skipped(tmp_path):
    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    torch.save(small_state(1), previous)
    torch.save({"m": torch.nn.Linear(2, 2)}, path)  # a pickled module: needs unrestricted pickle
    with pytest.raises(UnsafeFile):
        load_newest_intact([path, previous])
    assert path.exists(), "an unsafe file is not a damaged one: it is left where it is"


# ----------------------------------------------------------------------------- the fault hook


def test_fault_hook_takes_several_points_and_counts_each(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "a:2:raise,b:1:raise,f:1:truncate")
    fault_point("a")  # first arrival at a: nothing
    with pytest.raises(InjectedFault, match="at b"):
        fault_point("b")
    with pytest.raises(InjectedFault, match=r"at a \(occurrence 2\)"):
        fault_point("a")
    fault_point("a")
    target = tmp_path / "f.bin"
    target.write_bytes(b"x" * 100)
    fault_point("f", target)
    assert target.stat().st_size == 50
    monkeypatch.setenv(FAULT_ENV, "g:1:flip")
    with pytest.raises(ValueError, match="no file to flip"):
        fault_point("g")
    monkeypatch.setenv(FAULT_ENV, "h:1:explode")
    with pytest.raises(ValueError, match="unknown action 'explode'"):
        fault_point("h")


def test_flip_damage_inverts_the_middle_block(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(random.Random(0).randrange(256) for _ in range(10000))
    path.write_bytes(data)
    damage_file(path, "flip")
    new = path.read_bytes()
    changed = [i for i in range(len(data)) if new[i] != data[i]]
    assert changed == list(range(5000 - 2048, 5000 + 2048))
    assert all(new[i] == data[i] ^ 0xFF for i in changed)


# ----------------------------------------------------------------------------- the folder lock


def _child_holding_lock(folder: Path) -> int:
    """Fork a child that takes the lock and then blocks; returns once it holds the lock."""
    ready_r, ready_w = os.pipe()
    block_r, block_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with folder_lock(folder):
                os.write(ready_w, b"locked")
                os.read(block_r, 1)  # until killed
        finally:
            os._exit(0)
    for fd in (ready_w, block_r, block_w):  # the child keeps its own block_w: its read never returns
        os.close(fd)
    assert os.read(ready_r, 6) == b"locked"  # the event: the child holds the lock
    os.close(ready_r)
    return pid


def test_second_holder_is_refused_with_the_owner_and_a_kill_frees_the_lock(tmp_path):
    pid = _child_holding_lock(tmp_path)
    try:
        with pytest.raises(FolderBusy) as exc:
            with folder_lock(tmp_path):
                pass
        text = str(exc.value)
        assert f"pid {pid} on host {socket.gethostname()}, started {time.strftime('%Y-')}" in text
        assert "write every record twice" in text and f"kill {pid}" in text
    finally:
        os.kill(pid, signal.SIGKILL)  # no clean-up runs in the child
        os.waitpid(pid, 0)
    with folder_lock(tmp_path) as owner:  # the kernel released the killed child's lock
        assert owner["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).exists()  # never deleted (see run_lock's doc)


# ----------------------------------------------------------------------------- SIGTERM phases


def test_sigterm_raises_in_set_up_and_finishing_and_only_flags_in_training():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        with pytest.raises(Preempted):
            # raise_signal delivers to this thread and runs the Python handler before it returns,
            # so the outcome is decided here, with no wait and no other thread involved.
            signal.raise_signal(signal.SIGTERM)
        assert "during set-up" in guard.notice()
    with PreemptionGuard() as guard:
        guard.enter("training")
        signal.raise_signal(signal.SIGTERM)
        assert guard.requested
        with pytest.raises(Preempted):
            guard.enter("finishing")  # the pending notice is acted on at once
        assert "training is complete and its final checkpoint is saved" in guard.notice()
    with PreemptionGuard() as guard:
        guard.enter("done")
        signal.raise_signal(signal.SIGTERM)  # ignored: the run is complete
        assert guard.requested
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- TensorBoard


def _scalars(log_dir: Path) -> list[tuple[str, int]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points = []
    for path in sorted(log_dir.glob("*tfevents*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("summary"):
                points += [(v.tag, event.step) for v in event.summary.value]
    return points


def test_trim_removes_redone_points_from_the_files(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    first = SummaryWriter(str(tmp_path), filename_suffix=".a")
    for step in range(6):
        first.add_scalar("loss", float(step), step)
    first.add_scalar("averaged/acc", 1.0, 5)
    first.close()
    (tmp_path / ".trim-123.tmp").write_bytes(b"left by a kill")
    removed = trim_event_files(tmp_path, lambda tag, step: step >= 3 or tag.startswith("averaged/"))
    assert removed == 4
    assert _scalars(tmp_path) == [("loss", 0), ("loss", 1), ("loss", 2)]
    assert not list(tmp_path.glob(".trim-*"))
    assert trim_event_files(tmp_path, lambda tag, step: step >= 0) == 3
    assert not list(tmp_path.glob("*tfevents*")), "a file left without points is deleted"
