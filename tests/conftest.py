"""Test-wide settings: one intra-op thread, so tests behave the same on a busy 2-core machine."""

import torch

torch.set_num_threads(1)
