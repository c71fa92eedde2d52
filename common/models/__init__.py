"""Dual-encoder models: frozen trunks (`build_backbone`), trainable heads, cached trunk features."""

from .backbones import Backbone, available_backbones, build_backbone, register_backbone, trainable_parameters
from .clip import BackboneError, write_tiny_clip
from .feature_cache import FeatureSet, cache_key, default_cache_dir, extract_features
from .heads import DualHeads, HeadConfig, ProjectionHead
from .preprocess import CLIP, IMAGENET, Normalization, iter_image_batches, load_image, load_images

__all__ = [
    "Backbone", "BackboneError", "CLIP", "DualHeads", "FeatureSet", "HeadConfig", "IMAGENET", "Normalization",
    "ProjectionHead", "available_backbones", "build_backbone", "cache_key", "default_cache_dir", "extract_features",
    "iter_image_batches", "load_image", "load_images", "register_backbone", "trainable_parameters",
    "write_tiny_clip",
]
