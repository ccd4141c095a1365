"""The update rules as the papers and textbooks write them, re-derived in plain numpy and matched
step by step: EMAs and bias correction, momentum, RMSprop, AdaGrad, Nesterov in both forms, Adam,
AdamW and Lion, and the classic comparison of optimizers on the Rosenbrock function.

Everything runs in float64 (jax.enable_x64) so the comparison is tight. Equation numbers refer
to O. Zambounis, "The Evolution of AdamW" (2025), which writes each rule in one notation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

pytestmark = pytest.mark.usefixtures("x64")


def _run(opt, grad_fn, theta0, steps):
    """Runs `opt` from theta0 with gradients from grad_fn; returns the trajectory."""
    params = jnp.asarray(theta0, jnp.float64)
    state = opt.init(params)
    step = jax.jit(lambda p, s: (lambda u_s: (gx.apply_updates(p, u_s[0]), u_s[1]))(
        opt.update(grad_fn(p), s, p)))
    out = [np.asarray(params)]
    for _ in range(steps):
        params, state = step(params, state)
        out.append(np.asarray(params))
    return np.array(out)


# -- SGD, momentum, RMSprop and Adam on the Rosenbrock function, from (-0.5, 0.5) --------------

def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_grad_np(theta):
    x, y = theta
    return np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])


def rosenbrock_grad(theta):
    x, y = theta[0], theta[1]
    return jnp.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])


def rosenbrock_numpy(name, steps=500):
    """The numpy loop of the comparison (SGD, momentum, RMSprop, Adam), as textbooks write it."""
    theta = np.array([-0.5, 0.5])
    v = np.zeros(2)
    m, s = np.zeros(2), np.zeros(2)
    traj = [theta.copy()]
    for t in range(1, steps + 1):
        g = rosenbrock_grad_np(theta)
        if name == "SGD":
            theta = theta - 0.001 * g
        elif name == "Momentum":
            v = 0.9 * v + g
            theta = theta - 0.001 * v
        elif name == "RMSprop":
            s = 0.9 * s + (1 - 0.9) * g**2
            theta = theta - 0.01 / (np.sqrt(s) + 1e-8) * g
        elif name == "Adam":
            m = 0.9 * m + (1 - 0.9) * g
            s = 0.999 * s + (1 - 0.999) * g**2
            m_hat, v_hat = m / (1 - 0.9**t), s / (1 - 0.999**t)
            theta = theta - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
        traj.append(theta.copy())
    return np.array(traj)


ROSENBROCK = {
    "SGD": lambda: gx.sgd(1e-3),
    "Momentum": lambda: gx.sgd(1e-3, 0.9),
    "RMSprop": lambda: gx.rmsprop(1e-2, decay=0.9, eps=1e-8, eps_in_sqrt=False),
    "Adam": lambda: gx.adam(1e-2),
}


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Adam"])
def test_rosenbrock_matches_the_numpy_loop(name):
    ours = _run(ROSENBROCK[name](), rosenbrock_grad, [-0.5, 0.5], 500)
    ref = rosenbrock_numpy(name)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    # the comparison's observation: momentum and Adam end nearer the minimum than plain SGD
    if name != "SGD":
        assert rosenbrock(*ours[-1]) < rosenbrock(*rosenbrock_numpy("SGD")[-1])


def test_rosenbrock_rmsprop_follows_the_numpy_rule_at_every_step():
    """RMSprop with lr 1e-2 zig-zags across the valley: a one-ulp difference in the order of
    operations (the numpy loop computes (η / (√s + ε)) g) grows until trajectories part after
    ~100 steps. So each of our steps is checked against that rule applied to our own
    previous (θ, s), for all 500 steps."""
    opt = ROSENBROCK["RMSprop"]()
    theta = jnp.array([-0.5, 0.5])
    state = opt.init(theta)
    for _ in range(500):
        g = rosenbrock_grad_np(np.asarray(theta))
        s = 0.9 * np.asarray(state[0].nu) + (1 - 0.9) * g**2
        expected = np.asarray(theta) - 0.01 / (np.sqrt(s) + 1e-8) * g
        updates, state = opt.update(rosenbrock_grad(theta), state, theta)
        theta = gx.apply_updates(theta, updates)
        np.testing.assert_allclose(state[0].nu, s, rtol=1e-13)
        np.testing.assert_allclose(theta, expected, rtol=1e-13, atol=1e-15)


# -- exponentially weighted averages and bias correction ---------------------------------------

def test_ema_is_the_exponentially_weighted_sum():
    """EMA_t = (1-β) Σ_{i≤t} β^{t-i} x_i, and the bias-corrected EMA divides by 1 - β^t."""
    beta, xs = 0.9, np.random.RandomState(0).randn(30)
    for debias in (False, True):
        opt = gx.ema(beta, debias=debias)
        state = opt.init(jnp.zeros(()))
        for t in range(1, len(xs) + 1):
            out, state = opt.update(jnp.asarray(xs[t - 1]), state)
            ref = (1 - beta) * sum(beta ** (t - i) * xs[i - 1] for i in range(1, t + 1))
            if debias:
                ref /= 1 - beta**t
            np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_bias_corrected_ema_of_a_constant_is_unbiased_from_step_one():
    """V_1 = (1-β) X_1 underestimates; V̂_t = V_t / (1 - β^t) is exact for constants."""
    opt = gx.ema(0.98)
    state = opt.init(jnp.zeros(()))
    raw = gx.ema(0.98, debias=False)
    raw_state = raw.init(jnp.zeros(()))
    for _ in range(5):
        out, state = opt.update(jnp.asarray(3.0), state)
        biased, raw_state = raw.update(jnp.asarray(3.0), raw_state)
        np.testing.assert_allclose(out, 3.0, rtol=1e-14)
        assert biased < 3.0


def test_gradient_descent_with_ema_momentum():
    """vdW = β vdW + (1-β) dW; W = W - α vdW: the EMA form of momentum (as in Ng's course)."""
    A = np.diag([1.0, 10.0])
    grad = lambda w: A @ w
    w, v, traj = np.array([1.0, 1.0]), np.zeros(2), []
    for _ in range(50):
        v = 0.9 * v + (1 - 0.9) * grad(w)
        w = w - 0.05 * v
        traj.append(w.copy())
    ours = _run(gx.chain(gx.ema(0.9, debias=False), gx.scale(-0.05)),
                lambda p: jnp.asarray(A) @ p, [1.0, 1.0], 50)
    np.testing.assert_allclose(ours[1:], traj, rtol=1e-12)
    # ...which is torch-form momentum with the learning rate scaled by (1 - β)
    torch_form = _run(gx.sgd(0.05 * (1 - 0.9), 0.9), lambda p: jnp.asarray(A) @ p, [1.0, 1.0], 50)
    np.testing.assert_allclose(torch_form, ours, rtol=1e-10)


def test_rmsprop_equations():
    """s = ρ s + (1-ρ) g²; θ = θ - α g / (√s + ε)   (Tieleman & Hinton 2012, eps outside)."""
    A = np.diag([0.5, 20.0])
    theta, s, traj = np.array([2.0, -1.0]), np.zeros(2), []
    for _ in range(60):
        g = A @ theta
        s = 0.9 * s + 0.1 * g**2
        theta = theta - 0.01 * g / (np.sqrt(s) + 1e-8)
        traj.append(theta.copy())
    ours = _run(gx.chain(gx.scale_by_rms(0.9, eps=1e-8, eps_in_sqrt=False), gx.scale(-0.01)),
                lambda p: jnp.asarray(A) @ p, [2.0, -1.0], 60)
    np.testing.assert_allclose(ours[1:], traj, rtol=1e-12)


def test_half_life_and_effective_window():
    """β = 0.9 averages about 1/(1-β) = 10 steps; a weight halves after h steps."""
    assert gx.effective_window(0.9) == pytest.approx(10.0)
    beta = gx.decay_from_half_life(7.0)
    assert beta**7 == pytest.approx(0.5)
    assert gx.half_life_from_decay(beta) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="decay must be in \\(0, 1\\), got 1.0"):
        gx.half_life_from_decay(1.0)


