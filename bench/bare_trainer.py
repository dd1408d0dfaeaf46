"""The baseline of bench/overhead.py: the same data and spec trained by a bare Trainer + peft script.

What a person would write without loraq: load the model, wrap it with LoRA, `Trainer.train()`, save the
adapter. It tokenizes with the worker's data functions so both runs see the very same tokens; the
difference in wall time is then what the service adds (queue, database, reporting, checkpoints, export).

    .venv/bin/python bench/bare_trainer.py MODEL_DIR TRAIN_JSONL OUTPUT_DIR --spec '{"r": 8, ...}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STARTED = time.monotonic()
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("train", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--spec", type=json.loads, required=True, help="batch_size, n_epochs, lr, ...")
    args = parser.parse_args()
    spec = args.spec

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    from worker.training.data import as_sequences, data_collator, load_dataset, load_tokenizer

    imported = time.monotonic()
    set_seed(spec["seed"])
    tokenizer = load_tokenizer(args.model_dir, "chat")
    dataset = load_dataset(
        args.train,
        dataset_format="chat",
        tokenizer=tokenizer,
        max_seq_len=spec["max_seq_len"],
        train_on_inputs=False,
    )
    train = as_sequences(dataset, packing=spec["packing"], max_seq_len=spec["max_seq_len"])
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=spec["r"],
            lora_alpha=spec["alpha"],
            lora_dropout=spec["dropout"],
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(args.output),
            per_device_train_batch_size=spec["batch_size"],
            num_train_epochs=spec["n_epochs"],
            learning_rate=spec["learning_rate"],
            logging_steps=spec["logging_steps"],
            save_strategy="no",
            seed=spec["seed"],
            data_seed=spec["seed"],
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            disable_tqdm=True,
        ),
        train_dataset=train,
        data_collator=data_collator(train, tokenizer.pad_token_id),
    )
    trainer.train()
    model.save_pretrained(args.output / "adapter")
    finished = time.monotonic()
    print(
        json.dumps(
            {"imports": imported - STARTED, "total": finished - STARTED, "steps": trainer.state.global_step}
        )
    )


if __name__ == "__main__":
    main()
