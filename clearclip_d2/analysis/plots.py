"""The feature analysis's outputs: CSV tables and matplotlib figures, written atomically."""

import csv
from typing import Sequence

import numpy as np

from ..utils.io import atomic_write
from .features import FEATURES, FeatureStatistics

STATISTICS = tuple(FeatureStatistics.STATISTICS)
STATISTIC_TITLES = {
    "norm": "mean token L2 norm",
    "entropy": "normalised entropy (Eq. 5)",
    "maximum": "maximum entry",
}


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([_csv_value(value) for value in row] for row in rows)
    return path


def _csv_value(value):
    if isinstance(value, float):
        return "" if value != value else f"{value:.8g}"
    return value


def save_figure(figure, path: str) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=120)
    plt.close(figure)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_statistic(rows, statistic: str, title: str, path: str) -> str:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    column = 2 + STATISTICS.index(statistic)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for feature in FEATURES:
        points = [(row[0], row[column]) for row in rows if row[1] == feature]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=feature)
    axis.set_xlabel("layer")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(STATISTIC_TITLES[statistic])
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)


def plot_channel_means(channel_rows, layer: int, path: str) -> str:
    plt = pyplot()
    figure, axes = plt.subplots(len(FEATURES), 1, figsize=(7, 6), sharex=True)
    for axis, feature in zip(axes, FEATURES):
        means = [row[3] for row in channel_rows if row[0] == layer and row[1] == feature]
        axis.bar(range(len(means)), means, width=1.0)
        axis.set_ylabel(feature)
    axes[0].set_title(f"per-channel mean over all patches, layer {layer}")
    axes[-1].set_xlabel("channel")
    return save_figure(figure, path)


def plot_attention_variants(variant_rows, path: str) -> str:
    plt = pyplot()
    names = [row[0] for row in variant_rows]
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar(positions - 0.2, [row[1] for row in variant_rows], width=0.4, label="||X_res||")
    axis.bar(positions + 0.2, [row[2] for row in variant_rows], width=0.4, label="||X_attn||")
    axis.set_xticks(positions, names)
    axis.set_ylabel("mean token L2 norm")
    axis.legend(loc="upper left")
    mious = [row[3] for row in variant_rows]
    if not all(value != value for value in mious):
        twin = axis.twinx()
        twin.plot(positions, mious, color="black", marker="o", label="mIoU (X_attn)")
        twin.set_ylabel("mIoU of X_attn")
        twin.legend(loc="upper right")
    axis.set_title("last block: attention variants")
    return save_figure(figure, path)


def plot_feature_miou(rows, path: str) -> str:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(4, 3.5))
    axis.bar([row[1] for row in rows], [row[2] for row in rows])
    axis.set_ylabel("mIoU")
    axis.set_title(f"segmenting with the last block's features ({rows[0][0]})")
    return save_figure(figure, path)


def plot_alpha_sweep(rows, path: str) -> str:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    alphas = [row[1] for row in rows]
    axis.plot(alphas, [row[2] for row in rows], marker="o")
    if min(alphas) > 0:
        axis.set_xscale("log", base=2)
    axis.set_xticks(alphas, [f"{alpha:g}" for alpha in alphas])
    axis.set_xlabel("alpha")
    axis.set_ylabel("mIoU")
    axis.set_title(f"X_res + alpha * X_attn ({rows[0][0]})")
    return save_figure(figure, path)
