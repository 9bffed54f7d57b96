"""Each verifier against hand-worked examples, with and without an answer column."""

import sys

import pytest

from trl_irl.tasks.verifiers import last_number, make_verifier


def row(answer):
    return {"prompt": "p", "completion": "demo", "answer": answer}


def test_none_is_no_verifier():
    assert make_verifier("none") is None
    assert make_verifier(None) is None


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("Paris", "Paris", 1.0),
        ("  Paris\n", "Paris ", 1.0),  # stripped on both sides
        ("paris", "Paris", 0.0),  # case matters
        ("Paris.", "Paris", 0.0),
        ("", "Paris", 0.0),
    ],
)
def test_exact(completion, answer, expected):
    assert make_verifier("exact")("q", completion, row(answer)) == expected


def test_exact_without_an_answer_column_compares_with_the_demonstration():
    verify = make_verifier("exact", answer_given=False)
    assert verify("q", " c, b, a ", row("c, b, a")) == 1.0  # row["answer"] holds the demonstration here
    assert verify("q", "c, a, b", row("c, b, a")) == 0.0


@pytest.mark.parametrize(
    "text, number",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May. ... #### 72", 72.0),
        ("The answer is 1,000.", 1000.0),
        ("It costs $18.50 in total", 18.5),
        ("from 5 down to -3", -3.0),
        ("no digits here", None),
        ("version 2. then 7", 7.0),
    ],
)
def test_last_number(text, number):
    assert last_number(text) == number


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("so she has 72 left", "72", 1.0),
        ("so she has 72 left", "#### 72", 1.0),  # GSM8K's answer column
        ("72.0", 72, 1.0),  # a number in the answer column
        ("she has 1,000 dollars", "1000", 1.0),
        ("first 72, then 73", "72", 0.0),  # the last number counts
        ("I do not know", "72", 0.0),
    ],
)
def test_numeric(completion, answer, expected):
    assert make_verifier("numeric")("q", completion, row(answer)) == expected


def test_numeric_reads_the_demonstration_like_a_completion():
    verify = make_verifier("numeric", answer_given=False)
    assert verify("q", "The total is 72", row("48 + 24 = 72\n#### 72")) == 1.0
    assert verify("q", "The total is 71", row("48 + 24 = 72\n#### 72")) == 0.0


def test_regex_compares_the_last_match_group_with_the_answer():
    verify = make_verifier(r"regex:\\boxed\{(.*?)\}")
    assert verify("q", r"first \boxed{3}, finally \boxed{ 42 }", row("42")) == 1.0
    assert verify("q", r"\boxed{41}", row("42")) == 0.0
    assert verify("q", "no box", row("42")) == 0.0
    whole = make_verifier("regex:[A-D]")  # no group: the whole (last) match
    assert whole("q", "I think B, no wait: C", row("C")) == 1.0


def test_regex_without_answer_column_reads_the_demonstration_with_the_pattern():
    verify = make_verifier(r"regex:Answer: (\w+)", answer_given=False)
    assert verify("q", "blah. Answer: yes", row("because ... Answer: yes")) == 1.0
    assert verify("q", "Answer: no", row("because ... Answer: yes")) == 0.0


def test_bad_regex_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        make_verifier("regex:(unclosed")
    with pytest.raises(ValueError, match="task.verifier='fuzzy' is unknown: choose none, exact, numeric"):
        make_verifier("fuzzy")
    with pytest.raises(ValueError, match="is unknown"):
        make_verifier("regex:")


def test_python_verifier_gets_the_files_row(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text(
        "def score(prompt, completion, row):\n    return float(completion.strip() == row['gold'].upper())\n"
    )
    monkeypatch.chdir(tmp_path)  # a checker next to the data, in the folder the user runs from
    monkeypatch.syspath_prepend(str(tmp_path))
    verify = make_verifier("python:my_checks:score")
    task_row = {"prompt": "p", "completion": "demo", "answer": "demo", "row": {"gold": "abc"}}
    assert verify("p", " ABC", task_row) == 1.0
    assert verify("p", "abc", task_row) == 0.0
    sys.modules.pop("my_checks", None)


def test_python_verifier_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        make_verifier("python:no_such_module:score")
    (tmp_path / "checks_without_fn.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="has no function 'score'"):
        make_verifier("python:checks_without_fn:score")
    with pytest.raises(ValueError, match="must be <module>:<function>"):
        make_verifier("python:just_a_module")


def test_a_registered_function_is_a_verifier_by_name():
    from trl_irl.tasks.verifiers import VERIFIERS, register_verifier

    def same_first_letter(prompt, completion, row):
        return completion[:1] == row["completion"][:1]  # a bool is a number too

    assert register_verifier(same_first_letter) == "same_first_letter"
    verifier = make_verifier("same_first_letter")
    assert verifier("p", "abc", {"row": {"completion": "axy"}}) == 1.0 and verifier("p", "", {"completion": "a"}) == 0.0
    with pytest.raises(ValueError, match=r"choose a plain name other than \['none', 'exact'"):
        register_verifier(same_first_letter, "exact")
    with pytest.raises(ValueError, match=r"a name given to register_verifier \(.*same_first_letter"):
        make_verifier("no_such_name")
    del VERIFIERS["same_first_letter"]


def test_a_verifier_is_checked_on_every_demonstration_before_anything_loads():
    """It must not raise (on the demonstrations, an empty or a garbled completion), must return a number in [0, 1],
    and must pass at least min_demo_success of the demonstrations."""
    from trl_irl.tasks.verifiers import BadScore, PythonVerifier, check_on_demonstrations

    rows = [{"prompt": f"p{i}", "completion": str(i), "row": {"completion": str(i)}} for i in range(10)]
    exact = make_verifier("exact", answer_given=False)
    check_on_demonstrations(exact, [dict(r, answer=r["completion"]) for r in rows], 1.0, "task.verifier=exact")
    half = lambda p, c, row: float(int(row["completion"]) % 2 == 0)  # noqa: E731 - passes 5 of the 10
    check_on_demonstrations(half, rows, 0.5, "mine")
    with pytest.raises(
        ValueError,
        match=r"mine scores 5 of the 10 demonstrations correct \(50%\), below "
        r"min_demo_success=0.6.*lower min_demo_success \(e.g. min_demo_success=0.5\)",
    ):
        check_on_demonstrations(half, rows, 0.6, "mine")
    with pytest.raises(ValueError, match=r"mine scores 0 .*; 3 of them were cut to task.max_completion_length"):
        check_on_demonstrations(lambda p, c, row: 0.0, rows, 0.9, "mine", truncated=3)
    with pytest.raises(ValueError, match=r"raised ValueError: invalid literal .* on an empty completion \(''\)"):
        check_on_demonstrations(lambda p, c, row: float(int(c) >= 0), rows, 0.9, "mine")
    with pytest.raises(ValueError, match=r"raised ValueError: invalid literal .* on a garbled completion \('0 \?!'\)"):
        check_on_demonstrations(lambda p, c, row: float(int(c or 0) >= 0), rows, 0.9, "mine")
    with pytest.raises(ValueError, match=r"mine returned 2 on the demonstration '0' of the prompt 'p0'"):
        check_on_demonstrations(lambda p, c, row: 2, rows, 0.9, "mine")
    with pytest.raises(BadScore, match=r"returned 'yes' \(str\), not a number in \[0, 1\]"):
        PythonVerifier(lambda p, c, row: "yes")("p", "c", {})
    check_on_demonstrations(half, [], 0.9, "mine")  # no rows: nothing to check
