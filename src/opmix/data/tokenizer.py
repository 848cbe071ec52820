"""Tokenizers: a built-in byte-level one for the demo (no download), or a local Hugging Face tokenizer folder.

``builtin:bytes`` is a real ``PreTrainedTokenizerFast``: ids 0..255 are the 256 byte values (GPT-2's byte-to-
unicode alphabet, with no merges) and id 256 is ``<|endoftext|>``, the EOS token. Every UTF-8 text encodes to its
bytes and decodes back exactly, except that the literal string ``<|endoftext|>`` in a text encodes to the EOS id
(as with GPT-2's tokenizer).
"""

from __future__ import annotations

import logging
from pathlib import Path

from opmix.errors import OpmixError

log = logging.getLogger(__name__)

BUILTIN_BYTES = "builtin:bytes"
EOS_TOKEN = "<|endoftext|>"


def build_byte_tokenizer():
    """The 257-token byte-level tokenizer: 256 byte tokens, then ``<|endoftext|>`` (EOS, id 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins, one per byte
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}  # id == byte value, so ids are easy to read
    assert set(vocab) == set(alphabet)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: with no merges every byte is its own token anyway, and one chunk is faster.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([EOS_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    tokenizer.name_or_path = BUILTIN_BYTES
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what the ByteLevel pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_tokenizer(spec: str | Path):
    """``"builtin:bytes"`` builds the byte tokenizer; anything else is a local tokenizer folder (no download)."""
    if str(spec) == BUILTIN_BYTES:
        return build_byte_tokenizer()
    path = Path(spec)
    if not path.is_dir():
        raise OpmixError(
            f"tokenizer {spec!r} is neither {BUILTIN_BYTES!r} nor an existing folder",
            f"give {BUILTIN_BYTES!r} or a local folder written by save_pretrained",
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError depending on what is missing
        raise OpmixError(
            f"cannot load a tokenizer from {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "point to a folder with tokenizer.json / tokenizer_config.json (save_pretrained output)",
        ) from exc
    if tokenizer.eos_token_id is None:
        raise OpmixError(f"tokenizer in {path} has no EOS token", "set eos_token in its tokenizer_config.json")
    return tokenizer
