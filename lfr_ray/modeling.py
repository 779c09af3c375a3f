"""The model and the per-block loss: plain torch and transformers, no Ray.

``per_block_loss`` is the one definition of a block's loss (mean next-token cross-entropy, nats)
shared by the training step (which records it for free from its own logits) and the scoring pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lfr_ray.config import ModelConfig


def build_model(cfg: ModelConfig, *, vocab_size: int, block_len: int, eos_token_id: int, seed: int):
    """A randomly initialised ``transformers`` causal LM, seeded so every worker starts identical."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if cfg.arch == "gpt2":
        hf_cfg = GPT2Config(
            vocab_size=vocab_size,
            n_positions=block_len,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.ffn_size(),
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
        )
        return GPT2LMHeadModel(hf_cfg)
    hf_cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_size(),
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=block_len,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    return LlamaForCausalLM(hf_cfg)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def per_block_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each block: ``[B, T, V]`` logits, ``[B, T]`` targets -> ``[B]``.

    Computed in float32 whatever the autocast dtype, so bf16 training records comparable losses.
    """
    b, t, v = logits.shape
    token_loss = F.cross_entropy(logits.float().reshape(b * t, v), targets.reshape(b * t), reduction="none")
    return token_loss.view(b, t).mean(dim=1)


def block_forward(model: torch.nn.Module, blocks: torch.Tensor) -> torch.Tensor:
    """Per-block loss of ``[B, block_len + 1]`` token ids: inputs are ``[:, :-1]``, targets ``[:, 1:]``."""
    logits = model(input_ids=blocks[:, :-1]).logits
    return per_block_loss(logits, blocks[:, 1:])


def block_forward_hidden(model: torch.nn.Module, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``block_forward`` plus each block's final hidden state averaged over its positions: ``([B], [B, hidden])``.

    The same forward pass and the same loss; the hidden state (after the final norm) is a cheap per-block
    feature for clustering blocks by content (``scoring.py``).
    """
    out = model(input_ids=blocks[:, :-1], output_hidden_states=True)
    return per_block_loss(out.logits, blocks[:, 1:]), out.hidden_states[-1].float().mean(dim=1)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices of linear layers; not biases, norms or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = "embed" in name or "wte" in name or "wpe" in name or "lm_head" in name
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
