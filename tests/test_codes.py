import pytest

from icdlib.codes import category, dot, dot_diagnosis, dot_procedure


@pytest.mark.parametrize("raw,dotted", [
    ("4019", "401.9"), ("42731", "427.31"), ("E8889", "E888.9"), ("E849", "E849"), ("V5861", "V58.61"),
    ("042", "042"), ("0389", "038.9"), ("389", "389"), (" 25000 ", "250.00"), ("V10", "V10"),
])
def test_diagnosis_dots(raw, dotted):
    assert dot_diagnosis(raw) == dotted


@pytest.mark.parametrize("raw,dotted", [("3893", "38.93"), ("9604", "96.04"), ("966", "96.6"), ("00", "00")])
def test_procedure_dots(raw, dotted):
    assert dot_procedure(raw) == dotted


def test_leading_zeros_stay_distinct_and_kinds_never_collide():
    assert dot("0389", "diagnosis") != dot("389", "diagnosis")
    assert dot("3893", "procedure") != dot("3893", "diagnosis")
    with pytest.raises(ValueError):
        dot("4019", "other")


def test_category():
    assert [category(c) for c in ("428.30", "E888.9", "38.93", "042")] == ["428", "E888", "38", "042"]
