"""A half-finished copy of a MIMIC table is refused in one line, not read as fewer notes."""

import gzip
import shutil
import struct

import pandas as pd
import pytest

from icdlib.data import mimic, preprocess
from icdlib.run.errors import DataError

from mimic_fixture import write_mimic
from test_preprocess import make_cfg

TRUNCATED = "the file looks truncated (an unfinished copy?); copy it again"


@pytest.fixture
def plain(tmp_path):
    return write_mimic(tmp_path / "plain")


@pytest.fixture
def gz(tmp_path):
    return write_mimic(tmp_path / "gz", gz=True)


def copy_with(src, dst, name, data: bytes):
    shutil.copytree(src, dst)
    (dst / name).write_bytes(data)
    return dst


def build(tmp_path, mimic_dir):
    return preprocess.build(make_cfg(tmp_path, mimic_dir), progress=False)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_untouched_files_pass_plain_and_gzip(tmp_path, plain, gz):
    a, b = build(tmp_path, plain), build(tmp_path, gz)
    assert a.notes["hadm_id"].tolist() == [100001, 100002, 100009]
    pd.testing.assert_frame_equal(a.notes, b.notes)
    for table, path in mimic.check_schema(plain).items():
        mimic.check_complete(path)  # no error
    assert len(mimic.read_notes(gz / "NOTEEVENTS.csv.gz", ["Discharge summary"], progress=False)[0]) == 8


def test_plain_noteevents_cut_mid_note(tmp_path, plain):
    raw = (plain / "NOTEEVENTS.csv").read_bytes()
    cut = raw[:raw.index(b"line two")]  # inside REPORT A's quoted, multi-line TEXT, right after a newline
    assert cut.endswith(b"\n")
    bad = copy_with(plain, tmp_path / "cut", "NOTEEVENTS.csv", cut)
    with pytest.raises(DataError) as e:
        build(tmp_path, bad)
    assert one_line(e) == f"{bad / 'NOTEEVENTS.csv'} ends inside a quoted field: {TRUNCATED}"
    # the schema check already refuses it, before any table is read
    with pytest.raises(DataError, match="ends inside a quoted field"):
        mimic.check_schema(bad)


def test_plain_noteevents_cut_mid_line_outside_quotes(tmp_path, plain):
    raw = (plain / "NOTEEVENTS.csv").read_bytes()
    cut = raw[:raw.index(b'"Discharge summary","Report","","","REPORT B')]  # after `15,1,100002,"2150-03-01","","",`
    assert cut.count(b'"') % 2 == 0
    bad = copy_with(plain, tmp_path / "cut", "NOTEEVENTS.csv", cut)
    with pytest.raises(DataError) as e:
        mimic.read_notes(bad / "NOTEEVENTS.csv", ["Discharge summary"], progress=False)
    assert one_line(e) == f"{bad / 'NOTEEVENTS.csv'} ends in the middle of a record (no line break after it): {TRUNCATED}"


def test_plain_last_record_missing_fields(tmp_path, plain):
    raw = (plain / "NOTEEVENTS.csv").read_bytes()
    bad = copy_with(plain, tmp_path / "cut", "NOTEEVENTS.csv", raw + b'20,6,100010,"2150-08-01"\r\n')
    with pytest.raises(DataError) as e:
        mimic.check_complete(bad / "NOTEEVENTS.csv")
    assert one_line(e) == f"{bad / 'NOTEEVENTS.csv'}: its last record has 4 of 11 fields: {TRUNCATED}"
    # trailing blank lines after a complete record are fine (pyarrow skips them)
    ok = copy_with(plain, tmp_path / "blank", "NOTEEVENTS.csv", raw + b"\r\n\n")
    mimic.check_complete(ok / "NOTEEVENTS.csv")


def test_code_table_cut_mid_line(tmp_path, plain):
    raw = (plain / "DIAGNOSES_ICD.csv").read_bytes()
    bad = copy_with(plain, tmp_path / "cut", "DIAGNOSES_ICD.csv", raw[:raw.rindex(b',"4019"') + 1])  # `10,4,100009,1,`
    with pytest.raises(DataError) as e:
        build(tmp_path, bad)
    assert one_line(e) == f"{bad / 'DIAGNOSES_ICD.csv'} ends in the middle of a record (no line break after it): {TRUNCATED}"
    with pytest.raises(DataError, match="D_ICD_PROCEDURES.csv ends inside a quoted field"):
        raw = (plain / "D_ICD_PROCEDURES.csv").read_bytes()
        mimic.read_dictionary({**mimic.check_schema(plain),
                               "D_ICD_PROCEDURES": copy_with(plain, tmp_path / "dict", "D_ICD_PROCEDURES.csv",
                                                             raw[:raw.index(b"tube")]) / "D_ICD_PROCEDURES.csv"})


