"""ResNet classifiers (He et al. 2016) with a small-image stem or the ImageNet stem."""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxsynth.models.layers import Conv

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""
  features: int
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, impl=self.conv_impl)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    residual = x
    y = conv(self.features, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(norm()(y))
    y = conv(self.features, (3, 3), padding=1)(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = conv(self.features, (1, 1), self.strides)(residual)
      residual = norm()(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  """1x1 - 3x3 - 1x1 bottleneck with 4x expansion (ResNet-50/101)."""
  features: int
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, impl=self.conv_impl)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    residual = x
    y = nn.relu(norm()(conv(self.features, (1, 1))(x)))
    y = nn.relu(norm()(conv(self.features, (3, 3), self.strides, padding=1)(y)))
    y = norm(scale_init=nn.initializers.zeros)(conv(self.features * 4, (1, 1))(y))
    if residual.shape != y.shape:
      residual = norm()(conv(self.features * 4, (1, 1), self.strides)(residual))
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet; `stem="small"` is a 3x3 stride-1 conv without pooling for 28-64 px images."""
  stage_blocks: Sequence[int]
  num_classes: int
  bottleneck: bool = False
  width: int = 64
  stem: str = "small"
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"       # auto | xla | im2col (see layers.Conv)

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = x.astype(self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    if self.stem == "imagenet":
      x = Conv(self.width, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype,
               impl=self.conv_impl)(x)
      x = nn.relu(norm()(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = Conv(self.width, (3, 3), 1, padding=1, use_bias=False, dtype=self.dtype,
               impl=self.conv_impl)(x)
      x = nn.relu(norm()(x))
    block = Bottleneck if self.bottleneck else BasicBlock
    for stage, count in enumerate(self.stage_blocks):
      for i in range(count):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block(self.width * 2**stage, strides, dtype=self.dtype, conv_impl=self.conv_impl)(x, train)
    features = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    logits = nn.Dense(self.num_classes, name="head")(features)
    return (logits, features) if return_features else logits


def resnet(depth: int, num_classes: int, **kwargs) -> ResNet:
  """ResNet-18/34/50/101 by depth."""
  return ResNet(STAGE_BLOCKS[depth], num_classes, bottleneck=depth >= 50, **kwargs)
