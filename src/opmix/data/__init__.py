"""Data: read domain files, tokenize and cache them, sample mixtures, and the built-in demo corpus."""

from opmix.data.cache import TokenizedDomain, prepare_domain
from opmix.data.demo import build_demo_corpus
from opmix.data.readers import is_pretokenized, read_documents, read_token_arrays
from opmix.data.sampler import MixtureSampler
from opmix.data.tokenizer import load_tokenizer

__all__ = [
    "MixtureSampler",
    "TokenizedDomain",
    "build_demo_corpus",
    "is_pretokenized",
    "load_tokenizer",
    "prepare_domain",
    "read_documents",
    "read_token_arrays",
]