def test_tail_of_a_large_file_is_read_from_record_starts(tmp_path, plain, monkeypatch):
    """Files larger than the checked tail: the quote state comes from the record starts found in
    the tail (a note line that looks like a record start is outvoted), never from the whole file."""
    raw = (plain / "NOTEEVENTS.csv").read_bytes()
    monkeypatch.setattr(mimic, "TAIL_BYTES", 400)
    assert len(raw) > 2 * mimic.TAIL_BYTES
    mimic.check_complete(plain / "NOTEEVENTS.csv")
    bad = copy_with(plain, tmp_path / "cut", "NOTEEVENTS.csv", raw[:raw.index(b"REPORT D") + 3])
    with pytest.raises(DataError, match="ends inside a quoted field"):
        mimic.check_complete(bad / "NOTEEVENTS.csv")
    # the last note holds a line shaped like a record start: the file is still complete
    fake = raw.replace(b'"REPORT without admission"', b'"REPORT without admission\n20,5,100005,2150-07-02 looks like a row"')
    decoy = copy_with(plain, tmp_path / "decoy", "NOTEEVENTS.csv", fake)
    mimic.check_complete(decoy / "NOTEEVENTS.csv")
    assert mimic.read_notes(decoy / "NOTEEVENTS.csv", ["Discharge summary"], progress=False)[0].num_rows == 8


def test_gzip_cut_in_half(tmp_path, gz):
    data = (gz / "NOTEEVENTS.csv.gz").read_bytes()
    bad = copy_with(gz, tmp_path / "cut", "NOTEEVENTS.csv.gz", data[:len(data) // 2])
    with pytest.raises(DataError) as e:
        build(tmp_path, bad)
    assert one_line(e) == f"{bad / 'NOTEEVENTS.csv.gz'} ends before the end of its gzip stream: {TRUNCATED}"
    # cut so early that even the header line cannot be decompressed
    early = copy_with(gz, tmp_path / "early", "NOTEEVENTS.csv.gz", data[:12])
    with pytest.raises(DataError, match="ends before the end of its gzip stream"):
        build(tmp_path, early)


def test_gzip_trailer_size_and_crc_mismatch(tmp_path, gz):
    data = (gz / "DIAGNOSES_ICD.csv.gz").read_bytes()
    isize = struct.unpack("<I", data[-4:])[0]
    assert isize == len(gzip.decompress(data)) % 2**32
    bad = copy_with(gz, tmp_path / "isize", "DIAGNOSES_ICD.csv.gz", data[:-4] + struct.pack("<I", isize + 1))
    with pytest.raises(DataError) as e:
        build(tmp_path, bad)
    assert one_line(e) == (f"{bad / 'DIAGNOSES_ICD.csv.gz'}: its uncompressed size does not match the size in its "
                           f"gzip trailer (ISIZE): {TRUNCATED}")
    crc = copy_with(gz, tmp_path / "crc", "DIAGNOSES_ICD.csv.gz", data[:-8] + b"\0\0\0\0" + data[-4:])
    with pytest.raises(DataError, match=r"DIAGNOSES_ICD.csv.gz: its data does not match the CRC-32 in its gzip trailer: the file is damaged"):
        build(tmp_path, crc)


def test_gzip_of_a_cut_csv(tmp_path, plain, gz):
    """A complete gzip stream of a half-copied CSV: the decompressed end is checked like a plain file."""
    raw = (plain / "NOTEEVENTS.csv").read_bytes()
    bad = copy_with(gz, tmp_path / "cut", "NOTEEVENTS.csv.gz", gzip.compress(raw[:raw.index(b"line two")]))
    with pytest.raises(DataError) as e:
        build(tmp_path, bad)
    assert one_line(e) == f"{bad / 'NOTEEVENTS.csv.gz'} ends inside a quoted field: {TRUNCATED}"
    # a multi-member gzip (bgzip, concatenated files) of the whole file is fine
    half = raw.index(b"\n15,") + 1
    multi = copy_with(gz, tmp_path / "multi", "NOTEEVENTS.csv.gz", gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    pd.testing.assert_frame_equal(build(tmp_path, multi).notes, build(tmp_path, plain).notes)
