"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinytitan.evaluate import metrics


def test_extraction_exact_match_validity_and_field_scores():
    references = ['{"name": "flour", "unit": "cup", "qty": "2"}',
                  '{"name": "salt", "unit": "", "qty": "1"}',
                  '{"name": "egg", "unit": "", "qty": "3"}']
    predictions = ['{"qty": "2", "unit": "cup", "name": "flour"}',  # same record, other key order
                   '{"name": "salt", "unit": "tsp", "qty": "1"}',  # extra unit
                   'not json']
    found = metrics.extraction_metrics(predictions, references)
    assert found["exact_match"] == pytest.approx(1 / 3)
    assert found["json_valid"] == pytest.approx(2 / 3)
    # name: tp 2 (flour, salt), fn 1 (egg) -> P 1, R 2/3; unit: tp 1, fp 1 (tsp) -> P 1/2, R 1
    assert found["fields"]["name"] == pytest.approx({"support": 3, "predicted": 2, "precision": 1.0,
                                                      "recall": 2 / 3, "f1": 0.8})
    assert found["fields"]["unit"] == pytest.approx({"support": 1, "predicted": 2, "precision": 0.5, "recall": 1.0,
                                                      "f1": 2 / 3})
    assert found["fields"]["qty"]["recall"] == pytest.approx(2 / 3)
    # micro: tp 5, fp 1, fn 2
    assert found["micro"] == pytest.approx({"precision": 5 / 6, "recall": 5 / 7, "f1": 2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7)})
    errors = {(e["field"], e["error"]): e["count"] for e in found["top_errors"]}
    assert errors == {("unit", "extra"): 1, ("name", "missing"): 1, ("qty", "missing"): 1}
    assert found["per_example"] == [1.0, 0.0, 0.0]


def test_extraction_scores_optional_nested_and_repeated_fields_as_slot_f1():
    references = ['{"intent": "play", "artist": "abba"}',
                  '{"intent": "play", "artist": ["abba", "queen"], "where": {"city": "paris"}}',
                  '{"intent": "rate", "stars": 5, "ok": true}',
                  '{"intent": "rate"}']
    predictions = ['{"intent": "play", "artist": "abba", "album": ""}',  # an empty field the reference lacks
                   '{"artist": ["queen", "abba"], "intent": "play", "where": {"city": "rome"}}',  # list order, nested
                   '{"intent": "rate", "stars": 5.0, "ok": 1}',  # 5.0 is 5; 1 is not true
                   '{"intent": "rate", "intent": "play"}']  # a repeated key is not valid JSON
    found = metrics.extraction_metrics(predictions, references)
    assert found["json_valid"] == pytest.approx(3 / 4)
    # record exact match: an empty field the reference lacks is wrong, a list is ordered, true is not 1
    assert found["per_example"] == [0.0, 0.0, 0.0, 0.0]
    fields = found["fields"]
    assert "album" not in fields  # "" is no value: no false positive for slot F1
    # artist: references abba, abba, queen (one value per list item); predictions abba, queen, abba: all matched
    assert fields["artist"] == pytest.approx({"support": 3, "predicted": 3, "precision": 1.0, "recall": 1.0, "f1": 1.0})
    assert fields["where.city"] == pytest.approx({"support": 1, "predicted": 1, "precision": 0.0, "recall": 0.0,
                                                  "f1": 0.0})
    assert fields["stars"]["f1"] == 1.0 and fields["ok"]["f1"] == 0.0
    # the invalid fourth output writes nothing: its reference intent is a false negative
    assert fields["intent"] == pytest.approx({"support": 4, "predicted": 3, "precision": 1.0, "recall": 0.75,
                                              "f1": 2 * 0.75 / 1.75})
    assert metrics.same_json({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not metrics.same_json({"a": True}, {"a": 1}) and not metrics.same_json({"a": ""}, {})


def test_classification_accuracy_macro_f1_and_confusions():
    references = ["a", "a", "b", "b", "c"]
    predictions = ["a", "b", "b", "b", "a"]
    found = metrics.classification_metrics(predictions, references)
    assert found["accuracy"] == pytest.approx(3 / 5)
    # a: tp1 fp1 fn1 -> f1 1/2; b: tp2 fp1 fn0 -> P 2/3 R 1 f1 0.8; c: tp0 -> 0
    assert found["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert found["top_confusions"][0] == {"gold": "a", "predicted": "b", "count": 1}
    assert len(found["top_confusions"]) == 2


def test_chrf_by_hand():
    assert metrics.chrf("same text", "same text") == pytest.approx(100.0)
    # "abc" vs "abd": 1-grams 2/3 match, 2-grams 1/2, 3-grams 0; orders 4-6 absent in both -> skipped
    expected = (2 / 3 + 1 / 2 + 0) / 3
    assert metrics.chrf("abc", "abd") == pytest.approx(100 * expected)
    # spaces are removed before counting: "a b" == "ab"
    assert metrics.chrf("a b", "ab") == pytest.approx(100.0)
    # beta 2 weights recall: hypothesis "ab" against reference "abcd"
    p = (1 + 1) / 2  # 1-grams 2/2, 2-grams 1/1
    r = (2 / 4 + 1 / 3) / 2
    assert metrics.chrf("ab", "abcd") == pytest.approx(100 * 5 * p * r / (4 * p + r))
    assert metrics.chrf("", "abc") == 0.0


def test_rouge_l_by_hand():
    assert metrics.rouge_l("the cat sat", "The cat sat down.") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert metrics.rouge_l("a b c d", "a x c y d") == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert metrics.rouge_l("nothing", "shared") == 0.0


def test_acc_and_acc_norm():
    # raw: -10 beats -12; per character: -10/2 = -5 loses to -12/8 = -1.5
    assert metrics.choose([-10.0, -12.0], [" ab", " abcdefg"]) == (0, 1)
    assert metrics.choose([-3.0, -2.0, -9.0], ["xx", "yy", "zz"]) == (1, 1)


def test_bootstrap_ci_fixed_seed():
    values = np.array([1.0] * 200 + [0.0] * 200)
    low, high = metrics.bootstrap_ci(values, seed=7)
    assert metrics.bootstrap_ci(values, seed=7) == (low, high)  # the seed fixes it
    half_width = 1.96 * math.sqrt(0.25 / 400)  # the normal approximation of a proportion's interval
    assert low == pytest.approx(0.5 - half_width, abs=0.01) and high == pytest.approx(0.5 + half_width, abs=0.01)
    assert metrics.bootstrap_ci([0.7] * 30) == pytest.approx((0.7, 0.7))
    assert metrics.bootstrap_ci([]) == (0.0, 0.0)
