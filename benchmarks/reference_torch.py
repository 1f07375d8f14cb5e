"""The PyTorch reference CapsNet's speed, measured on this machine for comparison.

  python -m venv .venv-torch && .venv-torch/bin/pip install torch numpy
  .venv-torch/bin/python benchmarks/reference_torch.py --mode=train|eval [--batch_size=128]

A re-creation of the reference project's MNIST CapsNet as its code computes
it (conv 256 9x9; primary capsules by a 9x9 stride-2 conv; prediction vectors
by a batched matmul of W broadcast over the batch, W [1152, 10, 16, 8];
3 routing iterations; FC decoder 512/1024/784; margin + 0.0005 * SSE; Adam),
timed like benchmarks/throughput.py: warm-up, then the median of timed
steps. The last line is one JSON object with the same keys as throughput.py
where they apply. Not part of the test suite (PyTorch is not a dependency).
"""

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F


def squash(s, dim=-1):
  n2 = (s ** 2).sum(dim=dim, keepdim=True)
  return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class CapsNet(nn.Module):
  def __init__(self, routing_iterations=3):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 256, 9)
    self.primary = nn.Conv2d(256, 256, 9, stride=2)
    self.W = nn.Parameter(0.01 * torch.randn(1, 1152, 10, 16, 8))
    self.bias = nn.Parameter(torch.zeros(1, 1, 10, 16))
    self.iterations = routing_iterations
    self.decoder = nn.Sequential(nn.Linear(160, 512), nn.ReLU(),
                                 nn.Linear(512, 1024), nn.ReLU(),
                                 nn.Linear(1024, 784), nn.Sigmoid())

  def forward(self, x, y=None):
    b = x.shape[0]
    h = F.relu(self.conv1(x))
    u = self.primary(h)  # [B, 256, 6, 6]
    u = u.view(b, 32, 8, 36).permute(0, 1, 3, 2).reshape(b, 1152, 8)
    u = squash(u)
    u_hat = torch.matmul(self.W, u[:, :, None, :, None]).squeeze(-1)  # [B,1152,10,16]
    logits = torch.zeros(b, 1152, 10, device=x.device)
    for i in range(self.iterations):
      c = F.softmax(logits, dim=2)
      s = (c[..., None] * u_hat).sum(dim=1, keepdim=True) + self.bias
      v = squash(s)  # [B, 1, 10, 16]
      if i < self.iterations - 1:
        logits = logits + (u_hat * v).sum(-1)
    v = v.squeeze(1)
    lengths = v.norm(dim=-1)
    labels = lengths.argmax(-1) if y is None else y
    masked = v * F.one_hot(labels, 10)[..., None]
    return lengths, self.decoder(masked.reshape(b, -1)).view(b, 1, 28, 28)


def loss_fn(lengths, recon, x, y):
  t = F.one_hot(y, 10).float()
  margin = (t * F.relu(0.9 - lengths) ** 2 +
            0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2).sum(-1)
  sse = ((recon - x) ** 2).sum(dim=(1, 2, 3))
  return (margin + 0.0005 * sse).mean()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=["train", "eval"], default="train")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = CapsNet()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = torch.rand(args.batch_size, 1, 28, 28)
  y = torch.randint(0, 10, (args.batch_size,))

  def train_step():
    opt.zero_grad()
    loss = loss_fn(*model(x, y), x, y)
    loss.backward()
    opt.step()

  def eval_step():
    with torch.no_grad():
      model(x)

  step = train_step if args.mode == "train" else eval_step
  model.train(args.mode == "train")
  for _ in range(args.warmup):
    step()
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  seconds = statistics.median(times)
  print(json.dumps(dict(
      mode=args.mode, batch_size=args.batch_size,
      images_per_sec=args.batch_size / seconds, step_seconds_median=seconds,
      device="cpu", framework=f"pytorch {torch.__version__}",
      threads=args.threads)))


if __name__ == "__main__":
  main()
