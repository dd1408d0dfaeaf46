"""Train one adapter, top to bottom: data → model → trainer → export."""

from __future__ import annotations

from functools import partial
from typing import Any

from transformers import PreTrainedTokenizerBase, Trainer, set_seed

from loraq.jobs.spec import held_out_indices
from worker.training.contracts import Reporter, TrainingOutcome, TrainingRequest, TrainingStopped
from worker.training.data import (
    TokenizedDataset,
    as_sequences,
    count_examples,
    load_dataset,
    load_tokenizer,
)
from worker.training.evaluation import build_verdict
from worker.training.export import export_bundle, export_merged
from worker.training.model import load_model, pick_device
from worker.training.trainer import ReporterBridge, build_trainer


def train_adapter(request: TrainingRequest, reporter: Reporter) -> TrainingOutcome:
    """Fine-tune a LoRA/QLoRA adapter as the request says, and export its bundle."""
    hp = request.hyperparameters
    set_seed(request.seed)  # before the model: LoRA's initial weights are random too
    device = pick_device()

    tokenizer = load_tokenizer(request.base_model_path, request.dataset_format)
    train, validation = tokenized_datasets(request, tokenizer)
    # Packing, if asked: several short examples a sequence, each attending only to itself.
    sequences = partial(as_sequences, packing=hp.packing, max_seq_len=hp.max_seq_len)
    train_sequences = sequences(train)
    validation_sequences = sequences(validation) if validation is not None else None

    loaded = load_model(
        request.base_model_path, request.adapter, device, initial_adapter=request.initial_adapter
    )

    bridge = ReporterBridge(reporter)
    trainer = build_trainer(
        model=loaded.model,
        tokenizer=tokenizer,
        train=train_sequences,
        validation=validation_sequences,
        hyperparameters=hp,
        seed=request.seed,
        output_dir=request.output_dir / "checkpoints",
        device=device,
        compute_dtype=loaded.compute_dtype,
        bridge=bridge,
    )
    # The base model's valid loss and answers before step 1, the tuned adapter's at each evaluation.
    verdict = build_verdict(
        request,
        model=loaded.model,
        tokenizer=tokenizer,
        has_validation=validation is not None,
        reporter=reporter,
        bridge=bridge,
    )
    trainer.add_callback(verdict)
    verdict.measure_base(trainer, validation_sequences)
    trainer.train(resume_from_checkpoint=str(request.resume_from) if request.resume_from else None)
    if bridge.stopped:
        raise TrainingStopped(f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps}")
    metrics = final_metrics(trainer, bridge, has_validation=validation is not None)

    state = trainer.state
    samples = verdict.final_samples(state, exported_step(trainer))
    bundle_dir = export_bundle(
        request.output_dir / "adapter",
        request,
        model=loaded.model,
        tokenizer=tokenizer,
        state=state,
        base_description=loaded.base_description,
        data_stats=train_sequences.stats() | {"validation": validation.stats() if validation else None},
        metrics=metrics,
        device=device,
        evaluation=verdict.record(),
        samples=samples,
    )
    merged_dir = None
    if request.merged:
        compute_dtype = loaded.compute_dtype
        del trainer, loaded  # the merge loads the base again, at full precision: drop the trained copy
        merged_dir = export_merged(
            request.output_dir / "merged",
            base_model_path=request.base_model_path,
            adapter_dir=bundle_dir,
            tokenizer=tokenizer,
            dtype=compute_dtype,
            device=device,
        )
    return TrainingOutcome(
        bundle_dir=bundle_dir,
        trained_tokens=state.num_input_tokens_seen,
        merged_dir=merged_dir,
    )


def tokenized_datasets(
    request: TrainingRequest, tokenizer: PreTrainedTokenizerBase
) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    """The training examples, and the validation examples: from their own file, or held out of training's."""
    hp = request.hyperparameters
    # Validation is masked as training is, so eval_loss and train_loss measure the same tokens.
    tokenize = partial(
        load_dataset,
        dataset_format=request.dataset_format,
        tokenizer=tokenizer,
        max_seq_len=hp.max_seq_len,
        train_on_inputs=hp.train_on_inputs,
    )
    # The job's create checked the combinations: a validation file or a split, never both, and
    # a split only of a file with examples to spare.
    if request.validation_path is not None:
        return tokenize(request.train_path), tokenize(request.validation_path)
    if hp.validation_split is None:
        return tokenize(request.train_path), None
    held_out = held_out_indices(count_examples(request.train_path), hp.validation_split, request.seed)
    train = tokenize(request.train_path, keep=lambda index: index not in held_out)
    return train, tokenize(request.train_path, keep=held_out.__contains__)


def final_metrics(trainer: Trainer, bridge: ReporterBridge, *, has_validation: bool) -> dict[str, Any]:
    """The last train metrics, and eval metrics of the exported weights (evaluating once more if needed)."""
    if has_validation and bridge.last_eval_step != exported_step(trainer):
        trainer.evaluate()  # its metrics reach the bridge through on_log
    return dict(bridge.latest)


def exported_step(trainer: Trainer) -> int:
    """The step of the weights the bundle gets: with early stopping the Trainer reloads the best checkpoint
    at the end (load_best_model_at_end)."""
    state = trainer.state
    best_reloaded = trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None
    if best_reloaded and state.best_global_step is not None:
        return state.best_global_step
    return state.global_step
