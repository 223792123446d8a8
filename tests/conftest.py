"""Test-wide setup: one torch CPU thread, so results and run times do not depend on the machine's core count."""
import torch

torch.set_num_threads(1)
