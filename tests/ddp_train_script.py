"""Run under `accelerate launch --multi_gpu --num_processes 2` by tests/test_trainer.py::test_ddp_replicas."""

import json
import sys

import torch
from accelerate import PartialState

from hf_fedzo import ZOConfig, ZOSplitTrainer
from hf_fedzo.runs.entry import end_process_group
from tests.test_trainer import pattern_dataset
from tests.tiny_models import llama

out = sys.argv[1]
torch.manual_seed(0)
model = llama()
args = ZOConfig(output_dir=out, max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3, zo_p2=2,
                report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=2)
trainer = ZOSplitTrainer(model=model, args=args, train_dataset=pattern_dataset())
trainer.train()
checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
state = PartialState()  # the singleton the trainer initialised (MULTI_CPU, gloo)
with open(f"{out}/rank{state.process_index}.json", "w") as f:
    json.dump({"checksum": checksum, "world": state.num_processes,
               "history": [u.to_dict() for u in trainer.zo_optimizer.history]}, f)
end_process_group()
