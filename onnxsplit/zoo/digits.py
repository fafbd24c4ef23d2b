"""Small ReLU-family classifiers for the 8x8 scikit-learn digits set (the bundled sample models).

This module needs the optional extras: ``torch`` (``pip install torch==2.13.0``) and
``scikit-learn``. It imports torch at module level, so import it only where torch is installed;
nothing else in :mod:`onnxsplit` imports it. ``scripts/make_sample_models.py`` uses it to
regenerate ``sample_models/``.

Preprocessing of every model: an image is a float32 tensor ``[N, 1, 8, 8]`` holding
``pixel / 16`` (the raw digits pixels are integers 0..16), so inputs lie in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "DigitsCNN",
    "DigitsDepthwise",
    "DigitsMLP",
    "DigitsResNet",
    "build",
    "evaluate",
    "load_digits_split",
    "train",
]


def load_digits_split(seed: int = 0, test_fraction: float = 0.2):
    """Return ``(x_train, y_train, x_test, y_test)`` from ``sklearn.datasets.load_digits``.

    Images are float32 ``[N, 1, 8, 8]`` scaled to ``[0, 1]`` (``pixel / 16``), labels int64.
    The split is a fixed permutation drawn from ``numpy.random.default_rng(seed)``: the first
    ``ceil(test_fraction * N)`` shuffled samples are the test set (360 of 1797 at 20 %).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(np.ceil(test_fraction * len(y)))
    test, tr = order[:n_test], order[n_test:]
    return (
        np.ascontiguousarray(x[tr]),
        np.ascontiguousarray(y[tr]),
        np.ascontiguousarray(x[test]),
        np.ascontiguousarray(y[test]),
    )


# ---------------------------------------------------------------------------------------------
# Architectures. All take [N, 1, 8, 8] and return [N, 10] logits.
# ---------------------------------------------------------------------------------------------


class DigitsMLP(nn.Module):
    """Flatten -> Linear(64, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 10)."""

    def __init__(self, hidden: tuple[int, int] = (64, 32)):
        super().__init__()
        h1, h2 = hidden
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, 10),
        )

    def forward(self, x):
        return self.net(x)


class DigitsCNN(nn.Module):
    """Conv+BN+ReLU, MaxPool(3, s2, pad 1, ceil_mode) 8->5, Conv+BN+LeakyReLU, AvgPool(2) 5->2,
    Dropout, Flatten, Linear."""

    def __init__(self, c1: int = 16, c2: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),  # 8x8 -> 5x5
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.LeakyReLU(0.1),
            nn.AvgPool2d(2),  # 5x5 -> 2x2 (floor)
        )
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Flatten(), nn.Linear(c2 * 2 * 2, 10))

    def forward(self, x):
        return self.head(self.features(x))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class _BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 strided conv+BN projection shortcut when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride=stride, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv_bn(cout, cout, 3, padding=1)
        self.shortcut = (
            _conv_bn(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.conv2(self.relu1(self.conv1(x)))
        return self.relu2(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem conv+BN+ReLU, two identity basic blocks, one projection block (stride 2, 8->4),
    global average pool, Linear."""

    def __init__(self, c1: int = 16, c2: int = 32):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, c1, 3, padding=1), nn.ReLU())
        self.block1 = _BasicBlock(c1, c1)
        self.block2 = _BasicBlock(c1, c1)
        self.block3 = _BasicBlock(c1, c2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear project, + x."""

    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(
            *_conv_bn(c, h, 1),
            nn.ReLU6(),
            *_conv_bn(h, h, 3, padding=1, groups=h),
            nn.ReLU6(),
            *_conv_bn(h, c, 1),
        )

    def forward(self, x):
        return x + self.body(x)


class DigitsDepthwise(nn.Module):
    """MobileNet-like: stem conv, depthwise-separable block, inverted residual, TF-'SAME'
    stride-2 depthwise conv via ZeroPad2d((0, 1, 0, 1)) (8->4), pointwise, global pool, Linear."""

    def __init__(self, c1: int = 16, c2: int = 24, c3: int = 48):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, c1, 3, padding=1),
            nn.ReLU6(),
            # depthwise-separable: 3x3 depthwise + 1x1 pointwise
            *_conv_bn(c1, c1, 3, padding=1, groups=c1),
            nn.ReLU6(),
            *_conv_bn(c1, c2, 1),
            nn.ReLU6(),
            _InvertedResidual(c2, expand=2),
            # TF 'SAME' for k=3, s=2 on an even input: pad right/bottom only
            nn.ZeroPad2d((0, 1, 0, 1)),
            *_conv_bn(c2, c2, 3, stride=2, groups=c2),  # 9x9 -> 4x4
            nn.ReLU6(),
            *_conv_bn(c2, c3, 1),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(c3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mlp": DigitsMLP,
    "cnn": DigitsCNN,
    "resnet": DigitsResNet,
    "depthwise": DigitsDepthwise,
}


def build(arch: str, seed: int = 0) -> nn.Module:
    """Construct ``ARCHITECTURES[arch]`` with weights initialised under ``torch.manual_seed``."""
    torch.manual_seed(seed)
    return ARCHITECTURES[arch]()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Accuracy of ``model`` (put in eval mode) on numpy arrays ``x``, ``y``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i : i + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[i : i + batch_size]).sum())
    return correct / len(x)


def train(
    model: nn.Module,
    data,
    epochs: int = 20,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 32,
    weight_decay: float = 1e-4,
) -> float:
    """Train ``model`` with Adam + cross entropy on CPU; return its test accuracy.

    ``data`` is the tuple from :func:`load_digits_split`. Deterministic: shuffling uses a
    ``torch.Generator`` seeded with ``seed`` and ``torch.manual_seed(seed)`` covers dropout.
    The learning rate follows a cosine decay to zero over ``epochs``. The model is left in
    eval mode.
    """
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(xt) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
    return evaluate(model, x_test, y_test)
