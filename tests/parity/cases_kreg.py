"""Parity cases for Nadaraya-Watson kernel regression (d2l r0.17
"nadaraya-watson"; kernels of v1.0.3 "attention-pooling"), written the way
the book writes them, so that qkv's model is checked against the book's code
and not against a re-derivation of it."""
import torch
from torch import nn
from casekit import _grad_case


def f(x):
    return 2 * torch.sin(x) + x**0.8


class NWKernelRegression(nn.Module):
    """d2l r0.17's parametric attention pooling, one learnable width w."""

    def __init__(self, w0):
        super().__init__()
        self.w = nn.Parameter(w0.clone())

    def forward(self, queries, keys, values):
        queries = queries.repeat_interleave(keys.shape[1]).reshape((-1, keys.shape[1]))
        self.attention_weights = nn.functional.softmax(
            -((queries - keys) * self.w)**2 / 2, dim=1)
        return torch.bmm(self.attention_weights.unsqueeze(1),
                         values.unsqueeze(-1)).reshape(-1)


def _data(g, n_train):
    x_train, _ = torch.sort(torch.rand(n_train, generator=g) * 5)
    y_train = f(x_train) + torch.normal(0.0, 0.5, (n_train,), generator=g)
    x_test = torch.arange(0, 5, 0.1)
    return x_train, y_train, x_test


def _train(g, n_train=50, epochs=5, lr=0.5, seed=None):
    """The book's training loop, verbatim in substance: leave-one-out keys and
    values, MSELoss(reduction='none') summed, SGD, full batch. A fixed seed
    picks data on which w travels far (0.07 to 4.4), the hard case for
    parity; the fixture's own seed gives one where w collapses towards 0."""
    if seed is not None:
        g.manual_seed(seed)
    x_train, y_train, x_test = _data(g, n_train)
    w0 = torch.rand((1,), generator=g)
    net = NWKernelRegression(w0)
    mask = (1 - torch.eye(n_train)).type(torch.bool)
    keys = x_train.repeat((n_train, 1))[mask].reshape((n_train, -1))
    values = y_train.repeat((n_train, 1))[mask].reshape((n_train, -1))
    loss = nn.MSELoss(reduction='none')
    trainer = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        trainer.zero_grad()
        l = loss(net(x_train, keys, values), y_train)
        l.sum().backward()
        trainer.step()
        losses.append(float(l.sum()))
    with torch.no_grad():
        y_hat = net(x_test, x_train.repeat((len(x_test), 1)), y_train.repeat((len(x_test), 1)))
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "w0": w0,
            "losses": torch.tensor(losses), "w": net.w.detach().clone(),
            "y_hat": y_hat, "attention": net.attention_weights.detach()}, \
        {"epochs": str(epochs), "lr": str(lr)}


def _pool(g, n_train=50):
    """v1.0.3's nadaraya_watson for each kernel; weights stored as
    (queries, keys), the transpose of the book's k / k.sum(0)."""
    x_train, y_train, x_test = _data(g, n_train)
    kernels = {
        "gaussian": lambda x: torch.exp(-x**2 / 2),
        "boxcar": lambda x: torch.abs(x) < 1.0,
        "constant": lambda x: 1.0 + 0 * x,
        "epanechnikov": lambda x: torch.max(1 - torch.abs(x), torch.zeros_like(x)),
    }
    for sigma in (0.1, 0.2, 0.5, 1):
        kernels[f"gaussian_{sigma}"] = lambda x, s=sigma: torch.exp(-x**2 / (2 * s**2))
    t = {"x_train": x_train, "y_train": y_train, "x_test": x_test}
    for name, kernel in kernels.items():
        dists = x_train.reshape((-1, 1)) - x_test.reshape((1, -1))
        k = kernel(dists).type(torch.float32)
        attention_w = k / k.sum(0)
        t["y_hat_" + name] = y_train @ attention_w
        t["attention_" + name] = attention_w.T.contiguous()
    return t, {}


def _forward(g):
    """One forward of the parametric pooling with its gradients; keys are
    handed to C as a transposed view (keys_t is (M, N))."""
    N, M = 6, 5
    q = torch.rand(N, generator=g) * 5
    keys = torch.rand(N, M, generator=g) * 5
    values = torch.randn(N, M, generator=g)
    w = torch.rand(1, generator=g) + 0.5

    def fn(q, keys_t, values, w):
        return NWKernelRegression.forward(_W(w), q, keys_t.T, values)

    return _grad_case(g, fn, {"q": q, "keys_t": keys.T.contiguous(), "values": values, "w": w})


class _W:
    def __init__(self, w):
        self.w = w


CASES = {
    "kreg_train": lambda g: _train(g, seed=5),
    "kreg_train_collapse": lambda g: _train(g),
    "kreg_train_small": lambda g: _train(g, n_train=12, epochs=8, lr=0.1),
    "kreg_pool": lambda g: _pool(g),
    "kreg_forward": lambda g: _forward(g),
}
