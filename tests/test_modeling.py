"""The model builder and the per-block loss."""

import pytest
import torch
import torch.nn.functional as F

from lfr_ray.config import ModelConfig
from lfr_ray.modeling import block_forward, build_model, num_params, param_groups, per_block_loss


def test_per_block_loss_matches_reference_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    targets = torch.randint(0, 11, (3, 7))
    got = per_block_loss(logits, targets)
    for b in range(3):
        assert got[b].item() == pytest.approx(F.cross_entropy(logits[b], targets[b]).item(), abs=1e-6)
    assert got.mean().item() == pytest.approx(F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)).item(), abs=1e-6)


def test_per_block_loss_is_float32_under_bf16_logits():
    logits = torch.randn(2, 5, 9).to(torch.bfloat16)
    assert per_block_loss(logits, torch.zeros(2, 5, dtype=torch.long)).dtype == torch.float32


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_build_model_is_seeded_and_shifts_targets(arch):
    cfg = ModelConfig(arch=arch, hidden_size=32, num_layers=1, num_heads=2)
    a = build_model(cfg, vocab_size=50, block_len=16, eos_token_id=0, seed=3)
    b = build_model(cfg, vocab_size=50, block_len=16, eos_token_id=0, seed=3)
    assert num_params(a) > 0
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    blocks = torch.randint(0, 50, (4, 17))
    losses = block_forward(a, blocks)
    manual = F.cross_entropy(a(input_ids=blocks[:, :-1]).logits.reshape(-1, 50), blocks[:, 1:].reshape(-1))
    assert losses.shape == (4,)
    assert losses.mean().item() == pytest.approx(manual.item(), abs=1e-5)


def test_param_groups_cover_every_parameter_once():
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2), vocab_size=50, block_len=16,
                        eos_token_id=0, seed=0)
    groups = param_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
