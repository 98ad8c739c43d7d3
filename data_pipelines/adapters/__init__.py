"""Corpus adapters: each turns a corpus layout into a list of `Utterance` records."""

from data_pipelines.adapters.iemocap import iemocap_folds, read_iemocap
from data_pipelines.adapters.ljspeech import read_ljspeech
from data_pipelines.adapters.manifest import read_manifest
from data_pipelines.adapters.meld import read_meld
from data_pipelines.adapters.ravdess import read_ravdess

ADAPTERS = {
    "manifest": read_manifest,
    "ljspeech": read_ljspeech,
    "ravdess": read_ravdess,
    "iemocap": read_iemocap,
    "meld": read_meld,
}

__all__ = ["ADAPTERS", "read_manifest", "read_ljspeech", "read_ravdess", "read_iemocap",
           "read_meld", "iemocap_folds"]
