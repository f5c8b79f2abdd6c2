"""Evaluation: labelled features (`features`), kNN and linear probe, evaluate a registered model (`evaluate`), plots."""
