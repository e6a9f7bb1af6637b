"""Glue between the config and MONAI's engines: batch preparation, optimisers, schedulers, output transforms."""