# -- AdaGrad, Nesterov in both forms, Adam, AdamW, Lion (Zambounis's equations) ---------------

QUAD = np.array([[3.0, 0.5], [0.5, 1.0]])


def quad_grad(p):
    return jnp.asarray(QUAD) @ p + jnp.sin(p)


def quad_grad_np(p):
    return QUAD @ p + np.sin(p)


def test_adagrad_equations():
    """G_t = G_{t-1} + g_t²;  w_{t+1} = w_t - η / √(G_t + ε) ⊙ g_t   (eq. 10-11)."""
    w, G, traj = np.array([1.0, -2.0]), np.zeros(2), []
    for _ in range(40):
        g = quad_grad_np(w)
        G = G + g**2
        w = w - 0.3 / np.sqrt(G + 1e-7) * g
        traj.append(w.copy())
    ours = _run(gx.adagrad(0.3, initial_accumulator_value=0.0, eps=1e-7), quad_grad,
                [1.0, -2.0], 40)
    np.testing.assert_allclose(ours[1:], traj, rtol=1e-12)


def _nesterov_lookahead_numpy(eta, gamma, steps):
    """Eq. (6)-(7): v_t = γ v_{t-1} + η ∇C(w_{t-1} - γ v_{t-1});  w_t = w_{t-1} - v_t."""
    w, v, ws, vs = np.array([1.0, -2.0]), np.zeros(2), [], []
    for _ in range(steps):
        v = gamma * v + eta * quad_grad_np(w - gamma * v)
        w = w - v
        ws.append(w.copy())
        vs.append(v.copy())
    return np.array(ws), np.array(vs)


