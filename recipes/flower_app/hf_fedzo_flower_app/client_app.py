"""The ClientApp: a federation client per SuperNode (client id = the node's partition-id).

A client loads the model at the initial weights and its share of the training data, then answers each round's
instruction by replaying the aggregated log it missed and running its local ZO steps; it uploads only the
projected-gradient scalars. Its synced LoRA tensors stay on the node (Flower's node state) between rounds.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from torch import nn

from hf_fedzo.federation import ClientData
from hf_fedzo.integrations.flower import make_client_app
from hf_fedzo_flower_app.task import client_data, model_and_loss, read_config


def model_fn(context: Context) -> tuple[nn.Module, Any]:
    return model_and_loss(*read_config(context))


def data_fn(context: Context, client_id: int) -> ClientData:
    app, config = read_config(context)
    return client_data(app, config, client_id)


app = make_client_app(model_fn, data_fn)
