"""ResNet-18 for CIFAR-10 as the lab uses it: He et al.'s ImageNet ResNet-18 ("Deep Residual
Learning for Image Recognition", 2015, arXiv:1512.03385) adapted to 32x32 images: a 3x3 stem,
no max-pool, four stages of two BasicBlocks (64, 128, 256, 512 channels), global average
pooling, one linear classifier. (The paper's CIFAR networks are ResNet-20/32/44/56.)

    model = ResNet18()                  # 11,173,962 parameters
    model = ResNet18(batch_norm=False)  # 11,164,362: no BatchNorm, and no placeholder for it

The convolutions are bias-free either way, so without BatchNorm's learned shift nothing adds a
per-channel offset after a convolution; only the final linear layer has a bias.
"""

import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual connection: relu(F(x) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, batch_norm=True):
        super().__init__()
        # Without BatchNorm the attribute is None, not nn.Identity: no layer that does nothing.
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes) if batch_norm else None
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes) if batch_norm else None

        # Identity unless the block changes the shape; then a 1x1 projection matches it.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            projection = [nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)]
            if batch_norm:
                projection.append(nn.BatchNorm2d(planes))
            self.shortcut = nn.Sequential(*projection)

    def forward(self, x):
        # TorchScript compiles an `is not None` test on an attribute (torchvision's pattern).
        out = self.conv1(x)
        if self.bn1 is not None:
            out = self.bn1(out)
        out = F.relu(out)
        out = self.conv2(out)
        if self.bn2 is not None:
            out = self.bn2(out)
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, batch_norm=True):
        super().__init__()
        self.in_planes = 64
        self.batch_norm = batch_norm

        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64) if batch_norm else None
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)  # only the first block downsamples
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride, self.batch_norm))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):                          # (N, 3, 32, 32)
        out = self.conv1(x)                        # (N, 64, 32, 32)
        if self.bn1 is not None:
            out = self.bn1(out)
        out = F.relu(out)
        out = self.layer1(out)                     # (N, 64, 32, 32)
        out = self.layer2(out)                     # (N, 128, 16, 16)
        out = self.layer3(out)                     # (N, 256, 8, 8)
        out = self.layer4(out)                     # (N, 512, 4, 4)
        out = F.adaptive_avg_pool2d(out, 1)        # (N, 512, 1, 1): global average pooling
        out = out.flatten(1)                       # (N, 512)
        return self.linear(out)                    # (N, 10)


def ResNet18(num_classes=10, batch_norm=True):
    """ResNet-18: 2 + 2 + 2 + 2 BasicBlocks; pass batch_norm=False to drop every BatchNorm."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, batch_norm=batch_norm)
