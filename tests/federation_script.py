"""Run under `accelerate launch` by tests/test_federation.py: one simulation, per-rank checksums."""

import json
import sys

import torch
from accelerate import PartialState

from hf_fedzo.federation import simulate_federation
from hf_fedzo.runs.entry import end_process_group
from tests.federation_setup import batch_loss, checksum, client_data, config, tiny_model

out = sys.argv[1]
torch.set_num_threads(1)
state = PartialState(cpu=True)
model = tiny_model()
overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"dropout": 0.34, "local_steps": 1}
result = simulate_federation(model, batch_loss, client_data(), config(**overrides), output_dir=f"{out}/run")
with open(f"{out}/rank{state.process_index}.json", "w") as f:
    json.dump({"world": state.num_processes, "checksum": checksum(model),
               "rounds": [{k: v for k, v in r.to_dict().items() if k not in ("seconds", "accounting")}
                          for r in result.rounds],
               "accounting": [{k: {n: x for n, x in a.items() if n != "peak_memory_mib"}
                               for k, a in r.accounting.items()} for r in result.rounds]}, f)
end_process_group()
