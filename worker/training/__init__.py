"""The training engine: a job's spec and data in, a LoRA/QLoRA adapter bundle out."""

from worker.training.contracts import Reporter, TrainingOutcome, TrainingRequest, TrainingStopped
from worker.training.run import train_adapter

__all__ = ["Reporter", "TrainingOutcome", "TrainingRequest", "TrainingStopped", "train_adapter"]
