"""Keyword-spotting networks on log-mel spectrograms (N, 1, n_mels, frames).

``DSCNN`` is the depthwise-separable CNN of "Hello Edge: Keyword Spotting on Microcontrollers"
(Zhang et al., 2017): one ordinary convolution, then blocks of a 3x3 depthwise convolution
(one filter per channel) followed by a 1x1 pointwise convolution, which cost a fraction of the
multiply-adds of full 3x3 convolutions at similar accuracy; global average pooling and a linear
classifier. The ordinary ``SmallCNN`` (models/__init__.py) is the other audio candidate.
"""

from __future__ import annotations

from torch import nn

__all__ = ["DSCNN"]


class DSCNN(nn.Module):
    """Depthwise-separable CNN. Any input size (global pooling before the head)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 64, blocks: int = 4,
                 dropout: float = 0.2) -> None:
        super().__init__()
        c = in_shape[0]
        layers: list[nn.Module] = [
            nn.Conv2d(c, width, (10, 4), stride=2, padding=(5, 1), bias=False),  # (N, w, M/2, F/2)
            nn.BatchNorm2d(width), nn.ReLU(),
        ]
        for _ in range(blocks):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),  # depthwise, same size
                nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 1, bias=False),  # pointwise: mixes channels
                nn.BatchNorm2d(width), nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))  # (N, w, 1, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))  # (N, K)

    def forward(self, x):
        return self.head(self.features(x))
