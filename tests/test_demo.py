"""The demo and its experiments: the Rosenbrock comparison's numbers, the command line, figures."""

from __future__ import annotations

import io
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest

import gradxform
from gradxform.__main__ import main
from gradxform.demo import cli
from gradxform.demo.experiments.rosenbrock import classic_optimizers, run_rosenbrock

STEPS = 500


# -- the comparison's numpy optimizers, as a deep-learning course writes them (the reference) --


def rosenbrock_grad(x, y):
    """Gradient of Rosenbrock function"""
    dx = -2*(1-x) - 400*x*(y - x**2)
    dy = 200*(y - x**2)
    return np.array([[dx], [dy]])


class SGDMomentum:
    def __init__(self, params, lr=0.01, momentum=0.9):
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self.velocities = [np.zeros_like(p) for p in params]

    def step(self, grads):
        for i, (param, grad) in enumerate(zip(self.params, grads)):
            self.velocities[i] = self.momentum * self.velocities[i] + grad
            param -= self.lr * self.velocities[i]


class RMSprop:
    def __init__(self, params, lr=0.001, beta=0.9, epsilon=1e-8):
        self.params = params
        self.lr = lr
        self.beta = beta
        self.epsilon = epsilon
        self.sq_grads = [np.zeros_like(p) for p in params]

    def step(self, grads):
        for i, (param, grad) in enumerate(zip(self.params, grads)):
            self.sq_grads[i] = (self.beta * self.sq_grads[i] +
                               (1 - self.beta) * grad**2)
            adapted_lr = self.lr / (np.sqrt(self.sq_grads[i]) + self.epsilon)
            param -= adapted_lr * grad


class Adam:
    def __init__(self, params, lr=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.params = params
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        for i, (param, grad) in enumerate(zip(self.params, grads)):
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * grad
            self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * grad**2
            m_hat = self.m[i] / (1 - self.beta1**self.t)
            v_hat = self.v[i] / (1 - self.beta2**self.t)
            param -= self.lr * m_hat / (np.sqrt(v_hat) + self.epsilon)


class SGD:
    """The vanilla SGD loop, `theta -= lr * grad`, as an object like the others."""

    def __init__(self, params, lr):
        self.params, self.lr = params, lr

    def step(self, grads):
        for param, grad in zip(self.params, grads):
            param -= self.lr * grad


NUMPY_OPTIMIZERS = {
    "SGD": lambda p: SGD([p], lr=0.001),
    "Momentum": lambda p: SGDMomentum([p], lr=0.001, momentum=0.9),
    "RMSprop": lambda p: RMSprop([p], lr=0.01, beta=0.9),
    "Adam": lambda p: Adam([p], lr=0.01, beta1=0.9, beta2=0.999),
}


def numpy_trajectory(name, start=(-0.5, 0.5), steps=STEPS):
    """θ_0 … θ_T of the numpy loop for one optimizer, shape (T + 1, 2), float64."""
    theta = np.array([[start[0]], [start[1]]])
    opt = NUMPY_OPTIMIZERS[name](theta)
    path = [theta.ravel().copy()]
    for _ in range(steps):
        opt.step([rosenbrock_grad(theta[0, 0], theta[1, 0])])
        path.append(theta.ravel().copy())
    return np.array(path)


def rounding_envelope(name):
    """How far the numpy run moves, step by step, when its start moves by one ulp.

    The largest deviation over 8 one-ulp perturbations of (-0.5, 0.5), as a running maximum
    over the steps. For a run that is not sensitive to rounding it stays near 1e-16; where the
    iteration amplifies rounding (RMSprop bouncing across the valley) it grows, and no
    implementation that rounds differently from that numpy code can be asked to be closer.
    """
    ref = numpy_trajectory(name)
    worst = np.zeros(len(ref))
    for dx, dy in [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]:
        start = (np.nextafter(-0.5, dx * np.inf) if dx else -0.5,
                 np.nextafter(0.5, dy * np.inf) if dy else 0.5)
        worst = np.maximum(worst, np.abs(numpy_trajectory(name, start) - ref).max(axis=1))
    return np.maximum.accumulate(worst)


# -- gradxform reproduces the numpy reference ---------------------------------------------------


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Adam"])
def test_rosenbrock_matches_the_numpy_reference(name):
    """In float64 the whole trajectory agrees with the numpy run's to rounding: 1e-13 absolute on
    coordinates of order 1, ~500 ulps (measured: at most 1e-15; the runs differ only in the
    order of floating-point operations and jax.grad's form of the gradient)."""
    ours = run_rosenbrock(classic_optimizers()[name], steps=STEPS).params
    ref = numpy_trajectory(name)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-13)


