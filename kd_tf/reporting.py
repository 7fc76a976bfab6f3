"""Run reports: report.json, learning-curve figures and summary tables,
per-class accuracy and confusion matrices named by class.

Usage:

```python
reporting.write_json(report, "report.json")
reporting.plot_curves(report["epochs"], "curves.png", title="teacher")
matrix = reporting.confusion_matrix(logits.argmax(1), labels, len(names))
print(reporting.markdown_table(reporting.per_class_rows({"teacher": matrix}, names)))
reporting.plot_confusion({"teacher": matrix}, names, "confusion.png")
```
"""

import json

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

# The figures are laid out by margins in inches rather than by a layout
# engine: tight and constrained layout draw a figure once more to measure its
# text (the two figures of an export took 0.57 s so, 0.35 s now, on the 2-core
# AVX2 EPYC). Text at 8 points is about this wide per character.
CHAR_INCHES_AT_8_POINTS = 0.06


def _figure(panels, panel_size, margins, gap=None):
    """A figure of `panels` axes side by side, each `panel_size` (width,
    height) inches, with `margins` (left, bottom, right, top) inches around
    them and `gap` inches between them (by default left + right); returns
    `(figure, [axes])`."""
    width, height = panel_size
    left, bottom, right, top = margins
    gap = left + right if gap is None else gap
    total = (left + right + panels * width + (panels - 1) * gap, bottom + top + height)
    figure = Figure(figsize=total)
    figure.subplots_adjust(
        left=left / total[0],
        right=1 - right / total[0],
        bottom=bottom / total[1],
        top=1 - top / total[1],
        wspace=gap / width,
    )
    return figure, list(figure.subplots(1, panels, squeeze=False).flat)


