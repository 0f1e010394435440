"""ccd-ray: annotation-free multi-label labeling with Classifier-guided CLIP Distillation on Ray."""
