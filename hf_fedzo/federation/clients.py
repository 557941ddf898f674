"""Client data and the glue from prompt tasks (:mod:`hf_fedzo.tasks`) to a federation: losses and client shares.

A client's batches are a pure function of (seed, round, client), so every transport (the simulator, a Flower
node) draws the same ones and a resumed run continues with the batches it would have had.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hf_fedzo.data.errors import DataError
from hf_fedzo.engine import mix_seed
from hf_fedzo.federation.client import Batch, BatchLoss
from hf_fedzo.federation.config import FederationConfig
from hf_fedzo.federation.partition import describe_partition, partition_dataset

DATA_ORDER = 0xDA7A  # the seed domain of the clients' data order

Collate = Callable[[list[Any]], Batch]


@dataclass
class ClientData:
    """One client's local examples (already preprocessed features) and how to batch them."""

    examples: Sequence[Any]
    collate: Collate

    def round_batches(self, seed: int, round_id: int, client_id: int, steps: int, batch_size: int) -> list[Batch]:
        """The client's batches for a round: a pure function of (seed, round, client), so resumable."""
        rng = random.Random(mix_seed(seed, round_id, client_id, DATA_ORDER))
        order: list[int] = []
        while len(order) < steps * batch_size:
            order += rng.sample(range(len(self.examples)), len(self.examples))
        return [self.collate([self.examples[i] for i in order[s * batch_size:(s + 1) * batch_size]])
                for s in range(steps)]


def task_batch_loss(task: Any) -> BatchLoss:
    """``batch_loss(model, batch)`` for a task whose collator puts everything the loss needs in ``labels``."""
    compute_loss = getattr(task, "compute_loss", None)
    if compute_loss is None:
        raise TypeError(f"task: {type(task).__name__} has no compute_loss(outputs, labels)")

    def batch_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return compute_loss(model(**inputs), batch["labels"])

    return batch_loss


def task_clients(task: Any, dataset: Any, config: FederationConfig,
                 **partition_options: Any) -> tuple[list[ClientData], list[dict[str, int]]]:
    """Partition raw ``dataset`` rows over ``config.num_clients`` clients and preprocess each client's share.

    Returns the clients and, per client, its size and label counts (for the results JSON).
    """
    if config.partition == "dirichlet":
        partition_options.setdefault("alpha", config.dirichlet_alpha)
    check_rows = getattr(task, "check_rows", None)  # the tasks' own row checks (an empty "" cell, a bad label)
    if check_rows is not None:
        check_rows(dataset)
    features = [_preprocess_row(task, index, row) for index, row in enumerate(dataset)]  # bad rows fail first
    parts = partition_dataset(dataset, config.num_clients, config.partition, seed=config.seed, **partition_options)
    clients = [ClientData([features[i] for i in part], task.collator) for part in parts]
    label_column = partition_options.get("label_column", "label")
    labels = dataset[label_column] if label_column in dataset.column_names else [0] * len(dataset)
    return clients, describe_partition(parts, labels)


def _preprocess_row(task: Any, index: int, row: Any) -> Any:
    try:
        return task.preprocess(row)
    except (KeyError, ValueError) as err:  # an empty cell, a bad label: name the row, in one line
        raise DataError(f"row {index}: {str(err).strip(chr(39))}") from None
