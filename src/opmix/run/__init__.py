"""Run directories: atomic writes, resumable steps, an exclusive lock, and the compute ledger."""

from opmix.run.atomic import (
    atomic_dir,
    dumps_json,
    save_safetensors,
    write_bytes,
    write_csv,
    write_json,
    write_text,
    write_yaml,
)
from opmix.run.ledger import (
    ComputeLedger,
    count_params,
    eval_flops,
    generation_flops,
    lora_train_flops,
    train_flops,
)
from opmix.run.rundir import RunDir, sha256_file

__all__ = [
    "ComputeLedger",
    "RunDir",
    "atomic_dir",
    "count_params",
    "dumps_json",
    "eval_flops",
    "generation_flops",
    "lora_train_flops",
    "save_safetensors",
    "sha256_file",
    "train_flops",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
    "write_yaml",
]
