"""Tiny models shared by the tests that need a bare transformers model (no tokenizer)."""

import torch
import transformers as tf


def tiny_llama(vocab_size: int, initializer_range: float = 0.02) -> tf.LlamaForCausalLM:
    """A seeded 2-layer LLaMA (d=32, d_ff=64, 4 heads, 2 KV heads)."""
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=initializer_range))


def word_tokenizer(words: list[str]) -> tf.PreTrainedTokenizerFast:
    """Word-level tokenizer over ``words``: split on spaces, "\\n" is a token of its own."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|[^ \n]+"), behavior="removed", invert=True)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                      eos_token="[EOS]")


def train_reply(node: int, arrays, metrics: dict):
    """A client's train reply to a train message sent to ``node`` (no Flower runtime)."""
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    ins = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    ins.metadata.__dict__["_message_id"] = f"m{node}"
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=ins)
