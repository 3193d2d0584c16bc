"""The write-ahead journal on a real folder: what a dead run left undone is handed to the
spill folder whole, what it marked done is not, and a record torn by the crash is left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager import journal as journal_module
from packager.journal import Journal
from packager.spill import SpillFolder
from tests.support.disk import fill


def _spilled(folder: SpillFolder) -> dict[str, bytes]:
    return {s.key: folder.read(s) for s in folder.scan()}


def test_undone_objects_of_a_dead_run_are_spilled_and_done_ones_are_not(tmp_path: Path) -> None:
    dead = Journal(tmp_path / "journal")
    records = [dead.append(f"live/r/a/e1-x/p1.{i}.m4s", b"part %d" % i, "immutable")
               for i in range(4)]
    dead.done(records[0])
    dead.done(records[2])
    assert dead.pending == 2
    # The process dies here: nothing closes the journal.
    spill = SpillFolder(tmp_path / "spill")
    assert Journal(tmp_path / "journal").recover(spill) == 2
    assert _spilled(spill) == {"live/r/a/e1-x/p1.1.m4s": b"part 1",
                               "live/r/a/e1-x/p1.3.m4s": b"part 3"}
    assert not list((tmp_path / "journal").iterdir()), "its files are gone once handed on"


def test_a_record_torn_by_the_crash_is_left_out(tmp_path: Path) -> None:
    dead = Journal(tmp_path / "journal")
    dead.append("live/r/a/e1-x/p1.0.m4s", b"whole", "immutable")
    dead.append("live/r/a/e1-x/p1.1.m4s", b"x" * 1000, "immutable")
    (path,) = (tmp_path / "journal").iterdir()
    path.write_bytes(path.read_bytes()[:-10])  # the crash came mid-append
    spill = SpillFolder(tmp_path / "spill")
    assert Journal(tmp_path / "journal").recover(spill) == 1
    assert _spilled(spill) == {"live/r/a/e1-x/p1.0.m4s": b"whole"}


def test_a_file_rolls_over_and_goes_once_all_its_objects_are_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "ROLL_BYTES", 400)  # two records a file
    j = Journal(tmp_path / "journal")
    records = [j.append(f"k{i}", b"y" * 200, "immutable") for i in range(3)]
    assert len(list((tmp_path / "journal").iterdir())) == 2
    j.done(records[0])
    assert len(list((tmp_path / "journal").iterdir())) == 2, "k1 still needs the first"
    j.done(records[1])
    assert len(list((tmp_path / "journal").iterdir())) == 1, "the first file had no more"


def test_a_mark_in_a_later_file_lets_an_object_of_an_earlier_one_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "ROLL_BYTES", 400)
    dead = Journal(tmp_path / "journal")
    records = [dead.append(f"k{i}", b"y" * 200, "immutable") for i in range(3)]
    dead.done(records[0])  # k0 is in the first file; the mark goes to the second
    spill = SpillFolder(tmp_path / "spill")
    assert Journal(tmp_path / "journal").recover(spill) == 2
    assert set(_spilled(spill)) == {"k1", "k2"}


def test_a_journal_closed_with_everything_done_leaves_nothing(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal")
    r = j.append("k", b"data", "immutable")
    j.done(r)
    j.close()
    assert not list((tmp_path / "journal").iterdir())
    assert j.disk_bytes == 0


def test_appends_a_full_disk_refuses_leave_the_journal_readable(small_disk: Path) -> None:
    j = Journal(small_disk / "journal")
    j.append("kept", b"data", "immutable")
    filler = fill(small_disk)
    with pytest.raises(OSError):
        for i in range(64):  # whatever still fits below a page goes first
            j.append(f"refused-{i}", b"x" * 65_536, "immutable")
    filler.unlink()  # space again: the next append goes to a new file
    j.append("after", b"more", "immutable")
    spill = SpillFolder(small_disk / "spill")
    recovered = Journal(small_disk / "journal").recover(spill)
    assert {"kept", "after"} <= set(_spilled(spill)), "a tear hides nothing after it"
    assert recovered == len(_spilled(spill))
