"""Plot the loss and learning-rate curves of training runs as PNG.

    python tools/plot_log.py output/ytvos_r50 [more run dirs] [--out curves.png] [--keys loss loss_mask]

Reads ``log_iter.txt`` (values every ``--print_freq`` iterations) when present, else the per-epoch
``log.txt`` (the original's format, ``train_<name>`` keys). One panel per loss key plus one for
the learning rate, one line per run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_KEYS = ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


def read_curves(run_dir: str | Path) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """``(x-axis label, {key: [(x, value), ...]})`` of one run; x is the epoch (fractional for iterations)."""
    run_dir = Path(run_dir)
    iteration_log, epoch_log = run_dir / "log_iter.txt", run_dir / "log.txt"
    curves: dict[str, list[tuple[float, float]]] = {}
    if iteration_log.is_file():
        for line in iteration_log.read_text().splitlines():
            record = json.loads(line)
            x = record["epoch"] + record["iteration"] / record["iterations_per_epoch"]
            for key, value in record.items():
                curves.setdefault(key, []).append((x, value))
        return "epoch (from iterations)", curves
    if epoch_log.is_file():
        for line in epoch_log.read_text().splitlines():
            record = json.loads(line)
            for key, value in record.items():
                if key.startswith("train_"):
                    curves.setdefault(key[len("train_"):], []).append((record["epoch"] + 1, value))
        return "epoch", curves
    raise FileNotFoundError(f"neither {iteration_log} nor {epoch_log} exists: is {run_dir} a training output directory?")


def plot(run_dirs: list[str | Path], out: str | Path, keys: tuple[str, ...] = DEFAULT_KEYS) -> Path:
    """Write one figure with a panel per key and the learning rate (log scale); returns ``out``."""
    runs = [(Path(d).name or str(d), *read_curves(d)) for d in run_dirs]
    panels = [*keys, "lr"]
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.5 * rows), squeeze=False)
    for axis, key in zip(axes.flat, panels):
        for name, x_label, curves in runs:
            if key in curves:
                xs, ys = zip(*curves[key])
                axis.plot(xs, ys, label=name)
            axis.set_xlabel(x_label)
        axis.set_title(key)
        if key == "lr":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    axes.flat[0].legend()
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="training output directories")
    parser.add_argument("--out", default=None, help="PNG file (default: <first run dir>/curves.png)")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="loss keys to plot")
    args = parser.parse_args(argv)
    out = plot(args.run_dirs, args.out or Path(args.run_dirs[0]) / "curves.png", tuple(args.keys))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
