"""Run under `accelerate launch` by tests/test_federation.py: one simulation, per-rank checksums."""

import json
import sys

import torch
from accelerate import PartialState

from hf_fedzo.federation import simulate_federation
from tests.federation_setup import batch_loss, checksum, client_data, config, tiny_model

out = sys.argv[1]
torch.set_num_threads(1)
state = PartialState(cpu=True)
model = tiny_model()
result = simulate_federation(model, batch_loss, client_data(), config(dropout=0.34, local_steps=1),
                             output_dir=f"{out}/run")
with open(f"{out}/rank{state.process_index}.json", "w") as f:
    json.dump({"world": state.num_processes, "checksum": checksum(model),
               "rounds": [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in result.rounds]}, f)
