"""The loss/accuracy curves of a training run, from the Trainer's log history."""

from pathlib import Path

from matplotlib.figure import Figure

from tuning.runtime.fileio import atomic_writer


def _series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def plot_curves(log_history: list[dict], path: str | Path) -> None:
    """Training and eval loss, and eval accuracy, against the optimizer step (PNG, written atomically)."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = _series(log_history, key)
        loss_axes.plot(steps, values, marker="o" if key == "eval_loss" else None, markersize=4, label=label)
    loss_axes.set(xlabel="step", ylabel="loss", title="loss")
    loss_axes.legend()
    steps, values = _series(log_history, "eval_accuracy")
    accuracy_axes.plot(steps, values, marker="o", markersize=4, color="tab:green")
    accuracy_axes.set(xlabel="step", ylabel="accuracy", title="eval accuracy (label scoring)")
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
