"""Tiny models shared by the tests that need a bare transformers model (no tokenizer)."""

import torch
import transformers as tf


def tiny_llama(vocab_size: int, initializer_range: float = 0.02) -> tf.LlamaForCausalLM:
    """A seeded 2-layer LLaMA (d=32, d_ff=64, 4 heads, 2 KV heads)."""
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=initializer_range))