def write_json(obj, path):
    """Writes `obj` as indented JSON to `path`."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path):
    """Reads a JSON file."""
    with open(path) as f:
        return json.load(f)


def plot_curves(epochs, path, title):
    """Loss and accuracy per epoch, training and validation, as a PNG.

    Args:
        epochs: the report's `epochs` list (dicts with `loss`, `accuracy`,
            `val_loss`, `val_accuracy`).
        path: where to write the PNG.
        title: figure title.
    """
    numbers = range(1, len(epochs) + 1)
    figure, (loss_axes, accuracy_axes) = _figure(2, (3.9, 2.9), (0.8, 0.55, 0.2, 0.75), gap=1.0)
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        loss_axes.plot(numbers, [e[key] for e in epochs], marker="o", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "validation")):
        accuracy_axes.plot(numbers, [e[key] for e in epochs], marker="o", label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.savefig(path, dpi=100)


def plot_comparison(runs, path):
    """Test accuracy and test loss per epoch of several runs, as a PNG.

    Args:
        runs: mapping from a run's name to its report's `epochs` list, whose
            entries carry `test_accuracy` and `test_loss`.
        path: where to write the PNG.
    """
    figure, (accuracy_axes, loss_axes) = _figure(2, (4.3, 3.1), (0.8, 0.55, 0.2, 0.4), gap=1.0)
    for name, epochs in runs.items():
        numbers = range(1, len(epochs) + 1)
        accuracy_axes.plot(numbers, [100 * e["test_accuracy"] for e in epochs], label=name)
        loss_axes.plot(numbers, [e["test_loss"] for e in epochs], label=name)
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    loss_axes.set(xlabel="epoch", ylabel="test cross-entropy", title="test loss")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.savefig(path, dpi=100)


def summary_rows(reports):
    """One row per run report: name, model, parameters, epochs, best epoch,
    test accuracy, test loss, training seconds."""
    return [
        {
            "run": name,
            "model": report["model"],
            "params": report["params"],
            "epochs": len(report["epochs"]),
            "best_epoch": report["best_epoch"],
            "test_accuracy": report["test_accuracy"],
            "test_loss": report["test_loss"],
            "train_seconds": round(sum(e["train_seconds"] for e in report["epochs"]), 1),
        }
        for name, report in reports.items()
    ]


def markdown_table(rows):
    """Renders a list of same-keyed dicts as a Markdown table; accuracies as
    percentages (None as a dash)."""
    keys = list(rows[0])

    def cell(key, value):
        if value is None:
            return "-"
        if key.endswith("accuracy"):
            return f"{100 * value:.2f} %"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(k, row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def plot_predictions(images, captions, path, title, wrong=()):
    """A grid of images, each with its caption (as the reference's inference
    picture), as a PNG.

    Args:
        images: uint8 array `[N, H, W, C]`, C 1 or 3.
        captions: N strings, e.g. `"7 (0.998)\\ntrue 7"`.
        path: where to write the PNG.
        title: figure title.
        wrong: indices of the images whose caption is drawn in red.
    """
    columns = min(len(images), 8)
    rows = -(-len(images) // columns)
    # Multi-line captions of any length: the constrained layout measures them.
    figure = Figure(figsize=(1.6 * columns, 2.0 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, cell in enumerate(axes.flat):
        cell.axis("off")
        if index < len(images):
            image = images[index]
            cell.imshow(
                image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255
            )
            cell.set_title(captions[index], fontsize=9, color="red" if index in wrong else "black")
    figure.suptitle(title)
    figure.savefig(path, dpi=100, format="png")


def plot_search(trials, path):
    """Validation accuracy of each trial against its temperature (log axis),
    points coloured by alpha, as a PNG.

    Args:
        trials: dicts with `temperature`, `alpha` and `val_accuracy`.
        path: where to write the PNG.
    """
    figure, (axes,) = _figure(1, (4.2, 3.1), (0.8, 0.55, 1.0, 0.4))
    points = axes.scatter(
        [t["temperature"] for t in trials],
        [100 * t["val_accuracy"] for t in trials],
        c=[t["alpha"] for t in trials],
        cmap="viridis",
        edgecolors="black",
        s=60,
    )
    figure.colorbar(points, ax=axes, label="alpha")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set(
        xlabel="temperature",
        ylabel="validation accuracy (%)",
        title=f"distillation search: {len(trials)} trials",
    )
    axes.grid(alpha=0.3, which="both")
    figure.savefig(path, dpi=100)


def confusion_matrix(predicted, labels, num_classes):
    """`[true class, predicted class]` counts, int64 `[classes, classes]`."""
    pairs = np.asarray(labels, np.int64) * num_classes + np.asarray(predicted, np.int64)
    return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_accuracies(matrix):
    """Each class's accuracy in a confusion matrix: the share of its
    examples predicted as it (None for a class without examples)."""
    matrix = np.asarray(matrix)
    return [
        float(matrix[label, label] / total) if total else None
        for label, total in enumerate(matrix.sum(axis=1))
    ]


def per_class_rows(matrices, class_names):
    """One row per class: its name, its examples and each run's accuracy on
    them (`<run>_accuracy`, see `class_accuracies`).

    Args:
        matrices: `{run name: confusion matrix}` (`confusion_matrix`), of
            the same examples.
        class_names: the name of each class.
    """
    examples = np.asarray(next(iter(matrices.values()))).sum(axis=1)
    accuracies = {run: class_accuracies(matrix) for run, matrix in matrices.items()}
    return [
        {
            "class": name,
            "examples": int(examples[label]),
            **{f"{run}_accuracy": values[label] for run, values in accuracies.items()},
        }
        for label, name in enumerate(class_names)
    ]


def plot_confusion(matrices, class_names, path):
    """Each run's confusion matrix (rows: true class, columns: predicted,
    shares of the true class), side by side, named by class, as a PNG."""
    count = len(class_names)
    side = min(10.0, 1.5 + 0.4 * count)
    # The class names as tick labels, then the axis label.
    names = 0.1 + CHAR_INCHES_AT_8_POINTS * max(map(len, class_names)) if count <= 40 else 0.0
    figure, axes = _figure(len(matrices), (side, side), (names + 0.4, names + 0.4, 0.2, 0.35))
    for cell, (run, matrix) in zip(axes, matrices.items()):
        matrix = np.asarray(matrix, np.float64)
        shares = matrix / np.maximum(1.0, matrix.sum(axis=1, keepdims=True))
        cell.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        if count <= 40:
            cell.set_xticks(range(count), class_names, rotation=90, fontsize=8)
            cell.set_yticks(range(count), class_names, fontsize=8)
        if count <= 20:
            for (row, column), value in np.ndenumerate(matrix):
                if value:
                    colour = "white" if shares[row, column] > 0.5 else "black"
                    cell.text(column, row, int(value), ha="center", va="center", fontsize=7,
                              color=colour)
        cell.set(xlabel="predicted class", ylabel="true class", title=f"{run}: confusion")
    figure.savefig(path, dpi=100)
