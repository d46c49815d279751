"""Alignment of a (federated) global model: IRCAN, and the stage that runs such methods.

Everything here works on a plain ``transformers`` model, without Flower:

    from fedprivacy.alignment import ircan
    scores = ircan.context_attribution(model, tokenizer, item)

`fedprivacy.alignment.stage.run_stages` applies the configured ``alignment.stages`` in order.
"""
