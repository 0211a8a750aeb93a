"""Classifier models and loading trained or converted classifiers."""
from mgr_jax.models.resnet import ResNet18, feature_dim
from mgr_jax.models.classifier import Classifier, build_model, load_classifier
