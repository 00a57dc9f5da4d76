from cloudtaser import rendering


def test_wrapped_column_keeps_other_rows_narrow() -> None:
    long = "word " * 30
    out = rendering.table(
        ["name", "detail", "note"],
        [["a", long.strip(), "x"], ["b", "short", "y"]],
        wrap={"detail": 20},
    )
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DETAIL", "NOTE"]
    assert max(len(line) for line in lines) <= len("NAME   ") + 20 + len("   NOTE")
    # the long cell continues on lines whose other cells are blank
    assert lines[1].startswith("a") and lines[1].endswith("x")
    assert lines[2].startswith(" ") and lines[2].strip().startswith("word")
    assert " ".join(line[7:27].strip() for line in lines[1:-1]) == long.strip()
    assert lines[-1].split() == ["b", "short", "y"]


def test_unwrapped_table_is_unchanged() -> None:
    assert rendering.table(["a", "bb"], [["xyz", 1]]) == "A     BB\nxyz   1\n"
