"""Parallel data: nothing misaligned is trained on silently (stray tabs, swapped or wrong-language
sides, length outliers, a side shifted by a line), each counted by line, a source refused above
its max_bad_share, a shift refused naming where it starts."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from conftest import DEMO
from langadapt.errors import DataError

DEMO_TSV = DEMO / "parallel" / "fa-en.tsv"


def demo_pairs() -> list[tuple[str, str]]:
    """The demo's 180 Persian/English pairs (the team's own sentences)."""
    if not DEMO_TSV.is_file():
        pytest.skip("data/demo/parallel/fa-en.tsv is not present")
    return [tuple(line.split("\t")) for line in DEMO_TSV.read_text(encoding="utf-8").splitlines() if line]


def varied_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs of one to six consecutive demo sentences each: real translations of varied length."""
    demo, rng = demo_pairs(), random.Random(seed)
    out = []
    for i in range(n):
        idx = [(i + j) % len(demo) for j in range(rng.randint(1, 6))]
        out.append((" ".join(demo[k][0] for k in idx), " ".join(demo[k][1] for k in idx)))
    return out


def tsv(path: Path, rows) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path | None = None, lang: str | None = "fa", **kw):
    from langadapt.data.parallel import read_source
    from langadapt.recipe import ParallelSource

    if path is not None:
        kw.setdefault("format", "tsv")
        kw["path"] = str(path)
    return read_source(ParallelSource(name="s", **kw), lang=lang)


def test_a_line_with_a_stray_tab_is_skipped_not_cut_short(tmp_path):
    rows = [list(r) for r in demo_pairs()]
    rows[3][1] = "Please wash\tyour hands before eating."  # the tab split the English sentence
    pairs, report = read(tsv(tmp_path / "a.tsv", rows))
    assert report.skipped == {"not 2 tab-separated columns like the rest of the file": [4]}
    assert len(pairs) == 179 and all(p.english != "Please wash" for p in pairs)

    # a file whose lines all have three columns is read as before
    pairs, report = read(tsv(tmp_path / "b.tsv", [(str(i), fa, en) for i, (fa, en) in enumerate(demo_pairs())]),
                         target_column=1, english_column=2)
    assert len(pairs) == 180 and not report.skipped