def test_rosenbrock_rmsprop_matches_the_numpy_reference_to_its_rounding_sensitivity():
    """RMSprop at lr 1e-2 bounces across the valley and amplifies rounding: a one-ulp change of
    the start moves the numpy run by up to ~1e-2. gradxform's run must be no further from
    the numpy run than that, at every step (measured: at most 0.3 of the envelope); before the
    amplification sets in (~step 95) this means agreement to rounding."""
    ours = run_rosenbrock(classic_optimizers()["RMSprop"], steps=STEPS).params
    ref = numpy_trajectory("RMSprop")
    envelope = rounding_envelope("RMSprop")
    deviation = np.abs(ours - ref).max(axis=1)
    assert np.all(deviation <= envelope + 1e-15), int(np.argmax(deviation > envelope + 1e-15))
    np.testing.assert_allclose(ours[:80], ref[:80], rtol=0, atol=1e-14)


def test_rosenbrock_envelope_is_tight_for_the_stable_runs():
    """The envelope argument is only used where it is needed: for SGD, Momentum and Adam a
    one-ulp change of the start stays a rounding-size change (so their 1e-13 test is strict)."""
    for name in ["SGD", "Momentum", "Adam"]:
        assert rounding_envelope(name)[-1] < 1e-12
    assert rounding_envelope("RMSprop")[-1] > 1e-4


def test_rosenbrock_float32_is_close_to_the_numpy_reference():
    """In float32 the three stable runs agree with the float64 numpy run to float32 accuracy grown
    over 500 steps (measured: at most 7e-7; bounded at 5e-6)."""
    for name in ["SGD", "Momentum", "Adam"]:
        ours = run_rosenbrock(classic_optimizers()[name], steps=STEPS, x64=False).params
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours[-1], numpy_trajectory(name)[-1], rtol=0, atol=5e-6)


# -- the command line ---------------------------------------------------------------------------


def test_help_explains_the_commands():
    result = subprocess.run([sys.executable, "-m", "gradxform", "--help"], capture_output=True,
                            text=True, check=True)
    assert "demo" in result.stdout and "usage: python -m gradxform" in result.stdout
    result = subprocess.run([sys.executable, "-m", "gradxform", "demo", "--help"],
                            capture_output=True, text=True, check=True)
    for option in ["--out DIR", "--quick", "--no-plots"]:
        assert option in result.stdout


