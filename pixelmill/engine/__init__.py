"""Engine: diffusers pipelines, schedulers, device handling and demo models."""