def test_swapped_columns_are_counted_and_a_tenth_of_them_refuses_the_source(tmp_path):
    demo = demo_pairs()
    few = [r[::-1] if i in (6, 120) else r for i, r in enumerate(demo)]
    pairs, report = read(tsv(tmp_path / "few.tsv", few))
    assert report.skipped == {"swapped columns": [7, 121]} and len(pairs) == 178 == report.kept
    assert report.as_dict()["skipped"]["swapped columns"]["count"] == 2
    assert "swapped columns: 2 (lines 7, 121)" in report.summary()

    picked = set(random.Random(1).sample(range(len(demo)), 18))  # 10% of the pairs, as in issue 17
    tenth = [r[::-1] if i in picked else r for i, r in enumerate(demo)]
    path = tsv(tmp_path / "tenth.tsv", tenth)
    with pytest.raises(DataError) as e:
        read(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{min(picked) + 1}: refusing parallel source 's'") and "\n" not in msg
    assert "swapped columns: 18" in msg and "more than 5%" in msg and "check target_column/english_column" in msg

    # the whole file the other way round: the columns were declared wrong
    with pytest.raises(DataError, match=r"swapped columns: 180 .*look swapped"):
        read(tsv(tmp_path / "all.tsv", [r[::-1] for r in demo]))
    pairs, _ = read(tmp_path / "all.tsv", target_column=1, english_column=0)
    assert len(pairs) == 180


def test_sides_in_the_wrong_language_are_counted_and_short_sides_are_not_judged(tmp_path):
    demo = demo_pairs()
    rows = [list(r) for r in demo]
    rows[10][0] = demo[10][1]  # English on both sides
    rows[20][1] = demo[20][0]  # Persian on both sides
    rows[30] = ["یک", "one"]  # too short to tell: kept
    rows[40][1] = "Ce matin je suis allé à la boulangerie du quartier pour acheter du pain."
    pairs, report = read(tsv(tmp_path / "a.tsv", rows))
    assert report.skipped == {"target not fa": [11], "english not en": [21, 41]}
    assert ("یک", "one") in [(p.target, p.english) for p in pairs] and report.judged == 358

    pairs, report = read(tmp_path / "a.tsv", lang=None)  # no target language given: not checked
    assert not report.skipped and len(pairs) == 180


def test_pairs_far_off_the_length_ratio_are_counted(tmp_path):
    demo = demo_pairs()
    rows = [list(r) for r in demo]
    rows[50][1] = " ".join(demo[k][1] for k in range(50, 56))  # five more sentences than its partner
    rows[60][0] = " ".join(demo[k][0] for k in range(60, 66))  # and the other way round
    pairs, report = read(tsv(tmp_path / "a.tsv", rows))
    assert report.skipped == {"length ratio": [51, 61]} and len(pairs) == 178
    lo, hi = report.length_ratio_bounds
    assert lo < report.median_length_ratio < hi and 0.7 < report.median_length_ratio < 1.1


def test_a_side_shifted_by_one_line_refuses_the_source_naming_where(tmp_path):
    rows = varied_pairs(240)
    pairs, report = read(tsv(tmp_path / "ok.tsv", rows))
    assert len(pairs) == 240 and not report.skipped and report.shift is None

    # the English column moved up by one line from line 91 (a line lost on that side)
    shifted = rows[:90] + [(rows[i][0], rows[i + 1][1]) for i in range(90, 239)]
    path = tsv(tmp_path / "shifted.tsv", shifted)
    with pytest.raises(DataError) as e:
        read(path)
    msg = str(e.value)
    m = re.match(rf"{re.escape(str(path))}:(\d+): refusing parallel source 's': from line \1 to \d+, each line's "
                 r"target \(column 0\) fits the English \(column 1\) of the line before it", msg)
    assert m and abs(int(m.group(1)) - 91) <= 3 and "\n" not in msg

    # two line-aligned files, one line dropped from the English and one added at its end
    (tmp_path / "fa.txt").write_text("".join(r[0] + "\n" for r in rows), encoding="utf-8")
    english = [r[1] for r in rows]
    (tmp_path / "en.txt").write_text("\n".join(english[:90] + english[91:] + [english[0]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"fa\.txt:(8[89]|9[0-4]): .*each line's text in fa\.txt fits the text in "
                                        r"en\.txt of the line before it better than its own"):
        read(format="pair", target=str(tmp_path / "fa.txt"), english=str(tmp_path / "en.txt"))


def test_recipe_sets_the_threshold_and_can_turn_the_checks_off(tmp_path):
    import yaml

    from langadapt.data.parallel import read_parallel
    from langadapt.recipe import load_recipe

    demo = demo_pairs()
    tsv(tmp_path / "p.tsv", [r[::-1] if i % 10 == 3 else r for i, r in enumerate(demo)])  # 18 swapped

    def recipe(**src):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({"name": "t", "base_model": "smollm2-135m-instruct",
                                        "data": {"parallel": [{"name": "p", "path": "p.tsv", **src}]}}), encoding="utf-8")
        return load_recipe(path)

    with pytest.raises(DataError, match="more than 5%"):
        read_parallel(recipe())
    pairs, (report,) = read_parallel(recipe(max_bad_share=0.2))
    assert len(pairs) == 162 and len(report.skipped["swapped columns"]) == 18
    pairs, (report,) = read_parallel(recipe(checks=False))
    assert len(pairs) == 180 and not report.skipped
    with pytest.raises(Exception, match=r"max_bad_share: Input should be less than or equal to 1"):
        recipe(max_bad_share=1.5)


@pytest.mark.slow
def test_real_quran_translations_pass_and_a_copy_shifted_at_line_91_is_refused(shared_data, tmp_path):
    fa, en = shared_data / "quran" / "fa.makarem.txt", shared_data / "quran" / "en.yusufali.txt"
    pairs, report = read(format="pair", target=str(fa), english=str(en))
    assert report.lines >= 6235 and report.skipped_count <= 5 and report.shift is None  # about none dropped
    assert len(pairs) == report.lines - report.skipped_count

    lines = en.read_text(encoding="utf-8").splitlines()
    shifted = tmp_path / "en.txt"
    shifted.write_text("\n".join(lines[:90] + lines[91:] + [lines[-1]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read(format="pair", target=str(fa), english=str(shifted))
    assert str(e.value).startswith(f"{fa}:91: refusing parallel source 's': from line 91 to ")
    assert "missing or extra on one side near line 91" in str(e.value)
