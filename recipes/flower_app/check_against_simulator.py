"""Check a finished Flower run against the two other ways of reaching its global model.

1. Replay the log the ServerApp saved (``federation_state.json``) onto fresh initial weights.
2. Run the accelerate simulator (:func:`hf_fedzo.federation.simulate_federation`) with the same run config.

Both must give the weights whose checksum the ServerApp wrote to ``final.json``: every party reaches the global
model by replaying the same (seed, scalar) log with the same engine.

    python recipes/flower_app/check_against_simulator.py OUTPUT_DIR --run-config "model-path='...' rounds=3"
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.config import parse_config_args

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the app package, as Flower puts it on the path
from hf_fedzo_flower_app.task import (
    client_data,
    model_and_loss,
    read_config,
    task_for,
    trainable_checksum,
    validation,
)

from hf_fedzo.federation import FederatedServer, ZOClient, simulate_federation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--run-config", default="", help="the overrides given to `flwr run --run-config`")
    args = parser.parse_args()

    defaults = tomllib.loads((Path(__file__).parent / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    run_config = defaults | parse_config_args([args.run_config] if args.run_config else None)
    app, config = read_config(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    flower = json.loads((args.output_dir / "final.json").read_text())["trainable_sha256"]

    server = FederatedServer(config)
    server.load_state_dict(json.loads((args.output_dir / "federation_state.json").read_text())["server"])
    model, batch_loss = model_and_loss(app, config)
    task, held_out = task_for(app), validation(app)
    ZOClient(model, batch_loss).replay(server.log, server.completed_round, server.settings,
                                       task.collator([task.preprocess(held_out[0])]))
    replayed = trainable_checksum(model)

    model, batch_loss = model_and_loss(app, config)
    clients = [client_data(app, config, k) for k in range(config.num_clients)]
    simulate_federation(model, batch_loss, clients, config)
    simulated = trainable_checksum(model)

    print(f"Flower ServerApp replica  {flower}")
    print(f"replayed saved log        {replayed}")
    print(f"accelerate simulator      {simulated}")
    same = flower == replayed == simulated
    print("bit-identical: " + ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
