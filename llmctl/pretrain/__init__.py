"""`llmctl pretrain`, split along its concepts.

- `model`: the shape of the model trained from scratch and its transformers config
- `data`: the data dir's tokenizer, deterministic batches, validation loss and bits per byte
- `loop`: the training loop (set up, step, spike guard, log, evaluate, save)
- `service`: `pretrain()`: checks first, then the loop, then the registry entry

Examples:
    from llmctl.pretrain import pretrain
    pretrain(Path("data/shakespeare"), "my-tiny", resolve_config("pretrain", "shakespeare-tiny"))
"""

from llmctl.pretrain.service import pretrain

__all__ = ["pretrain"]
