"""PyTorch peer of bench/train_step.py: ResNet-18 (jaxsynth's small-image stem) train step images/s.

Run from the repository root: `python bench/peers/train_step.py [--batch 128 --dtype bfloat16 ...]`.
Progress goes to stderr; the last line of stdout is one JSON object (see bench/README.md).
The model is written in plain torch (no torchvision), layer for layer as
jaxsynth/models/resnet.py builds it.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_common_args, autocast, common_fields, count_params, log, main,  # noqa: E402
                    memory_format, setup_torch, time_train_steps)

import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# flax BatchNorm(momentum=0.9, epsilon=1e-5): running = 0.9 running + 0.1 batch -> torch 0.1.
BN = dict(eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
  """Two 3x3 convs (no bias) with BN; projection shortcut (1x1 conv + BN) when the shape changes;
  the second BN's gamma starts at zero, as jaxsynth's `scale_init=zeros`."""

  def __init__(self, in_ch: int, out_ch: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(out_ch, **BN)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_ch, **BN)
    nn.init.zeros_(self.bn2.weight)
    self.shortcut = None
    if stride != 1 or in_ch != out_ch:
      self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                    nn.BatchNorm2d(out_ch, **BN))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x if self.shortcut is None else self.shortcut(x)
    return F.relu(y + residual)


class ResNet18(nn.Module):
  """jaxsynth's `resnet(18, num_classes, stem="small")`: 3x3 stride-1 stem conv, BN, ReLU, no
  max-pool; 2 BasicBlocks per stage at widths w, 2w, 4w, 8w (stride 2 on the first block of
  stages 2-4); global average pool; a Linear head (with bias)."""

  def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, padding=1, bias=False),
                              nn.BatchNorm2d(width, **BN), nn.ReLU())
    blocks, in_ch = [], width
    for stage, count in enumerate((2, 2, 2, 2)):
      out_ch = width * 2 ** stage
      for i in range(count):
        blocks.append(BasicBlock(in_ch, out_ch, 2 if stage > 0 and i == 0 else 1))
        in_ch = out_ch
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(in_ch, num_classes)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    return self.head(x.mean(dim=(2, 3)).float())


def parse_args(argv=None) -> argparse.Namespace:
  """The benchmark's command line."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_common_args(p, batch=128, reps=5, warmup=2, reps_aliases=("--steps",))
  p.add_argument("--model", default="resnet18", choices=("resnet18",))
  p.add_argument("--image-size", type=int, default=28)
  p.add_argument("--channels", type=int, default=3, help="input image channels")
  p.add_argument("--width", type=int, default=64, help="stem width (jaxsynth model.width)")
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
  return p.parse_args(argv)


def run(args) -> dict:
  """Builds the model and optimiser, runs the warm-up steps, then times --reps steps."""
  setup_torch(args)
  fmt = memory_format(args)
  model = ResNet18(args.num_classes, args.channels, args.width).to(memory_format=fmt)
  model.train()
  params = count_params(model)
  optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
  torch.manual_seed(args.seed)
  images = torch.randn(args.batch, args.channels, args.image_size, args.image_size)
  images = images.contiguous(memory_format=fmt)
  labels = torch.arange(args.batch) % args.num_classes
  last = {}

  def step():
    with autocast(args):
      logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    last["loss"] = loss.detach()

  log(f"ResNet-18 ({params:,} params), {args.image_size}px x{args.channels}, batch {args.batch}, "
      f"{args.dtype}, {torch.get_num_threads()} threads; {args.warmup} warm-up steps ...")
  timer, warmup_s, loss = time_train_steps(step, args, last)
  result = common_fields("train_step", "torch", args, params, timer, warmup_s)
  result.update({
      "model": "resnet18 (small stem, plain torch)", "optimizer": "Adam", "loss": "cross_entropy",
      "image_shape": [args.channels, args.image_size, args.image_size], "last_loss": loss})
  return result


if __name__ == "__main__":
  main(run, parse_args)
