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


SMALL = ["model.hidden_size=32", "model.num_layers=2", "train.steps=2", "train.batch_size=8",
         "simulation.num_clients=2", "data.train_per_client=16", "data.val_per_client=8"]
PII = SMALL + ["data.source=pii", "data.pii_records=24", "data.canary.count=2",
               "data.canary.repeats=2", "data.canary.digits=4", "evaluation.privacy=true",
               "client.swing.teacher_steps=2", "client.swing.student_steps=2",
               "client.kd.teacher_steps=2", "client.kd.student_steps=2"]  # small client overrides


def lr_sweep(tmp_path, lrs: list[float]):
    """A sweep file of one run per learning rate over a 1-round base config."""
    (tmp_path / "base.yaml").write_text("name: tiny\nrounds: 1\n")
    runs = "".join(f"  - {{name: lr{i}, overrides: [train.lr={lr}]}}\n" for i, lr in enumerate(lrs))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nname: t\nruns:\n{runs}metrics: [final.eval_loss]\n")
    return path


class FakeGrid:
    """A Grid (no Flower runtime) where the nodes in ``alive`` are connected; each answers
    the partition query with its partition id (node id − 10)."""

    def __init__(self, alive: list[int]) -> None:
        self.alive = alive

    def get_node_ids(self) -> list[int]:
        return list(self.alive)

    def send_and_receive(self, messages, timeout=None):
        from flwr.app import ConfigRecord, Message, RecordDict

        from fedprivacy import wire

        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"q{msg.metadata.dst_node_id}"
            task = ConfigRecord({wire.PARTITION_ID: msg.metadata.dst_node_id - 10})
            reply = Message(RecordDict({wire.TASK: task}), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return replies
