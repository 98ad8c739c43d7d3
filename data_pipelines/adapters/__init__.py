"""Corpus adapters: each turns a corpus layout into a list of `Utterance` records.
The registry of corpora (adapter, classes, protocol) is data_pipelines/corpora.py."""

from data_pipelines.adapters.iemocap import read_iemocap
from data_pipelines.adapters.ljspeech import read_ljspeech
from data_pipelines.adapters.manifest import read_manifest
from data_pipelines.adapters.meld import read_meld
from data_pipelines.adapters.ravdess import read_ravdess

__all__ = ["read_manifest", "read_ljspeech", "read_ravdess", "read_iemocap", "read_meld"]
