"""`python -m gradxform demo`: the notebooks' experiments from the command line.

Runs compact versions of notebooks 2-5 (the Rosenbrock tour, the XOR MLP, Adam + L2 vs AdamW
on noisy features, learning-rate schedules and warmup), prints their comparison tables and
writes their figures as PNG files.
This module is the command-line front end and the one place in gradxform that prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from gradxform.demo.experiments.common import format_table
from gradxform.demo.experiments.noisy_features import run_noisy_features, weight_decay_optimizers
from gradxform.demo.experiments.rosenbrock import (
    classic_optimizers,
    run_rosenbrock,
    tour_optimizers,
)
from gradxform.demo.experiments.schedules import schedule_gallery, warmup_optimizers
from gradxform.demo.experiments.xor import train_xor, xor_loss_per_step, xor_optimizers

DEFAULT_OUT = "demo_output"


class Progress:
    """A progress bar on a terminal, one line per finished run otherwise (logs, CI)."""

    def __init__(self, total: int, stream: TextIO, width: int = 30):
        self.total, self.done, self.stream, self.width = total, 0, stream, width
        self.tty = getattr(stream, "isatty", lambda: False)()
        self.start = time.perf_counter()

    def advance(self, label: str) -> None:
        self.done += 1
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        text = f"[{bar}] {self.done:>2}/{self.total} {elapsed:5.1f}s  {label}"
        if self.tty:
            end = "\n" if self.done == self.total else ""
            self.stream.write("\r\033[K" + text + end)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class Section:
    title: str
    table: str
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Callable] = field(default_factory=dict)  # file name -> () -> Figure
    results: dict = field(default_factory=dict)


def _run_each(optimizers: dict, run: Callable, progress: Progress, label: str) -> dict:
    """`run(optimizer)` for each named optimizer, reporting progress as `label: name`."""
    runs = {}
    for name, opt in optimizers.items():
        runs[name] = run(opt)
        progress.advance(f"{label}: {name}")
    return runs


def rosenbrock_section(progress: Progress, *, steps: int = 500) -> Section:
    runs = _run_each(tour_optimizers(), lambda opt: run_rosenbrock(opt, steps=steps), progress,
                     "Rosenbrock")
    rows = [
        (name, float(r.final[0]), float(r.final[1]), f"{r.losses[-1]:.3e}")
        for name, r in runs.items()
    ]
    classic = ", ".join(classic_optimizers())
    from gradxform.demo.experiments import plotting

    return Section(
        title=f"Rosenbrock f(x, y) = (1 - x)² + 100 (y - x²)² from (-0.5, 0.5), {steps} steps "
              f"(float64)",
        table=format_table(["optimizer", "x", "y", "f(x, y)"], rows),
        notes=[
            f"{classic}: the settings of the classic numpy comparison; they reproduce its "
            "numbers (the true minimum is (1, 1)).",
            "Momentum (EMA form) at η/(1-β) takes the same steps as the torch form at η.",
        ],
        figures={
            "rosenbrock_paths.png": lambda: plotting.plot_rosenbrock_paths(runs),
            "rosenbrock_loss.png": lambda: plotting.plot_rosenbrock_losses(runs),
        },
        results=runs,
    )


def xor_section(progress: Progress, *, epochs: int = 100) -> Section:
    runs = _run_each(xor_optimizers(), lambda opt: train_xor(opt, epochs=epochs), progress,
                     "XOR MLP")
    rows = [
        (name, float(r.losses[-1]), f"{r.train_accuracy:.1%}", f"{r.test_accuracy:.1%}")
        for name, r in runs.items()
    ]
    from gradxform.demo.experiments import plotting

    return Section(
        title=f"XOR MLP 2-16-16-1, 1000 points, batch 32, {epochs} epochs (torch.optim's "
              "settings)",
        table=format_table(["optimizer", "final loss", "train acc", "test acc"], rows),
        notes=["Each run is one jitted lax.scan over epochs and mini-batches."],
        figures={"xor_loss.png": lambda: plotting.plot_xor_losses(runs)},
        results=runs,
    )


def noisy_features_section(progress: Progress, *, seeds: int = 8, steps: int = 2000) -> Section:
    learning_rate, weight_decay, n_signal = 3e-2, 0.3, 5
    runs = {}
    for name, opt in weight_decay_optimizers(learning_rate, weight_decay).items():
        data, runs[name] = run_noisy_features(opt, seeds=seeds, steps=steps)
        progress.advance(f"noisy features: {name}")
    w_true = np.asarray(data.w_true)
    baseline = float(np.var(data.y_test, axis=1).mean())
    rows = []
    for name, r in runs.items():
        rows.append((
            name,
            float(np.linalg.norm(r.w[:, :n_signal] - w_true, axis=1).mean()),
            float(np.linalg.norm(r.w[:, n_signal:], axis=1).mean()),
            float(r.train_mse.mean()),
            float(r.test_mse.mean()),
        ))

    return Section(
        title=f"Noisy features: 5 informative + 45 noisy (std 3) features, 50 training points, "
              f"η = {learning_rate}, λ = {weight_decay}, {steps} steps, mean of {seeds} data sets",
        table=format_table(
            ["optimizer", "‖w_signal - w*‖", "‖w_noise‖", "train MSE", "test MSE"], rows
        ),
        notes=[
            f"Predicting ŷ = 0 scores a test MSE of {baseline:.2f}, the baseline to beat: with as "
            "many features as points, Adam fits the label noise with the noisy features.",
            "Coupled L2 is divided by Adam's √v̂, which is largest for the noisy features: "
            "AdamW decays them more and generalizes better.",
        ],
        figures={"noisy_features.png": lambda: _noisy_features_figure(runs, n_signal)},
        results=runs,
    )


def schedules_section(progress: Progress, *, seeds: int = 8, steps: int = 500) -> Section:
    peak, warmup_steps = 0.3, 100
    runs = _run_each(warmup_optimizers(peak, warmup_steps, steps),
                     lambda opt: xor_loss_per_step(opt, seeds=seeds, steps=steps), progress,
                     "warmup")
    rows = [
        (name, float(r[:, 0].mean()), float(r[:, :warmup_steps].max(axis=1).mean()),
         float(r[:, -1].mean()))
        for name, r in runs.items()
    ]
    from gradxform.demo.experiments import plotting

    return Section(
        title=f"Warmup: XOR MLP, Adam at η = {peak} (too large on purpose), {steps} steps, "
              f"mean of {seeds} runs",
        table=format_table(
            ["schedule", "initial loss", f"peak, first {warmup_steps} steps", "final loss"], rows
        ),
        notes=[
            "Warmup removes the early loss spike of Adam's first, full-size steps; the decay "
            "phase is what brings the loss down.",
            "schedules.png draws every schedule in gradxform.schedules.",
        ],
        figures={
            "schedules.png": lambda: plotting.plot_schedule_gallery(schedule_gallery()),
            "warmup.png": lambda: plotting.plot_losses_per_step(
                runs, title=f"XOR MLP, Adam at η = {peak}: loss after each step",
                early_steps=warmup_steps,
            ),
        },
        results=runs,
    )


def _noisy_features_figure(runs, n_signal):
    from gradxform.demo.experiments import plotting

    fig, (left, right) = plotting.subplots(1, 2, figsize=(12, 4))
    fig.get_layout_engine().set(wspace=0.05)
    plotting.plot_feature_weights({n: r.w for n, r in runs.items()}, n_signal=n_signal, ax=left)
    plotting.plot_test_error({n: r.test_mse for n, r in runs.items()}, ax=right)
    return fig


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run(out: str | Path = DEFAULT_OUT, *, quick: bool = False, plots: bool = True,
        stdout: TextIO | None = None, stderr: TextIO | None = None) -> dict[str, Section]:
    """Runs every section, prints its table to `stdout` and writes its figures under `out`.

    `quick` shortens the XOR, noisy-features and warmup runs (the Rosenbrock runs reproduce a
    numpy comparison and stay at 500 steps). Progress goes to `stderr`. Returns the sections,
    with their results.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    out = Path(out)
    if plots and not matplotlib_available():
        plots = False
        stdout.write("matplotlib is not installed: printing tables only, figures skipped "
                     "(pip install matplotlib, or pip install -e \".[dev]\").\n\n")
    xor_epochs, nf_seeds, nf_steps = (20, 4, 1000) if quick else (100, 8, 2000)
    warmup_seeds = 4 if quick else 8
    jobs = [
        ("rosenbrock", lambda p: rosenbrock_section(p), len(tour_optimizers())),
        ("xor", lambda p: xor_section(p, epochs=xor_epochs), len(xor_optimizers())),
        ("noisy_features", lambda p: noisy_features_section(p, seeds=nf_seeds, steps=nf_steps),
         len(weight_decay_optimizers())),
        ("schedules", lambda p: schedules_section(p, seeds=warmup_seeds),
         len(warmup_optimizers())),
    ]
    progress = Progress(sum(n for _, _, n in jobs), stderr)
    sections = {}
    for key, job, _ in jobs:
        sections[key] = job(progress)

    written = []
    if plots:
        out.mkdir(parents=True, exist_ok=True)
        for section in sections.values():
            for filename, draw in section.figures.items():
                draw().savefig(out / filename, dpi=110)
                written.append(out / filename)

    for section in sections.values():
        stdout.write(f"\n{section.title}\n\n{section.table}\n")
        for note in section.notes:
            stdout.write(f"  {note}\n")
    if plots:
        stdout.write(f"\nFigures written to {out}/: {', '.join(p.name for p in written)}\n")
    stdout.flush()
    return sections
