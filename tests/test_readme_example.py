"""The README's example of putting the backbone into one's own model runs as written."""

from __future__ import annotations

import torch

README_EXAMPLE = '''
import torch
from torch import nn
from seqbackbone import MambaBackbone

class SensorClassifier(nn.Module):
    """Accelerometer windows (B, L, 3) -> activity logits (B, 6), sequences of any length in one batch."""

    def __init__(self, channels=3, d_model=32, n_classes=6):
        super().__init__()
        self.embed = nn.Linear(channels, d_model)                     # (B, L, 3) -> (B, L, d_model)
        self.backbone = MambaBackbone(d_model, n_layer=2, bidirectional="add")
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x, mask):                                       # mask: bool (B, L), True = real step
        h = self.backbone(self.embed(x), mask)                        # (B, L, d_model), 0 at padded steps
        return self.head(h.sum(1) / mask.sum(1, keepdim=True))        # mean over real steps

model = SensorClassifier()
x = torch.randn(2, 50, 3)
mask = torch.arange(50) < torch.tensor([[50], [30]])                  # the second window has 30 real steps
logits = model(x, mask)                                               # (2, 6)
no_decay = {f"backbone.{n}" for n in model.backbone.no_weight_decay()}
params = [p for n, p in model.named_parameters() if n not in no_decay]
optimizer = torch.optim.AdamW([{"params": params}, {"params": [p for n, p in model.named_parameters()
                                                               if n in no_decay], "weight_decay": 0.0}])
'''


def test_readme_example_runs() -> None:
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(README_EXAMPLE, "README.md", "exec"), scope)
    model, x, mask, logits = scope["model"], scope["x"], scope["mask"], scope["logits"]
    assert logits.shape == (2, 6) and torch.isfinite(logits).all()
    # what the example promises: the padded tail of the second window does not matter
    x2 = x.clone()
    x2[1, 30:] = 100.0
    torch.testing.assert_close(model(x2, mask), logits)
    logits.sum().backward()
    scope["optimizer"].step()
    n_params = sum(len(g["params"]) for g in scope["optimizer"].param_groups)
    assert n_params == len(list(model.parameters()))
