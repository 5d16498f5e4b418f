"""Conferrable candidates by optimisation (Lukas, Zhang, Kerschbaum, ICLR 2021).

Two differentiable ensembles of small torch networks stand in for the two kinds of model:
surrogates trained on the served model's labels of one attacker's queries, and reference
models trained on the ground truth. From each start (a query of that attacker's kind), gradient
steps raise the conferrability score

    sigma(x) = mean_s P_s(t | x) * (1 - mean_r P_r(t | x))

for the served label ``t`` of the start, inside a box of ``radius`` standard deviations around it
(and the reference rows' range). The served model is queried once at the end for the point's
label: it need not be differentiable. The scikit-learn ensembles of ``fingerprint`` then choose
among these candidates and the sampled ones.
"""

from __future__ import annotations

import numpy as np

from audits.forensics import as_labels

HIDDEN = ((32,), (32, 32))
EPOCHS = 150
STEPS = 60
RADIUS = 0.3  # reference standard deviations around each start


def _net(width: int, hidden: tuple[int, ...], classes: int):
    import torch.nn as nn

    layers, last = [], width
    for h in hidden:
        layers += [nn.Linear(last, h), nn.ReLU()]
        last = h
    return nn.Sequential(*layers, nn.Linear(last, classes))


def train_nets(X: np.ndarray, y: np.ndarray, classes: int, seeds: list[int]) -> list:
    """Small MLPs (one per seed and hidden shape) fitted full-batch with Adam on standardised
    inputs ``X`` and integer labels ``y``."""
    import torch

    xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    nets = []
    for seed in seeds:
        for hidden in HIDDEN:
            torch.manual_seed(seed)
            net = _net(X.shape[1], hidden, classes)
            opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
            for _ in range(EPOCHS):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt), yt).backward()
                opt.step()
            net.eval()
            nets.append(net)
    return nets


def mean_target_proba(nets: list, x, target):
    import torch

    probs = [torch.softmax(net(x), dim=1).gather(1, target[:, None])[:, 0] for net in nets]
    return torch.stack(probs).mean(dim=0)


def ascend(surrogates: list, references: list, starts: np.ndarray, target: np.ndarray, box):
    """Gradient ascent on log sigma from ``starts`` (standardised), each within ``RADIUS`` of
    its start and inside ``box`` (low, high); returns the moved points."""
    import torch

    x0 = torch.as_tensor(starts, dtype=torch.float32)
    lo = torch.maximum(x0 - RADIUS, torch.as_tensor(box[0], dtype=torch.float32))
    hi = torch.minimum(x0 + RADIUS, torch.as_tensor(box[1], dtype=torch.float32))
    t = torch.as_tensor(target, dtype=torch.long)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(STEPS):
        opt.zero_grad()
        copy = mean_target_proba(surrogates, x, t)
        independent = mean_target_proba(references, x, t)
        loss = -(torch.log(copy + 1e-6) + torch.log(1.0 - independent + 1e-6)).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.minimum(torch.maximum(x, lo), hi))
    return x.detach().numpy().astype(np.float64)


def optimised_candidates(
    served,
    queries: dict[str, np.ndarray],
    train_X: np.ndarray,
    train_y: np.ndarray,
    ref: np.ndarray,
    rng: np.random.Generator,
    per_source: int,
    seed: int = 0,
) -> np.ndarray:
    """Conferrable candidates, ``per_source`` for each attacker query strategy in ``queries``:
    surrogates trained on the served labels of that strategy's queries, references on
    ``train_X``/``train_y`` (ground truth), starts drawn from that strategy's queries."""
    import torch

    classes = as_labels(served.classes_)
    index = {c: i for i, c in enumerate(classes.tolist())}
    mean, sd = ref.mean(axis=0), np.maximum(ref.std(axis=0), 1e-12)
    box = ((ref.min(axis=0) - mean) / sd, (ref.max(axis=0) - mean) / sd)
    true = np.array([index.get(v, 0) for v in as_labels(train_y).tolist()])
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small full-batch networks: more threads only spin
    try:
        refs = train_nets((train_X - mean) / sd, true, len(classes), [seed * 10 + 1, seed * 10 + 2])
        for k, (_source, X) in enumerate(queries.items()):
            said = np.array([index[v] for v in as_labels(served.predict(X)).tolist()])
            if len(np.unique(said)) < 2:
                continue
            Z = (X - mean) / sd
            surs = train_nets(Z, said, len(classes), [seed * 10 + 5 + k])
            pick = rng.choice(len(Z), min(per_source, len(Z)), replace=len(Z) < per_source)
            out.append(ascend(surs, refs, Z[pick], said[pick], box) * sd + mean)
    finally:
        torch.set_num_threads(threads)
    return np.vstack(out) if out else np.zeros((0, ref.shape[1]))
