import pytest

from tuning.eval.metrics import OTHER, classification_metrics

WORDS = ("积极", "消极")


def test_handmade_confusion():
    # gold 积极 x5: predicted 积极 x3, 消极 x1, unparsable x1; gold 消极 x4: 消极 x2, 积极 x2.
    gold = ["积极"] * 5 + ["消极"] * 4
    predicted = ["积极", "积极", "积极", "消极", "抱歉，作为", "消极", "消极", "积极", "积极"]
    metrics = classification_metrics(gold, predicted, WORDS)

    assert metrics["confusion_matrix"] == {
        "rows": ["积极", "消极"],
        "columns": ["积极", "消极", OTHER],
        "counts": [[3, 1, 1], [2, 2, 0]],
    }
    assert metrics["accuracy"] == pytest.approx(5 / 9)
    positive, negative = metrics["per_class"]["积极"], metrics["per_class"]["消极"]
    # 积极: tp 3, predicted 积极 5 times, gold 积极 5 times.
    assert positive["precision"] == pytest.approx(3 / 5)
    assert positive["recall"] == pytest.approx(3 / 5)
    assert positive["f1"] == pytest.approx(3 / 5)
    # 消极: tp 2, predicted 消极 3 times, gold 消极 4 times -> F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7.
    assert negative["precision"] == pytest.approx(2 / 3)
    assert negative["recall"] == pytest.approx(1 / 2)
    assert negative["f1"] == pytest.approx(4 / 7)
    assert (positive["support"], negative["support"]) == (5, 4)
    assert metrics["macro_f1"] == pytest.approx((3 / 5 + 4 / 7) / 2)
    assert metrics["num_other"] == 1 and metrics["num_examples"] == 9


def test_class_never_predicted_has_zero_precision_not_an_error():
    metrics = classification_metrics(["积极", "消极"], ["积极", "积极"], WORDS)
    assert metrics["per_class"]["消极"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["per_class"]["积极"]["precision"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        classification_metrics(["积极", "消极"], ["积极"], WORDS)
    with pytest.raises(ValueError, match="not among the label words"):
        classification_metrics(["中性"], ["积极"], WORDS)
