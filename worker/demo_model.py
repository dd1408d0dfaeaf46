"""Build `loraq-tiny-demo`: a tiny random Llama with a trained byte-level BPE tokenizer, made offline."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from loraq.base_models.catalog import DEMO_MODEL_NAME
from loraq.tokens.chat_template import CHATML_TEMPLATE

SEED = 1234
VOCAB_SIZE = 1000
MAX_POSITIONS = 512
PAD_TOKEN, TURN_START_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Enough varied English for BPE to learn common words; the model itself is untrained.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
You are a helpful assistant. The user asks a question and the assistant answers it clearly and briefly.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
Please summarize the following text in one sentence. Translate this sentence into French.
Write a short poem about the sea. The sea is blue and wide, the waves come in with the tide.
How do I sort a list in Python? Use the sorted function, or call the sort method on the list.
Thank you for your help! You are welcome. Is there anything else I can do for you today?
Machine learning models learn patterns from data. Fine-tuning adapts a pretrained model to a new task.
Low-rank adapters train a small number of parameters while the base model stays frozen.
The weather today is sunny with a light breeze. Tomorrow it will rain in the morning and clear up later.
Once upon a time there was a little cat who lived in a house by the river with an old man.
Numbers: zero one two three four five six seven eight nine ten eleven twelve 0 1 2 3 4 5 6 7 8 9 10 100.
Questions start with who, what, when, where, why and how; answers should be honest and helpful.
system: You are a concise assistant. user: Tell me a joke. assistant: Why did the chicken cross the road?
The library opens at nine in the morning and closes at five in the evening, except on Sundays.
She walked to the market, bought apples, bread, cheese and milk, and then went back home for lunch.
Scientists observe the world, form hypotheses, run experiments, and share their results with others.
Good software is tested, documented, reviewed, and easy to change when the requirements change.
The mountain was covered in snow, and the children built a snowman with a carrot for a nose.
Please explain the difference between a list and a tuple. A tuple cannot be changed after it is created.
My favourite colours are red, green, yellow, purple and orange; his favourite animal is the elephant.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July.
Cook the pasta in salted water for ten minutes, drain it, and serve it with tomato sauce and basil.
The train to London leaves from platform four at half past three; remember to buy your ticket first.
Reading books every day improves vocabulary, imagination, concentration and the ability to think.
"""


def ensure_demo_model(models_dir: Path) -> Path:
    """Return the demo model's directory under `models_dir`, building it first if it is missing."""
    target = models_dir / DEMO_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_MODEL_NAME}-", dir=models_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is shared with the API's listing
    try:
        tokenizer = build_tokenizer()
        build_model(tokenizer).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # A rename on the same filesystem is atomic: readers see no half-written model.
        staging.rename(target)
    except OSError:
        # Another process may have won the race; its complete model is as good as ours.
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the built-in corpus and wrap it with ChatML special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, TURN_START_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.strip().splitlines(), trainer=trainer)
    # Like Qwen's ChatML tokenizers: no BOS, the template's <|im_start|> opens every turn.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=[TURN_START_TOKEN],
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A 2-layer Llama with seeded random weights: deterministic, a few hundred kB."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        # Wider than Llama's 0.02: on a random base, LoRA can then lower the loss visibly.
        initializer_range=0.1,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():  # seed the weights without disturbing the caller's random state
        torch.manual_seed(SEED)
        return LlamaForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models_dir", type=Path, help="directory that holds the base models")
    print(ensure_demo_model(parser.parse_args().models_dir))


if __name__ == "__main__":
    main()