def test_version_and_the_installed_command_names_itself():
    result = subprocess.run([sys.executable, "-m", "gradxform", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"gradxform {gradxform.__version__}"
    # the console script `gradxform` (pyproject's [project.scripts]) calls main() itself
    script = ("import sys; sys.argv[0] = '/usr/local/bin/gradxform'; "
              "from gradxform.__main__ import main; sys.exit(main(['--help']))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.startswith("usage: gradxform [-h] [--version]"), result.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo2"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stdout, stderr = io.StringIO(), io.StringIO()
    sections = cli.run(out, quick=True, stdout=stdout, stderr=stderr)
    return out, stdout.getvalue(), stderr.getvalue(), sections


def _row(table_text, name):
    [line] = [ln for ln in table_text.splitlines() if ln.startswith(name + "  ")]
    return line.split()[len(name.split()):]


def test_demo_table_shows_the_numpy_references_numbers(quick_demo):
    """The Rosenbrock table prints the final positions the numpy code prints (4 decimals).

    RMSprop's run amplifies rounding (see the envelope test above), so its printed digits are
    held to the numpy run's own one-ulp sensitivity, not to four decimals.
    """
    _, text, _, sections = quick_demo
    table = sections["rosenbrock"].table
    assert table in text
    for name in ["SGD", "Momentum", "Adam"]:
        x, y = numpy_trajectory(name)[-1]
        assert _row(table, name)[:2] == [f"{x:.4f}", f"{y:.4f}"], name
    final = sections["rosenbrock"].results["RMSprop"].final
    printed = _row(table, "RMSprop")[:2]
    assert printed == [f"{final[0]:.4f}", f"{final[1]:.4f}"]
    deviation = np.abs(np.array(printed, float) - numpy_trajectory("RMSprop")[-1]).max()
    assert deviation <= rounding_envelope("RMSprop")[-1] + 5e-5  # + half the last printed digit


def test_demo_reports_each_experiment(quick_demo):
    _, text, progress, sections = quick_demo
    assert list(sections) == ["rosenbrock", "xor", "noisy_features", "schedules"]
    for title in ["Rosenbrock", "XOR MLP", "Noisy features", "Warmup"]:
        assert title in text
    assert "20/20" in progress  # one tick per optimizer run
    # XOR is learnable by every optimizer in 20 epochs.
    for name, run in sections["xor"].results.items():
        assert run.train_accuracy > 0.9, name
    # The experiment's point: AdamW shrinks the noisy features' weights more than Adam + L2 does.
    runs = sections["noisy_features"].results
    noise_norm = {n: np.linalg.norm(r.w[:, 5:], axis=1).mean() for n, r in runs.items()}
    assert noise_norm["AdamW"] < noise_norm["Adam + L2"]
    assert runs["AdamW"].test_mse.mean() < runs["Adam + L2"].test_mse.mean()
    # Warmup removes Adam's early loss spike; the decay brings the loss down.
    constant, warm, warm_cosine = sections["schedules"].results.values()
    assert warm[:, :100].max(axis=1).mean() < constant[:, :100].max(axis=1).mean()
    assert warm_cosine[:, -1].mean() < warm[:, -1].mean()


def test_demo_writes_png_figures(quick_demo):
    out, text, _, _ = quick_demo
    names = ["rosenbrock_paths.png", "rosenbrock_loss.png", "xor_loss.png", "noisy_features.png",
             "schedules.png", "warmup.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert "Figures written to" in text


def test_cli_demo_without_plots(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-plots", "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "Rosenbrock" in out and "Figures written" not in out
    assert not (tmp_path / "figs").exists()


def test_demo_without_matplotlib_prints_tables_and_says_plots_were_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    stdout = io.StringIO()
    cli.run(tmp_path, quick=True, stdout=stdout, stderr=io.StringIO())
    text = stdout.getvalue()
    assert "matplotlib is not installed" in text and "figures skipped" in text
    assert "Adam + L2" in text  # the tables are all there
    assert list(tmp_path.iterdir()) == []


def test_experiments_print_nothing(capsys):
    """Only the command line prints: the experiment functions return their results silently."""
    from gradxform.demo.experiments.xor import train_xor, xor_optimizers

    run_rosenbrock(classic_optimizers()["Adam"], steps=10)
    train_xor(xor_optimizers()["Adam"], epochs=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_paths_that_coincide_are_drawn_once_under_both_names(quick_demo):
    from gradxform.demo.experiments import plotting

    runs = quick_demo[3]["rosenbrock"].results
    groups = plotting.coinciding(runs)
    assert groups["Momentum = Momentum (EMA form)"] == ["Momentum", "Momentum (EMA form)"]
    assert sum(len(g) for g in groups.values()) == len(runs)
    fig = plotting.plot_rosenbrock_paths(runs)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[:len(groups)] == list(groups)
    # No two curves share a colour, a line style and a marker.
    looks = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in fig.axes[0].lines
             if ln.get_label() in groups}
    assert len(looks) == len(groups)


def test_the_warmup_figure_names_each_settings_early_peak(quick_demo):
    from gradxform.demo.experiments import plotting

    runs = quick_demo[3]["schedules"].results
    fig = plotting.plot_losses_per_step(runs, early_steps=100)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    constant = runs["constant η"]
    assert labels[0] == f"constant η: peak {constant[:, :101].max(axis=1).mean():.2f}"
    # Both warmups take the same first 100 steps: one curve, both names.
    assert labels[1].startswith("warmup, then constant = warmup, then cosine decay: peak")


def test_moving_average_is_the_mean_of_the_last_window_values():
    from gradxform.demo.experiments import plotting

    x = np.random.default_rng(0).random((2, 50))
    want = np.stack([[row[max(0, i - 4):i + 1].mean() for i in range(50)] for row in x])
    np.testing.assert_allclose(plotting.moving_average(x, 5), want, rtol=1e-12)
