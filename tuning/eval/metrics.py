"""Classification metrics in plain Python: accuracy, per-class precision/recall/F1, macro-F1, confusion matrix."""

OTHER = "other"  # confusion-matrix column for predictions that are not a label word (e.g. unparsable generations)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def classification_metrics(gold: list[str], predicted: list[str], label_words: tuple[str, ...]) -> dict:
    """Metrics of `predicted` against `gold`; confusion rows are gold labels, columns predictions (+ "other")."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if not gold:
        raise ValueError("no examples to score")
    unknown = sorted(set(gold) - set(label_words))
    if unknown:
        raise ValueError(f"gold labels {unknown} are not among the label words {list(label_words)}")
    columns = [*label_words, OTHER]
    column_of = {word: index for index, word in enumerate(label_words)}
    matrix = [[0] * len(columns) for _ in label_words]
    for gold_word, predicted_word in zip(gold, predicted):
        matrix[column_of[gold_word]][column_of.get(predicted_word, len(label_words))] += 1

    per_class = {}
    for index, word in enumerate(label_words):
        true_positives = matrix[index][index]
        support = sum(matrix[index])
        precision = _ratio(true_positives, sum(row[index] for row in matrix))
        recall = _ratio(true_positives, support)
        per_class[word] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": support,
        }
    correct = sum(matrix[index][index] for index in range(len(label_words)))
    return {
        "accuracy": correct / len(gold),
        "macro_f1": sum(scores["f1"] for scores in per_class.values()) / len(label_words),
        "per_class": per_class,
        "confusion_matrix": {"rows": list(label_words), "columns": columns, "counts": matrix},
        "num_examples": len(gold),
        "num_other": sum(row[-1] for row in matrix),
    }
