"""Datasets: sources (folder, CSV, ELPV, synthetic), labelled image sets and few-shot sampling."""

from adapt.data.fewshot import FewShotSplit, few_shot_split
from adapt.data.images import DatasetSplits, ImageSet
from adapt.data.sources import load_dataset

__all__ = ["DatasetSplits", "FewShotSplit", "ImageSet", "few_shot_split", "load_dataset"]