def test_nesterov_lookahead_form_with_the_gradient_at_the_lookahead_point():
    eta, gamma = 0.05, 0.9
    ref_w, _ = _nesterov_lookahead_numpy(eta, gamma, 60)
    opt = gx.chain(gx.trace(gamma), gx.scale_by_learning_rate(eta))
    params = jnp.array([1.0, -2.0])
    state = opt.init(params)
    for t in range(60):
        ahead = gx.nesterov_lookahead_params(params, state[0].trace, learning_rate=eta,
                                             decay=gamma)
        updates, state = opt.update(quad_grad(ahead), state, params)
        params = gx.apply_updates(params, updates)
        np.testing.assert_allclose(params, ref_w[t], rtol=1e-12)


def test_torch_nesterov_is_the_lookahead_form_in_the_variable_phi():
    """Eq. (8)-(9), torch's rearranged form, follows φ_t = w_t - γ v_t of eq. (6)-(7)."""
    eta, gamma = 0.05, 0.9
    ref_w, ref_v = _nesterov_lookahead_numpy(eta, gamma, 60)
    phi = _run(gx.sgd(eta, gamma, nesterov=True), quad_grad, [1.0, -2.0], 60)
    np.testing.assert_allclose(phi[1:], ref_w - gamma * ref_v, rtol=1e-10, atol=1e-12)


def _adam_numpy(lr, b1, b2, eps, steps, weight_decay=0.0, decoupled=True):
    """Eq. (14)-(18): Adam, with decoupled weight decay (AdamW) or L2 added to the gradient."""
    w, m, v, traj = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2), []
    for t in range(1, steps + 1):
        g = quad_grad_np(w)
        if not decoupled:
            g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        step = m_hat / (np.sqrt(v_hat) + eps)
        if decoupled:
            step = step + weight_decay * w
        w = w - lr * step
        traj.append(w.copy())
    return np.array(traj)


def test_adam_equations():
    ours = _run(gx.adam(0.05, b1=0.8, b2=0.99), quad_grad, [1.0, -2.0], 80)
    np.testing.assert_allclose(ours[1:], _adam_numpy(0.05, 0.8, 0.99, 1e-8, 80), rtol=1e-10)


def test_adamw_and_adam_with_l2():
    """Decoupled decay (after the adaptive scaling) vs L2 added to the gradient (before it)."""
    decoupled = _run(gx.adamw(0.05, weight_decay=0.1), quad_grad, [1.0, -2.0], 80)
    np.testing.assert_allclose(decoupled[1:], _adam_numpy(0.05, 0.9, 0.999, 1e-8, 80, 0.1),
                               rtol=1e-10)
    coupled_chain = gx.chain(gx.add_decayed_weights(0.1), gx.scale_by_adam(),
                             gx.scale_by_learning_rate(0.05))
    coupled = _run(coupled_chain, quad_grad, [1.0, -2.0], 80)
    np.testing.assert_allclose(
        coupled[1:], _adam_numpy(0.05, 0.9, 0.999, 1e-8, 80, 0.1, decoupled=False), rtol=1e-10)
    assert not np.allclose(coupled, decoupled)
    # gx.adam(weight_decay=...) is that coupled chain, as torch.optim.Adam(weight_decay=...)
    assert gx.adam(0.05, weight_decay=0.1) == coupled_chain


def test_coupled_l2_is_normalised_away_by_adam_but_decoupled_decay_is_not():
    """For a weight the loss ignores, Adam rescales the L2 gradient λθ to about
    ±1, so the shrinkage no longer depends on λ; AdamW shrinks by exactly η λ θ per step."""
    zero_grad = lambda p: jnp.zeros_like(p)
    theta0 = [2.0, -3.0]
    for lam in (1e-3, 1e-1):
        l2 = _run(gx.chain(gx.add_decayed_weights(lam), gx.scale_by_adam(),
                           gx.scale_by_learning_rate(0.01)), zero_grad, theta0, 1)
        g = lam * np.array(theta0)
        # (θ_1 - θ_0 loses the last bits of θ ≈ 2 to cancellation: atol 1e-15)
        np.testing.assert_allclose(l2[1] - l2[0], -0.01 * g / (np.abs(g) + 1e-8), atol=1e-15)
        np.testing.assert_allclose(np.abs(l2[1] - l2[0]), 0.01, rtol=1e-5)  # whatever λ is
        w = _run(gx.adamw(0.01, weight_decay=lam), zero_grad, theta0, 1)
        np.testing.assert_allclose(w[1] - w[0], -0.01 * lam * np.array(theta0), atol=1e-15)


def test_lion_equations():
    """Eq. (19): w_{t+1} = w_t - η sign(β1 m_{t-1} + (1-β1) g_t); m_t = β2 m_{t-1} + (1-β2) g_t."""
    w, m, traj = np.array([1.0, -2.0]), np.zeros(2), []
    for _ in range(50):
        g = quad_grad_np(w)
        w = w - 0.01 * (np.sign(0.9 * m + 0.1 * g) + 0.05 * w)
        m = 0.99 * m + 0.01 * g
        traj.append(w.copy())
    ours = _run(gx.lion(0.01, weight_decay=0.05), quad_grad, [1.0, -2.0], 50)
    np.testing.assert_allclose(ours[1:], traj, rtol=1e-12)
