"""The ServerApp: hf_fedzo's FederatedServer over Flower, with a replica of the global model for evaluation.

The server holds no client data. Its replica starts from the same initial weights as every client and replays
each round's aggregated (seed, scalar) records, so it is the global model; it is evaluated every eval-every rounds
and its LoRA adapter is saved at the end, with the checksum every other replica of the run reaches too.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context

from hf_fedzo.federation import ZOClient
from hf_fedzo.integrations.flower import FlowerFederation, logger, make_server_app
from hf_fedzo_flower_app.task import model_and_loss, read_config, run_info, task_for, trainable_checksum, validation


def build(context: Context) -> FlowerFederation:
    app, config = read_config(context)
    model, batch_loss = model_and_loss(app, config)
    task, held_out = task_for(app), validation(app)
    # One validation example is enough to trace the model for the replica's first replay.
    probe = task.collator([task.preprocess(held_out[0])])
    return FlowerFederation(
        config, replica=ZOClient(model, batch_loss), probe=probe,
        evaluate=lambda m: task.evaluate(m, held_out, batch_size=app.eval_batch_size),
        output_dir=app.output_dir, run_info=run_info(app), round_timeout=app.round_timeout or None,
        wait_for_nodes=app.wait_for_nodes)


def finish(federation: FlowerFederation, context: Context) -> None:
    app, _ = read_config(context)
    output = Path(app.output_dir)
    model = federation.replica.model  # type: ignore[union-attr]
    model.save_pretrained(output / "adapter")
    summary = {"rounds": federation.server.completed_round + 1, "log_records": len(federation.server.log),
               "final_metrics": federation.result.final_metrics, "trainable_sha256": trainable_checksum(model),
               "train_loss": [r.train_loss for r in federation.result.rounds],
               "bytes_up": sum(sum(r.bytes_up.values()) for r in federation.result.rounds),
               "bytes_down": sum(sum(r.bytes_down.values()) for r in federation.result.rounds)}
    (output / "final.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("final: %s (written to %s)", json.dumps(summary), output.resolve())


app = make_server_app(build, on_done=finish)
